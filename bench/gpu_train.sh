#!/usr/bin/env bash
# Train the Breakout simulator on a CUDA machine with many host cores, in a fixed time budget:
# collect scripted-policy data on all cores, train the pixel U-Net in bf16 for MINUTES (default 8) with the
# learning-rate schedule fitted to that budget, evaluate it (held-out table, reward events, closed-loop returns),
# and leave the simulator folder, its table and the logs in the output folder.
#
#   bash bench/gpu_train.sh [MINUTES]            # output: $OUT when set (the device machine's folder), else runs/gpu_train
#   DWS_GPU_SMOKE=1 bash bench/gpu_train.sh      # the same steps on the CPU at toy sizes (a test runs this)
#
# A machine without diffusers / gymnasium / ale-py / tyro installs them from wheels in .whl/ (see bench/gpu_env.sh).
# Knobs (environment): DWS_COLLECT_STEPS (200000), DWS_BATCH (256), DWS_LR (2e-3), DWS_MAX_STEPS (100000),
# DWS_EVAL_CLIPS (128), DWS_CLOSED_LOOP (100 episodes), DWS_DATA (reuse a store instead of collecting).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
MINUTES=${1:-${DWS_TRAIN_MINUTES:-8}}
DEST=${OUT:-runs/gpu_train}
mkdir -p "$DEST"
if [ "${DWS_GPU_SMOKE:-0}" = "1" ]; then
  COLLECT=${DWS_COLLECT_STEPS:-600}; BATCH=${DWS_BATCH:-2}; MAX_STEPS=${DWS_MAX_STEPS:-3}
  EVAL_CLIPS=${DWS_EVAL_CLIPS:-2}; CLOSED=${DWS_CLOSED_LOOP:-2}; ENVS=2
  SIZE=(--unet.widths 8 16 16 --reward-steps 4 --reward-batch-size 8 --num-start-states 4 --warmup-steps 1)
  EVAL_SIZE=(--clips "$EVAL_CLIPS" --closed-loop-episodes "$CLOSED" --closed-loop-steps 5 --horizon 3)
else
  COLLECT=${DWS_COLLECT_STEPS:-200000}; BATCH=${DWS_BATCH:-256}; MAX_STEPS=${DWS_MAX_STEPS:-100000}
  EVAL_CLIPS=${DWS_EVAL_CLIPS:-128}; CLOSED=${DWS_CLOSED_LOOP:-100}; ENVS=$(nproc)
  SIZE=(--warmup-steps 200)
  EVAL_SIZE=(--clips "$EVAL_CLIPS" --closed-loop-episodes "$CLOSED" --closed-loop-steps 100)
fi
DATA=${DWS_DATA:-$DEST/data}
LOG="$DEST/gpu_train.log"
{
  echo "# bench/gpu_train.sh $MINUTES min, $(date -u +%Y-%m-%dT%H:%MZ)"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  nproc
} | tee "$LOG"
start=$(date +%s)
if [ ! -f "$DATA/store.json" ]; then
  "$PY" -m dws_gym.collect --env-id ALE/Breakout-v5 --steps "$COLLECT" --num-envs "$ENVS" --seed 1 \
    --policy scripted:breakout-tracker:0.25 --out "$DATA" --no-progress 2>&1 | tee -a "$LOG"
fi
collected=$(date +%s)
"$PY" train_world_model.py --data "$DATA" --output-dir "$DEST/run" --batch-size "$BATCH" \
  --learning-rate "${DWS_LR:-2e-3}" --total-steps "$MAX_STEPS" --budget-minutes "$MINUTES" --eval-clips "$EVAL_CLIPS" \
  --no-progress --log-every 100 --checkpoint-minutes 2 --no-capture-video "${SIZE[@]}" 2>&1 | tee -a "$LOG"
trained=$(date +%s)
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
"$PY" -m dws_gym.evaluation --simulator "$DEST/run/simulator" --data "$DATA" --record --out "$DEST/evaluation.json" \
  --device "$DEVICE" "${EVAL_SIZE[@]}" 2>&1 | tee -a "$LOG"
done_at=$(date +%s)
cp "$DEST/run/simulator/README.md" "$DEST/model_card.md"
echo "collect $((collected - start)) s, train $((trained - collected)) s, evaluate $((done_at - trained)) s" | tee -a "$LOG"
