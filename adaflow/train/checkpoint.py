"""Orbax checkpointing of the train state (+ a JSON record of the config that produced it).

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. Saves are asynchronous; orbax writes to a
temporary directory (`<step>.orbax-checkpoint-tmp*`) and renames it when complete, so a checkpoint
that exists is finished, and old steps (beyond `max_to_keep`, except milestones: multiples of
`keep_every`) are deleted only after the newer one is finalized (a failed save leaves every older
step in place; tests/test_reliability.py checks it).

Integrity: `save` stores a checksum of the whole state (`state_checksum`, an order-independent
uint32 hash of every array's bits, identical on any mesh) in the JSON metadata; `restore_latest`
recomputes it after reading, so truncated *or silently corrupted* files are detected, reported,
and the next older checkpoint is used instead.

Write errors (full disk, read-only or unwritable directory) raise `CheckpointWriteError` naming the
directory, instead of a deep orbax/tensorstore trace (and never hang). On a really full disk orbax's
background save threads also log each failure with its traceback, and tensorstore's late write
callbacks report "Event loop is closed" by the hundred; `quiet_write_failures` drops exactly those
while the CheckpointWriteError carries the one message (the CLI uses it unless --debug).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import threading
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from adaflow import storage

CHECKSUM_KEY = "_state_checksum"

DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}   # also the CLI's one-line errors
# Not "RESOURCE_EXHAUSTED" alone: tensorstore's full-disk errors say "No space left" too, and an
# XLA out-of-memory (or an object store's rate limit) is RESOURCE_EXHAUSTED without being a disk.
_DISK_PHRASES = ("no space left", "read-only file system", "permission denied", "disk quota",
                 "os_error_code='28'")


class CheckpointWriteError(OSError):
  """A checkpoint could not be written: the disk is full or the directory is not writable."""


def _is_disk_error(e: BaseException) -> bool:
  while e is not None:
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
      return True
    if any(p in str(e).lower() for p in _DISK_PHRASES):
      return True
    e = e.__cause__ or e.__context__
  return False


def _write_error(manager: ocp.CheckpointManager, step: Optional[int], e: BaseException) -> CheckpointWriteError:
  # An async save's error surfaces at the next save: name the step whose directory failed.
  failed = re.search(r"[/\\](\d+)\.orbax-checkpoint-tmp", str(e))
  step = int(failed.group(1)) if failed else step
  where = f"step {step} " if step is not None else ""
  return CheckpointWriteError(
      errno.ENOSPC if "space" in str(e).lower() or getattr(e, "errno", None) == errno.ENOSPC else errno.EIO,
      f"could not write checkpoint {where}to {manager.directory}: the disk is full or the directory is "
      f"not writable ({type(e).__name__}: {str(e)[:300]}). Free space or point --workdir at a writable "
      f"disk; completed older checkpoints there are untouched")


class _WriteFailureReports:
  """Decides which reports of a failing write to drop (see `quiet_write_failures`). `failed` turns
  on at the first dropped disk error: from then on the process is ending with that error."""

  def __init__(self):
    self.failed = False

  def drop_record(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and _is_disk_error(exc):   # orbax's background save threads, one per failure
      self.failed = True
      return True
    # asyncio reports the save tasks that the failed save left pending when they are collected.
    return self.failed and record.name == "asyncio" and "orbax" in record.getMessage()

  def drop_unraisable(self, unraisable) -> bool:
    exc, tb = unraisable.exc_value, unraisable.exc_traceback
    if exc is not None and _is_disk_error(exc):   # e.g. TensorBoard's final flush at exit
      self.failed = True
      return True
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next
    # tensorstore's write callbacks posting to the event loop of a save that already failed.
    return (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed" and tb is not None
            and os.path.basename(tb.tb_frame.f_code.co_filename) == "base_events.py")

  def drop_thread_exception(self, args) -> bool:
    if args.exc_value is not None and _is_disk_error(args.exc_value):
      self.failed = True
      return True
    # TensorBoard's writer thread, left running by a close that could not flush, meets its closed queue.
    return self.failed and type(args.thread).__module__.startswith("tensorboardX")


@contextlib.contextmanager
def quiet_write_failures() -> Iterator[None]:
  """While active, a full or unwritable disk is reported once, by the CheckpointWriteError (or
  OSError) that ends the run, instead of by every thread that meets it: log records and unraisable
  or thread exceptions carrying a disk error are dropped, and so are the follow-on reports of the
  failed save (tensorstore's "Event loop is closed" callbacks, asyncio's pending orbax tasks,
  TensorBoard's writer thread). Everything else passes. When the block ends in a disk error the
  filters stay installed: the process is ending, and its exit handlers meet the same full disk."""
  reports = _WriteFailureReports()
  loggers = logging.getLogger("absl"), logging.getLogger("asyncio")
  record_filter = lambda record: not reports.drop_record(record)
  old_unraisable, old_thread = sys.unraisablehook, threading.excepthook

  def unraisable_hook(unraisable):
    if not reports.drop_unraisable(unraisable):
      old_unraisable(unraisable)

  def thread_hook(args):
    if not reports.drop_thread_exception(args):
      old_thread(args)

  for lg in loggers:
    lg.addFilter(record_filter)
  sys.unraisablehook, threading.excepthook = unraisable_hook, thread_hook
  ending = False
  try:
    yield
  except BaseException as e:
    ending = _is_disk_error(e)   # also the CLI's SystemExit raised while handling one
    raise
  finally:
    if not ending:
      for lg in loggers:
        lg.removeFilter(record_filter)
      sys.unraisablehook, threading.excepthook = old_unraisable, old_thread


def _leaf_words(x: jax.Array) -> jax.Array:
  """The bits of `x` as a flat uint32 vector (any 8/16/32-bit dtype; bool as 0/1)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  word = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(size)
  if word is None:
    raise ValueError(f"state_checksum: unsupported dtype {x.dtype}")
  return jax.lax.bitcast_convert_type(x, word).astype(jnp.uint32)


@jax.jit
def _checksum(tree: Any) -> jax.Array:
  total = jnp.zeros((), jnp.uint32)
  for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
    w = _leaf_words(leaf)
    pos = jnp.arange(w.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    # uint32 arithmetic wraps mod 2^32: the sum is exact and independent of reduction order and
    # sharding; odd position weights make any single changed word change the sum.
    total = total + jnp.sum(w * pos, dtype=jnp.uint32) * jnp.uint32(2 * i + 1) + jnp.uint32(w.shape[0])
  return total


def state_checksum(tree: Any) -> int:
  """uint32 hash of the bits of every array in `tree` (same value on every mesh / process count)."""
  return int(jax.device_get(_checksum(tree)))


def checkpoint_dir(workdir: str) -> str:
  if "://" in workdir:  # gs://bucket/run etc.: orbax writes there directly
    return workdir.rstrip("/") + "/checkpoints"
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, max_to_keep: int = 3, async_save: bool = True,
                 keep_every: int = 0) -> ocp.CheckpointManager:
  """Orbax manager for `<workdir>/checkpoints`: keeps the `max_to_keep` newest steps, plus (if
  `keep_every` > 0) every step that is a multiple of `keep_every` (milestones, e.g. for FID-vs-steps
  curves), which are never deleted. Expressed as an orbax preservation policy, because the
  `max_to_keep` / `keep_period` options are deprecated in favour of it."""
  policies = ocp.checkpoint_managers
  keep = policies.LatestN(n=max_to_keep)
  if keep_every > 0:
    keep = policies.AnyPreservationPolicy([keep, policies.EveryNSteps(interval_steps=keep_every)])
  options = ocp.CheckpointManagerOptions(preservation_policy=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, force: bool = False) -> bool:
  """Starts an (async) save of `state` + `meta` (+ the state's checksum) at `step`.

  Raises CheckpointWriteError if the directory is not writable or the disk is full (errors of the
  previous async save surface here or in `wait`).
  """
  meta = dict(meta, **{CHECKSUM_KEY: state_checksum(state)})
  wait(manager)   # the previous save's files are on disk before the free space is read
  check_space(manager, step, state)
  try:
    return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)), force=force)
  except Exception as e:
    if _is_disk_error(e):
      raise _write_error(manager, step, e) from e
    raise


