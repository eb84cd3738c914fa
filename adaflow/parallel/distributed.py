"""Multi-process start-up: `jax.distributed.initialize` when the environment says there are
several processes (TPU pods are detected by JAX itself; elsewhere set ADAFLOW_COORDINATOR,
ADAFLOW_NUM_PROCESSES and ADAFLOW_PROCESS_ID, or SLURM's variables)."""
from __future__ import annotations

import os

import jax


def maybe_initialize_distributed() -> bool:
  """Initialises JAX's distributed runtime if configured; returns True if it did."""
  coord = os.environ.get("ADAFLOW_COORDINATOR")
  n = int(os.environ.get("ADAFLOW_NUM_PROCESSES", "1"))
  if coord and n > 1:
    jax.distributed.initialize(coordinator_address=coord, num_processes=n,
                               process_id=int(os.environ["ADAFLOW_PROCESS_ID"]))
    return True
  if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    jax.distributed.initialize()
    return True
  return False
