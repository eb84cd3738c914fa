#!/usr/bin/env bash
# One-GPU benchmark (issue 18): DiT-B/2 and DiT-XL/2 at 256 tokens, bf16, adaflow vs diffusers DiT
# (eager autocast and torch.compile): train img/s, MFU, peak memory -> experiments/results/gpu.md.
# Budget: < 8 minutes on one H100/H200-class GPU (each contender is capped by --timeout).
#   bash experiments/bench_gpu.sh            # on the GPU machine
#   bash experiments/bench_gpu.sh --smoke    # CPU, tiny model, seconds (tests/test_bench_gpu.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec timeout 475 python -m experiments.bench_gpu --timeout 150 --budget 440 "$@"
