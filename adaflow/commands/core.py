"""`adaflow train | sample | eval`."""
from __future__ import annotations

import json
import os

from absl import flags
import jax
import numpy as np

from adaflow import storage
from adaflow.commands.adadiff import sample_with_selector
from adaflow.commands.common import FLAGS, Command, need
from adaflow.commands.dq import sample_map
from adaflow.eval.classifier import cache_dir
from adaflow.eval.generate import evaluate_generator
from adaflow.flow.driver import generate_images
from adaflow.flow.partition import EDGE_RULES
from adaflow.flow.samplers import METHODS
from adaflow.parallel import make_mesh
from adaflow.parallel.host import is_writer
from adaflow.parallel.precision import describe_compute_dtype
from adaflow.pipelines.grouped import is_grouped_workdir, load_grouped, run_grouped
from adaflow.train.images import save_grid
from adaflow.train.loop import load_params, load_trainer_and_params, train
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
  if FLAGS.selector:  # AdaDiff: per-input step counts (adaflow/commands/adadiff.py)
    return sample_with_selector()
  generator, params, config, mesh, step = _load_generator(need("workdir"))
  s = config.sample
  method = FLAGS.method or s.method
  steps = s.steps if FLAGS.steps is None else FLAGS.steps
  cfg_scale = s.cfg_scale if FLAGS.cfg is None else FLAGS.cfg
  if steps < 1 or cfg_scale < 0:
    raise ValueError(f"--steps must be >= 1 and --cfg >= 0 (1 = no guidance), got --steps={steps} --cfg={cfg_scale}")
  if FLAGS.edges:
    if not hasattr(generator, "sampling_grid"):
      raise ValueError(f"--edges: {config.objective!r} runs sample without time partitions; drop --edges")
    generator.config.sample.edges = FLAGS.edges     # read when the sampler is traced, below
  k = max(generator.num_classes, 1)
  labels = np.sort((np.arange(FLAGS.num) % k).astype(np.int32))
  imgs = generate_images(generator, params, mesh, jax.random.PRNGKey(config.seed), labels,
                         steps=steps, method=method, cfg_scale=cfg_scale)
  out = FLAGS.out or os.path.join(FLAGS.workdir, "samples", f"cli_step_{step}.png")
  if is_writer():     # every process generated all images; one writes them
    save_grid(np.clip(imgs, -1, 1), out, rows=min(k, FLAGS.num) if generator.num_classes else 0,
              upscale=max(1, 64 // imgs.shape[1]))
    print(f"wrote {out}")
  # DQ: coarse/fine map picture (adaflow/commands/dq.py); a DQ run's generator is its objective.
  if generator.has_maps:
    path = sample_map(generator, params, labels, config.seed, out)
    if is_writer():
      print(f"wrote {path}")


def cmd_eval():
  """FD and class accuracy of a trained workdir (`adaflow eval fid`: Inception FID)."""
  objective, params, config, mesh, step = _load_generator(need("workdir"))
  result = evaluate_generator(objective, params, config, mesh, cache_dir(config, FLAGS.workdir))
  result["step"] = step
  if is_writer():
    print(json.dumps(result, indent=2))


def _load_generator(workdir: str):
  """(generator, params, config, mesh, step) of a training workdir (the run's objective's
  generator: the composed one for the DiT family) or a train-then-prune workdir (stage1/ + prune/ +
  group_i/: the composed generator with timestep groups, each group's fine-tuned sub-model)."""
  if is_grouped_workdir(workdir):
    generator, params, config = load_grouped(workdir, FLAGS.config)
    if is_writer():
      print(describe_compute_dtype(config.model))
    return generator, params, config, make_mesh(config.mesh), "grouped"
  tr, params, step = load_trainer_and_params(workdir, FLAGS.config)
  if is_writer():
    print(describe_compute_dtype(tr.config.model))
  return tr.generator(), params, tr.config, tr.mesh, step


COMMANDS = (Command("train", cmd_train, ("config", "workdir", "init", "tokenizer")),
            Command("sample", cmd_sample, ("config", "workdir", "num", "out", "method", "steps", "cfg", "edges",
                                           "selector")),
            Command("eval", cmd_eval))
