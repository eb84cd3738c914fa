"""Prefetched input (adaflow/data/prefetch.py, `data.prefetch`): same batches as synchronous input,
errors surface at their step with their message, and no thread outlives the loop."""
import threading
import time

import numpy as np
import pytest

from conftest import tiny_config
from adaflow import config as config_lib
from adaflow import data
from adaflow.data.prefetch import THREAD_NAME, Prefetcher


def prefetch_threads():
  return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def assert_same(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


class Steps:
  """batches[step] = {'step': int64 [1]}; raises at `fail_at`; records which steps were built."""

  def __init__(self, fail_at=None, delay=0.0):
    self.fail_at, self.delay, self.built = fail_at, delay, []
    self._lock = threading.Lock()

  def __getitem__(self, step):
    time.sleep(self.delay)
    with self._lock:
      self.built.append(step)
    if step == self.fail_at:
      raise ValueError(f"corrupt record in batch {step}")
    return {"step": np.array([step])}


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("start", [0, 7])
def test_prefetched_batches_equal_synchronous(depth, start):
  cfg = tiny_config(**{"data.random_flip": True})
  sync = data.make_train_batches(cfg.data, global_batch_size=8, seed=3)
  ahead = data.make_train_batches(cfg.data, global_batch_size=8, seed=3)
  stop = start + 12
  with Prefetcher(ahead, start=start, stop=stop, depth=depth) as b:
    for step in range(start, stop):
      assert_same(b[step], sync[step])
  assert not prefetch_threads()


def test_prefetch_multiprocess_rows_and_jump():
  """Each process's rows, and a jump (e.g. a restart at another step) still gives batches[step]."""
  cfg = tiny_config()
  for p in range(2):
    sync = data.make_train_batches(cfg.data, global_batch_size=8, seed=0, process_index=p, process_count=2)
    with Prefetcher(sync, start=0, stop=30, depth=2) as b:
      for step in [0, 1, 2, 9, 10, 3, 29, 31]:     # 31 >= stop: built synchronously
        assert_same(b[step], sync[step])


def test_real_array_record_source_from_threads(tmp_path):
  """The TFDS ArrayRecord reader + PIL decode path gives the same batches from worker threads."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from PIL import Image

  class PrefetchTestImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=4)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(48)}

    def _generate_examples(self, n):
      rng = np.random.default_rng(0)
      for i in range(n):   # PIL images: tfds encodes numpy arrays with TensorFlow, PIL ones without
        yield i, {"image": Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)), "label": i % 4}

  PrefetchTestImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare(
      file_format="array_record")
  cfg = tiny_config(**{"data.name": "tfds:prefetch_test_images", "data.image_size": 32,
                       "data.data_dir": str(tmp_path), "data.random_flip": True})
  sync = data.make_train_batches(cfg.data, global_batch_size=8, seed=1)
  ahead = data.make_train_batches(cfg.data, global_batch_size=8, seed=1)
  with Prefetcher(ahead, start=4, stop=20, depth=3) as b:
    for step in range(4, 20):                       # 16 steps x 8 = 128 reads: crosses epochs
      assert_same(b[step], sync[step])


def test_exception_in_source_is_reraised_at_its_step():
  src = Steps(fail_at=5)
  b = Prefetcher(src, start=0, stop=100, depth=3)
  for step in range(5):                             # batch 5 already failed on a thread: not raised yet
    assert int(b[step]["step"][0]) == step
  with pytest.raises(ValueError, match=r"^corrupt record in batch 5$"):
    b[5]
  assert not prefetch_threads()                     # a failing batch closes the pool
  with pytest.raises(RuntimeError, match="closed"):
    b[6]


def test_early_exit_stops_threads_and_respects_stop():
  src = Steps(delay=0.01)
  with Prefetcher(src, start=3, stop=8, depth=2) as b:
    for step in range(3, 8):
      b[step]
  assert max(src.built) == 7                        # nothing at or past `stop` was built ahead
  src = Steps(delay=0.05)
  with pytest.raises(KeyError):
    with Prefetcher(src, start=0, stop=1000, depth=4) as b:
      b[0]
      raise KeyError("an error in the loop body")   # e.g. NonFiniteLossError, or a preemption return
  assert not prefetch_threads() and max(src.built) <= 4


def test_depth_zero_is_synchronous():
  src = Steps()
  with Prefetcher(src, start=0, stop=10, depth=0) as b:
    assert int(b[2]["step"][0]) == 2 and not prefetch_threads()
  assert src.built == [2]


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_prefetch_field_is_validated(bad):
  c = tiny_config()
  with c.unlocked():
    del c.data["prefetch"]
    c.data.prefetch = bad                           # bypass ConfigDict's type lock
  with pytest.raises(ValueError, match=r"data\.prefetch"):
    config_lib.validate(c)


def test_train_loop_feeds_the_synchronous_batches(tmp_path, monkeypatch):
  """The loop (default data.prefetch=2) feeds batches[step] at every step (the resume start != 0 is
  covered above and by tests/test_reliability.py's bit-exact resume tests)."""
  from adaflow.train.loop import Trainer, train
  fed = []
  orig = Trainer.global_batch
  monkeypatch.setattr(Trainer, "global_batch", lambda self, b: (fed.append(b), orig(self, b))[1])
  c = tiny_config(**{"train.steps": 5, "train.ckpt_every": 100, "data.random_flip": True})
  assert c.data.prefetch == 2
  train(c, str(tmp_path), log=lambda m: None)
  sync = data.make_train_batches(c.data, global_batch_size=c.train.batch_size, seed=c.seed)
  assert len(fed) == 5
  for step, b in enumerate(fed):
    assert_same(b, sync[step])
  assert not prefetch_threads()
