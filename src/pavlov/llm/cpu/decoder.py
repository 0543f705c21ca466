"""A lean incremental forward for Llama-family causal LMs: the rollout engine's fast path.

Sampling spends almost all its time in the decode step: one forward of ``B`` new tokens through
every layer. Hugging Face's generic forward pays per layer for a growing ``DynamicCache``
(a ``cat`` per layer per token), a fresh attention mask per step and several module calls; on a
CPU, with a 135M model and ``B = 8``, that overhead was a third of the step. This module runs
the same computation on the model's own weights (no copy) with

* a **static KV cache** ``(B, kv_heads, P + T, head_dim)`` per layer, written in place;
* the key mask built once per call (``(B, 1, 1, P + T)`` bool), sliced per step;
* rotary tables for all ``P + T`` positions computed once by the model's own ``rotary_emb``
  (so every RoPE scaling variant the model supports is honoured);
* GQA through ``scaled_dot_product_attention(enable_gqa=True)`` (no repeated K/V);
* one prefill per distinct prompt: rows that repeat a prompt (GRPO's G completions per prompt)
  get copies of its caches (0.32 -> 0.20 s for 2 prompts x 4 on SmolLM2);
* with the native row kernel (float32 on an AVX2 CPU), each one-token step through all layers
  as a single C call (:class:`pavlov.llm.cpu.native.DecodeLayers`: SiLU MLPs, RMSNorms, RoPE,
  attention over the cache), which removed ~20 ms of per-op dispatch from a ~85 ms step of
  SmolLM2-135M at 8 rows on the 2-core VMs we measured.

Under bf16 autocast on a CPU with fast bf16 the rollout engine asks for bf16 weights
(``bf16=True``): the projections without LoRA adapters and the LM head are multiplied by
bfloat16 copies, half the bytes a decode step streams (an adapted projection keeps its float32
``W + s B A``: rounding it to bf16 would lose most of the update). The C kernels widen each
weight to float32 exactly (the bf16-rounded model's float32 outputs, tested); oneDNN's packed
path above
:data:`~pavlov.llm.cpu.native.MAX_ROWS` rows and long prefills run bf16 x bf16 GEMMs, as
autocast does.

It supports the plain decoder-only architectures (``model_type`` llama, mistral, qwen2 — SmolLM2
is a Llama), bare or with peft LoRA adapters on their linear layers (with the fast kernels the
updates are merged into a per-call copy of each adapted weight, ``W + scaling * B A``; otherwise
applied unmerged, as peft's eval-mode forward does); :func:`fast_decoder` returns ``None``
for anything else (DoRA and other LoRA variants, adapters on embeddings, quantized layers) and the
rollout engine then drives the model's own ``forward``. Outputs equal the model's forward to
float32 round-off (tested against it, with left padding, on tiny random models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakTensorKeyDictionary

from pavlov.llm.cpu.kernels import (
    can_pack,
    dnn_linear,
    onednn_available,
    pack_weight,
    packed_linear,
)
from pavlov.llm.cpu.native import (
    MAX_ROWS,
    STREAM_ROWS,
    DecodeLayers,
    row_kernel_available,
    row_linear,
    row_linears,
)
from pavlov.llm.cpu.tape import ATTENTION, DecodeTape, replayable
from pavlov.llm.models.loading import distinct_rows

__all__ = ["LlamaDecoder", "fast_decoder"]

SUPPORTED = ("llama", "mistral", "qwen2")


def fast_decoder(
    model: nn.Module, batch: int, length: int, record: bool = False, bf16: bool = False
) -> LlamaDecoder | None:
    """A :class:`LlamaDecoder` for ``model`` with room for ``length`` positions per row, or
    ``None`` when the model is not a supported causal LM (another architecture or adapter type,
    sliding-window attention shorter than ``length``). ``record``: keep a
    :class:`~pavlov.llm.cpu.tape.DecodeTape` of the call (``decoder.tape``) where it can.
    ``bf16``: multiply by bfloat16 copies of the (float32) weights (see :class:`_Linears`)."""
    if hasattr(model, "peft_config"):
        configs = getattr(model, "peft_config", {}).values()
        if not all(str(getattr(c, "peft_type", "")).endswith("LORA") for c in configs):
            return None  # prefix tuning, IA3, ... change the forward in other ways
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()  # the causal LM, LoRA layers in place of its linears
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED:
        return None
    if type(getattr(model, "lm_head", None)) is not nn.Linear:
        return None
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return None
    if type(getattr(inner, "embed_tokens", None)) is not nn.Embedding:
        return None  # LoRA on the embeddings
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < length:
        return None
    if getattr(config, "pretraining_tp", 1) != 1:
        return None
    for layer in inner.layers:
        if not _plain_layer(layer):
            return None
    return LlamaDecoder(model, batch, length, record and not bf16, bf16)


MLP = ("gate_proj", "up_proj", "down_proj")


def _plain_layer(layer: nn.Module) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None:
        return False
    linears = [getattr(attn, n, None) for n in ATTENTION] + [getattr(mlp, n, None) for n in MLP]
    if any(_projection(m) is None for m in linears):
        return False  # quantized linears, DoRA, ... take the generic path
    # q/k norms (Qwen3, OLMo2) or extra norms (Gemma) are not part of this forward.
    extra = {"q_norm", "k_norm", "pre_feedforward_layernorm", "post_feedforward_layernorm"}
    return not any(hasattr(attn, n) or hasattr(layer, n) for n in extra)


class _Projection:
    """One linear layer of the decode step: a plain ``nn.Linear`` (``base``) plus the active
    LoRA adapters of a peft ``lora.Linear`` around it, each ``(A, B, scaling)`` with ``A``
    ``(r, in)`` and ``B`` ``(out, r)`` linears. Dropout is left out: rollouts run in eval mode."""

    __slots__ = ("base", "adapters")

    def __init__(self, base: nn.Linear, adapters: tuple[tuple[nn.Linear, nn.Linear, float], ...]):
        self.base, self.adapters = base, adapters


def _projection(module: nn.Module | None) -> _Projection | None:
    """``module`` as a :class:`_Projection`, or ``None`` when the decode step cannot run it."""
    if type(module) is nn.Linear:
        return _Projection(module, ())
    base = getattr(module, "base_layer", None)
    if type(base) is not nn.Linear or not hasattr(module, "lora_A"):
        return None
    if getattr(module, "fan_in_fan_out", False):
        return None
    if module.merged:  # the updates are in the base weight; disabling would unmerge in place
        return None if module.disable_adapters else _Projection(base, ())
    if module.disable_adapters:
        return _Projection(base, ())
    adapters = []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if name in getattr(module, "lora_variant", {}):
            return None  # DoRA, ... (not plain low-rank updates)
        a, b = module.lora_A[name], module.lora_B[name]
        if type(a) is not nn.Linear or type(b) is not nn.Linear or b.bias is not None:
            return None  # lora_bias adapters take the generic path
        adapters.append((a, b, float(module.scaling[name])))
    return _Projection(base, tuple(adapters))


def _rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """The Llama RMSNorm ``w * x / sqrt(mean(x^2) + eps)``, computed in float32 like HF's."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = norm.eps
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return norm.weight * h.to(x.dtype)


