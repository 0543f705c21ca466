#!/usr/bin/env bash
# PPO and DQN on CartPole on the GPU: learning (steps to 475) and env steps/s, 3 seeds each,
# plus the same on the CPU for the ratio. Run where a GPU is lent (the `device` tool);
# results go to docs/scaling.md with this command. Usage: benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
out="${1:-.}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0))"
python benchmarks/devices.py --device cuda --seeds 0,1,2 | tee "$out/gpu_check_cuda.txt"
python benchmarks/devices.py --device cpu --seeds 0,1,2 | tee "$out/gpu_check_cpu.txt"
