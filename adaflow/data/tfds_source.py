"""TFDS datasets read through ``tfds.data_source`` (ArrayRecord; no TensorFlow needed).

``data.name = 'tfds:<name>'`` (e.g. ``'tfds:cifar10'``, ``'tfds:imagenet_resized/64x64'``).
The dataset must already be prepared in ``data.data_dir`` in the ``array_record`` file format;
nothing is downloaded here. Images must be ``image_size`` square unless ``data.resize=True``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from adaflow.data import pipeline

PREFIX = 'tfds:'


def _prepare_hint(name: str, data_dir: Any) -> str:
  where = data_dir if data_dir else '~/tensorflow_datasets (the TFDS default)'
  dir_flag = f' --data_dir={data_dir}' if data_dir else ''
  return (f'Prepare it once in ArrayRecord format, e.g. `tfds build {name}{dir_flag} '
          f'--file_format=array_record`, or in Python `tfds.builder({name!r}, '
          f'data_dir=...).download_and_prepare(file_format="array_record")`, then set '
          f'data.data_dir (now {where}).')


def _settings(data_config: Any) -> dict:
  """Validates the plain tfds fields; returns them as a dict."""
  name = data_config.name[len(PREFIX):]
  if not name:
    raise ValueError("data.name='tfds:' needs a dataset name, e.g. 'tfds:cifar10'.")
  size = pipeline.require_int(pipeline.field(data_config, 'image_size'), 'image_size')
  label_key = pipeline.field(data_config, 'label_key')
  return {
      'name': name,
      'size': size,
      'data_dir': pipeline.field(data_config, 'data_dir'),
      'split': pipeline.field(data_config, 'split'),
      'image_key': pipeline.field(data_config, 'image_key'),
      'label_key': None if label_key in ('', 'None') else label_key,   # 'None': from the command line
      'resize': bool(pipeline.field(data_config, 'resize')),
  }


def _open(s: dict) -> Any:
  """Opens the tfds ArrayRecord data source; failures become ValueErrors with a fix."""
  try:
    return tfds.data_source(s['name'], split=s['split'], data_dir=s['data_dir'], download=False)
  except Exception as e:  # pylint: disable=broad-except
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(
        f"data.name='tfds:{s['name']}' (split {s['split']!r}) could not be opened from "
        f"data.data_dir={s['data_dir']!r}: {first_line}. "
        + _prepare_hint(s['name'], s['data_dir'])) from e


def _features(source: Any, s: dict) -> tuple[Any, Any]:
  """Returns (image feature, label feature or None), validating data.image_key/label_key."""
  features = source.dataset_info.features
  if s['image_key'] not in features:
    raise ValueError(f"data.image_key={s['image_key']!r} is not a feature of tfds:{s['name']}; "
                     f'features are {sorted(features.keys())}.')
  label = None
  if s['label_key']:
    if s['label_key'] not in features or not hasattr(features[s['label_key']], 'num_classes'):
      raise ValueError(
          f"data.label_key={s['label_key']!r} is not a class-label feature of tfds:{s['name']}; "
          f'features are {sorted(features.keys())} (set data.label_key=None for no labels).')
    label = features[s['label_key']]
  return features[s['image_key']], label


def _check_shape(shape: tuple, s: dict, where: str) -> None:
  """Raises ValueError when an image of ``shape`` is not [size, size, *] and resize is off."""
  if s['resize']:
    return
  if tuple(shape[:2]) != (s['size'], s['size']):
    raise ValueError(
        f"tfds:{s['name']} has images of shape {tuple(shape)} ({where}) but "
        f"data.image_size={s['size']}; set data.image_size={shape[0]} if the images are square, "
        'or data.resize=True to resize them with PIL.')


class TfdsSource:
  """Random-access source over a tfds split: ``src[i] = {'image': uint8 [S, S, C], 'label'}``."""

  def __init__(self, data_config: Any):
    self._s = _settings(data_config)
    self._source = _open(self._s)
    image_feature, label_feature = _features(self._source, self._s)
    native = image_feature.shape[-1] if image_feature.shape and image_feature.shape[-1] else 3
    self.channels = pipeline.channels_of(data_config, native)
    self.num_classes = label_feature.num_classes if label_feature is not None else 0
    names = getattr(label_feature, 'names', None) if label_feature is not None else None
    self.class_names = tuple(names) if names else tuple(str(c) for c in range(self.num_classes))
    static = tuple(image_feature.shape or ())
    if len(static) >= 2 and None not in static[:2]:
      _check_shape(static, self._s, 'feature spec')
    if len(self._source) > 0:
      self[0]  # Validate the first example's shape eagerly, before any JAX compile.

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[int(index)]
    image = np.asarray(record[self._s['image_key']])
    _check_shape(image.shape, self._s, f'example {index}')
    image = pipeline.to_channels(image, self.channels)
    image = pipeline.resize(image, self._s['size'], self._s['size'])
    label = record[self._s['label_key']] if self._s['label_key'] else 0
    return pipeline.example(image, int(label))

  def info(self) -> pipeline.DatasetInfo:
    size = self._s['size']
    return pipeline.DatasetInfo((size, size, self.channels), int(self.num_classes),
                                len(self), self.class_names)


def tfds_info(data_config: Any) -> pipeline.DatasetInfo:
  """Opening an ArrayRecord source is lazy, so this reads only metadata and one example."""
  return TfdsSource(data_config).info()
