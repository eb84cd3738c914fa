"""Sample grids as PNG files (local or on an object store, through `adaflow.storage`)."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from adaflow import storage


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[..., H, W, C] in [-1, 1] -> uint8 [0, 255]."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_format(path: str) -> str:
  """PIL's format name for `path`'s extension; ValueError when PIL cannot write that format."""
  ext = os.path.splitext(os.fspath(path))[1].lower()
  fmt = Image.registered_extensions().get(ext)
  if fmt is None or fmt not in Image.SAVE:   # unknown, or a format PIL only reads (.psd, .fits, ...)
    raise ValueError(f"{path}: PIL cannot write images with the extension {ext!r}; use .png (or .jpg, .webp)")
  return fmt


def check_image_path(path: str, setting: str = "--out") -> None:
  """Before sampling: `path` names a format PIL writes and its folder is writable (created here);
  one ValueError naming `setting` otherwise, so that a bad path costs no sampling."""
  try:
    image_format(path)
  except ValueError as e:
    raise ValueError(f"{setting} {e}") from None
  storage.check_writable(storage.parent(path), setting)


def save_grid(images: np.ndarray, path: str, rows: int, upscale: int = 1) -> str:
  """images [N, H, W, C] in [-1, 1] laid out `rows` x ceil(N / rows) with 1-px gaps -> PNG
  (`rows` 0: about square, for samples without classes)."""
  imgs = to_uint8(images)
  n, h, w, c = imgs.shape
  rows = rows if rows > 0 else max(1, int(np.sqrt(n)))
  cols = -(-n // rows)
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = imgs[i]
  if c == 1:
    grid = grid[..., 0]
  img = Image.fromarray(grid)
  if upscale > 1:
    img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
  # Encoded in memory, then written in one piece: the same bytes as `img.save(path)`, to any path.
  buf = io.BytesIO()
  img.save(buf, format=image_format(path))
  storage.write_bytes(path, buf.getvalue())
  return path
