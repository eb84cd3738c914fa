"""`adaflow train | sample | eval`; `sample` also covers AdaDiff (`--selector`) and DQ's coarse/fine map."""
from __future__ import annotations

import json
import os

from absl import flags
import jax
import numpy as np

from adaflow import storage
from adaflow.commands.common import FLAGS, Command, load_generator, need
from adaflow.eval.classifier import cache_dir
from adaflow.eval.generate import evaluate_generator
from adaflow.flow.driver import generate_images
from adaflow.flow.partition import EDGE_RULES
from adaflow.flow.samplers import METHODS
from adaflow.models import dqvae as dq
from adaflow.models.step_selector import action_label
from adaflow.parallel.host import is_writer
from adaflow.pipelines.grouped import run_grouped
from adaflow.train.images import check_image_path, save_grid
from adaflow.train.loop import config_of, load_params, load_trainer_and_params, train
from adaflow import methods

flags.DEFINE_string("init", None, "Initialise parameters from this workdir's latest checkpoint (fine-tuning).")
flags.DEFINE_string("tokenizer", None, "DQ-Transformer: the trained DQ-VAE workdir (sets config.tokenizer_workdir).")
flags.DEFINE_enum("method", None, list(METHODS), "`sample`: solver (overrides config.sample.method; `sde` also "
                  "reads --config.sample.diffusion_form / diffusion_norm).")
flags.DEFINE_integer("steps", None, "`sample`: number of solver steps (overrides config.sample.steps).", lower_bound=1)
flags.DEFINE_float("cfg", None, "`sample`: classifier-free guidance scale, 1 = none (overrides config.sample.cfg_scale).",
                   lower_bound=0.0)
flags.DEFINE_enum("edges", None, list(EDGE_RULES), "`sample`: how the time grid meets PPFlow stage / timestep group / "
                  "routing region edges (overrides config.sample.edges): snap = the requested steps, grid points "
                  "moved onto the edges; insert = every edge added as a step; cross = uniform grid.")
flags.DEFINE_string("selector", None, "`sample`: a step-selector (AdaDiff) workdir; samples with per-input step "
                    "counts.")


def cmd_train():
  """Train a model (resumes from the latest checkpoint in --workdir)."""
  config = need("config")
  if config.grouped.enabled:  # train-then-prune: stage 1, pruning, stage 2 (adaflow/pipelines/grouped.py)
    run_grouped(config, need("workdir"))
    return
  if FLAGS.tokenizer:  # DQ-Transformer: resuming and `adaflow sample` find it in the config (gs:// stays as is)
    with config.unlocked():
      config.tokenizer_workdir = storage.absolute(FLAGS.tokenizer)
  # The objective may consume --init itself (e.g. step_selector: the frozen generator's workdir).
  if FLAGS.init and methods.uses_init_workdir(config, FLAGS.init):
    init = None
  else:
    init = load_params(FLAGS.init) if FLAGS.init else None
  train(config, need("workdir"), init_params=init)


