"""Workdir file I/O through `etils.epath`: local paths and object stores (gs://, s3://) alike.

Everything adaflow writes into or reads from a workdir besides orbax checkpoints (config.json,
metrics.jsonl, sample grids, FID shards, DONE markers, memory banks, the classifier cache, ...)
goes through these helpers, so that `--workdir gs://bucket/run` keeps all of it in the bucket
instead of in a local folder literally named `gs:`. Path strings are built with `os.path.join`
as before (it joins `gs://b/r` correctly); only `os.path.abspath` / `normpath` break a URI, which
is why `absolute` leaves URIs alone.

Local paths behave exactly as the plain `open` / `os` calls they replace: same bytes, and the same
write-to-`<path>.tmp`-then-rename where a write was atomic before. On an object store a single
object upload is already atomic (readers see the old or the new object, never a torn one), so an
atomic write there is one upload: a rename would be a copy plus a delete.

gs:// paths need `gcsfs` (epath's fsspec backend) unless TensorFlow is installed; s3:// needs `s3fs`.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import socket
import tempfile
import time
import zipfile
from typing import Any, Iterator, Union

import numpy as np
from etils import epath

PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
  """True for a URI such as gs://bucket/run or s3://bucket/run (not a local path)."""
  return "://" in os.fspath(path)


def absolute(path: PathLike) -> str:
  """`os.path.abspath` for local paths; URIs unchanged (abspath would turn gs://b into ./gs:/b)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def parent(path: PathLike) -> str:
  """The directory that holds `path` (absolute for local paths; a bucket root is its own parent,
  as nothing above it is in the store)."""
  if not is_remote(path):
    return os.path.dirname(os.path.abspath(path))
  p = epath.Path(path)   # parts of gs://b/r: ('/', 'gs', 'b', 'r')
  return str(p.parent) if len(p.parts) > 3 else str(p)


def makedirs(path: PathLike) -> None:
  """mkdir -p (on object stores directories are implicit: nothing to create inside a bucket)."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def exists(path: PathLike) -> bool:
  return epath.Path(path).exists()


def isdir(path: PathLike) -> bool:
  return epath.Path(path).is_dir()


def listdir(path: PathLike) -> list[str]:
  """Names in directory `path` ([] when it does not exist)."""
  p = epath.Path(path)
  return [c.name for c in p.iterdir()] if p.is_dir() else []


def rmtree(path: PathLike, ignore_errors: bool = False) -> None:
  """Deletes a directory tree; a missing one is not an error (nor is any with `ignore_errors`,
  as `shutil.rmtree(..., ignore_errors=True)`)."""
  with contextlib.suppress(Exception if ignore_errors else FileNotFoundError):
    epath.Path(path).rmtree()


def remove(path: PathLike) -> None:
  """Deletes a file; a missing one is not an error."""
  epath.Path(path).unlink(missing_ok=True)


def copy_tree(local_dir: str, dst: PathLike) -> None:
  """Copies the files under local directory `local_dir` to `dst` (local or remote), keeping the
  relative layout (for tools such as the profiler that can only write to a local directory)."""
  for root, _, files in os.walk(local_dir):
    for name in files:
      rel = os.path.relpath(os.path.join(root, name), local_dir)
      with open(os.path.join(root, name), "rb") as f:
        write_bytes(os.path.join(os.fspath(dst), rel), f.read())


def read_text(path: PathLike) -> str:
  return epath.Path(path).read_text()


def read_json(path: PathLike) -> Any:
  return json.loads(read_text(path))


def write_bytes(path: PathLike, data: bytes, atomic: bool = False) -> None:
  """Writes `data` to `path` (creating its directory). `atomic`: locally via `<path>.tmp` and a
  rename, so a kill mid-write leaves the old file; on an object store one upload is atomic."""
  p = epath.Path(path)
  if is_remote(path):
    p.write_bytes(data)   # directories are implicit in object stores
    return
  p.parent.mkdir(parents=True, exist_ok=True)
  if atomic:
    tmp = epath.Path(os.fspath(path) + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(p)
  else:
    p.write_bytes(data)


def write_text(path: PathLike, text: str, atomic: bool = False) -> None:
  """`write_bytes` of UTF-8 text (what `open(path, "w")` writes here)."""
  write_bytes(path, text.encode("utf-8"), atomic=atomic)


def write_json(path: PathLike, obj: Any, atomic: bool = False, **dump_kwargs) -> None:
  """`json.dump(obj, f, **dump_kwargs)` into `path`."""
  write_text(path, json.dumps(obj, **dump_kwargs), atomic=atomic)


def append_text(path: PathLike, text: str) -> None:
  """Appends `text` to `path`. Object stores cannot append, so there the object is read and
  rewritten whole (one upload, atomic): fine for a log of small rows written every few steps."""
  if is_remote(path):
    p = epath.Path(path)
    old = p.read_bytes() if p.exists() else b""
    p.write_bytes(old + text.encode("utf-8"))
  else:
    with open(path, "a") as f:
      f.write(text)


def save_npz(path: PathLike, atomic: bool = False, **arrays: np.ndarray) -> None:
  """`np.savez(path, **arrays)`; `atomic` as in `write_bytes`."""
  if is_remote(path):
    # Uploads are whole objects; np.savez also needs a seekable file, which upload streams are not.
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())
    return
  target = os.fspath(path) + ".tmp" if atomic else os.fspath(path)
  with open(target, "wb") as f:
    np.savez(f, **arrays)
  if atomic:
    os.replace(target, path)


