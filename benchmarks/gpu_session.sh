#!/usr/bin/env bash
# Everything a lent GPU machine (the `device` tool) runs in one call, where only the working tree
# travels: install the carried wheels (.whl: gymnasium, TRL and its datasets, VADER), build the
# random-weight stand-ins of the embedded models (benchmarks/gpu_stand_in.py, from .gpu), then
# the classic check (gpu_check.sh: PPO and DQN on CartPole, cuda vs cpu) and the LLM check
# (gpu_check_llm.sh: SFT/DPO/GRPO steps vs TRL, `pavlov rlhf --quick`). Each part has its own
# time limit and log, so one failure leaves the others' results.
#   PARTS=llm,llm_profile,classic_gpu,classic_cpu,rlhf (default all); DEVICE=cuda benchmarks/gpu_session.sh "$OUT"     (there; carry .whl and .gpu)
#   DEVICE=cpu SMOKE=1 benchmarks/gpu_session.sh /tmp/out   (here: a dry run of the plumbing)
set -uo pipefail
out="${1:?usage: gpu_session.sh OUT_DIR}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 DEVICE="${DEVICE:-cuda}" SMOKE="${SMOKE:-}"
py="${PYTHON:-python3}"
if [ -d .whl ] && [ "$DEVICE" != cpu ] && [ ! -d /tmp/site ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >"$out/install.log" 2>&1 || echo "wheel install failed"
fi
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD/src:/tmp/assets${PYTHONPATH:+:$PYTHONPATH}"
export PAVLOV_CACHE=/tmp/pavlov-cache
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$py" -c "import torch, transformers, trl, datasets, gymnasium, pyarrow, peft, accelerate
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())
for m in (transformers, trl, datasets, gymnasium, pyarrow, peft, accelerate):
    print(m.__name__, m.__version__)" 2>&1
  lscpu | grep -E "Model name|^CPU\(s\)"
} | tee "$out/versions.txt"
[ -d /tmp/assets ] || timeout 60 "$py" benchmarks/gpu_stand_in.py --unpack .gpu --site /tmp/assets >"$out/stand_in.log" 2>&1 \
  || echo "stand-ins failed: $(tail -3 "$out/stand_in.log")"

part() {  # part NAME LIMIT_S COMMAND...: run with a limit, log to $out/NAME.log, say how it ended
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - t0)) s"
  tail -4 "$out/$name.log"
}

if [ -n "$SMOKE" ]; then steps=3; classic=--smoke; else steps=${STEPS:-12}; classic="--seeds 0,1"; fi
want() { [ "${PARTS:-all}" = all ] || [[ ",$PARTS," == *",$1,"* ]]; }
if want llm; then
  part llm_bf16 "${LLM_LIMIT:-150}" "$py" benchmarks/vs_trl.py --tasks "${LLM_TASKS:-sft,dpo,grpo}" \
    --device "$DEVICE" --precision bf16 --steps "$steps" --out "$out/llm_bf16.json"
fi
# SFT was 4.9x TRL's step on the H200 (12-04), ~1.3 s at each new padded length: profiled, both
# sides' top ops by host and device self time (a per-shape plan build, e.g. cuDNN attention's,
# shows there) go into llm_sft_profile.json.
if want llm_profile; then
  part llm_sft_profile "${PROFILE_LIMIT:-90}" "$py" benchmarks/vs_trl.py --tasks sft --profile \
    --device "$DEVICE" --precision bf16 --steps "$steps" --out "$out/llm_sft_profile.json"
fi
want classic_gpu && part classic_gpu 90 "$py" benchmarks/devices.py --device "$DEVICE" $classic
want classic_cpu && part classic_cpu "${CPU_LIMIT:-50}" "$py" benchmarks/devices.py --device cpu \
    --algos "${CPU_ALGOS:-ppo,dqn}" $classic
if want rlhf; then
  part rlhf_quick "${RLHF_LIMIT:-120}" "$py" -m pavlov rlhf --quick --device "$DEVICE" \
    --runs-dir /tmp/runs --name quick-gpu
  for f in summary.json metrics.jsonl; do cp "/tmp/runs/quick-gpu/$f" "$out/rlhf_$f" 2>/dev/null; done
  tail -3 /tmp/runs/quick-gpu/*/metrics.jsonl 2>/dev/null | cut -c1-400
fi
