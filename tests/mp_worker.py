"""Subprocess entry point for the reliability / multi-process tests (a fresh JAX per process).

    python tests/mp_worker.py '<json spec>'

spec = {
  "devices": 2,                      # simulated CPU devices in this process (jax_num_cpu_devices)
  "distributed": {"coordinator": "127.0.0.1:PORT", "num_processes": 2, "process_id": 0} | null,
  "runs": [{"workdir": ..., "overrides": {...}, "copy_from": optional workdir copied first,
            "config": "tiny" (default) | "dqvae" | "selector", "generator": the selector's generator workdir}],
  "report_shardings": false,         # add per-leaf global/shard shapes of the last run's state
}
Runs `train` once per entry, in order, in this one process, and prints one JSON line (last line of
stdout): {"process_index", "process_count", "devices", "runs": [{"losses": [...], "steps": [...],
"param_sum", "final_step", "error"?}], "shardings"?}. Messages from `train` go to stderr.
"""
import json
import os
import shutil
import sys

SPEC = json.loads(sys.argv[1])
os.environ.pop("XLA_FLAGS", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from adaflow.parallel.precision import apply_xla_cpu_defaults  # noqa: E402

apply_xla_cpu_defaults()                     # as `adaflow train` does, before the backend starts

jax.config.update("jax_num_cpu_devices", int(SPEC.get("devices", 1)))
if SPEC.get("distributed"):
  d = SPEC["distributed"]
  os.environ.update(ADAFLOW_COORDINATOR=d["coordinator"], ADAFLOW_NUM_PROCESSES=str(d["num_processes"]),
                    ADAFLOW_PROCESS_ID=str(d["process_id"]), JAX_PLATFORMS="cpu")
  from adaflow.parallel.distributed import initialize_runtime
  assert initialize_runtime(timeout_s=60)    # the path `adaflow train` takes (gloo on CPU)

import numpy as np  # noqa: E402

from conftest import set_fields, tiny_config, tiny_dqvae_config, tiny_selector_config  # noqa: E402
from adaflow.train.loop import NonFiniteLossError, train  # noqa: E402
from adaflow.train.metrics_log import read_metrics  # noqa: E402


def metrics_by_step(workdir):
  """Last logged row per step (a run killed after logging step s re-logs s when resumed)."""
  rows = {}
  for r in read_metrics(workdir):
    rows[r["step"]] = r
  return [rows[s] for s in sorted(rows)]


def leaf_report(tree):
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not hasattr(x, "addressable_shards") or x.ndim == 0:
      continue
    shard = x.addressable_shards[0].data
    out.append({"path": jax.tree_util.keystr(path), "shape": list(x.shape), "shard": list(shard.shape),
                "spec": str(x.sharding.spec), "itemsize": x.dtype.itemsize})
  return out


def build_config(run):
  """The run's config: conftest's tiny DiT, DQ-VAE or step policy, then its dotted overrides."""
  kind = run.get("config", "tiny")
  base = {"tiny": tiny_config, "dqvae": tiny_dqvae_config,
          "selector": lambda: tiny_selector_config(generator_workdir=run["generator"])}[kind]()
  return set_fields(base, run["overrides"])


def log(msg):
  print(f"[p{jax.process_index()}] {msg}", file=sys.stderr, flush=True)


def main():
  results, state = [], None
  for run in SPEC["runs"]:
    if run.get("copy_from") and jax.process_index() == 0:
      shutil.copytree(run["copy_from"], run["workdir"])
    if run.get("copy_from") and jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("copy " + run["workdir"])
    config = build_config(run)
    res = {}
    try:
      state = train(config, run["workdir"], log=log)
      leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(jax.device_get(state.params))]
      res.update(param_sum=float(sum(x.sum() for x in leaves)), final_step=int(jax.device_get(state.step)),
                 finite=bool(all(np.isfinite(x).all() for x in leaves)))
    except NonFiniteLossError as e:
      res.update(error="nonfinite", step=e.step, last_checkpoint=e.last_checkpoint, message=str(e))
    rows = metrics_by_step(run["workdir"])
    res.update(losses=[r["loss"] for r in rows], steps=[r["step"] for r in rows],
               nonfinite=[r.get("nonfinite", 0.0) for r in rows])
    results.append(res)
  out = {"process_index": jax.process_index(), "process_count": jax.process_count(),
         "devices": jax.device_count(), "runs": results}
  if SPEC.get("report_shardings") and state is not None:
    out["shardings"] = {"params": leaf_report(state.params), "opt_state": leaf_report(state.opt_state)}
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