def cmd_sample():
  """Write a grid of samples from a trained workdir (EMA parameters, config.sample)."""
  if FLAGS.selector:  # AdaDiff: per-input step counts (sample_with_selector below)
    return sample_with_selector()
  generator, params, config, _, mesh, step = load_generator(need("workdir"), FLAGS.config)
  solver_flags = [f"--{f}" for f in ("method", "steps", "cfg", "edges") if FLAGS[f].value is not None]
  if solver_flags and not generator.uses_solver_settings:   # they would be ignored
    how = generator.sampling_record(0, "", 0.0)["sample_method"]
    raise ValueError(f"{' '.join(solver_flags)}: a {config.objective!r} run samples its own way ({how}), not "
                     f"with the flow solver's steps / method / CFG scale; drop {' '.join(solver_flags)}")
  s = config.sample
  method = FLAGS.method or s.method
  steps = s.steps if FLAGS.steps is None else FLAGS.steps
  cfg_scale = s.cfg_scale if FLAGS.cfg is None else FLAGS.cfg
  if steps < 1 or cfg_scale < 0:
    raise ValueError(f"--steps must be >= 1 and --cfg >= 0 (1 = no guidance), got --steps={steps} --cfg={cfg_scale}")
  if FLAGS.edges:
    generator.config.sample.edges = FLAGS.edges     # read when the sampler is traced, below
  out = FLAGS.out or os.path.join(FLAGS.workdir, "samples", f"cli_step_{step}.png")
  check_image_path(out, "--out" if FLAGS.out else "--workdir")
  k = max(generator.num_classes, 1)
  labels = np.sort((np.arange(FLAGS.num) % k).astype(np.int32))
  imgs = generate_images(generator, params, mesh, jax.random.PRNGKey(config.seed), labels,
                         steps=steps, method=method, cfg_scale=cfg_scale)
  if is_writer():     # every process generated all images; one writes them
    save_grid(np.clip(imgs, -1, 1), out, rows=min(k, FLAGS.num) if generator.num_classes else 0,
              upscale=max(1, 64 // imgs.shape[1]))
    print(f"wrote {out}")
  # DQ: coarse/fine map picture (sample_map below); a DQ run's generator is its objective.
  if generator.has_maps:
    path = sample_map(generator, params, labels, config.seed, out)
    if is_writer():
      print(f"wrote {path}")


def cmd_eval():
  """FD and class accuracy of a trained workdir (`adaflow eval fid`: Inception FID)."""
  objective, params, config, _, mesh, step = load_generator(need("workdir"), FLAGS.config)
  # get_classifier refuses an unwritable cache before it trains a network; one that already holds the
  # network is read, writable or not.
  result = evaluate_generator(objective, params, config, mesh, cache_dir(config, FLAGS.workdir))
  result["step"] = step
  if is_writer():
    print(json.dumps(result, indent=2))


def sample_with_selector() -> dict:
  """`adaflow sample --selector <selector workdir>`: AdaDiff sampling, inputs grouped by step count.

    adaflow sample --selector runs/adadiff [--workdir <generator workdir>] [--num 64] [--out grid.png]

  The selector workdir (trained with `adaflow train --config configs/quickstart_adadiff.py --init
  <generator workdir>`) stores the generator's workdir in its config; `--workdir` overrides it.
  Writes a PNG grid (rows = classes) and `<out>.json` with each image's label and step count.
  """
  selector_dir = FLAGS.selector
  config = FLAGS.config if FLAGS.config is not None else config_of(selector_dir)
  if config.objective != "step_selector":
    raise ValueError(f"--selector {selector_dir}: its config.objective is {config.objective!r}, "
                     "expected 'step_selector' (train one with configs/quickstart_adadiff.py)")
  if FLAGS.workdir:   # another generator: its latest checkpoint, not the step the policy was trained on
    config.selector.generator_workdir = storage.absolute(FLAGS.workdir)
    config.selector.generator_step = -1
  tr, params, step = load_trainer_and_params(selector_dir, config)
  out = FLAGS.out or os.path.join(selector_dir, "samples", f"adaptive_step_{step}.png")
  check_image_path(out, "--out" if FLAGS.out else "--selector")
  obj = tr.objective
  k = max(obj.num_classes, 1)
  labels = np.sort((np.arange(FLAGS.num) % k).astype(np.int32))
  res = obj.sample_grouped(params, jax.random.PRNGKey(tr.config.seed), labels)
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


def sample_map(objective, params, labels, seed: int, out: str) -> str:
  """DQ: writes `<out minus .png>_map.png`: rows of images and their coarse/fine maps (red = fine
  region with 4 codes, blue = coarse region with 1 code). Returns the path."""
  labels = np.asarray(labels[:16], np.int32)
  imgs, mask, extra = objective.images_and_maps(params, jax.random.PRNGKey(seed), labels)
  base = extra if extra is not None else imgs    # the map is drawn over the input when there is one
  maps = dq.render_granularity(np.clip(base, -1, 1), mask, objective.layout.coarse_stride)
  rows = [r for r in (extra, np.clip(imgs, -1, 1), maps) if r is not None]
  path = os.path.splitext(out)[0] + "_map.png"
  grid = np.concatenate([np.repeat(r, 3, -1) if r.shape[-1] == 1 else r for r in rows])
  if is_writer():
    save_grid(grid, path, rows=len(rows), upscale=max(1, 64 // imgs.shape[1]))
  return path


COMMANDS = (Command("train", cmd_train, ("config", "workdir", "init", "tokenizer")),
            Command("sample", cmd_sample, ("config", "workdir", "num", "out", "method", "steps", "cfg", "edges",
                                           "selector")),
            Command("eval", cmd_eval))
