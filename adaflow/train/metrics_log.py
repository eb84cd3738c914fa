"""Metrics to JSONL and TensorBoard (plus wandb / clu when selected), written by process 0 only
(local or gs:// workdirs); the training progress display (a bar on a terminal, lines in a log).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import json
import os
import sys
import time

import jax
from tqdm import tqdm

from adaflow import storage
from adaflow.errors import UserError

# train.writers: optional metric writers beside metrics.jsonl and TensorBoard -> the package each needs.
WRITERS = {"wandb": "wandb", "clu": "clu"}


def parse_writers(value) -> tuple[str, ...]:
  """`train.writers` ("" or comma-separated names, or a sequence) -> names; a UserError, before
  anything compiles, for an unknown name or one whose package is not installed (checked on every
  process, so all of them stop the same way)."""
  names = [w.strip() for w in value.split(",")] if isinstance(value, str) else [str(w) for w in (value or ())]
  names = tuple(w for w in names if w)
  for w in names:
    if w not in WRITERS:
      raise UserError(f"train.writers: unknown writer {w!r}; use a comma-separated subset of {sorted(WRITERS)} or ''")
  for w in names:
    if WRITERS[w] not in sys.modules and importlib.util.find_spec(WRITERS[w]) is None:
      raise UserError(f"train.writers: {w!r} is selected but the {WRITERS[w]} package is not installed; "
                      f"`pip install {WRITERS[w]}` or remove it from train.writers (metrics.jsonl and "
                      "TensorBoard are always written)")
  return names


class _WandbWriter:
  """Weights & Biases: one run per workdir (its id is derived from the workdir, so a resumed run
  continues the same wandb run)."""

  def __init__(self, workdir: str, run_config: dict, project: str, name: str):
    self._wandb = importlib.import_module("wandb")
    run_id = hashlib.sha1(storage.absolute(workdir).encode()).hexdigest()[:16]
    local_dir = None if storage.is_remote(workdir) else workdir
    self._run = self._wandb.init(project=project, name=name, id=run_id, resume="allow", dir=local_dir,
                                 config=run_config)

  def write(self, step: int, scalars: dict) -> None:
    self._run.log(scalars, step=step)

  def flush(self) -> None:
    pass   # wandb streams in its own process

  def close(self) -> None:
    self._run.finish()


class _CluWriter:
  """clu.metric_writers' default writer (TensorBoard summaries + absl logging) under <workdir>/clu."""

  def __init__(self, workdir: str):
    metric_writers = importlib.import_module("clu.metric_writers")
    self._w = metric_writers.create_default_writer(os.path.join(workdir, "clu"), asynchronous=False)

  def write(self, step: int, scalars: dict) -> None:
    self._w.write_scalars(step, scalars)

  def flush(self) -> None:
    self._w.flush()

  def close(self) -> None:
    self._w.close()


class MetricWriter:
  """Appends one JSON object per call to `<workdir>/metrics.jsonl` and mirrors scalars to
  TensorBoard event files under `<workdir>/tb` (tensorboardX, no TensorFlow needed).

  A workdir on an object store gets both too: metrics.jsonl through `adaflow.storage` (an append
  rewrites the object), TensorBoard through tensorboardX's own gs:// (google-cloud-storage) and
  s3:// (boto3) writers; without those libraries TensorBoard is off and says so once.
  """

  def __init__(self, workdir: str, enabled: bool | None = None, writers=(), run_config: dict | None = None,
               wandb_project: str = "adaflow", name: str = "run"):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    self._extra = []
    names = parse_writers(writers)
    if self.enabled:
      storage.makedirs(workdir)
      self._tb = _summary_writer(os.path.join(workdir, "tb"))
      for w in names:
        self._extra.append(_WandbWriter(workdir, run_config or {}, wandb_project, name) if w == "wandb"
                           else _CluWriter(workdir))

  def write(self, step: int, metrics: dict, kind: str = "train") -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "kind": kind, "time": time.time()}
    row.update({k: float(v) for k, v in metrics.items()})
    storage.append_text(self.path, json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))
    for w in self._extra:
      w.write(int(step), {f"{kind}/{k}": float(v) for k, v in metrics.items()})

  def drop_after(self, step: int) -> int:
    """Removes rows logged after `step` (a resume from the checkpoint at `step` recomputes them, so
    a run killed between checkpoints does not log those steps twice). Returns how many were removed.
    Rewrites the file atomically; TensorBoard keeps its events (it shows the newest per step)."""
    if not self.enabled or not storage.exists(self.path):
      return 0
    lines = [line for line in io.StringIO(storage.read_text(self.path)) if line.strip()]
    keep = []
    for line in lines:
      try:
        if int(json.loads(line)["step"]) > step:
          continue
      except (ValueError, KeyError, TypeError):
        continue              # a torn last line from a kill mid-write
      keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) != len(lines):
      storage.write_text(self.path, "".join(keep), atomic=True)
    return len(lines) - len(keep)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()
    for w in self._extra:
      w.flush()

  def close(self) -> None:
    tb, extra, self._tb, self._extra = self._tb, self._extra, None, []
    try:
      if tb is not None:
        tb.close()
    finally:
      for w in extra:
        w.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    """Closes the writers however the block ends; when it ends in an error, a close that fails
    too (the final flush onto a full disk) does not replace that error."""
    try:
      self.close()
    except OSError:
      if exc is None:
        raise
    return False


