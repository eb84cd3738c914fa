"""`adaflow compose --config configs/quickstart_composed.py --workdir runs/composed`.

Trains the composed model with the resumable recipe of `adaflow.pipelines.recipe` (dense ->
PPFlow levels -> routing fine-tune -> grouped pruning -> step selector; each stage in its own
subdirectory with a DONE marker; rerun the same command to resume), then, with
`config.eval.at_end`, samples `eval.num_samples` class-balanced images with the composed sampler
(`adaflow.compose.sampler.ComposedSampler`) and writes FD / class accuracy / average steps /
analytic FLOPs per image to `<workdir>/eval.json`.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from adaflow import storage
from adaflow.commands.common import Command, need
from adaflow.compose.sampler import ComposedSampler
from adaflow.eval import evaluate_samples, get_classifier
from adaflow.eval.classifier import writable_cache_dir
from adaflow.flow.driver import balanced_labels
from adaflow.parallel.host import is_writer
from adaflow.pipelines.recipe import load_composed, run_recipe


def cmd_compose():
  """Train the composed model with the resumable recipe (all methods in one model)."""
  config, workdir = need("config"), need("workdir")
  # The final evaluation's cache is checked before the first stage: an unwritable one failed after them all.
  cache = writable_cache_dir(config, workdir) if config.eval.at_end else None
  run_recipe(config, workdir)
  if not config.eval.at_end:
    return
  # FD / class accuracy of the finished recipe's sampler (`c`: its config, rebuilt from the stored one).
  c, info, params, policy = load_composed(workdir)
  sampler = ComposedSampler(c, info, params, policy)
  labels = balanced_labels(int(config.eval.num_samples), info.num_classes)
  out = sampler.sample(jax.random.PRNGKey(int(config.eval.seed)), labels, batch_size=int(c.eval.batch_size))
  clf = get_classifier(c.data, cache, seed=int(c.eval.classifier_seed),
                       steps=int(c.eval.classifier_steps))
  res = evaluate_samples(clf, out["images"], labels)
  res.update(methods=list(sampler.spec.enabled), average_steps=float(np.mean(out["steps"])),
             flops_per_image=sampler.flops_per_image(out["actions"]))
  if not is_writer():
    return
  storage.write_json(os.path.join(workdir, "eval.json"), res, indent=2)
  print("composed eval: " + json.dumps(res))


COMMANDS = (Command("compose", cmd_compose),)
