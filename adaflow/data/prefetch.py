"""Background prefetching of step-indexed batches, so host input overlaps the device step.

    with Prefetcher(batches, start=start, stop=steps, depth=config.data.prefetch) as b:
      for step in range(start, steps):
        batch = b[step]          # == batches[step]; steps step+1 .. step+depth are being built

``batches`` is anything indexed by step whose items are a pure function of the step
(``TrainBatches``: ``batches[step] = {'image': float32 [B_local, H, W, C], 'label': int32
[B_local]}``). While the caller runs step ``s``, ``depth`` worker threads build the batches of steps
``s + 1 .. s + depth`` (one batch per thread, so record reads and PIL decodes, which release the
GIL, run in parallel). Because every batch is still ``batches[step]``, prefetching changes when a
batch is built, never what it holds: a resumed run (``start != 0``) sees the same batches.

* ``depth=0`` is synchronous: ``b[step]`` is ``batches[step]``, no thread is started.
* Steps are expected in increasing order from ``start``; asking for another step (a jump) drops
  the batches in flight and restarts prefetching from there (correct, just not overlapped).
* An exception raised while building batch ``s`` is re-raised (same object: type, message and
  the worker's traceback) by ``b[s]``, i.e. at the step it belongs to, never earlier.
* ``close()`` (or leaving the ``with`` block: normal end, preemption return, exception) cancels
  queued batches and joins the threads; at most ``depth`` batch builds already running finish
  first. Nothing is started before the first ``b[step]``.
"""
from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Optional

import numpy as np

THREAD_NAME = 'adaflow-prefetch'


class Prefetcher:
  """``batches[step]`` for ``step in [start, stop)``, built ``depth`` steps ahead on threads.

  Args:
    batches: indexable by step; ``batches[step]`` must be a pure function of ``step`` and safe to
      call from several threads at once (grain MapDatasets and adaflow's sources are).
    start: the first step that will be asked for (the resumed step).
    stop: no batch at or past ``stop`` is built ahead (None: unbounded).
    depth: batches built ahead, one worker thread each; 0 = synchronous.
  """

  def __init__(self, batches: Any, *, start: int = 0, stop: Optional[int] = None, depth: int = 2):
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
      raise ValueError(f'data.prefetch must be an integer >= 0 (0 = synchronous input), got {depth!r}.')
    self._batches = batches
    self._depth = int(depth)
    self._start, self._stop = int(start), stop
    self._pending: collections.deque = collections.deque()    # (step, Future), increasing steps
    self._next = self._start                                   # next step to submit
    self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
    self._closed = False

  def _submit_ahead(self, upto: int) -> None:
    """Submits steps self._next .. upto - 1 (clipped to stop)."""
    if self._stop is not None:
      upto = min(upto, int(self._stop))
    while self._next < upto:
      self._pending.append((self._next, self._pool.submit(self._batches.__getitem__, self._next)))
      self._next += 1

  def _drop_pending(self) -> None:
    for _, fut in self._pending:
      fut.cancel()                          # queued ones never run; running ones are discarded
    self._pending.clear()

  def __getitem__(self, step: int) -> Any:
    if self._depth == 0 or (self._stop is not None and step >= self._stop):
      return self._batches[step]
    if self._closed:
      raise RuntimeError('Prefetcher is closed.')
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self._depth, thread_name_prefix=THREAD_NAME)
    if not self._pending or self._pending[0][0] != step:      # first call, or a jump
      self._drop_pending()
      self._next = int(step)
    self._submit_ahead(int(step) + 1)       # `step` itself, if it was not in flight
    _, fut = self._pending.popleft()
    self._submit_ahead(int(step) + 1 + self._depth)   # keep `depth` batches building meanwhile
    try:
      return fut.result()
    except BaseException:
      self.close()                          # the run is failing: do not leave threads behind
      raise

  def close(self) -> None:
    """Cancels queued batches and joins the worker threads. Idempotent."""
    self._closed = True
    self._drop_pending()
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def __enter__(self) -> 'Prefetcher':
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False

  def __iter__(self):
    raise TypeError('Prefetcher is indexed by step: use batches[step].')
