"""Datasets that ship with installed packages and need no download.

* ``digits``: scikit-learn's 1797 handwritten digits (8x8, values 0..16, 10 classes), resized
  to 16x16 or 32x32 with PIL bicubic and scaled to uint8.
* ``crops``: square crops of photographs shipped by scikit-image; the class of a crop is the
  photo it comes from. Item ``i`` is a crop of photo ``i % num_classes`` at a position drawn
  from an RNG seeded by (split, i), so the dataset is fully deterministic.
"""
from __future__ import annotations

import functools
import gzip
import importlib
import importlib.util
import os
from typing import Any

import numpy as np
import skimage.data
from PIL import Image

from adaflow.data import pipeline

DIGITS_SIZES = (16, 32)
CROPS_SIZES = (32, 64)
DIGITS_SPLITS = ('train',)  # load_digits has no held-out split: 'train' is all 1797 images.
CROPS_SPLITS = ('train', 'test')  # 'test' draws crop positions from a different RNG stream.

# Visually distinct photographs (``cat`` is the same photo as ``chelsea``: only chelsea is used).
CROP_PHOTOS = (
    'astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry',
    'retina', 'colorwheel', 'camera', 'coins', 'brick', 'grass',
)
_CROP_SCALE = 4  # Photos are downscaled so their short side is CROP_SCALE * image_size.


# ----------------------------------------------------------------------------- digits


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as (pixels float64 [1797, 64] in 0..16, labels [1797]), read from the CSV
  that `sklearn.datasets.load_digits` reads (its package data, found without importing scikit-learn:
  that import took ~0.9 s of a 1 s load on a 2-core Xeon, timed by hand, at every start of a digits
  run). The same numbers as load_digits(); load_digits() itself where the file is not found."""
  spec = importlib.util.find_spec("sklearn")
  for folder in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
      with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
      return table[:, :-1], table[:, -1].astype(int)
  digits = importlib.import_module("sklearn.datasets").load_digits()
  return digits.data, digits.target


@functools.lru_cache(maxsize=4)
def _digits_arrays(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [1797, S, S], labels int32 [1797]); read-only arrays."""
  flat, target = _sklearn_digits()
  small = np.clip(np.rint(flat.reshape(-1, 8, 8) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
  images = np.stack([
      np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BICUBIC))
      for im in small])
  labels = target.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def _digits_settings(data_config: Any) -> tuple[int, int]:
  """Validates the digits config; returns (image_size, channels)."""
  size = pipeline.require_int(pipeline.field(data_config, 'image_size'), 'image_size',
                              allowed=DIGITS_SIZES)
  split = pipeline.field(data_config, 'split')
  if split not in DIGITS_SPLITS:
    raise ValueError(f"data.split={split!r} is not available for 'digits' (it has one split); "
                     f'use one of {DIGITS_SPLITS}.')
  return size, pipeline.channels_of(data_config, 1)


class DigitsSource:
  """Random-access source: ``src[i] = {'image': uint8 [S, S, C], 'label': int32 []}``."""

  def __init__(self, image_size: int, channels: int):
    self._images, self._labels = _digits_arrays(image_size)
    self._channels = channels

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict:
    image = pipeline.to_channels(self._images[index], self._channels)
    return pipeline.example(image, self._labels[index])


def digits_info(data_config: Any) -> pipeline.DatasetInfo:
  size, channels = _digits_settings(data_config)
  return pipeline.DatasetInfo((size, size, channels), 10, 1797,
                              tuple(str(d) for d in range(10)))


def digits_source(data_config: Any) -> DigitsSource:
  return DigitsSource(*_digits_settings(data_config))


# ----------------------------------------------------------------------------- crops


@functools.lru_cache(maxsize=4)
def _crop_photos(image_size: int) -> tuple[np.ndarray, ...]:
  """Each photo as uint8 [H, W, 3], downscaled so min(H, W) == 4 * image_size; read-only."""
  short = _CROP_SCALE * image_size
  photos = []
  for name in CROP_PHOTOS:
    photo = pipeline.to_channels(np.asarray(getattr(skimage.data, name)()), 3)
    h, w = photo.shape[:2]
    scale = short / min(h, w)
    photo = pipeline.resize(photo, max(short, round(h * scale)), max(short, round(w * scale)),
                            resample=Image.LANCZOS)
    photo.setflags(write=False)
    photos.append(photo)
  return tuple(photos)


def _crops_settings(data_config: Any) -> tuple[int, int, int, int]:
  """Validates the crops config; returns (image_size, channels, num_crops, split_id)."""
  size = pipeline.require_int(pipeline.field(data_config, 'image_size'), 'image_size',
                              allowed=CROPS_SIZES)
  num = pipeline.require_int(pipeline.field(data_config, 'num_crops'),
                             'num_crops')
  split = pipeline.field(data_config, 'split')
  if split not in CROPS_SPLITS:
    raise ValueError(f"data.split={split!r} is not available for 'crops'; "
                     f'use one of {CROPS_SPLITS}.')
  return size, pipeline.channels_of(data_config, 3), num, CROPS_SPLITS.index(split)


class CropsSource:
  """Random-access source of photo crops: ``src[i] = {'image': uint8 [S, S, C], 'label': int32}``.

  ``label = i % len(CROP_PHOTOS)``; the crop corner comes from ``default_rng([split_id, i])``.
  """

  def __init__(self, image_size: int, channels: int, num_crops: int, split_id: int = 0):
    self._photos = _crop_photos(image_size)
    self._size = image_size
    self._channels = channels
    self._num = num_crops
    self._split_id = split_id

  def __len__(self) -> int:
    return self._num

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self._num:
      raise IndexError(f'crop index {index} out of range [0, {self._num}).')
    label = index % len(self._photos)
    photo = self._photos[label]
    rng = np.random.default_rng([self._split_id, index])
    top = int(rng.integers(0, photo.shape[0] - self._size + 1))
    left = int(rng.integers(0, photo.shape[1] - self._size + 1))
    crop = photo[top:top + self._size, left:left + self._size]
    return pipeline.example(pipeline.to_channels(crop, self._channels), label)


def crops_info(data_config: Any) -> pipeline.DatasetInfo:
  size, channels, num, _ = _crops_settings(data_config)
  return pipeline.DatasetInfo((size, size, channels), len(CROP_PHOTOS), num, CROP_PHOTOS)


def crops_source(data_config: Any) -> CropsSource:
  return CropsSource(*_crops_settings(data_config))
