"""The training loop, written once for every objective.

    validate config -> dataset info -> objective -> mesh -> sharded state (restore or init)
    for step in [start, steps): batch = data[step] -> jitted step -> log / checkpoint / samples
    final checkpoint, sample grid, evaluation

Resuming: the latest readable checkpoint in `<workdir>/checkpoints` is restored automatically.
The input position is the step itself (batches are a pure function of the step), so a resumed
run sees exactly the batches and random keys of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from adaflow import config as config_lib
from adaflow import data as data_lib
from adaflow.objectives import build_objective
from adaflow.parallel import batch_sharding, make_mesh, replicated
from adaflow.train import checkpoint as ckpt
from adaflow.train.evaluate import balanced_labels, evaluate_generator, generate_images
from adaflow.train.images import save_grid
from adaflow.train.metrics_log import MetricWriter
from adaflow.train.optim import learning_rate_schedule, make_optimizer
from adaflow.train.sharded_state import init_state, state_shardings
from adaflow.train.step import make_train_step


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(f"[adaflow] {msg}")


def cache_dir(config, workdir: str) -> str:
  """Where the evaluation classifier is cached (`eval.cache_dir`, default `<workdir>/../.adaflow_cache`)."""
  d = config.eval.get("cache_dir") or os.environ.get("ADAFLOW_CACHE") or os.path.join(
      os.path.dirname(os.path.abspath(workdir)), ".adaflow_cache")
  return d


class Trainer:
  """Holds what a run needs: config, dataset info, objective, mesh, optimizer and shardings."""

  def __init__(self, config, workdir: str, log=_log):
    self.config, self.workdir, self.log = config, workdir, log
    config_lib.validate(config)
    self.info = data_lib.get_info(config.data)
    config_lib.validate(config, self.info, num_devices=jax.device_count(), num_processes=jax.process_count())
    self.objective = build_objective(config, self.info)
    self.mesh = make_mesh(config.mesh)
    self.tx = make_optimizer(config.train)
    self.lr_schedule = learning_rate_schedule(config.train)
    self.root_rng = jax.random.PRNGKey(config.seed)
    self.abstract_state, self.shardings = state_shardings(self.objective, self.tx, self.mesh, self.root_rng)
    self.batch_sharding = batch_sharding(self.mesh)

  def initial_state(self, manager, init_params: Optional[Any] = None):
    """Latest checkpoint if the workdir has one, else a fresh (or `init_params`) state."""
    abstract = ckpt.abstract_with_shardings(self.abstract_state, self.shardings)
    state, meta, step = ckpt.restore_latest(manager, abstract, log=self.log)
    if state is not None:
      self.log(f"resumed from {ckpt.checkpoint_dir(self.workdir)}/{step}")
      return state
    if init_params is not None and hasattr(self.objective, "merge_init_params"):
      init_params = self.objective.merge_init_params(init_params, self.root_rng)  # e.g. add routers
    return init_state(self.objective, self.tx, self.mesh, self.root_rng, self.shardings, params=init_params)

  def jitted_step(self):
    step = make_train_step(self.objective, self.tx, self.config.train.ema_decay, self.lr_schedule)
    return jax.jit(step, in_shardings=(self.shardings, self.batch_sharding),
                   out_shardings=(self.shardings, replicated(self.mesh)), donate_argnums=(0,))

  def global_batch(self, local: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v)) for k, v in local.items()}

  def sample_grid(self, params, step: int) -> str:
    s = self.config.sample
    per_class = int(self.config.train.get("grid_per_class", 8))
    k = max(self.objective.num_classes, 1)
    labels = np.repeat(np.arange(k, dtype=np.int32), per_class)
    imgs = generate_images(self.objective, params, self.mesh, jax.random.PRNGKey(7), labels, steps=s.steps,
                           method=s.method, cfg_scale=s.cfg_scale, batch_size=len(labels))
    path = os.path.join(self.workdir, "samples", f"step_{step:07d}.png")
    if jax.process_index() == 0:
      save_grid(np.clip(imgs, -1, 1), path, rows=k, upscale=max(1, 64 // self.info.image_shape[0]))
    return path

  def meta(self) -> dict:
    return {"config": json.loads(self.config.to_json_best_effort()), "image_shape": list(self.info.image_shape),
            "num_classes": self.info.num_classes}


def train(config, workdir: str, init_params: Optional[Any] = None, log=_log) -> Any:
  """Runs (or resumes) training to `config.train.steps`; returns the final TrainState."""
  tr = Trainer(config, workdir, log)
  tc = config.train
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  manager = ckpt.make_manager(workdir, max_to_keep=tc.get("keep_checkpoints", 3))
  state = tr.initial_state(manager, init_params)
  start = int(jax.device_get(state.step))
  batches = data_lib.make_train_batches(config.data, global_batch_size=tc.batch_size, seed=config.seed,
                                        process_index=jax.process_index(), process_count=jax.process_count())
  step_fn = tr.jitted_step()
  writer = MetricWriter(workdir)
  n_params = config_lib.num_params(state.params)
  log(f"{config.get('name', 'run')}: {tr.info.image_shape} {tr.info.num_classes} classes, "
      f"{n_params / 1e6:.2f}M params, mesh {dict(tr.mesh.shape)}, steps {start} -> {tc.steps}")

  pbar = tqdm(total=tc.steps, initial=start, disable=jax.process_index() != 0, dynamic_ncols=True,
              desc="train", mininterval=1.0)
  pending, t_last, n_last = [], time.time(), start
  for step in range(start, tc.steps):
    state, metrics = step_fn(state, tr.global_batch(batches[step]))
    pending.append(metrics)
    done = step + 1
    if done % tc.log_every == 0 or done == tc.steps:
      host = jax.device_get(pending)
      mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      now = time.time()
      mean["images_per_second"] = (done - n_last) * tc.batch_size / max(now - t_last, 1e-9)
      t_last, n_last, pending = now, done, []
      writer.write(done, mean)
      pbar.set_postfix(loss=f"{mean['loss']:.4f}", img_s=f"{mean['images_per_second']:.0f}")
    pbar.update(1)
    if done % tc.ckpt_every == 0 or done == tc.steps:
      ckpt.save(manager, done, state, tr.meta())
    if tc.get("sample_every", 0) and done % tc.sample_every == 0 and done != tc.steps:
      tr.sample_grid(state.ema_params, done)
  pbar.close()
  manager.wait_until_finished()
  writer.flush()

  final_step = int(jax.device_get(state.step))
  if tc.steps > 0 and config.train.get("final_samples", True):
    log(f"sample grid: {tr.sample_grid(state.ema_params, final_step)}")
  if config.eval.get("at_end", False) and tc.steps > 0:
    result = evaluate_generator(tr.objective, state.ema_params, config, tr.mesh, cache_dir(config, workdir), log=log)
    result["step"] = final_step
    writer.write(final_step, {k: v for k, v in result.items() if isinstance(v, (int, float)) and v is not None},
                 kind="eval")
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    log("eval: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
  writer.close()
  manager.close()
  return state