class PlainProgress:
  """The progress display for logs (stderr not a terminal: nohup, job schedulers): one plain line
  per metrics interval, `[adaflow] train 100/1000 (10%) loss=0.1234 img_s=1200 eta 0:05:00`, no
  carriage returns. Same calls as the tqdm bar the loop uses on a terminal."""

  def __init__(self, total: int, initial: int = 0, desc: str = "train", stream=None):
    self.total, self.n, self.desc = int(total), int(initial), desc
    self._stream = stream
    self._t0, self._n0 = time.time(), int(initial)

  def update(self, n: int = 1) -> None:
    self.n += n

  def set_postfix(self, **values) -> None:
    """Prints the line for the current step (called once per train.log_every steps)."""
    done = self.n + 1          # the loop sets the postfix before counting the step it reports
    rate = (done - self._n0) / max(time.time() - self._t0, 1e-9)
    eta = int((self.total - done) / rate) if rate > 0 else 0
    fields = " ".join(f"{k}={v}" for k, v in values.items())
    pct = 100.0 * done / max(self.total, 1)
    print(f"[adaflow] {self.desc} {done}/{self.total} ({pct:.0f}%) {fields} eta {eta // 3600}:{eta // 60 % 60:02d}:"
          f"{eta % 60:02d}", file=self._stream or sys.stderr, flush=True)

  def close(self) -> None:
    pass


def progress(total: int, initial: int = 0, enabled: bool = True, stream=None):
  """A tqdm bar when `stream` (default stderr) is a terminal, else `PlainProgress` lines; a
  disabled tqdm on processes other than 0."""
  stream = stream or sys.stderr
  if enabled and not (hasattr(stream, "isatty") and stream.isatty()):
    return PlainProgress(total, initial, stream=stream)
  return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc="train",
              mininterval=1.0, file=stream)


def _import_tensorboardx():
  """The tensorboardX module, imported without torch. tensorboardX imports torch whenever it is
  installed, only to accept torch tensors as values (1.1 of its 1.4 s import on a 2-core Xeon,
  timed by hand, at every `adaflow train` start); adaflow logs floats and numpy arrays. So during
  that import `import torch` fails (a None entry in sys.modules, removed after), unless torch is
  loaded already."""
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    return importlib.import_module("tensorboardX")
  sys.modules["torch"] = None
  try:
    return importlib.import_module("tensorboardX")
  finally:
    if sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]


def _summary_writer(logdir: str):
  """tensorboardX SummaryWriter for `logdir`, or None (with a note) where it cannot write there."""
  tensorboardx = _import_tensorboardx()   # here, not at the top: only this writer needs it
  SummaryWriter = tensorboardx.SummaryWriter
  if storage.is_remote(logdir):
    record_writer = importlib.import_module("tensorboardX.record_writer")
    scheme = logdir.split("://")[0]
    try:
      if scheme not in record_writer.REGISTERED_FACTORIES:
        raise ImportError(f"tensorboardX has no writer for {scheme}://")
      return SummaryWriter(logdir)
    except ImportError as e:   # e.g. google-cloud-storage (gs://) or boto3 (s3://) missing
      print(f"[adaflow] TensorBoard off for {logdir} ({e}); metrics.jsonl has every row")
      return None
  return SummaryWriter(logdir)


def read_metrics(workdir: str, kind: str = "train") -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not storage.exists(path):
    return []
  rows = [json.loads(line) for line in io.StringIO(storage.read_text(path)) if line.strip()]
  return [r for r in rows if r.get("kind") == kind]
