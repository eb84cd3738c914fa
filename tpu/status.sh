#!/usr/bin/env bash
# State of the queued resource (WAITING_FOR_RESOURCES -> PROVISIONING -> ACTIVE; SUSPENDED or
# FAILED after a spot preemption) and of the TPU node.
set -euo pipefail
source "$(dirname "$0")/env.sh"
gcloud compute tpus queued-resources describe "${TPU_NAME}-qr" --project="$PROJECT" --zone="$ZONE" \
  --format="value(state.state)"
gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
  --format="value(state,health)" 2>/dev/null || echo "node not present"
