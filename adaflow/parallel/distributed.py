"""Multi-process start-up, once per command: `jax.distributed.initialize` when the environment
says there are several processes (or a TPU VM whose slice JAX can discover).

Sources, first match wins:
  * ADAFLOW_COORDINATOR (host:port), ADAFLOW_NUM_PROCESSES, ADAFLOW_PROCESS_ID (and optionally
    ADAFLOW_LOCAL_DEVICE_IDS="0,1"): any machine, e.g. CPU processes on one host. Checked here
    before JAX sees them, so a typo is an error naming the variable, not a hang.
  * a Cloud TPU VM (TPU chips on the PCI bus): `jax.distributed.initialize()` with no arguments,
    as MaxText does on every TPU host; JAX's own cluster detection finds the slice's coordinator,
    process count and id (GCE metadata server for plain TPU VMs, TPU_WORKER_HOSTNAMES on GKE).
    A single-host TPU VM becomes a 1-process "cluster", which changes nothing.
  * SLURM (SLURM_NTASKS > 1), Open MPI (OMPI_COMM_WORLD_SIZE > 1) and GKE-style
    TPU_WORKER_HOSTNAMES with several hosts: JAX's cluster detection again.
Anything else is a single process, with no distributed client.

On CPU, cross-process collectives use gloo (`jax_cpu_collectives_implementation`). The start-up
must run before anything touches the JAX backend (`jax.devices()`, creating arrays); the CLI
calls `initialize_runtime` before any command does.
"""
from __future__ import annotations

import glob
import os
import socket
import time
from typing import Optional

import jax

_GOOGLE_PCI_VENDOR = "0x1ae0"
DEFAULT_TIMEOUT_S = 300


def _env_int(name: str) -> Optional[int]:
  v = os.environ.get(name)
  if v in (None, ""):
    return None
  try:
    return int(v)
  except ValueError:
    raise ValueError(f"environment variable {name} must be an integer, got {v!r}") from None


def _tpu_chips_on_this_host() -> int:
  """Google TPU chips on the PCI bus (what JAX itself checks before asking the GCE metadata)."""
  n = 0
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor) as f:
        n += f.read().strip() == _GOOGLE_PCI_VENDOR
    except OSError:
      pass
  return n


def _parse_coordinator(coord: str) -> tuple[str, int]:
  host, sep, port = coord.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"ADAFLOW_COORDINATOR must be host:port (e.g. 10.0.0.2:8476), got {coord!r}")
  return host.strip("[]"), int(port)


def _wait_for_coordinator(coord: str, timeout_s: float) -> None:
  """Processes other than 0 check that the coordinator accepts connections before handing over to
  JAX, whose own failure after a timeout is a long gRPC trace."""
  host, port = _parse_coordinator(coord)
  deadline = time.time() + timeout_s
  last = None
  while time.time() < deadline:
    try:
      with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
        return
    except OSError as e:        # refused (process 0 not up yet), unresolvable, unreachable
      last = e
      time.sleep(0.5)
  raise ValueError(f"ADAFLOW_COORDINATOR={coord}: nothing accepted a connection there within "
                   f"{timeout_s:.0f} s ({type(last).__name__}: {last}); start process 0 (it hosts the "
                   f"coordinator) and check the address and port, or raise ADAFLOW_INIT_TIMEOUT")


def describe_environment() -> str:
  """Which start-up `initialize_runtime` would take here (for logs and errors)."""
  if os.environ.get("ADAFLOW_COORDINATOR"):
    return "ADAFLOW_* variables"
  if _tpu_chips_on_this_host():
    return "Cloud TPU VM (JAX cluster detection)"
  if (_env_int("SLURM_NTASKS") or 1) > 1:
    return "SLURM"
  if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return "Open MPI"
  if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "GKE TPU (TPU_WORKER_HOSTNAMES)"
  return "single process"


def initialize_runtime(timeout_s: Optional[int] = None) -> bool:
  """Initialises JAX's distributed runtime if the environment asks for it; returns True if it did.

  Idempotent (a second call does nothing). Wrong settings (missing or out-of-range process id,
  malformed or unreachable coordinator) raise ValueError naming the variable, before anything is
  compiled.
  """
  if jax.distributed.is_initialized():
    return True
  if timeout_s is None:
    timeout_s = _env_int("ADAFLOW_INIT_TIMEOUT") or DEFAULT_TIMEOUT_S
  coord = os.environ.get("ADAFLOW_COORDINATOR")
  n, pid = _env_int("ADAFLOW_NUM_PROCESSES"), _env_int("ADAFLOW_PROCESS_ID")
  if coord or n is not None or pid is not None:
    if not coord or n is None:
      raise ValueError("set ADAFLOW_COORDINATOR (host:port) and ADAFLOW_NUM_PROCESSES together (and "
                       f"ADAFLOW_PROCESS_ID on each process); got coordinator={coord!r}, processes={n!r}")
    _parse_coordinator(coord)
    if n < 1:
      raise ValueError(f"ADAFLOW_NUM_PROCESSES must be >= 1, got {n}")
    if n == 1:
      return False
    if pid is None or not 0 <= pid < n:
      raise ValueError(f"ADAFLOW_PROCESS_ID must be set to 0..{n - 1} on every process when "
                       f"ADAFLOW_COORDINATOR={coord} and ADAFLOW_NUM_PROCESSES={n}; got {pid!r}")
    local = os.environ.get("ADAFLOW_LOCAL_DEVICE_IDS")
    if pid != 0:
      _wait_for_coordinator(coord, timeout_s)
    # Only affects the CPU backend (harmless on GPU/TPU hosts): CPU processes need gloo to talk.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
      jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid,
                                 local_device_ids=[int(i) for i in local.split(",")] if local else None,
                                 initialization_timeout=timeout_s)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"distributed start-up failed for process {pid} of {n} at ADAFLOW_COORDINATOR="
                       f"{coord} within {timeout_s} s: {str(e).splitlines()[0][:300]}; check that all "
                       f"{n} processes were started with the same coordinator") from e
    return True
  how = describe_environment()
  if how == "single process":
    return False
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"distributed start-up ({how}) failed: {str(e).splitlines()[0][:300]}; set "
                     f"ADAFLOW_COORDINATOR / ADAFLOW_NUM_PROCESSES / ADAFLOW_PROCESS_ID to start "
                     f"explicitly") from e
  return True


# Words of the runtime errors a collective raises on a process whose peer died (killed, crashed,
# preempted without SIGTERM): gloo on CPU ("Connection reset by peer"), the coordination service
# ("heartbeat", "UNAVAILABLE"), NCCL / DCN transports ("remote process exited", "socket closed").
_LOST_PEER_WORDS = ("connection reset", "connection closed", "connection refused", "socket closed",
                    "broken pipe", "heartbeat", "unavailable", "remote process", "peer")


def lost_peer_message(e: BaseException) -> Optional[str]:
  """The one line for a collective that failed because another process stopped; None for anything
  else (a single process, another error: a bug keeps its traceback)."""
  if jax.process_count() == 1 or not isinstance(e, jax.errors.JaxRuntimeError):
    return None
  first = " ".join(str(e).strip().splitlines()[0].split())[:240] if str(e).strip() else type(e).__name__
  if not any(w in first.lower() for w in _LOST_PEER_WORDS):
    return None
  return (f"process {jax.process_index()} of {jax.process_count()} lost another process in a collective "
          f"({first}); restart all {jax.process_count()} processes with the same command: checkpoints "
          "saved so far are kept and training resumes from the latest")
