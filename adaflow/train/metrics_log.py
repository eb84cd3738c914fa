"""Metrics to JSONL and TensorBoard, written by process 0 only."""
from __future__ import annotations

import json
import os
import time

import jax


class MetricWriter:
  """Appends one JSON object per call to `<workdir>/metrics.jsonl` and mirrors scalars to
  TensorBoard event files under `<workdir>/tb` (tensorboardX, no TensorFlow needed)."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict, kind: str = "train") -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "kind": kind, "time": time.time()}
    row.update({k: float(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in metrics.items():
      self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))

  def drop_after(self, step: int) -> int:
    """Removes rows logged after `step` (a resume from the checkpoint at `step` recomputes them, so
    a run killed between checkpoints does not log those steps twice). Returns how many were removed.
    Rewrites the file atomically; TensorBoard keeps its events (it shows the newest per step)."""
    if not self.enabled or not os.path.exists(self.path):
      return 0
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    keep = []
    for line in lines:
      try:
        if int(json.loads(line)["step"]) > step:
          continue
      except (ValueError, KeyError, TypeError):
        continue              # a torn last line from a kill mid-write
      keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) != len(lines):
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(keep)
      os.replace(tmp, self.path)
    return len(lines) - len(keep)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str, kind: str = "train") -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r.get("kind") == kind]
