"""Image folders: ``data.data_dir/<class name>/<image file>``.

Classes are the sorted subfolder names; files (png, jpg, jpeg, bmp, webp; any case) are sorted
within each class. Images are loaded with PIL, converted to ``data.channels`` (default 3) and
must be ``image_size`` square unless ``data.resize=True``.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from adaflow.data import pipeline

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


def _scan(root: str) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
  """Returns (class names, ((path, label), ...)) for an image-folder root."""
  classes = tuple(sorted(
      d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))))
  files = []
  for label, name in enumerate(classes):
    folder = os.path.join(root, name)
    for fname in sorted(os.listdir(folder)):
      if fname.lower().endswith(EXTENSIONS):
        files.append((os.path.join(folder, fname), label))
  return classes, tuple(files)


def _settings(data_config: Any) -> dict:
  """Validates the folder config and scans it; returns the settings as a dict."""
  root = pipeline.field(data_config, 'data_dir')
  if not root or not os.path.isdir(root):
    raise ValueError(f"data.data_dir={root!r} is not a directory; for data.name='folder' set "
                     'data.data_dir to a folder with one subfolder of images per class.')
  classes, files = _scan(os.path.abspath(root))
  if not files:
    raise ValueError(f'data.data_dir={root!r} holds no images: expected one subfolder per class '
                     f'containing files ending in {EXTENSIONS}.')
  return {
      'root': root,
      'size': pipeline.require_int(pipeline.field(data_config, 'image_size'), 'image_size'),
      'channels': pipeline.channels_of(data_config, 3),
      'resize': bool(pipeline.field(data_config, 'resize', False)),
      'classes': classes,
      'files': files,
  }


class FolderSource:
  """Random-access source: ``src[i] = {'image': uint8 [S, S, C], 'label': int32 []}``."""

  def __init__(self, data_config: Any):
    self._s = _settings(data_config)
    self._load(0)  # Validate the first image (shape, readability) before any JAX compile.

  def __len__(self) -> int:
    return len(self._s['files'])

  def _load(self, index: int) -> dict:
    path, label = self._s['files'][int(index)]
    size = self._s['size']
    with Image.open(path) as pil:
      image = np.asarray(pil.convert('L' if self._s['channels'] == 1 else 'RGB'))
    if image.shape[:2] != (size, size) and not self._s['resize']:
      raise ValueError(
          f'{path} has shape {image.shape[:2]} but data.image_size={size}; make the images '
          f'{size}x{size} or set data.resize=True to resize them with PIL.')
    image = pipeline.resize(pipeline.to_channels(image, self._s['channels']), size, size)
    return pipeline.example(image, label)

  def __getitem__(self, index: int) -> dict:
    return self._load(index)

  def info(self) -> pipeline.DatasetInfo:
    size, classes = self._s['size'], self._s['classes']
    return pipeline.DatasetInfo((size, size, self._s['channels']), len(classes), len(self),
                                classes)


def folder_source(data_config: Any) -> FolderSource:
  return FolderSource(data_config)


def folder_info(data_config: Any) -> pipeline.DatasetInfo:
  return FolderSource(data_config).info()
