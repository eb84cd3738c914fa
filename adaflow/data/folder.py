"""Image folders: a flat folder ``data.data_dir/<image file>`` (unlabeled) or class subfolders
``data.data_dir/<class name>/<image file>``.

Image files are png, jpg, jpeg, bmp, webp (any case), sorted by name. Which layout a folder has:

* images directly in ``data_dir`` (subfolders without images are ignored): ONE unlabeled dataset,
  i.e. an unconditional model; subfolders are not searched;
* no images directly in it: the sorted subfolders are the classes (labels 0, 1, ... in that order);
  with a single class subfolder the data is unlabeled too (one class carries no information);
* images both directly in it and in subfolders: an error (which of them did you mean?), unless
  ``data.use_labels=False``: then all of them, ``data_dir`` and its subfolders (one level), are one
  unlabeled dataset (e.g. FFHQ's shard folders 00000/, 01000/, ...: without it, classes).

Images are loaded with PIL and converted to ``data.channels`` (default 3):
gray (L, I;16, P with a gray palette) -> RGB repeats the plane, RGBA -> RGB drops the alpha
channel (PIL ``convert('RGB')``: transparent pixels keep their stored colour, no compositing),
RGB -> gray uses ITU-R 601 luma. Size handling:

* default: images must already be ``image_size`` square;
* ``data.resize=True``: resize to ``image_size`` square (the aspect ratio is not kept);
* ``data.crop='center'``: ADM's ImageNet preprocessing (``center_crop_arr`` of
  openai/guided-diffusion, arXiv 2105.05233): halve with a box filter while the short side is
  >= 2 * image_size, resize the short side to ``image_size``, center-crop the square.

``data.resample`` picks the PIL filter of the resizes (default bicubic, as ADM).
A file PIL cannot read (truncated, corrupt) fails with one error that names it.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from adaflow.data import pipeline
from adaflow.errors import UserError

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
CROPS = ('', 'center')
RESAMPLE = {'nearest': Image.NEAREST, 'box': Image.BOX, 'bilinear': Image.BILINEAR,
            'bicubic': Image.BICUBIC, 'lanczos': Image.LANCZOS}


def center_crop(pil: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
  """ADM's `center_crop_arr` (guided-diffusion image_datasets.py): box-halve while the short side
  is >= 2 * size (cheap anti-aliasing), resize the short side to `size`, crop the centre square."""
  while min(*pil.size) >= 2 * size:
    pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
  scale = size / min(*pil.size)
  pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=resample)
  left, top = (pil.size[0] - size) // 2, (pil.size[1] - size) // 2
  return pil.crop((left, top, left + size, top + size))


def _images(folder: str) -> list[str]:
  return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
          if f.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(folder, f))]


def _scan(root: str, use_labels: bool) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
  """Returns (class names, ((path, label), ...)) for an image-folder root: no class names (all
  labels 0) for a flat folder, or for every layout with `use_labels=False` (see module docstring)."""
  classes = tuple(sorted(
      d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))))
  per_class = [_images(os.path.join(root, name)) for name in classes]
  top = _images(root)
  if top and any(per_class) and use_labels:
    raise ValueError(f'data.data_dir={root!r} holds images both directly and in subfolders '
                     f'({", ".join(c for c, f in zip(classes, per_class) if f)[:200]}); move them into one '
                     'layout (a flat folder, or one subfolder per class), or set data.use_labels=False to '
                     'use all of them without labels.')
  if top or not use_labels:
    return (), tuple((path, 0) for path in top + [p for files in per_class for p in files])
  return classes, tuple((path, label) for label, files in enumerate(per_class) for path in files)


def _settings(data_config: Any) -> dict:
  """Validates the folder config and scans it; returns the settings as a dict."""
  root = pipeline.field(data_config, 'data_dir')
  if not root or not os.path.isdir(root):
    raise ValueError(f"data.data_dir={root!r} is not a directory; for data.name='folder' set "
                     'data.data_dir to a folder of images (or with one subfolder of images per class).')
  classes, files = _scan(os.path.abspath(root), bool(pipeline.field(data_config, 'use_labels')))
  if not files:
    raise ValueError(f'data.data_dir={root!r} holds no images: expected files ending in {EXTENSIONS} in it '
                     '(unlabeled) or in one subfolder per class.')
  crop = pipeline.field(data_config, 'crop')
  if crop not in CROPS:
    raise ValueError(f"data.crop={crop!r} is not supported; use '' (no crop) or 'center' (ADM: resize "
                     'the short side to data.image_size, then center-crop).')
  resample = pipeline.field(data_config, 'resample')
  if resample not in RESAMPLE:
    raise ValueError(f'data.resample={resample!r} is not a PIL filter here; use one of {sorted(RESAMPLE)}.')
  return {
      'root': root,
      'crop': crop,
      'resample': RESAMPLE[resample],
      'size': pipeline.require_int(pipeline.field(data_config, 'image_size'), 'image_size'),
      'channels': pipeline.channels_of(data_config, 3),
      'resize': bool(pipeline.field(data_config, 'resize')),
      'classes': classes,
      'files': files,
  }


class FolderSource:
  """Random-access source: ``src[i] = {'image': uint8 [S, S, C], 'label': int32 []}``."""

  def __init__(self, data_config: Any):
    self._s = _settings(data_config)
    self[0]  # Validate the first image (shape, readability) before any JAX compile.

  def __len__(self) -> int:
    return len(self._s['files'])

  def __getitem__(self, index: int) -> dict:
    path, label = self._s['files'][int(index)]
    size = self._s['size']
    try:
      with Image.open(path) as pil:
        pil = pil.convert('L' if self._s['channels'] == 1 else 'RGB')   # decodes the whole file
    except (OSError, SyntaxError, ValueError) as e:   # PIL: truncated / corrupt / unknown format
      raise UserError(f'{path}: cannot read this image ({" ".join(str(e).split())}); remove or '
                      're-encode the file (data.data_dir).') from None
    if self._s['crop'] == 'center':
      pil = center_crop(pil, size, self._s['resample'])
    image = np.asarray(pil)
    if image.shape[:2] != (size, size) and not self._s['resize']:
      raise UserError(
          f'{path} has shape {image.shape[:2]} but data.image_size={size}; make the images '
          f"{size}x{size}, or set data.crop='center' (ADM center crop) or data.resize=True (resize "
          'to a square) to convert them with PIL.')
    image = pipeline.resize(pipeline.to_channels(image, self._s['channels']), size, size, self._s['resample'])
    return pipeline.example(image, label)

  def info(self) -> pipeline.DatasetInfo:
    size, classes = self._s['size'], self._s['classes']
    return pipeline.DatasetInfo((size, size, self._s['channels']), len(classes), len(self),
                                classes)


def folder_info(data_config: Any) -> pipeline.DatasetInfo:
  return FolderSource(data_config).info()
