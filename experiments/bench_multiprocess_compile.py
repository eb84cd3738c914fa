"""What a 2-process CLI run costs against 1 process, with JAX's persistent compilation cache empty and
warm, and why the cache does not help process 1 on CPU (tests/test_suite_time.md; issue #28).

1. `adaflow train --config tests/tiny_cli_config.py` (the multi-process tests' run: 4 steps, final grid
   and evaluation) as 2 processes x 1 CPU device and as 1 process x 2 devices, each first with an
   empty cache and then again with the cache the first run wrote; wall seconds and the CPU seconds
   of all its processes. Each run has a fresh workdir and classifier cache.
2. The eight parts of JAX's cache key (`jax._src.cache_key`) of one jitted sum over a 2-process
   mesh, hashed in each process: the parts that differ are why process 1 misses what process 0 wrote.

  python -m experiments.bench_multiprocess_compile --out experiments/results/multiprocess_compile.md
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

from experiments.common import ROOT, machine_line, utc_now, write_report

CONFIG = os.path.join(ROOT, "tests", "tiny_cli_config.py")

KEY_PROBE = r"""
import hashlib, sys
import jax
from jax._src import cache_key
parts = []
def log(hash_obj, name, hashfn):
  h = hashlib.sha256(); hashfn(h); parts.append((name, h.hexdigest()[:16]))
cache_key._log_cache_key_hash = log
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("d",))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), np.ones((1, 4), np.float32))
jax.jit(lambda a: (a * 3).sum())(x).block_until_ready()
for name, digest in parts:
  print(f"KEYPART\t{name}\t{digest}")
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(argvs_env, timeout=600):
  """Starts one process per (argv, env), waits for all -> (wall s, CPU s of all, outputs)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  procs = [subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for argv, env in argvs_env]
  outs = [p.communicate(timeout=timeout) for p in procs]
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  for p, (_, err) in zip(procs, outs):
    if p.returncode != 0:
      raise SystemExit(f"a process failed (exit {p.returncode}):\n{err[-3000:]}")
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return wall, cpu, outs


def base_env(**extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
  env.pop("XLA_FLAGS", None)
  return env


def train_run(processes: int, devices: int, workdir: str, cache: str):
  coord = f"127.0.0.1:{free_port()}"
  jobs = []
  for i in range(processes):
    env = base_env(JAX_NUM_CPU_DEVICES=str(devices), JAX_COMPILATION_CACHE_DIR=cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    if processes > 1:
      env.update(ADAFLOW_COORDINATOR=coord, ADAFLOW_NUM_PROCESSES=str(processes), ADAFLOW_PROCESS_ID=str(i))
    jobs.append(([sys.executable, "-m", "adaflow.cli", "train", f"--config={CONFIG}", f"--workdir={workdir}"], env))
  wall, cpu, _ = run_processes(jobs)
  return wall, cpu


def key_parts():
  coord = f"127.0.0.1:{free_port()}"
  jobs = [([sys.executable, "-c", KEY_PROBE, coord, str(i)], base_env(JAX_NUM_CPU_DEVICES="1")) for i in range(2)]
  _, _, outs = run_processes(jobs)
  return [[tuple(ln.split("\t")[1:]) for ln in out.splitlines() if ln.startswith("KEYPART")] for out, _ in outs]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=None)
  args = p.parse_args()
  header, started = machine_line(), utc_now()
  rows = []
  with tempfile.TemporaryDirectory(prefix="adaflow-mpc-") as tmp:
    for label, procs, devs in (("2 processes x 1 device", 2, 1), ("1 process x 2 devices", 1, 2)):
      cache = os.path.join(tmp, f"cache_{procs}")
      for state in ("empty", "written by the run above"):
        print(f"[multiprocess_compile] {label}, cache {state} ...", flush=True)
        wall, cpu = train_run(procs, devs, os.path.join(tmp, f"{procs}_{len(rows)}", "w"), cache)
        rows.append((label, state, wall, cpu))
    parts = key_parts()
  lines = ["# A 2-process CLI run against 1 process, and JAX's compilation cache on CPU", "",
           f"- {header}; {started}.", "- Command: `python -m experiments.bench_multiprocess_compile "
           + " ".join(sys.argv[1:]) + "`",
           f"- Each run: `adaflow train --config tests/tiny_cli_config.py` (4 steps, final grid, evaluation with its "
           "feature network trained in the run), fresh workdir, `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0`; "
           "CPU seconds are user + system of all its processes.", "",
           "| run | compilation cache | wall (s) | CPU s, all processes |", "|---|---|---:|---:|"]
  lines += [f"| {a} | {b} | {w:.1f} | {c:.1f} |" for a, b, w, c in rows]
  lines += ["", "Cache key of one jitted sum over a 2-process mesh (`jax._src.cache_key`), part by part:", "",
            "| part | process 0 | process 1 | same |", "|---|---|---|---|"]
  lines += [f"| {n0} | {h0} | {h1} | {'yes' if h0 == h1 else '**no**'} |" for (n0, h0), (_, h1) in zip(*parts)]
  write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
  main()
