"""Orbax checkpointing of the train state (+ a JSON record of the config that produced it).

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. Saves are asynchronous; orbax writes to a
temporary directory and renames it when complete, so a checkpoint that exists is finished.
Restoring tries the newest step first and falls back to older ones if it cannot be read
(truncated or corrupted files are reported, never silently trusted).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, max_to_keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   log: Callable[[str], None] = print) -> tuple[Optional[Any], Optional[dict], Optional[int]]:
  """(state, meta, step) from the newest readable checkpoint, or (None, None, None) if none.

  `abstract_state` is a tree of `jax.ShapeDtypeStruct` with shardings: the restore lands directly
  on the current mesh, whatever mesh wrote the checkpoint.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      return restored["state"], restored["meta"], step
    except Exception as e:  # orbax raises many types for unreadable data; report and fall back
      log(f"checkpoint at step {step} in {manager.directory} could not be restored "
          f"({type(e).__name__}: {str(e)[:300]}); trying an older one")
  return None, None, None


def restore_meta(workdir: str, step: Optional[int] = None) -> tuple[dict, int]:
  """Reads only the JSON metadata (config) of a checkpoint; ValueError if there is none."""
  mngr = make_manager(workdir, async_save=False)
  steps = sorted(mngr.all_steps())
  if not steps:
    raise ValueError(f"no checkpoint found under {checkpoint_dir(workdir)}; train first or pass --workdir")
  step = steps[-1] if step is None else step
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return meta, step


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
