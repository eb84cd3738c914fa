#!/usr/bin/env bash
# Create a TPU pod slice through a queued resource (the supported way to get spot / preemptible
# capacity; the request waits in the queue until capacity is free).
#   bash tpu/create.sh            # then: bash tpu/status.sh until ACTIVE
set -euo pipefail
source "$(dirname "$0")/env.sh"
extra=()
if [[ "$SPOT" == "1" ]]; then extra+=(--spot); fi
gcloud compute tpus queued-resources create "${TPU_NAME}-qr" \
  --project="$PROJECT" --zone="$ZONE" \
  --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" \
  "${extra[@]}"
echo "queued ${TPU_NAME}-qr; watch it with: bash tpu/status.sh"
