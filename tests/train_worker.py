"""Subprocess entry point for tests that need a fresh JAX (simulated device counts, kills).

python tests/train_worker.py <workdir> <json overrides> [num_cpu_devices]
Prints one JSON line: {"losses": [...], "param_sum": float, "param_abs": float, "devices": n}.
"""
import json
import os
import sys

if len(sys.argv) > 3:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(sys.argv[3])}"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from adaflow.parallel.precision import apply_xla_cpu_defaults  # noqa: E402

apply_xla_cpu_defaults()                     # as `adaflow train` does, before the backend starts

from conftest import tiny_config  # noqa: E402
from adaflow.train.loop import train  # noqa: E402
from adaflow.train.metrics_log import read_metrics  # noqa: E402


def main():
  workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
  config = tiny_config(**overrides)
  state = train(config, workdir, log=lambda m: None)
  params = jax.device_get(state.params)
  leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
  print(json.dumps({
      "losses": [r["loss"] for r in read_metrics(workdir)],
      "param_sum": float(sum(x.sum() for x in leaves)),
      "param_abs": float(sum(np.abs(x).sum() for x in leaves)),
      "devices": jax.device_count(),
  }))


if __name__ == "__main__":
  main()
