"""Shared pieces of the data path: dataset metadata, image helpers, and the grain pipeline.

Every source (embedded, TFDS, folder) yields examples
``{'image': uint8 [H, W, C], 'label': int32 []}``. This module turns a source into

* deterministic, randomly accessible training batches (``TrainBatches``): the batch for a step
  is a pure function of (source, seed, step, process_index, process_count), so resuming after
  preemption only needs the step number;
* deterministic fixed-size arrays (``arrays_from_source``) for classifiers and FD references.

Pixel scaling from uint8 [0, 255] to float32 [-1, 1] happens only in ``to_model_range``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from adaflow.config_defaults import base_config

_FLIP_STREAM = 1  # Sub-stream id so the flip RNG is independent of the shuffle seed.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  Attributes:
    image_shape: (H, W, C) of every example image.
    num_classes: number of labels; labels lie in [0, num_classes). 0: unlabeled (labels are 0).
    num_examples: examples in one epoch of the configured split.
    class_names: ``num_classes`` human-readable names.
  """
  image_shape: tuple
  num_classes: int
  num_examples: int
  class_names: tuple


# ----------------------------------------------------------------------------- config access


def field(data_config: Any, name: str) -> Any:
  """``data_config.<name>`` (a ConfigDict, or a plain dict of some fields); a field the given
  config lacks takes its default from the one config schema (`adaflow.config_defaults`), so no
  default is written twice. May be None where the schema's default is "unset"."""
  if name in data_config:
    return data_config[name]
  return _schema_data()[name]


@functools.lru_cache(maxsize=1)
def _schema_data():
  return base_config().data


def require_int(value: Any, name: str, *, allowed: Sequence[int] | None = None,
                minimum: int = 1) -> int:
  """Validates an integer config field and returns it; raises ValueError naming ``data.<name>``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'data.{name} must be an integer, got {value!r}.')
  value = int(value)
  if allowed is not None and value not in allowed:
    raise ValueError(f'data.{name}={value} is not supported here; use one of {sorted(allowed)}.')
  if value < minimum:
    raise ValueError(f'data.{name} must be >= {minimum}, got {value}.')
  return value


def channels_of(data_config: Any, natural: int) -> int:
  """Returns the requested number of channels (1 or 3); the dataset's ``natural`` ones when unset."""
  value = field(data_config, 'channels')
  return require_int(natural if value is None else value, 'channels', allowed=(1, 3))


# ----------------------------------------------------------------------------- image helpers


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """Converts uint8 [H, W] or [H, W, C] (C in 1, 3, 4) to uint8 [H, W, channels].

  Gray -> RGB repeats the plane; RGB -> gray uses ITU-R 601 luma (as PIL's 'L'); alpha is dropped.
  """
  if image.ndim == 2:
    image = image[:, :, None]
  if image.shape[-1] == 4:
    image = image[:, :, :3]
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if have == 3 and channels == 1:
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
  raise ValueError(f'Cannot convert an image with {have} channels to {channels} channels.')


def resize(image: np.ndarray, height: int, width: int,
           resample: int = Image.BICUBIC) -> np.ndarray:
  """Resizes uint8 [H, W, C] (C in 1, 3) to uint8 [height, width, C] with PIL."""
  if image.shape[:2] == (height, width):
    return image
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[:, :, 0] if squeeze else image)
  out = np.asarray(pil.resize((width, height), resample=resample))
  return out[:, :, None] if squeeze else out


