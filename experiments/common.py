"""Helpers shared by the benchmark scripts: where the repository is, its configs, and where and when
a measurement was taken. Scripts run from the repository root as `python -m experiments.NAME`."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time

import jax
import numpy as np

from adaflow.config_defaults import load_config_file
from adaflow.parallel.precision import cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
RESULTS = os.path.join(ROOT, "experiments", "results")


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py's `get_config([arg])` (adaflow.config_defaults.load_config_file)."""
  return load_config_file(os.path.join(ROOT, "configs", f"{name}.py"), arg)


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def matmul_flags() -> str:
  """The CPU flags that decide bf16 vs fp32 matmul speed here (avx2 / avx512_bf16 / amx_bf16)."""
  have = cpu_flags()
  return " ".join(f for f in ("avx2", "avx512_bf16", "amx_bf16") if f in have) or "none of avx2/avx512_bf16/amx_bf16"


def machine_line() -> str:
  """One sentence naming the machine a benchmark ran on: accelerator (or CPU), core count, the
  matmul-relevant CPU flags, jax, and the load average when it was called (other jobs sharing the
  CPU distort timings)."""
  dev = jax.devices()[0]
  cpu = f"{os.cpu_count()}-core {platform.machine()} CPU (flags: {matmul_flags()})"
  if dev.platform == "cpu":
    where = f"{cpu}, no accelerator"
  else:
    where = f"{len(jax.devices())} x {dev.device_kind} ({dev.platform}) with a {cpu} host"
  try:
    load = ", load average {:.1f} / {:.1f} / {:.1f} (1 / 5 / 15 min) at the start".format(*os.getloadavg())
  except OSError:
    load = ""
  return f"{where}; jax {jax.__version__}, backend {jax.default_backend()}{load}"


def time_calls(fn, n: int) -> float:
  """Median seconds per call over n calls (fn blocks until its result is ready)."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def write_report(text: str, out: str | None) -> None:
  """Prints a benchmark's markdown report and writes it to `out` (when given)."""
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text)
    print(f"wrote {out}")


def git(*args: str) -> str:
  """`git ARGS` in the repository -> its stripped stdout."""
  return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def export_revision(rev: str, dest: str) -> None:
  """Writes the tree of `rev` into the existing folder `dest` (no .git; nothing in this checkout changes)."""
  archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, check=True, capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