def read_torch_file(path: str, flag: str) -> Any:
  """`torch.load(path, map_location="cpu", weights_only=True)`: no pickled code runs. A file torch
  refuses or cannot read is a ValueError naming `flag`, the file and torch's cause."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  # optional: only PyTorch files need it
  except ImportError as e:
    raise ValueError(f"{flag}={path}: reading a PyTorch file needs PyTorch (`pip install torch`), or convert "
                     "it to .safetensors") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # unpickling refused, torn or foreign file
    # torch's text is paragraphs: advice to unpickle, the cause (e.g. "unsupported GLOBAL posix.system"), a link.
    causes = [" ".join(p.split()) for p in str(e).split("\n\n") if p.strip() and not p.strip().startswith("Check the")]
    raise ValueError(f"{flag}={path}: could not be read with torch.load(weights_only=True) ({type(e).__name__}: "
                     f"{(causes[-1] if causes else '')[:200]}); save the bare state dict "
                     "(torch.save(model.state_dict(), path)) or use safetensors") from None


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[str]:
  """A local file path holding `path`'s bytes: the path itself when local; for an object-store URI
  a temporary copy (same file extension), removed on exit. For readers that take file names only
  (torch.load of a large file, safetensors, hashing)."""
  if not is_remote(path):
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, "copy" + os.path.splitext(os.fspath(path))[1])
    with epath.Path(path).open("rb") as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 24)
    yield local


class _CheckedNpz:
  """An open `np.load` archive whose reads fail as ValueErrors naming the file and the array."""

  def __init__(self, archive, path: PathLike):
    self._archive, self._path = archive, path
    self.files = archive.files

  def __getitem__(self, key: str) -> np.ndarray:
    try:
      return self._archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:   # object arrays, torn entries
      raise ValueError(f"{self._path}: cannot read array {key!r} ({str(e)[:120]}); it must hold plain "
                       "numeric arrays written by np.savez (no Python objects)") from e


@contextlib.contextmanager
def open_npz(path: PathLike) -> Iterator[Any]:
  """`np.load(path, allow_pickle=False)` as a context manager, for local and remote files; the
  arrays are read lazily, only those accessed. A file that is not such an archive, or an array
  that needs unpickling, is a ValueError naming the file."""
  with contextlib.ExitStack() as stack:
    try:
      source = path if not is_remote(path) else stack.enter_context(epath.Path(path).open("rb"))
      loaded = np.load(source, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f"{path} is not a readable .npz archive ({str(e)[:120]}); write it with np.savez") from e
    if not hasattr(loaded, "files"):     # np.load of a bare .npy gives an array, not an archive
      raise ValueError(f"{path} holds one .npy array, not an .npz archive of named arrays; write it with np.savez")
    yield _CheckedNpz(stack.enter_context(loaded), path)


_HINTS = {
    "gs": "run 'gcloud auth application-default login' (and `pip install gcsfs`) or use a local path",
    "s3": "configure AWS credentials (and `pip install s3fs`) or use a local path",
    "": "check the path, its permissions and free space, or use a local path",
}


def check_writable(directory: PathLike, setting: str = "--workdir") -> None:
  """Creates `directory` and writes and deletes a probe file in it; on failure one ValueError names
  `setting`, the path and the reason (object stores: no credentials, no such bucket, no gcsfs).

  Meant to run before anything compiles, so that a bad path costs seconds, not a compilation.
  """
  path = os.fspath(directory)
  # Host and pid: every process of a multi-host run probes at once, possibly in the same bucket.
  probe = epath.Path(path) / f".write_probe_{socket.gethostname()}_{os.getpid()}"
  try:
    makedirs(path)
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  # auth, HTTP, import and OS errors alike
    lines = str(e).strip().splitlines()
    reason = f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__
    if is_remote(path) and isinstance(e, FileNotFoundError):   # gcsfs names only the upload URL
      reason = f"the bucket does not exist or these credentials cannot see it ({reason})"
    hint = _HINTS.get(path.split("://")[0] if is_remote(path) else "", _HINTS[""])
    raise ValueError(f"{setting} {path} is not writable: {reason}; {hint}") from e


LOCK_FILE = ".adaflow.lock"


@contextlib.contextmanager
def exclusive_use(workdir: PathLike, setting: str = "--workdir") -> Iterator[None]:
  """While active, this process holds an exclusive `flock` on `<workdir>/.adaflow.lock`: a second
  run in the same workdir (started twice by hand or by a scheduler's retry while the first still
  runs) fails with one ValueError naming the holder, instead of both silently writing over each
  other's checkpoints and metrics. The kernel drops the lock when its process ends however it ends
  (kill -9 too), so no lock is ever stale. Object stores have no locks and a filesystem without
  flock support runs unlocked; a path that cannot be created is left to `check_writable`'s error.
  """
  path = os.fspath(workdir)
  try:
    if is_remote(path):
      raise OSError("object store")
    os.makedirs(path, exist_ok=True)
    f = open(os.path.join(path, LOCK_FILE), "a+")
  except OSError:
    yield
    return
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      locked = True
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise ValueError(f"{setting} {path} is in use by another run ({holder}): two runs in one workdir "
                       "overwrite each other's checkpoints; wait for it to end or stop it, or pass another "
                       f"{setting}") from None
    except OSError:   # no flock on this filesystem (some network / FUSE mounts)
      locked = False
    if locked:
      f.seek(0)
      f.truncate()
      f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
      f.flush()
    yield
  finally:
    f.close()
