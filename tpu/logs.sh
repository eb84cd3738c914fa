#!/usr/bin/env bash
# Tail the training logs. Default: follow worker 0 (the only one that prints progress and writes
# metrics); `bash tpu/logs.sh all` shows the last lines of every worker (errors show up there).
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [[ "${1:-0}" == "all" ]]; then
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all \
    --command="echo == \$(hostname); tail -n 20 $LOG"
else
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker="${1:-0}" \
    --command="tail -n 50 -f $LOG"
fi
