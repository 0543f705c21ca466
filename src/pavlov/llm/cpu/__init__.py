"""CPU speed-ups for the LLM half, behind one seam: plain PyTorch is the reference path, these
plug in where a trainer or the rollout engine asks for them.

* :mod:`.native`: small C kernels (decode-step matmuls, a whole one-token Llama step), compiled
  with ``cc`` on first use and cached;
* :mod:`.decoder`: the lean incremental Llama forward the rollout engine uses on CPU;
* :mod:`.kernels`, :mod:`.lean`: faster float32 linears and a memory-lean MLP/RMSNorm backward;
* :mod:`.tape`: replaying the rollout's recorded forward in the update;
* :mod:`.offload`: a frozen reference whose weights live in a file;
* :mod:`.heap`: glibc heap policies while training.
"""
