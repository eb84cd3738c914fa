#!/usr/bin/env bash
# Install adaflow (+ jax[tpu]) on ALL workers of the slice and mount the shared bucket.
set -euo pipefail
source "$(dirname "$0")/env.sh"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$1"
}
if [[ -n "$REPO_URL" ]]; then
  ssh_all "rm -rf ~/$REMOTE_DIR && git clone --depth 1 $REPO_URL ~/$REMOTE_DIR"
else
  tarball=$(mktemp /tmp/adaflow-XXXX.tar.gz)
  git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$tarball" HEAD
  gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:~/adaflow.tar.gz" \
    --project="$PROJECT" --zone="$ZONE" --worker=all
  ssh_all "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/adaflow.tar.gz -C ~/$REMOTE_DIR"
fi
ssh_all "cd ~/$REMOTE_DIR && python3 -m pip install -U pip && python3 -m pip install 'jax[tpu]' -e ."
if [[ -n "$BUCKET" ]]; then
  # gcsfuse gives every worker the same /gcs path for the workdir (checkpoints, logs, samples).
  ssh_all "command -v gcsfuse >/dev/null || (export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s) && \
    echo \"deb https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list && \
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && \
    sudo apt-get update -q && sudo apt-get install -y -q gcsfuse); \
    sudo mkdir -p /gcs && sudo chown \$USER /gcs && (mountpoint -q /gcs || gcsfuse --implicit-dirs $BUCKET /gcs)"
fi
ssh_all "python3 -c 'import jax; print(jax.process_index(), jax.process_count(), jax.device_count())'"
