"""`adaflow sample --selector <selector workdir>`: AdaDiff sampling, inputs grouped by step count.

    adaflow sample --selector runs/adadiff [--workdir <generator workdir>] [--num 64] [--out grid.png]

The selector workdir (trained with `adaflow train --config configs/quickstart_adadiff.py --init
<generator workdir>`) stores the generator's workdir in its config; `--workdir` overrides it.
Writes a PNG grid (rows = classes) and `<out>.json` with each image's label and step count.
"""
from __future__ import annotations

import os

from absl import flags
import jax
import numpy as np

from adaflow import storage
from adaflow.commands.common import FLAGS
from adaflow.models.step_selector import action_label
from adaflow.parallel.host import is_writer
from adaflow.train.images import save_grid
from adaflow.train.loop import config_of, load_trainer_and_params

flags.DEFINE_string("selector", None, "`sample`: a step-selector (AdaDiff) workdir; samples with per-input step counts.")


def sample_with_selector() -> dict:
  selector_dir = FLAGS.selector
  config = FLAGS.config if FLAGS.config is not None else config_of(selector_dir)
  if config.objective != "step_selector":
    raise ValueError(f"--selector {selector_dir}: its config.objective is {config.objective!r}, "
                     "expected 'step_selector' (train one with configs/quickstart_adadiff.py)")
  if FLAGS.workdir:
    config.selector.generator_workdir = storage.absolute(FLAGS.workdir)
  tr, params, step = load_trainer_and_params(selector_dir, config)
  obj = tr.objective
  k = max(obj.num_classes, 1)
  labels = np.sort((np.arange(FLAGS.num) % k).astype(np.int32))
  res = obj.sample_grouped(params, jax.random.PRNGKey(tr.config.seed), labels)
  out = FLAGS.out or os.path.join(selector_dir, "samples", f"adaptive_step_{step}.png")
  if not is_writer():   # every process sampled the same images; process 0 writes them
    return {}
  save_grid(np.clip(res["images"], -1, 1), out, rows=min(k, FLAGS.num), upscale=max(1, 64 // res["images"].shape[1]))
  counts = {action_label(a): int(np.sum(res["actions"] == i)) for i, a in enumerate(obj.actions)}
  summary = {"selector_step": int(step), "generator_workdir": config.selector.generator_workdir,
             "average_steps": float(np.mean(res["steps"])), "max_steps": obj.max_steps, "step_counts": counts,
             "labels": labels.tolist(), "steps": res["steps"].astype(int).tolist()}
  storage.write_json(os.path.splitext(out)[0] + ".json", summary, indent=1)
  print(f"wrote {out}; average steps {summary['average_steps']:.2f} of max {obj.max_steps}; counts {counts}")
  return summary
