"""adaflow.data: image datasets as deterministic, step-indexed batches.

``config.data`` fields: ``name`` ('digits', 'crops', 'tfds:<name>' or 'folder'), ``image_size``,
``channels`` (1 or 3), ``random_flip``, ``data_dir``, ``split``, ``num_crops`` (crops),
``image_key`` / ``label_key`` (tfds), ``resize`` (tfds / folder: resize instead of failing),
``use_labels`` (False: ignore the labels).

Labels are optional: data without labels of at least two classes (a flat image folder, a folder
with one class subfolder, tfds with ``label_key=None``, or any dataset with ``use_labels=False``)
is unlabeled: ``DatasetInfo.num_classes == 0`` and every example's label is 0, which is the null
label of a model with no classes (one learned embedding row; see adaflow.models.dit).

Public API::

  get_info(data_config) -> DatasetInfo                     # validates; cheap
  make_source(data_config) -> source                       # src[i] = {'image': uint8 [H, W, C],
                                                           #           'label': int32 []}
  make_train_batches(data_config, *, global_batch_size, seed,
                     process_index=0, process_count=1) -> TrainBatches
      # batches[step] = {'image': float32 [B_local, H, W, C] in [-1, 1], 'label': int32 [B_local]}
  load_arrays(data_config, num, seed=0, split=None)
      -> (images float32 [num, H, W, C] in [-1, 1], labels int32 [num])
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from adaflow.data import embedded
from adaflow.data import folder
from adaflow.data import pipeline
from adaflow.data import tfds_source
from adaflow.data.pipeline import DatasetInfo
from adaflow.data.pipeline import TrainBatches
from adaflow.data.pipeline import to_model_range

VALID_NAMES = ('digits', 'crops', 'folder', 'tfds:<tfds name>')

_KINDS = {
    'digits': (embedded.digits_info, embedded.digits_source),
    'crops': (embedded.crops_info, embedded.crops_source),
    'folder': (folder.folder_info, folder.FolderSource),
    'tfds': (tfds_source.tfds_info, tfds_source.TfdsSource),
}


def _kind(data_config: Any) -> str:
  """Returns the key of ``_KINDS`` for ``data.name``; raises ValueError listing valid names."""
  name = pipeline.field(data_config, 'name')
  if isinstance(name, str) and name.startswith(tfds_source.PREFIX):
    return 'tfds'
  if name in _KINDS and name != 'tfds':
    return name
  raise ValueError(f'data.name={name!r} is not a known dataset; valid names: '
                   f"{', '.join(VALID_NAMES)} (e.g. 'tfds:cifar10').")


def _use_labels(data_config: Any) -> bool:
  value = pipeline.field(data_config, 'use_labels')
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f'data.use_labels must be True (use the labels the data has) or False (ignore '
                     f'them: unconditional), got {value!r}.')
  return bool(value)


def get_info(data_config: Any) -> DatasetInfo:
  """Validates ``data_config`` and returns its DatasetInfo (image_shape is (H, W, C));
  ``num_classes == 0`` for unlabeled data (fewer than two classes, or ``data.use_labels=False``)."""
  use_labels = _use_labels(data_config)
  info = _KINDS[_kind(data_config)][0](data_config)
  if info.num_classes < 2 or not use_labels:
    info = dataclasses.replace(info, num_classes=0, class_names=())
  return info


class _Unlabeled:
  """A source with every label replaced by 0 (``data.use_labels=False``)."""

  def __init__(self, source: Any):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return pipeline.example(self._source[index]['image'], 0)


def make_source(data_config: Any) -> Any:
  """A grain random-access source: ``len(src)``; ``src[i] = {'image': uint8 [H, W, C],
  'label': int32 []}`` (label 0 for unlabeled data). Validates ``data_config`` first."""
  use_labels = _use_labels(data_config)
  source = _KINDS[_kind(data_config)][1](data_config)
  return source if use_labels else _Unlabeled(source)


def make_train_batches(data_config: Any, *, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1) -> TrainBatches:
  """Step-indexed training batches for this process.

  ``batches[step]`` = ``{'image': float32 [global_batch_size // process_count, H, W, C] in
  [-1, 1], 'label': int32 [global_batch_size // process_count]}``, a pure function of
  (data_config, seed, step, process_index, process_count). Examples are reshuffled every epoch,
  processes see disjoint examples within a step, and ``data.random_flip`` flips images
  left-right with probability 1/2 (decided per stream position, independent of process count).
  Raises ValueError naming ``train.batch_size`` when it is not divisible by ``process_count``.
  """
  flip = pipeline.field(data_config, 'random_flip')
  if not isinstance(flip, (bool, np.bool_)):
    raise ValueError(f'data.random_flip must be True or False, got {flip!r}.')
  # Fail on the batch layout before touching any data.
  pipeline.local_batch_size(global_batch_size, process_count, process_index)
  return pipeline.train_batches_from_source(
      make_source(data_config), global_batch_size=global_batch_size, seed=seed,
      random_flip=bool(flip), process_index=process_index, process_count=process_count)


def load_arrays(data_config: Any, num: int, seed: int = 0,
                split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``num`` deterministic examples (seeded shuffle, no flips) of ``split`` (default data.split).

  Returns (images float32 [num, H, W, C] in [-1, 1], labels int32 [num]). If ``num`` exceeds the
  split's size, examples repeat (the next reshuffled epoch follows).
  """
  if split is not None:
    data_config = _with_split(data_config, split)
  return pipeline.arrays_from_source(make_source(data_config), num, seed)


def _with_split(data_config: Any, split: str) -> Any:
  """A copy of ``data_config`` with ``split`` replaced (ConfigDict or dict)."""
  if hasattr(data_config, 'copy_and_resolve_references'):
    copy = data_config.copy_and_resolve_references()
    with copy.unlocked():
      copy.split = split
    return copy
  if isinstance(data_config, dict):
    return {**data_config, 'split': split}
  raise TypeError(f'Cannot override split on a {type(data_config).__name__}; use a ConfigDict.')
