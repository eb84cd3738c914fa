#!/usr/bin/env bash
# Delete the slice and its queued resource (checkpoints in the bucket stay).
set -euo pipefail
source "$(dirname "$0")/env.sh"
gcloud compute tpus queued-resources delete "${TPU_NAME}-qr" --project="$PROJECT" --zone="$ZONE" --force --quiet
