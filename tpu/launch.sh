#!/usr/bin/env bash
# Launch ONE config on ALL workers at once (each worker runs the same command; on TPU VMs JAX finds
# the other hosts itself: adaflow calls jax.distributed.initialize() for every command). Extra arguments are
# passed to `adaflow train`, e.g.  bash tpu/launch.sh --config.train.steps=400000
# Rerunning this after a preemption resumes from the latest complete checkpoint in $WORKDIR.
set -euo pipefail
source "$(dirname "$0")/env.sh"
: "${WORKDIR:?set BUCKET (the workdir becomes gs://BUCKET/runs/TPU_NAME) or WORKDIR}"
args="$*"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all --command="
  cd ~/$REMOTE_DIR &&
  nohup python3 -m adaflow.cli train --config=$CONFIG --workdir=$WORKDIR $args > $LOG 2>&1 &
  echo \"worker \$(hostname): started, log $LOG\""
