#!/usr/bin/env bash
# Train the Procgen behaviour policies of the offline datasets (CoinRun and Ninja, easy mode, levels 0-199) on a CUDA
# machine with many host cores, in a fixed time per game, and leave each policy with its measured returns.
#
#   bash bench/gpu_policies.sh [MINUTES_PER_GAME]   # default 4, meant to fit both games in one 10-min call
#   DWS_GPU_SMOKE=1 bash bench/gpu_policies.sh      # the same steps on the CPU at toy sizes (a test runs this)
#
# Each game runs `ppo_dws.py --imagination none` (plain PPO, CleanRL's Procgen settings: IMPALA-CNN, 64 envs x 256
# steps, lr 5e-4, gamma 0.999) with --max-minutes, then plays the policy on train levels 0-199 and on unseen levels
# >= 250 (--final-eval-episodes, default 100) and stores those returns in the policy's metadata; a dataset collected
# with it (python -m dws_gym.collect --policy <dest>/<game>/policy --num-levels 200) records them.
#
# Output: $OUT when set (the device machine's folder), else runs/gpu_policies: <game>/policy (save_policy),
# <game>/evaluation.json, <game>/checkpoint (training state), gpu_policies.log. The runs are resumable: when
# <dest>/<game>/checkpoint exists (or DWS_RESUME_FROM names a folder holding <game>/checkpoint, e.g. an earlier
# call's returned files), the run continues from it with --resume, so budgets add up across calls.
#
# Knobs (environment): DWS_GAMES ("coinrun ninja"), DWS_TOTAL_STEPS (25000000, the published protocol; the time
# budget ends each call first, and Procgen PPO keeps a constant learning rate), DWS_FINAL_EVAL (100 episodes per range),
# DWS_SEED (1). Procgen needs the procgen-mirror wheel (and gym3, gym) in .whl/ beside those bench/gpu.sh lists.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
if ! "$PY" -c 'import procgen' 2>/dev/null; then
  echo "procgen is not importable: put the procgen-mirror, gym3 and gym wheels in .whl/ (pip download procgen-mirror==0.10.7)" >&2
  exit 1
fi
MINUTES=${1:-${DWS_POLICY_MINUTES:-4}}
DEST=${OUT:-runs/gpu_policies}
GAMES=${DWS_GAMES:-coinrun ninja}
mkdir -p "$DEST"
if [ "${DWS_GPU_SMOKE:-0}" = "1" ]; then
  TOTAL=${DWS_TOTAL_STEPS:-64}; FINAL=${DWS_FINAL_EVAL:-2}
  SIZE=(--num-envs 2 --num-steps 16 --num-minibatches 2 --update-epochs 1 --eval-every 32 --eval-episodes 1
        --eval-max-steps 20)
else
  TOTAL=${DWS_TOTAL_STEPS:-25000000}; FINAL=${DWS_FINAL_EVAL:-100}
  SIZE=(--eval-every 1000000 --eval-episodes 16)
fi
LOG="$DEST/gpu_policies.log"
{
  echo "# bench/gpu_policies.sh $MINUTES min per game, $(date -u +%Y-%m-%dT%H:%MZ)"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  echo "host cores: $(nproc)"
} | tee -a "$LOG"
for game in $GAMES; do
  run="$DEST/$game"
  if [ ! -d "$run/checkpoint" ] && [ -n "${DWS_RESUME_FROM:-}" ] && [ -d "$DWS_RESUME_FROM/$game/checkpoint" ]; then
    mkdir -p "$run" && cp -r "$DWS_RESUME_FROM/$game/." "$run/"
    chmod -R u+w "$run"  # returned device files are read-only; the run replaces its policy and checkpoint
  fi
  resume=()
  if [ -d "$run/checkpoint" ]; then resume=(--resume); fi
  start=$(date +%s)
  "$PY" ppo_dws.py --env-id "procgen/$game" --imagination none --procgen-num-levels 200 \
    --procgen-distribution-mode easy --total-timesteps "$TOTAL" --max-minutes "$MINUTES" --seed "${DWS_SEED:-1}" \
    --final-eval-episodes "$FINAL" --checkpoint-minutes 1 --output-dir "$run" "${SIZE[@]}" "${resume[@]}" 2>&1 \
    | grep --line-buffered -v '^SPS:' | tee -a "$LOG"
  echo "$game: $(( $(date +%s) - start )) s" | tee -a "$LOG"
done
