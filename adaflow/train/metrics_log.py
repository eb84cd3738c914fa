"""Metrics to JSONL and TensorBoard, written by process 0 only (local or gs:// workdirs)."""
from __future__ import annotations

import io
import json
import os
import time

import jax

from adaflow import storage


class MetricWriter:
  """Appends one JSON object per call to `<workdir>/metrics.jsonl` and mirrors scalars to
  TensorBoard event files under `<workdir>/tb` (tensorboardX, no TensorFlow needed).

  A workdir on an object store gets both too: metrics.jsonl through `adaflow.storage` (an append
  rewrites the object), TensorBoard through tensorboardX's own gs:// (google-cloud-storage) and
  s3:// (boto3) writers; without those libraries TensorBoard is off and says so once.
  """

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      storage.makedirs(workdir)
      self._tb = _summary_writer(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict, kind: str = "train") -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "kind": kind, "time": time.time()}
    row.update({k: float(v) for k, v in metrics.items()})
    storage.append_text(self.path, json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))

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

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _summary_writer(logdir: str):
  """tensorboardX SummaryWriter for `logdir`, or None (with a note) where it cannot write there."""
  from tensorboardX import SummaryWriter
  if storage.is_remote(logdir):
    from tensorboardX import record_writer
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
