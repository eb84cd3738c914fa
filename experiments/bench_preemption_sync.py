"""What does agreeing on a stop cost per step? `train.preemption_sync_every` on 2 real JAX processes.

    python -m experiments.bench_preemption_sync [--smoke] [--out experiments/results/preemption_sync.md]

With several processes, `PreemptionGuard.should_stop` all-gathers every process's stop flag
(`multihost_utils.process_allgather` of an int32 scalar) every `train.preemption_sync_every`
steps, so that a SIGTERM delivered to one host makes every host save the same step. Each
all-gather is a host round trip through the coordinator-connected collectives (gloo on CPU).
This script starts 2 processes on this machine (loopback coordinator, 1 CPU device each, as
tests/test_multiprocess.py does) and measures, in each:

1. the raw latency of that all-gather (median and p90 of `--calls` calls, after a warm-up), and
   its latency when issued right after dispatching a train step (as in the loop);
2. the loop's per-step host path (train step, one-step-behind NaN check, `should_stop` with a real
   orbax manager) with preemption_sync_every = 1, 10, 100: steps/s over blocks of `--block` steps,
   interleaved and repeated so that load drift hits all settings alike.

Writes experiments/results/preemption_sync.md. Worker mode (internal): `--worker '<json>'`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments.common import RESULTS, ROOT, machine_line, matmul_flags, utc_now, write_report

SYNC_EVERY = (1, 10, 100)
# name: config overrides on tests/conftest.py tiny_config (16x16 digits, float32).
MODELS = {
    "tiny (hidden 32, depth 2, batch 8)": {},
    "quickstart-like (hidden 128, depth 4, bf16, batch 64)": {
        "model.hidden_size": 128, "model.depth": 4, "model.num_heads": 4, "model.dtype": "bfloat16",
        "train.batch_size": 64},
}


def tiny_config(**overrides):
  """tests/conftest.py's `tiny_config`, loaded by path (tests/ is not a package)."""
  spec = importlib.util.spec_from_file_location("_adaflow_tests_conftest", os.path.join(ROOT, "tests", "conftest.py"))
  conftest = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(conftest)
  return conftest.tiny_config(**overrides)


# ----------------------------------------------------------------------------- worker (one process)


