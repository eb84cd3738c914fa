"""Helpers shared by the benchmark scripts: where and when a measurement was taken."""
from __future__ import annotations

import datetime
import os
import platform
import time

import jax
import numpy as np


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine_line() -> str:
  """One sentence naming the machine a benchmark ran on: accelerator (or CPU), core count, jax,
  and the load average when it was called (other jobs sharing the CPU distort timings)."""
  dev = jax.devices()[0]
  cpu = f"{os.cpu_count()}-core {platform.machine()} CPU"
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