def check_space(manager: ocp.CheckpointManager, step: Optional[int], state: Any) -> None:
  """CheckpointWriteError on every process when the checkpoint disk has less free space than the
  state's bytes plus its metadata (orbax's zstd only makes the files smaller), before anything is
  written. Checked, not left to the write, because a write that fails on one of several
  processes leaves the others waiting at orbax's barriers until its timeout (20 minutes). Free
  space is read on every process (local disks or one shared file system), the smallest counts.
  Object stores (gs://) are not checked. `state` may be abstract (ShapeDtypeStructs): train()
  checks before anything compiles that the disk holds one checkpoint."""
  directory = str(manager.directory)
  if storage.is_remote(directory):
    return
  mib, leaves = 2.0 ** 20, jax.tree_util.tree_leaves(state)
  # Metadata (_METADATA, _sharding, the OCDBT manifest) measured at ~0.5 KiB per array: 1 KiB + 64 KiB.
  needed = (sum(leaf.size * leaf.dtype.itemsize for leaf in leaves) + 1024 * len(leaves) + 65536) / mib
  try:
    free = shutil.disk_usage(directory).free / mib
  except OSError:   # a file system without statvfs: not checked here (the others still gather)
    free = float("inf")
  if jax.process_count() > 1:   # MiB as float32: a byte count would overflow int32 without x64
    free = float(np.min(multihost_utils.process_allgather(np.float32(free))))
  if free < needed:
    raise CheckpointWriteError(
        errno.ENOSPC, f"could not write checkpoint {'' if step is None else f'step {step} '}to {directory}: the disk "
        f"is full (the checkpoint needs about {needed:.1f} MiB, {free:.1f} MiB are free; nothing was written). Free "
        "space or point --workdir at a larger disk; completed older checkpoints there are untouched")


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until pending async saves are finalized; CheckpointWriteError on a full/unwritable disk."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    if _is_disk_error(e):
      raise _write_error(manager, manager.latest_step(), e) from e
    raise


