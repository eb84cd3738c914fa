#!/usr/bin/env bash
# Graceful stop: SIGTERM to the trainer on every worker -> each saves the same step's checkpoint at
# the next step boundary and exits 0 (the same path a spot preemption notice takes).
set -euo pipefail
source "$(dirname "$0")/env.sh"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all \
  --command="pkill -TERM -f 'adaflow.cli train' || true"
