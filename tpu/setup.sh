#!/usr/bin/env bash
# Install adaflow (+ jax[tpu] at the JAX version of constraints.txt, + gcsfs for gs:// workdirs) on
# ALL workers of the slice, with the same pinned versions the test suite ran with.
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
# jax[tpu] must be the JAX the constraints pin (the CPU tests ran with it); libtpu comes with it.
jax_version=$(grep -E '^jax==' "$(dirname "$0")/../constraints.txt" | cut -d= -f3)
ssh_all "cd ~/$REMOTE_DIR && python3 -m pip install -U pip && \
  python3 -m pip install -c constraints.txt 'jax[tpu]==$jax_version' -e '.[gcs]'"
ssh_all "python3 -c 'import jax; print(jax.process_index(), jax.process_count(), jax.device_count())'"
