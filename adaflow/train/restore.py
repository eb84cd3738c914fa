"""Rebuilding a trainer and its parameters from a workdir (for sample / eval / fine-tuning)."""
from __future__ import annotations

from typing import Any, Optional

import jax
import ml_collections

from adaflow.train import checkpoint as ckpt


def config_of(workdir: str) -> ml_collections.ConfigDict:
  """The config stored with the latest checkpoint of `workdir`."""
  meta, _ = ckpt.restore_meta(workdir)
  return ml_collections.ConfigDict(meta["config"])


def load_trainer_and_params(workdir: str, config: Optional[ml_collections.ConfigDict] = None, ema: bool = True):
  """(Trainer, params, step): the latest readable checkpoint's EMA (or raw) params on this mesh.

  `config` overrides the stored one (e.g. other sampling settings); the model fields must agree
  with the checkpoint, which orbax checks shape by shape.
  """
  from adaflow.train.loop import Trainer
  config = config if config is not None else config_of(workdir)
  tr = Trainer(config, workdir)
  manager = ckpt.make_manager(workdir, async_save=False)
  abstract = ckpt.abstract_with_shardings(tr.abstract_state, tr.shardings)
  state, _, step = ckpt.restore_latest(manager, abstract, log=tr.log)
  if state is None:
    raise ValueError(f"no readable checkpoint under {ckpt.checkpoint_dir(workdir)}")
  return tr, (state.ema_params if ema else state.params), step


def load_params(workdir: str, ema: bool = True) -> Any:
  """EMA params of the latest checkpoint in `workdir` as host arrays (for `--init`)."""
  _, params, _ = load_trainer_and_params(workdir, ema=ema)
  return jax.device_get(params)