def worker(spec: dict) -> None:
  """One of the 2 processes; `run_two` starts it with its ADAFLOW_* / JAX_PLATFORMS environment."""
  import jax
  jax.config.update("jax_num_cpu_devices", 1)
  from adaflow.parallel.distributed import initialize_runtime
  assert initialize_runtime(timeout_s=60)     # the path `adaflow train` takes (gloo on CPU)
  # Each train() run jits the same step again: compile it once per process (own cache dir).
  jax.config.update("jax_compilation_cache_dir", os.path.join(spec["root"], f"jax_cache_{spec['process_id']}"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from jax.experimental import multihost_utils
  from adaflow.data import make_train_batches
  from adaflow.train import checkpoint as ckpt
  from adaflow.train.loop import PreemptionGuard, Trainer
  from adaflow.train.sharded_state import init_state

  # 1. Raw all-gather of the stop flag, exactly as PreemptionGuard.should_stop does it.
  flag = np.asarray(False, np.int32)
  for _ in range(20):
    multihost_utils.process_allgather(flag)
  times = []
  for _ in range(spec["calls"]):
    t0 = time.perf_counter()
    np.max(multihost_utils.process_allgather(flag))
    times.append(time.perf_counter() - t0)

  # 2. The loop's per-step host path with each sync_every, blocks interleaved and repeated.
  loop, probes = {}, {}
  for m, (name, over) in enumerate(MODELS.items()):
    if spec["smoke"] and m:
      break
    c = tiny_config(**{**over, "train.warmup_steps": 10})
    w = os.path.join(spec["root"], f"m{m}")
    tr = Trainer(c, w, log=lambda msg: None)
    manager = ckpt.make_manager(w, max_to_keep=1)   # should_stop also asks orbax for its sync point
    state = init_state(tr.objective, tr.tx, tr.mesh, tr.root_rng, tr.shardings)
    src = make_train_batches(c.data, global_batch_size=c.train.batch_size, seed=0,
                             process_index=jax.process_index(), process_count=jax.process_count())
    batches = [tr.global_batch(src[i]) for i in range(8)]   # prebuilt: only step + sync are timed
    step_fn = tr.jitted_step()
    done, k = 0, spec["block"]
    state, met = step_fn(state, batches[0])
    jax.block_until_ready(met)
    # The all-gather issued while a step is still running (as in the loop): does it wait for it?
    behind, alone = [], []
    for i in range(spec["probe"]):
      t0 = time.perf_counter()
      state, met = step_fn(state, batches[i % 8])
      t1 = time.perf_counter()
      np.max(multihost_utils.process_allgather(flag))
      t2 = time.perf_counter()
      jax.block_until_ready(met)
      t3 = time.perf_counter()
      behind.append(t2 - t1)
      alone.append(t3 - t0)
    loop[name] = {n: [] for n in SYNC_EVERY}
    probes[name] = {"allgather_behind_step_s": behind, "step_s": alone}
    for rep in range(spec["repeats"]):
      for n in SYNC_EVERY:
        guard, prev = PreemptionGuard(sync_every=n), None
        done = -(-done // 100) * 100                 # every block starts on a multiple of 100
        t0 = time.perf_counter()
        for i in range(k):
          state, met = step_fn(state, batches[i % 8])
          if prev is not None:
            float(jax.device_get(prev))              # the loop's one-step-behind NaN check
          prev = met["nonfinite"]
          done += 1
          assert not guard.should_stop(manager, done)
        float(jax.device_get(prev))
        loop[name][n].append(k / (time.perf_counter() - t0))
    manager.close()
  print(json.dumps({"process_index": jax.process_index(), "allgather_s": times, "loop": loop, "probes": probes}), flush=True)


# ----------------------------------------------------------------------------- driver


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two(spec: dict, timeout: float) -> list:
  coord = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, PYTHONUNBUFFERED="1", ADAFLOW_COORDINATOR=coord, ADAFLOW_NUM_PROCESSES="2",
             JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "-m", "experiments.bench_preemption_sync", "--worker",
                             json.dumps(dict(spec, coordinator=coord, process_id=i))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(env, ADAFLOW_PROCESS_ID=str(i)), cwd=ROOT)
           for i in range(2)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      if p.returncode != 0:
        raise RuntimeError(f"worker exited with {p.returncode}:\n{err[-3000:]}")
      outs.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_preemption_sync",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  ap.add_argument("--smoke", action="store_true", help="one model, one repeat: runs in well under a minute")
  ap.add_argument("--calls", type=int, default=300, help="timed all-gathers per process")
  ap.add_argument("--block", type=int, default=100, help="steps per timed block (a multiple of 100)")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  if args.worker:
    worker(json.loads(args.worker))
    return
  if args.smoke:
    args.calls, args.block, args.repeats = 50, 20, 1
  out = args.out or (None if args.smoke else os.path.join(RESULTS, "preemption_sync.md"))
  header = (f"Measured {utc_now()}: {machine_line()}; CPU flags: {matmul_flags()}. "
            "Command: `" + " ".join(["python", "-m", "experiments.bench_preemption_sync", *sys.argv[1:]]) + "`.")
  print(header, flush=True)
  spec = {"root": tempfile.mkdtemp(prefix="adaflow_bench_psync_"), "calls": args.calls,
          "block": args.block, "probe": 5 if args.smoke else 20, "repeats": args.repeats, "smoke": args.smoke}
  t0 = time.time()
  try:
    res = run_two(spec, timeout=3600)
  finally:
    shutil.rmtree(spec["root"], ignore_errors=True)   # workdirs and compilation caches
  print(f"workers done in {time.time() - t0:.0f} s", flush=True)

  ag = np.asarray(res[0]["allgather_s"] + res[1]["allgather_s"]) * 1e3
  ag_med, ag_p90 = float(np.median(ag)), float(np.percentile(ag, 90))
  loop = next(r["loop"] for r in res if r["process_index"] == 0)
  lines = [
      "# Cost of the multi-process stop-flag all-gather (`train.preemption_sync_every`)", "",
      header, "",
      "2 JAX processes on this machine, 1 CPU device each, loopback coordinator, gloo collectives "
      "(the setup of tests/test_multiprocess.py).", "",
      f"## Raw all-gather of the int32 stop flag (`multihost_utils.process_allgather`, {args.calls} calls "
      "per process after 20 warm-up calls, both processes pooled)", "",
      f"median {ag_med:.2f} ms, p90 {ag_p90:.2f} ms, min {float(ag.min()):.2f} ms per call.", "",
      "Issued right after dispatching a train step (as `should_stop` is in the loop), the all-gather "
      "waits for that step: it is a full host-device sync, which also empties the async dispatch "
      "queue. Medians over both processes:", "",
      "| model | train step ms (dispatch to ready) | all-gather ms issued behind the running step |",
      "|---|---|---|",
      *[f"| {name} | {1e3 * np.median(sum((r['probes'][name]['step_s'] for r in res), [])):.1f} | "
        f"{1e3 * np.median(sum((r['probes'][name]['allgather_behind_step_s'] for r in res), [])):.1f} |"
        for name in res[0]["probes"]], "",
      f"## The loop's per-step path, steps/s (median of {args.repeats} interleaved blocks of {args.block} "
      "steps per setting)", "",
      "Per step, as in `adaflow.train.loop.train`: the jitted train step (data parallel over the 2 "
      "processes, so gradients are all-reduced through gloo every step anyway), the one-step-behind "
      "NaN check (`device_get` of the previous step's flag), and `PreemptionGuard.should_stop` with a real "
      "orbax manager; batches are prebuilt so that input does not blur the comparison. 'Sync cost' = "
      "1/steps_per_s(sync_every=1) - 1/steps_per_s(sync_every=100), the measured price of all-gathering "
      "every step instead of every 100th.", "",
      "| model (16x16 digits) | " + " | ".join(f"sync_every={n}" for n in SYNC_EVERY)
      + " | step ms (sync_every=100) | sync cost ms / step at 1 | overhead at 1 | at 10 |",
      "|---|" + "---|" * (len(SYNC_EVERY) + 4),
  ]
  for name, per in loop.items():
    med = {int(n): float(np.median(v)) for n, v in per.items()}
    step_ms = 1e3 / med[SYNC_EVERY[-1]]
    cost = 1e3 / med[1] - step_ms
    lines.append(f"| {name} | " + " | ".join(f"{med[n]:.1f}" for n in SYNC_EVERY)
                 + f" | {step_ms:.1f} | {cost:.2f} | {cost / step_ms:.1%} | {(1e3 / med[10] - step_ms) / step_ms:.1%} |")
  lines += ["", "Blocks (steps/s): " + "; ".join(
      f"{name}: " + ", ".join(f"every {n}: {[round(x, 1) for x in v]}" for n, v in per.items())
      for name, per in loop.items()) + "."]
  text = "\n".join(lines) + "\n"
  write_report(text, out)


if __name__ == "__main__":
  main()