def check_writable(workdir: str) -> None:
  """Raises CheckpointWriteError early (before training) if `<workdir>/checkpoints` is unwritable.

  A workdir on an object store (gs://...) is probed with one small object through
  `adaflow.storage`; missing credentials, an unknown bucket or a missing gcsfs are a ValueError
  naming --workdir.
  """
  d = checkpoint_dir(workdir)
  if storage.is_remote(d):
    storage.check_writable(workdir, "--workdir")
    return
  try:
    os.makedirs(d, exist_ok=True)
    probe = os.path.join(d, f".write_probe_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise CheckpointWriteError(e.errno, f"checkpoint directory {d} is not writable or the disk is full "
                               f"({e.strerror}); fix permissions/space or choose another --workdir") from e


def _param_shapes(tree: Any) -> dict[str, tuple]:
  """{'a/b/kernel': shape} of a params tree (arrays, ShapeDtypeStructs or orbax array metadata)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    out[key] = tuple(getattr(leaf, "shape", ()) or ())
  return out


def check_model_matches(manager: ocp.CheckpointManager, abstract_state: Any) -> None:
  """ValueError when the newest checkpoint's stored parameter shapes differ from the run's model
  (the workdir was written with another `config.model`, dataset or method): resuming would
  otherwise skip every checkpoint as unreadable and train a fresh model over the old run. Only the
  stored metadata is read; a checkpoint whose metadata cannot be read is left to `restore_latest`
  (it falls back to an older one)."""
  step = manager.latest_step()
  if step is None:
    return
  try:   # the manager has no handler registry for item_metadata; the state's own handler reads it
    stored = ocp.StandardCheckpointHandler().metadata(manager.directory / str(step) / "state")
    stored = getattr(stored, "tree", stored)["params"]
  except Exception:  # pylint: disable=broad-except  # unreadable: restore_latest reports it
    return
  if stored is None:
    return
  mismatch = param_mismatch(stored, abstract_state.params)
  if mismatch:
    raise ValueError(f"checkpoint {manager.directory}/{step} holds a different model than this config builds "
                     f"({mismatch}): resume with the config it was written with (config.json next to "
                     "checkpoints/), or train into a new --workdir; nothing was changed")


def param_mismatch(got: Any, want: Any) -> str:
  """How the parameter tree `got` differs from `want` (shapes, missing and extra leaves; the
  first three of each), or "" when they agree."""
  want, got = _param_shapes(want), _param_shapes(got)
  diff = [f"{k} {got[k]} vs {want[k]}" for k in sorted(set(want) & set(got)) if got[k] != want[k]]
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  parts = ([f"shapes (stored vs needed) {', '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}"] if diff else []) + \
          ([f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
          ([f"not in this model {extra[:3]}{' ...' if len(extra) > 3 else ''}"] if extra else [])
  return "; ".join(parts)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, log: Callable[[str], None] = print,
                   step: Optional[int] = None) -> tuple[Optional[Any], Optional[dict], Optional[int]]:
  """(state, meta, step) from the newest readable checkpoint (only checkpoint `step` when given), or
  (None, None, None) if none.

  `abstract_state` is a tree of `jax.ShapeDtypeStruct` with shardings: the restore lands directly
  on the current mesh, whatever mesh wrote the checkpoint. A checkpoint that cannot be read, or
  whose recomputed checksum differs from the stored one, is reported via `log` and skipped.
  """
  for step in [step] if step is not None else sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      meta = restored["meta"]
      expected = meta.get(CHECKSUM_KEY) if isinstance(meta, dict) else None
      if expected is not None:
        got = state_checksum(restored["state"])
        if got != int(expected):
          raise ValueError(f"checksum mismatch (stored {expected}, recomputed {got}): the files are corrupted")
      return restored["state"], meta, step
    except Exception as e:  # orbax raises many types for unreadable data; report and fall back
      log(f"checkpoint at step {step} in {manager.directory} could not be restored "
          f"({type(e).__name__}: {str(e)[:300]}); trying an older one")
  return None, None, None


def restore_meta(workdir: str) -> tuple[dict, int]:
  """(JSON metadata (config), step) of the latest checkpoint, read alone; ValueError if there is none."""
  mngr = make_manager(workdir, async_save=False)
  steps = sorted(mngr.all_steps())
  if not steps:
    raise ValueError(f"no checkpoint found under {checkpoint_dir(workdir)}; train first or pass --workdir")
  meta = mngr.restore(steps[-1], args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return meta, steps[-1]


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
