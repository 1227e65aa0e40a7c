#!/usr/bin/env bash
# The training-scaling figures of README "Speed": 1 and 2 GPUs at the 1.28B and 7B shapes, side by side.
#   bash benchmarks/train_scaling.sh 1b-1gpu-auto 1b-1gpu-fsdp2 1b-2gpu 7b-1gpu 7b-1gpu-k2 7b-2gpu  (any of these)
# Each row is its own process (LIMIT seconds at most); JSON goes to benchmarks/results/train_speed_ROW.json.
set -uo pipefail
cd "$(dirname "$0")"
run() {
  local row=$1; shift
  echo "== $row: $*"
  timeout "${LIMIT:-300}" python train_speed.py --device cuda "$@" --out "results/train_speed_$row.json" 2>&1 \
    | grep -v -i warn | tail -3
}
for row in "$@"; do
  case $row in
    1b-1gpu-auto) CUDA_VISIBLE_DEVICES=0 run "$row" --variants packed+compile ;;
    1b-1gpu-fsdp2) CUDA_VISIBLE_DEVICES=0 run "$row" --variants packed+compile --strategy fsdp2 ;;
    1b-2gpu) run "$row" --variants packed+compile --strategy fsdp2 --devices 2 ;;
    7b-1gpu) CUDA_VISIBLE_DEVICES=0 run "$row" --shape 7b --variants packed+compile --strategy fsdp2 --batch 1 \
               --gradient-checkpointing 1 --steps 8 --warmup 3 ;;
    7b-1gpu-k2) CUDA_VISIBLE_DEVICES=0 run "$row" --shape 7b --variants packed+compile --strategy fsdp2 --batch 1 \
               --gradient-checkpointing 2 --steps 8 --warmup 3 ;;
    7b-2gpu) run "$row" --shape 7b --variants packed+compile --strategy fsdp2 --devices 2 --batch 2 \
               --gradient-checkpointing 0 --steps 8 --warmup 3 ;;
    *) echo "unknown row $row"; exit 2 ;;
  esac
done
