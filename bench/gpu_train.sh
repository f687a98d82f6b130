#!/usr/bin/env bash
# Train a game's simulator on a CUDA machine with many host cores, in a fixed time budget: collect data on all
# cores, train the pixel U-Net in bf16 for MINUTES (default 8) with the learning-rate schedule fitted to that
# budget, evaluate it (held-out table, reward events, closed-loop returns), and leave the simulator folder, its
# table and the logs in the output folder.
#
#   bash bench/gpu_train.sh [MINUTES] [GAME]     # GAME: breakout (default) | coinrun | ninja | battlezone
#   DWS_GPU_SMOKE=1 bash bench/gpu_train.sh      # the same steps on the CPU at toy sizes (a test runs this)
#
# Output: $OUT when set (the device machine's folder), else runs/gpu_train; games other than Breakout go to a
# subfolder named for the game. Each game takes its shipped recipe:
#   breakout    scripted-policy data (the tracker with 25% random actions), the default U-Net;
#   coinrun     data of the scripted runner (run right, jump often, 25% random actions: twice random play's
#               return in episodes of ~60 steps, so a coin is paid in 1% of steps against 0.045%; left moves are
#               4x rarer than in random play) on levels 0-199 (easy), widths 32 64 128, context noise 0.2, 6-step
#               unrolls, started from the shipped CoinRun simulator;
#   ninja       the same policy and recipe, started from the shipped CoinRun simulator (a game with its actions);
#   battlezone  random-policy data, the same recipe, started from the shipped CoinRun simulator.
# The reward head of the last three trains on half-dreamed batches and is calibrated to the real payment rate.
# DWS_INIT_FROM=<an earlier call's run/simulator> continues from that simulator instead, so budgets add up.
#
# A machine without diffusers / gymnasium / ale-py / tyro installs them from wheels in .whl/ (see bench/gpu_env.sh;
# Procgen games need the procgen wheels too, see bench/README.md).
# Knobs (environment): DWS_COLLECT_STEPS (200000), DWS_BATCH (256), DWS_LR (2e-3; 1e-3 for a fine-tune),
# DWS_MAX_STEPS (100000), DWS_EVAL_CLIPS (128), DWS_CLOSED_LOOP (100 episodes), DWS_DATA (reuse a store instead of
# collecting), DWS_GAME (the GAME argument).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
MINUTES=${1:-${DWS_TRAIN_MINUTES:-8}}
GAME=${2:-${DWS_GAME:-breakout}}
DEST=${OUT:-runs/gpu_train}
COINRUN=dws_gym/assets/simulators/coinrun
RECIPE=(--unet.widths 32 64 128 --unet.context-noise 0.2 --horizon 6 --reward-dream-share 0.5
        --reward-dream-windows 1024 --reward-calibrate-windows 512)
case "$GAME" in
  breakout)   ENV_ID=ALE/Breakout-v5; POLICY=(--policy scripted:breakout-tracker:0.25); GAME_ARGS=(); INIT="" ;;
  coinrun)    ENV_ID=procgen/coinrun; POLICY=(--policy scripted:procgen-runner --num-levels 200); GAME_ARGS=("${RECIPE[@]}"); INIT=$COINRUN ;;
  ninja)      ENV_ID=procgen/ninja; POLICY=(--policy scripted:procgen-runner --num-levels 200); GAME_ARGS=("${RECIPE[@]}"); INIT=$COINRUN ;;
  battlezone) ENV_ID=ALE/BattleZone-v5; POLICY=(); GAME_ARGS=("${RECIPE[@]}"); INIT=$COINRUN ;;
  *) echo "gpu_train.sh: unknown game '$GAME'; use breakout, coinrun, ninja or battlezone" >&2; exit 2 ;;
esac
INIT=${DWS_INIT_FROM:-$INIT}
LR=${DWS_LR:-$([ -n "$INIT" ] && echo 1e-3 || echo 2e-3)}  # a fine-tune starts lower
[ -n "$INIT" ] && GAME_ARGS+=(--init-from "$INIT")
[ "$GAME" != breakout ] && DEST="$DEST/$GAME"
mkdir -p "$DEST"
if [ "${DWS_GPU_SMOKE:-0}" = "1" ]; then
  COLLECT=${DWS_COLLECT_STEPS:-600}; BATCH=${DWS_BATCH:-2}; MAX_STEPS=${DWS_MAX_STEPS:-3}
  EVAL_CLIPS=${DWS_EVAL_CLIPS:-2}; CLOSED=${DWS_CLOSED_LOOP:-2}; ENVS=2
  SIZE=(--reward-steps 4 --reward-batch-size 8 --num-start-states 4 --warmup-steps 1)
  [ -z "$INIT" ] && SIZE+=(--unet.widths 8 16 16)  # a fine-tune keeps its source's widths
  if [ "$GAME" != breakout ]; then  # enough episodes for a held-out split (random BattleZone play runs long)
    COLLECT=${DWS_COLLECT_STEPS:-3000}; SIZE+=(--reward-dream-windows 8 --reward-calibrate-windows 8)
  fi
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
  echo "# bench/gpu_train.sh $MINUTES min, $GAME ($ENV_ID${INIT:+, from $INIT}), $(date -u +%Y-%m-%dT%H:%MZ)"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  nproc
} | tee "$LOG"
start=$(date +%s)
if [ ! -f "$DATA/store.json" ]; then
  "$PY" -m dws_gym.collect --env-id "$ENV_ID" --steps "$COLLECT" --num-envs "$ENVS" --seed 1 \
    ${POLICY[@]+"${POLICY[@]}"} --out "$DATA" --no-progress 2>&1 | tee -a "$LOG"
fi
collected=$(date +%s)
"$PY" train_world_model.py --env-id "$ENV_ID" --data "$DATA" --output-dir "$DEST/run" --batch-size "$BATCH" \
  --learning-rate "$LR" --total-steps "$MAX_STEPS" --budget-minutes "$MINUTES" --eval-clips "$EVAL_CLIPS" \
  --no-progress --log-every 100 --checkpoint-minutes 2 --no-capture-video ${GAME_ARGS[@]+"${GAME_ARGS[@]}"} "${SIZE[@]}" \
  2>&1 | tee -a "$LOG"
trained=$(date +%s)
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
"$PY" -m dws_gym.evaluation --simulator "$DEST/run/simulator" --data "$DATA" --record --out "$DEST/evaluation.json" \
  --device "$DEVICE" "${EVAL_SIZE[@]}" 2>&1 | tee -a "$LOG"
done_at=$(date +%s)
cp "$DEST/run/simulator/README.md" "$DEST/model_card.md"
echo "collect $((collected - start)) s, train $((trained - collected)) s, evaluate $((done_at - trained)) s" | tee -a "$LOG"
