"""Multi-process start-up: `jax.distributed.initialize` when the environment says there are
several processes.

Sources, first match wins:
  * arguments / ADAFLOW_COORDINATOR (host:port), ADAFLOW_NUM_PROCESSES, ADAFLOW_PROCESS_ID
    (and optionally ADAFLOW_LOCAL_DEVICE_IDS="0,1"): any machine, e.g. CPU processes on one host;
  * TPU pod slices (TPU_WORKER_HOSTNAMES with more than one host) and SLURM jobs with
    SLURM_NTASKS > 1: JAX detects coordinator, process count and id itself.
On CPU, cross-process collectives use gloo (`jax_cpu_collectives_implementation`). Call this
before anything touches the JAX backend (`jax.devices()`, creating arrays).
"""
from __future__ import annotations

import os
from typing import Optional

import jax


def _env_int(name: str) -> Optional[int]:
  v = os.environ.get(name)
  if v in (None, ""):
    return None
  try:
    return int(v)
  except ValueError:
    raise ValueError(f"environment variable {name} must be an integer, got {v!r}") from None


def maybe_initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None, timeout_s: int = 300) -> bool:
  """Initialises JAX's distributed runtime if configured; returns True if it did.

  Raises ValueError when a coordinator is given but the process count or id is missing or out of
  range (instead of hanging at the rendezvous).
  """
  coord = coordinator or os.environ.get("ADAFLOW_COORDINATOR")
  n = num_processes if num_processes is not None else _env_int("ADAFLOW_NUM_PROCESSES")
  pid = process_id if process_id is not None else _env_int("ADAFLOW_PROCESS_ID")
  if coord and (n or 1) > 1:
    if pid is None or not 0 <= pid < n:
      raise ValueError(f"ADAFLOW_PROCESS_ID must be set to 0..{n - 1} on every process when "
                       f"ADAFLOW_COORDINATOR={coord} and ADAFLOW_NUM_PROCESSES={n}; got {pid!r}")
    local = os.environ.get("ADAFLOW_LOCAL_DEVICE_IDS")
    # Only affects the CPU backend (harmless on GPU/TPU hosts): CPU processes need gloo to talk.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid,
                               local_device_ids=[int(i) for i in local.split(",")] if local else None,
                               initialization_timeout=timeout_s)
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h]) > 1 or (_env_int("SLURM_NTASKS") or 1) > 1:
    jax.distributed.initialize(initialization_timeout=timeout_s)
    return True
  return False
