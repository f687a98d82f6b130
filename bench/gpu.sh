#!/usr/bin/env bash
# Dream-env throughput on one GPU, next to the real ALE env on all host cores, in one script (<= 8 minutes on one
# H200 with 16 host cores).
#
#   bash bench/gpu.sh [--peak-tflops 990]        # GPU run; rows go to $OUT/RESULTS-gpu.md (bench/RESULTS.md w/o OUT)
#   DWS_GPU_SMOKE=1 bash bench/gpu.sh            # the same steps on the CPU, tiny sizes, < 60 s
#
# What it runs (bench/dream_env.py, the default-architecture U-Net simulator, untrained weights):
#   1. eager:    fp32 and bf16 (dtype "auto") at 1024 and 4096 envs, the real ALE env timed in the same run;
#   2. compiled: bf16 with torch.compile of the world model's network call, same sizes, real ALE again.
# Every row has transitions/s, dream / real, counted FLOPs per transition, achieved FLOP/s and its share of the GPU's
# dense bf16 peak (--peak-tflops or PEAK_TFLOPS; default 990, an H200 SXM), and the estimated time to synthesize
# DWS_SYNTHESIZE (default 1,000,000) transitions. The real env is timed at up to 256 envs (DWS_REAL_MAX_ENVS):
# building thousands of emulators takes minutes, and 16 emulator threads saturate well below that.
# The compiled run gets what is left of DWS_GPU_BUDGET_S (default 470 s) and is cut off, not waited for, beyond it.
#
# Dependencies. The GPU machine has Python 3.12 and PyTorch but not diffusers, gymnasium, ale-py, tyro, ...; it
# cannot reach a package index. Wheels in .whl/ (repo root) are installed with
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl   (PYTHONPATH=/tmp/site)
# skipping those already installed there (torch, triton and nvidia-* wheels are never installed). Prepare .whl/ on a
# machine with pip and internet access (any OS: the flags pick Linux x86-64 / CPython 3.12 wheels):
#
#   P="--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64
#      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any -d .whl"
#   pip download $P diffusers gymnasium ale-py tyro safetensors huggingface-hub einops tqdm imageio
#   pip download $P --no-deps accelerate        # its other dependency is torch, already there
#
# (pip download fetches the dependencies too: numpy, pillow, regex, requests, filelock, fsspec, pyyaml, ... about
# 40 MB.) Keep .whl/ out of git (it is in .gitignore) and carry it to the GPU machine with the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

PEAK_TFLOPS=${PEAK_TFLOPS:-990}
while [ $# -gt 0 ]; do
    case "$1" in
        --peak-tflops) PEAK_TFLOPS=$2; shift 2 ;;
        --peak-tflops=*) PEAK_TFLOPS=${1#*=}; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument $1 (see bash bench/gpu.sh --help)" >&2; exit 2 ;;
    esac
done

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
START=$SECONDS
BUDGET_S=${DWS_GPU_BUDGET_S:-470}
SMOKE=${DWS_GPU_SMOKE:-0}
PY=${PYTHON:-python3}
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    RESULTS="$OUT/RESULTS-gpu.md"
else
    RESULTS=bench/RESULTS.md
fi

# ---------------------------------------------------------------------------------------------- dependencies
. bench/gpu_env.sh

# ---------------------------------------------------------------------------------------------- settings
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu
    ENVS=(2 4)
    BACKEND=${DWS_COMPILE_BACKEND:-eager}   # inductor's C++ build alone takes a minute on a small CPU
    SIZE=(--tiny --steps 2 --warmup 1 --time-budget 5 --real-min-seconds 0.05 --threads 1 --ale-threads 1)
    NOTE="CPU smoke run of bench/gpu.sh (tiny simulator, a few steps): checks the steps, measures nothing"
else
    DEVICE=cuda
    ENVS=(1024 4096)
    BACKEND=${DWS_COMPILE_BACKEND:-inductor}
    SIZE=(--steps 20 --warmup 3 --time-budget 20 --real-min-seconds 2 --ale-threads "$(nproc)"
          --real-max-envs "${DWS_REAL_MAX_ENVS:-256}")
    NOTE="bench/gpu.sh on $(nproc) host cores"
fi
COMMON=(--device "$DEVICE" --num-envs "${ENVS[@]}" "${SIZE[@]}" --peak-tflops "$PEAK_TFLOPS"
        --synthesize "${DWS_SYNTHESIZE:-1000000}" --write-results --results-file "$RESULTS")

left() {  # seconds of the budget left, at least 30
    local s=$((BUDGET_S - (SECONDS - START)))
    echo $((s < 30 ? 30 : s))
}

# ---------------------------------------------------------------------------------------------- runs
echo "== eager: fp32 and bf16 (auto), ${ENVS[*]} envs, real ALE in the same run" >&2
timeout "$(left)" "$PY" bench/dream_env.py "${COMMON[@]}" --dtype fp32 auto --note "$NOTE; eager"

echo "== compiled: bf16 (auto) with torch.compile (backend $BACKEND), ${ENVS[*]} envs" >&2
rc=0
timeout "$(left)" "$PY" bench/dream_env.py "${COMMON[@]}" --dtype auto --compile on --compile-backend "$BACKEND" \
    --compile-dynamic --note "$NOTE; torch.compile" || rc=$?
if [ $rc -eq 124 ]; then
    echo "bench/gpu.sh: the compiled run did not finish within the ${BUDGET_S} s budget (no rows written for it)" >&2
    printf '\n## bench/gpu.sh: compiled run cut off after the %s s budget (%s)\n' "$BUDGET_S" \
        "$(date -u '+%Y-%m-%d %H:%M UTC')" >>"$RESULTS"
elif [ $rc -ne 0 ]; then
    exit $rc
fi
echo "bench/gpu.sh: done in $((SECONDS - START)) s; rows in $RESULTS" >&2
