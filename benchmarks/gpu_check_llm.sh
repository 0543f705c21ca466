#!/usr/bin/env bash
# The LLM trainers on a GPU: SFT, DPO and GRPO steps on the embedded SmolLM2-135M, pavlov vs TRL
# on the same GPU (seconds per optimizer step, peak GPU memory), bf16 and fp32, then the demo's
# pipeline (`pavlov rlhf --quick --device cuda`). Run where a GPU is lent (the `device` tool);
# results go to docs/scaling.md with this command. Usage: benchmarks/gpu_check_llm.sh [OUT_DIR]
set -euo pipefail
out="${1:-.}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0))"
for precision in bf16 fp32; do
  python benchmarks/vs_trl.py --tasks sft,dpo,grpo --device cuda --precision "$precision" \
    --steps 12 --out "$out/gpu_check_llm_$precision.json" | tee "$out/gpu_check_llm_$precision.txt"
done
python -m pavlov rlhf --quick --device cuda --runs-dir "$out/runs" --name quick-cuda --json \
  | tail -1 > "$out/gpu_check_rlhf_quick.json"