def to_model_range(images: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels [..., H, W, C] in [0, 255] to float32 in [-1, 1]. The only place."""
  return images.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def example(image: np.ndarray, label: int) -> dict:
  """Builds one example: {'image': uint8 [H, W, C], 'label': int32 []}."""
  return {'image': np.ascontiguousarray(image, dtype=np.uint8), 'label': np.int32(label)}


def _random_flip(ex: dict, rng: np.random.Generator) -> dict:
  """Flips ``ex['image']`` ([H, W, C]) left-right with probability 1/2."""
  if rng.random() < 0.5:
    return {'image': ex['image'][:, ::-1, :].copy(), 'label': ex['label']}
  return ex


def _derived_seed(seed: int, stream: int) -> int:
  """A 32-bit seed for ``stream`` derived from the user seed."""
  return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


# ----------------------------------------------------------------------------- pipeline


def _int_at_least(value: Any, name: str, minimum: int) -> int:
  """``int(value)``; ValueError naming ``name`` unless it is an integer (not a bool) >= ``minimum`` (0 or 1)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be a {'non-negative' if minimum == 0 else 'positive'} integer, got {value!r}.")
  return int(value)


def shuffled_stream(source: Any, seed: int, random_flip: bool = False) -> grain.MapDataset:
  """Infinite MapDataset over ``source``: reshuffled every epoch, optionally flipped.

  Element ``k`` is example ``perm_e[k % N]`` of epoch ``e = k // N`` where ``perm_e`` depends on
  (seed, e). The flip decision for element ``k`` depends on (seed, k) only, so it does not change
  with the number of processes.
  """
  if len(source) == 0:
    raise ValueError('The data source is empty; check data.name / data.data_dir / data.split.')
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None, reseed_each_epoch=True)
  if random_flip:
    ds = ds.random_map(_random_flip, seed=_derived_seed(seed, _FLIP_STREAM))
  return ds


class TrainBatches:
  """Training batches by step: ``batches[step]`` is a pure function of the step.

  ``batches[step]`` returns ``{'image': float32 [B_local, H, W, C] in [-1, 1],
  'label': int32 [B_local]}`` with ``B_local = batch_size_per_process``. Process ``p`` of ``P``
  takes elements ``p, p + P, p + 2P, ...`` of the shuffled stream, so for one step the processes
  together cover exactly the ``global_batch_size`` elements that a single process would get.
  """

  def __init__(self, dataset: grain.MapDataset, batch_size_per_process: int):
    self._dataset = dataset   # batched uint8 (infinite): {'image': uint8 [B_local, H, W, C], 'label'}
    self.batch_size_per_process = batch_size_per_process

  def __getitem__(self, step: int) -> dict:
    batch = self._dataset[_int_at_least(step, 'step', 0)]
    return {'image': to_model_range(batch['image']),
            'label': np.asarray(batch['label'], np.int32)}

  def __iter__(self):
    raise TypeError('TrainBatches is indexed by step: use batches[step].')


def local_batch_size(global_batch_size: int, process_count: int = 1,
                     process_index: int = 0) -> int:
  """Validates the batch/process layout and returns ``global_batch_size // process_count``."""
  process_count = _int_at_least(process_count, 'process_count', 1)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, {process_count}), got {process_index!r}.')
  global_batch_size = _int_at_least(global_batch_size, 'train.batch_size', 1)
  if global_batch_size % process_count:
    raise ValueError(
        f'train.batch_size={global_batch_size} is not divisible by the process count '
        f'{process_count}; set train.batch_size to a multiple of {process_count}.')
  return global_batch_size // process_count


def train_batches_from_source(source: Any, *, global_batch_size: int, seed: int,
                              random_flip: bool = False, process_index: int = 0,
                              process_count: int = 1) -> TrainBatches:
  """Builds ``TrainBatches`` over ``source`` (see TrainBatches for the layout)."""
  local = local_batch_size(global_batch_size, process_count, process_index)
  seed = _int_at_least(seed, 'seed', 0)
  ds = shuffled_stream(source, seed, random_flip)
  ds = ds[process_index::process_count]
  ds = ds.batch(local, drop_remainder=True)
  return TrainBatches(ds, local)


def arrays_from_source(source: Any, num: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """First ``num`` elements of the seeded shuffled stream (no flips).

  Returns (images float32 [num, H, W, C] in [-1, 1], labels int32 [num]). When ``num`` exceeds
  the source length the stream continues into the next (reshuffled) epoch, repeating examples.
  """
  num = _int_at_least(num, 'num', 1)
  batch = shuffled_stream(source, _int_at_least(seed, 'seed', 0)).batch(num, drop_remainder=True)[0]
  return to_model_range(batch['image']), np.asarray(batch['label'], np.int32)