def _float32_cpu(model: nn.Module) -> bool:
    """Whether the weights are float32 on the CPU and no autocast is active."""
    weight = model.lm_head.weight
    return (
        weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
    )


def _kernel(model: nn.Module, rows: int) -> str:
    """How the decode step multiplies by the weights: ``"native"`` (the C row kernel of
    :mod:`pavlov.llm.cpu.native`, on the weights as they are), ``"packed"`` (oneDNN on weights
    re-packed per call) or ``"plain"`` (:func:`torch.nn.functional.linear`)."""
    if not _float32_cpu(model):
        return "plain"
    if rows <= MAX_ROWS and row_kernel_available():
        return "native"
    return "packed" if can_pack() else "plain"


class _Linears:
    """``y = x W^T + b`` for the model's linear layers in a decode step of ``rows`` rows.

    Why: a decode step multiplies a handful of rows by every weight matrix, which only streams
    the weights from memory, and the general GEMMs are slow at that shape: MKL's ``x @ W^T``
    reached ~4-8 GB/s on the 2-core CPUs we measured, oneDNN on a weight reordered for that row
    count ~6-9 GB/s (plus the reorder: one read and write of all weights per
    :func:`~pavlov.llm.generation.rollout.generate` call), the C kernel of
    :mod:`pavlov.llm.cpu.native` 11-12 GB/s with no reorder (19-25 GB/s at 8 rows on 2 AMD EPYC
    cores since it also prefetches into L2; numbers in docs/benchmarks.md). ``kernel`` is one of
    :func:`_kernel`'s answers; with ``"native"``, a prefill of up to
    :data:`~pavlov.llm.cpu.native.STREAM_ROWS` rows in all runs through the row kernel too, longer
    ones through oneDNN's GEMM.
    """

    def __init__(self, layers: list[nn.Module], rows: int, kernel: str, bf16: bool = False
                 ) -> None:  # fmt: skip
        self.kernel = kernel
        self.bf16 = bf16 and kernel != "plain"
        self.plans = {id(m): _projection(m) for m in layers}
        # With the fast kernels LoRA updates are merged into a copy of the base weight for this
        # call, ``W + scaling * B A`` (out x in): per token, two tiny GEMMs and an add per
        # adapted layer cost ~30 ms on a 135M model (28% of the step) against ~40 ms once.
        self.weights: dict[int, Tensor] = {}
        if kernel != "plain":
            for key, plan in self.plans.items():
                weight = plan.base.weight
                for a, b, scaling in plan.adapters:
                    weight = torch.addmm(weight, b.weight, a.weight, alpha=scaling)
                # bf16 (the caller's bf16 autocast): a rounded copy streams half the bytes per
                # token; the C kernel widens each weight exactly, oneDNN runs bf16 x bf16. Not
                # for a LoRA-adapted weight: bf16's 8-bit mantissa would round most of the
                # update away (``W + s B A`` differs from ``W`` by far less than 2^-8 W)
                low = self.bf16 and not plan.adapters
                self.weights[key] = bf16_copy(weight) if low else weight
        self.packed: dict[int, Tensor] = {}
        if kernel == "packed":
            self.packed = {key: pack_weight(w, rows) for key, w in self.weights.items()}

    def _rows(self, x: Tensor) -> bool:
        """Whether the row kernel takes ``x``: a decode step, or a prefill of few rows."""
        return self.kernel == "native" and (
            x.shape[-2] == 1 or x.numel() <= STREAM_ROWS * x.shape[-1]
        )

    def __call__(self, layer: nn.Module, x: Tensor) -> Tensor:
        key = id(layer)
        plan = self.plans[key]
        bias = plan.base.bias
        if self._rows(x):
            return row_linear(x, self.weights[key], bias)
        low = self.weights.get(key)
        low = low is not None and low.dtype == torch.bfloat16
        if low and self.kernel == "packed":
            y = packed_linear(x.to(torch.bfloat16), self.packed[key]).float()
            return y if bias is None else y + bias
        if low:  # a longer prefill: a bf16 GEMM
            return F.linear(x.to(torch.bfloat16), self.weights[key]).float() + (
                0.0 if bias is None else bias
            )
        if self.kernel == "packed":
            return packed_linear(x, self.packed[key], bias)
        if self.kernel == "native":  # a longer prefill: oneDNN's GEMM where this build has it
            linear = dnn_linear if onednn_available() else F.linear
            return linear(x, self.weights[key], bias)
        y = F.linear(x, plan.base.weight, bias)
        for a, b, scaling in plan.adapters:  # LoRA as peft computes it: + scaling * B(A x)
            y = y + F.linear(F.linear(x.to(a.weight.dtype), a.weight), b.weight) * scaling
        return y

    def many(self, layers: tuple[nn.Module, ...], x: Tensor) -> Tensor:
        """The outputs of ``layers`` (all reading ``x``) side by side, ``(..., sum out)``: one
        kernel call in a native decode step (q/k/v, gate/up), separate calls otherwise."""
        if self._rows(x):
            weights = [self.weights[id(m)] for m in layers]
            return row_linears(x, weights, [self.plans[id(m)].base.bias for m in layers])
        return torch.cat([self(m, x) for m in layers], dim=-1)


