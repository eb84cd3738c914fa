#!/usr/bin/env bash
# Keep a spot run going: poll the queued resource; when it was preempted (SUSPENDED / FAILED),
# delete it, queue it again, reinstall, and relaunch the same command, which resumes from the
# latest complete checkpoint in the shared $WORKDIR. Stops when $DONE_FILE exists: by default
# $WORKDIR/train_complete.json, which `adaflow train` writes (process 0) only after the last step's
# checkpoint, the final samples and the evaluation, never on a preemption stop. Run it on a small
# always-on VM or in tmux.
set -uo pipefail
source "$(dirname "$0")/env.sh"
here="$(dirname "$0")"
POLL="${POLL:-120}"
DONE_FILE="${DONE_FILE:-$WORKDIR/train_complete.json}"
while true; do
  state=$(gcloud compute tpus queued-resources describe "${TPU_NAME}-qr" --project="$PROJECT" \
          --zone="$ZONE" --format="value(state.state)" 2>/dev/null || echo MISSING)
  case "$state" in
    ACTIVE)
      running=$(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=0 \
                --command="pgrep -f 'adaflow.cli train' >/dev/null && echo yes || echo no" 2>/dev/null)
      if [[ "$running" == "no" ]]; then
        if [[ "$DONE_FILE" == gs://* ]]; then
          finished=$(gcloud storage objects describe "$DONE_FILE" >/dev/null 2>&1 && echo yes || echo no)
        else
          finished=$(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=0 \
                     --command="test -e $DONE_FILE && echo yes || echo no" 2>/dev/null)
        fi
        if [[ "$finished" == "yes" ]]; then echo "run finished"; exit 0; fi
        echo "$(date -u) trainer not running on an ACTIVE slice: relaunching (resumes)"
        bash "$here/launch.sh" "$@"
      fi ;;
    SUSPENDED|FAILED|MISSING)
      echo "$(date -u) queued resource state $state: re-creating"
      gcloud compute tpus queued-resources delete "${TPU_NAME}-qr" --project="$PROJECT" --zone="$ZONE" \
        --force --quiet 2>/dev/null || true
      bash "$here/create.sh"
      until [[ "$(gcloud compute tpus queued-resources describe "${TPU_NAME}-qr" --project="$PROJECT" \
                 --zone="$ZONE" --format="value(state.state)")" == "ACTIVE" ]]; do sleep "$POLL"; done
      bash "$here/setup.sh" && bash "$here/launch.sh" "$@" ;;
    *) echo "$(date -u) state $state, waiting" ;;
  esac
  sleep "$POLL"
done
