"""One distributed start-up for every command (`adaflow.parallel.distributed.initialize_runtime`):
which environments start JAX's distributed runtime, and clear errors instead of hangs."""
import socket
import time

import jax
import pytest

from adaflow.parallel import distributed as dist

ENV = ("ADAFLOW_COORDINATOR", "ADAFLOW_NUM_PROCESSES", "ADAFLOW_PROCESS_ID", "ADAFLOW_LOCAL_DEVICE_IDS",
       "ADAFLOW_INIT_TIMEOUT", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


@pytest.fixture
def calls(monkeypatch):
  """Records jax.distributed.initialize calls instead of starting a runtime; clean environment."""
  for name in ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(dist, "_tpu_chips_on_this_host", lambda: 0)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  seen = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
  return seen


def test_single_host_is_untouched(calls):
  assert dist.describe_environment() == "single process"
  assert dist.initialize_runtime() is False and calls == []


def test_tpu_vm_uses_jax_cluster_detection(calls, monkeypatch):
  monkeypatch.setattr(dist, "_tpu_chips_on_this_host", lambda: 4)
  assert dist.initialize_runtime() is True
  assert len(calls) == 1 and "coordinator_address" not in calls[0]   # JAX finds the slice itself


@pytest.mark.parametrize("name,value,how", [("SLURM_NTASKS", "8", "SLURM"), ("OMPI_COMM_WORLD_SIZE", "2", "Open MPI"),
                                            ("TPU_WORKER_HOSTNAMES", "h0,h1", "GKE TPU (TPU_WORKER_HOSTNAMES)")])
def test_cluster_managers_use_jax_cluster_detection(calls, monkeypatch, name, value, how):
  monkeypatch.setenv(name, value)
  assert dist.describe_environment() == how
  assert dist.initialize_runtime() is True and "coordinator_address" not in calls[0]


def test_explicit_variables(calls, monkeypatch):
  monkeypatch.setenv("ADAFLOW_COORDINATOR", "127.0.0.1:1234")
  monkeypatch.setenv("ADAFLOW_NUM_PROCESSES", "2")
  monkeypatch.setenv("ADAFLOW_PROCESS_ID", "0")
  monkeypatch.setenv("SLURM_NTASKS", "8")       # explicit settings win over a detected cluster
  assert dist.initialize_runtime() is True
  assert calls[0]["coordinator_address"] == "127.0.0.1:1234" and calls[0]["num_processes"] == 2
  assert calls[0]["process_id"] == 0


@pytest.mark.parametrize("env,match", [
    ({"ADAFLOW_COORDINATOR": "127.0.0.1:1234", "ADAFLOW_NUM_PROCESSES": "2", "ADAFLOW_PROCESS_ID": "2"},
     "ADAFLOW_PROCESS_ID must be set to 0..1"),
    ({"ADAFLOW_COORDINATOR": "127.0.0.1:1234", "ADAFLOW_NUM_PROCESSES": "2"}, "ADAFLOW_PROCESS_ID must be set"),
    ({"ADAFLOW_COORDINATOR": "localhost", "ADAFLOW_NUM_PROCESSES": "2", "ADAFLOW_PROCESS_ID": "0"},
     "ADAFLOW_COORDINATOR must be host:port"),
    ({"ADAFLOW_NUM_PROCESSES": "2", "ADAFLOW_PROCESS_ID": "1"}, "set ADAFLOW_COORDINATOR"),
    ({"ADAFLOW_COORDINATOR": "127.0.0.1:1234", "ADAFLOW_NUM_PROCESSES": "two"}, "ADAFLOW_NUM_PROCESSES must be an integer"),
])
def test_wrong_settings_are_clear_errors(calls, monkeypatch, env, match):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  with pytest.raises(ValueError, match=match):
    dist.initialize_runtime()
  assert calls == []                           # nothing was started


def test_unreachable_coordinator_is_an_error_not_a_hang(calls, monkeypatch):
  with socket.socket() as s:                   # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  monkeypatch.setenv("ADAFLOW_COORDINATOR", f"127.0.0.1:{port}")
  monkeypatch.setenv("ADAFLOW_NUM_PROCESSES", "2")
  monkeypatch.setenv("ADAFLOW_PROCESS_ID", "1")
  monkeypatch.setenv("ADAFLOW_INIT_TIMEOUT", "2")
  t0 = time.time()
  with pytest.raises(ValueError, match="nothing accepted a connection there within 2 s"):
    dist.initialize_runtime()
  assert time.time() - t0 < 30 and calls == []