_BF16_COPIES = WeakTensorKeyDictionary()
"""weight -> ``((version, data_ptr), its bfloat16 copy)``; an entry goes with its weight."""


def bf16_copy(weight: Tensor) -> Tensor:
    """A bfloat16 copy of ``weight``, made once and handed to later calls while the weight is
    unchanged (the same version counter, which every in-place update bumps, and storage).

    Why: a decode call of a LoRA-trained policy rounds every frozen projection and the LM head
    anew, ~30 ms of its ~46 ms setup for SmolLM2-135M on 2 cores, 80 times in the case study's
    step 3. The copies live as long as their weights (half their bytes)."""
    stamp = (weight._version, weight.data_ptr())
    hit = _BF16_COPIES.get(weight)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    copy = weight.detach().to(torch.bfloat16)
    _BF16_COPIES[weight] = (stamp, copy)
    return copy


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE (Su et al. 2021) in the half-split layout HF uses: ``x cos + rotate_half(x) sin``.
    ``x`` ``(B, heads, S, D)``; ``cos, sin`` ``(B, 1, S, D)``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaDecoder:
    """Prefill and one-token decode steps over a static KV cache, on ``model``'s weights.

    Use: ``logits = dec.prefill(ids, mask, positions)`` once, then ``logits = dec.step(tokens)``
    per new token (the next column, at the next position of each row); both return the last
    position's ``(B, V)`` logits. The key mask marks prompt padding; every generated column is
    attended (as in the generic path, what a finished row does afterwards only affects its own,
    discarded, outputs).
    """

    def __init__(self, model: nn.Module, batch: int, length: int, record: bool = False,
                 bf16: bool = False) -> None:  # fmt: skip
        self.record = record and not hasattr(model, "peft_config") and replayable(model)
        self.tape: DecodeTape | None = None  # with record: the linears' outputs and logits
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        cfg = model.config
        self.model, self.inner = model, model.model
        self.layers = list(self.inner.layers)
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scale = getattr(self.layers[0].self_attn, "scaling", self.head_dim**-0.5)
        self.batch, self.length = batch, length
        linears = [getattr(layer.self_attn, n) for layer in self.layers for n in ATTENTION]
        linears += [getattr(layer.mlp, n) for layer in self.layers for n in MLP]
        linears.append(model.lm_head)
        self.linear = _Linears(linears, batch, _kernel(model, batch), bf16)
        self.filled = 0  # cache columns written so far
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.keys: Tensor | None = None  # (B, 1, 1, length) bool: columns that may be attended
        self.cos: Tensor | None = None  # (B, 1, length, D) rotary tables by column
        self.sin: Tensor | None = None
        self.native: DecodeLayers | None = None  # the one-call C decode step, set by prefill

    # --- public ------------------------------------------------------------------------------

    def prefill(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """Run the ``(B, P)`` left-padded prompts; returns ``(B, V)`` next-token logits."""
        if ids.shape[0] != self.batch or ids.shape[1] >= self.length:
            raise ValueError(
                f"prefill of {tuple(ids.shape)} does not fit ({self.batch}, {self.length})"
            )
        # Rows with the same prompt (GRPO/RLOO sample G completions per prompt) share one
        # prefill: run the distinct prompts, then copy their caches to every row that has them.
        repeats = distinct_rows(torch.cat([ids, mask.to(ids.dtype), positions.to(ids.dtype)], 1))
        one, inverse = repeats if repeats is not None else (None, torch.arange(len(ids)))
        self.tape = self._new_tape(inverse, ids.shape[1]) if self.record else None
        if repeats is not None:
            logits = self._prefill(ids[one], mask[one], positions[one])
            self.k = [k.index_select(0, inverse) for k in self.k]
            self.v = [v.index_select(0, inverse) for v in self.v]
            self.cos, self.sin = self.cos[inverse], self.sin[inverse]
            self.keys = self.keys[inverse]
            logits = logits[inverse]
        else:
            logits = self._prefill(ids, mask, positions)
        self.native = self._native_layers(self.keys[:, 0, 0], self.cos[:, 0], self.sin[:, 0])
        if self.tape is not None and self.native is None:
            self.tape = None  # only the one-call C step records
        self._log(logits)
        return logits

    def _new_tape(self, inverse: Tensor, P: int) -> DecodeTape:
        """An empty :class:`~pavlov.llm.cpu.tape.DecodeTape` for rows with distinct prompts
        ``inverse`` ``(B,)`` of ``P`` columns."""
        U, T = int(inverse.max()) + 1, self.length - P
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        E, inter = self.model.config.hidden_size, self.layers[0].mlp.gate_proj.out_features
        S = (H + 2 * KV) * D + 2 * E + 2 * inter
        V = self.model.lm_head.out_features
        rows = U * P + self.batch * T + 1
        tape = DecodeTape(
            model=self.model, layers=[torch.empty((rows, S)) for _ in self.layers], rows=rows,
            logits=torch.empty((self.batch, T, V)), prompt_rows=inverse.clone(), prompt_length=P,
            widths=(H * D, KV * D, E, inter),
        )  # fmt: skip
        tape.seal()  # the weights do not change while sampling
        return tape

    def _log(self, logits: Tensor) -> None:
        """Record the logits that sample the next response token, if recording."""
        tape = self.tape
        if tape is not None and tape.sampled < tape.logits.shape[1]:
            tape.logits[:, tape.sampled] = logits
            tape.sampled += 1

    def _prefill(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """:meth:`prefill` for ``(b, P)`` prompts: fills the caches and tables of those rows."""
        B, P = ids.shape
        device = ids.device
        x = self.inner.embed_tokens(ids)  # (B, P, H)
        self.k, self.v = [], []  # allocated at the first write, in the dtype K/V come out in
        # Rotary tables for every column: prompt positions, then the last one + 1, + 2, ...
        steps = torch.arange(1, self.length - P + 1, device=device)
        all_pos = torch.cat([positions, positions[:, -1:] + steps], dim=1)  # (B, length)
        cos, sin = self.inner.rotary_emb(x, all_pos)  # (B, length, D)
        self.cos, self.sin = cos.unsqueeze(1), sin.unsqueeze(1)
        keys = torch.ones((B, self.length), dtype=torch.bool, device=device)
        keys[:, :P] = mask.bool()
        self.keys = keys[:, None, None, :]
        # Prompt attention: causal over the prompt and padding-aware; a pad query also sees
        # itself so that no row of the softmax is empty (its output is never used).
        causal = torch.ones((P, P), dtype=torch.bool, device=device).tril()
        attend = (causal & self.keys[..., :P]) | torch.eye(P, dtype=torch.bool, device=device)
        self.filled = 0
        record = None
        if self.tape is not None:  # the prompts' rows of the tape: u P + column
            record = [t[: B * P].view(B, P, -1) for t in self.tape.layers]
        return self._forward(x, attend, record)  # allocates the caches

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one ``(B,)`` token per row at the next column; returns ``(B, V)`` logits."""
        if self.filled >= self.length:
            raise ValueError(f"the cache is full ({self.length} positions)")
        x = self.inner.embed_tokens(tokens[:, None])  # (B, 1, H)
        if self.native is None:
            return self._forward(x, self.keys[..., : self.filled + 1])
        x = x[:, 0].contiguous()  # (B, H), updated in place by every layer
        tape = self.tape
        if tape is None:
            self.native(x, self.filled)
        else:  # this column's rows of the tape: U P + b T + k
            T = tape.logits.shape[1]
            first = tape.zero_row - self.batch * T + tape.decoded
            self.native(x, self.filled, tape.layers, first, T)
        self.filled += 1
        logits = self.linear(self.model.lm_head, _rms_norm(self.inner.norm, x)[:, None])[:, 0]
        if tape is not None:
            tape.decoded += 1
            self._log(logits)
        return logits

    # --- internals ---------------------------------------------------------------------------

    def _native_layers(self, keys: Tensor, cos: Tensor, sin: Tensor) -> DecodeLayers | None:
        """The one-call C decode step (:class:`~pavlov.llm.cpu.native.DecodeLayers`) when the
        native kernel multiplies the weights and the layers are what it computes (SiLU MLP,
        float32 RMSNorms sharing one epsilon); None otherwise (the per-op path runs)."""
        if self.linear.kernel != "native" or not self.k or self.k[0].dtype != torch.float32:
            return None
        if cos.dtype != torch.float32 or self.heads % self.kv_heads or self.head_dim % 2:
            return None
        acts = {type(getattr(layer.mlp, "act_fn", None)).__name__ for layer in self.layers}
        if not acts <= {"SiLU", "SiLUActivation"}:  # what each MLP actually applies
            return None
        norms = [n for layer in self.layers
                 for n in (layer.input_layernorm, layer.post_attention_layernorm)]  # fmt: skip
        eps = {getattr(n, "variance_epsilon", getattr(n, "eps", None)) for n in norms}
        if len(eps) != 1 or None in eps or any(n.weight.dtype != torch.float32 for n in norms):
            return None
        weights = self.linear.weights
        layers = []
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            mods = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                    mlp.gate_proj, mlp.up_proj, mlp.down_proj)  # fmt: skip
            entry: dict[str, Tensor | None] = {}
            for name, m in zip(("q", "k", "v", "o", "g", "u", "d"), mods, strict=True):
                bias = self.linear.plans[id(m)].base.bias
                entry["w" + name] = weights[id(m)].detach().contiguous()
                entry["b" + name] = None if bias is None else bias.detach().contiguous()
            entry["n1"] = layer.input_layernorm.weight.detach().contiguous()
            entry["n2"] = layer.post_attention_layernorm.weight.detach().contiguous()
            entry["k_cache"], entry["v_cache"] = self.k[i], self.v[i]
            layers.append(entry)
        weight_slots = {"w" + n for n in "qkvogud"}
        for slot in weight_slots:  # the C step takes one dtype per projection for all layers
            if len({e[slot].dtype for e in layers}) > 1:
                return None
        if any(t is not None and t.dtype != torch.float32 and k not in weight_slots
               for e in layers for k, t in e.items()):  # fmt: skip
            return None
        return DecodeLayers(layers, self.heads, self.kv_heads, self.head_dim, eps.pop(),
                            float(self.scale), keys, cos, sin)  # fmt: skip

    def _forward(
        self, x: Tensor, attend: Tensor, record: list[Tensor] | None = None
    ) -> Tensor:
        """``x`` ``(B, S, H)`` at columns ``filled .. filled+S-1``; ``attend`` ``(B, 1, S or 1,
        filled+S)`` bool. Writes the cache, returns the last position's logits ``(B, V)``.
        ``record``: per layer a ``(B, S, width)`` tensor that receives the linears' outputs (the
        tape's layout, :mod:`pavlov.llm.cpu.tape`)."""
        B, S, _ = x.shape
        lo, hi = self.filled, self.filled + S
        cos, sin = self.cos[:, :, lo:hi], self.sin[:, :, lo:hi]
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        lin = self.linear
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            h = _rms_norm(layer.input_layernorm, x)
            qkv = lin.many((attn.q_proj, attn.k_proj, attn.v_proj), h)  # (B, S, (H + 2 KV) D)
            rec = None if record is None else record[i]
            at = qkv.shape[-1]
            if rec is not None:
                rec[..., :at] = qkv
            qkv = qkv.view(B, S, H + 2 * KV, D).transpose(1, 2)  # (B, H + 2 KV, S, D)
            qk = _rotate(qkv[:, : H + KV], cos, sin)  # q and k heads rotated together
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + KV :]
            if len(self.k) == i:
                shape = (B, KV, self.length, D)
                self.k.append(k.new_zeros(shape))
                self.v.append(v.new_zeros(shape))
            self.k[i][:, :, lo:hi] = k
            self.v[i][:, :, lo:hi] = v
            out = F.scaled_dot_product_attention(
                q, self.k[i][:, :, :hi], self.v[i][:, :, :hi], attn_mask=attend,
                scale=self.scale, enable_gqa=KV != H,
            )  # fmt: skip
            o = lin(attn.o_proj, out.transpose(1, 2).reshape(B, S, -1))
            x = x + o
            h = _rms_norm(layer.post_attention_layernorm, x)
            gu = lin.many((mlp.gate_proj, mlp.up_proj), h)
            gate, up = gu.chunk(2, dim=-1)
            down = lin(mlp.down_proj, mlp.act_fn(gate) * up)
            x = x + down
            if rec is not None:
                E, two_i = o.shape[-1], gu.shape[-1]
                rec[..., at : at + E] = o
                rec[..., at + E : at + E + two_i] = gu
                rec[..., at + E + two_i :] = down
        self.filled = hi
        last = _rms_norm(self.inner.norm, x[:, -1])
        return self.linear(self.model.lm_head, last[:, None])[:, 0]  # (B, V)
