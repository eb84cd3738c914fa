# Shared settings for the tpu/*.sh recipes. Override any of them in the environment, e.g.
#   TPU_NAME=my-pod ACCELERATOR=v5p-32 ZONE=us-east5-a bash tpu/create.sh
# Recipes only: these scripts were NOT run from this repository's CI (no TPU access there).
export PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
export TPU_NAME="${TPU_NAME:-adaflow-pod}"
export ZONE="${ZONE:-us-central2-b}"              # v4: us-central2-b | v5e: us-west4-a | v5p: us-east5-a
export ACCELERATOR="${ACCELERATOR:-v4-32}"        # v4-32 (4 hosts) | v5litepod-16 (4 hosts) | v5p-16 (2 hosts)
# Runtime image per generation: v4 -> tpu-ubuntu2204-base, v5e -> v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5
export RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
export SPOT="${SPOT:-1}"                          # 1: spot capacity (cheap, preemptible), 0: on-demand
export REPO_URL="${REPO_URL:-}"                   # git URL of adaflow; empty: copy this checkout with scp
export REMOTE_DIR="${REMOTE_DIR:-adaflow}"        # checkout path on every worker (relative to $HOME)
# The workdir must be the SAME storage for every worker (orbax writes one checkpoint from all
# hosts): a gs:// bucket (adaflow writes everything there through etils.epath + gcsfs), or an
# NFS/Filestore path mounted on every worker.
export BUCKET="${BUCKET:-}"                        # a GCS bucket the TPU VMs' service account can write
export WORKDIR="${WORKDIR:-${BUCKET:+gs://$BUCKET/runs/$TPU_NAME}}"
export CONFIG="${CONFIG:-configs/quickstart.py}"
export LOG="${LOG:-\$HOME/adaflow-train.log}"     # per-worker log file (expanded on the worker)
