"""A fingerprint of a checkpoint's files: what a resumed compression must find unchanged.

Each file of the source (``config.json``, the safetensors shards and index, the tokenizer files; or the ``.gguf``)
is identified by its size and a SHA-256. Files up to :data:`FULL_HASH_BYTES` are hashed whole. Larger files are
hashed over their first 16 MiB (the safetensors / GGUF header and the first tensors) and 64 evenly spaced 1 MiB
windows: reading a 140 GB checkpoint in full on every start would cost minutes, and a changed file almost always
changes its size, its header or one of those windows. (An edit confined to the unsampled bytes of a large file
goes unnoticed: the per-tensor SHA-256 in the finished artifact still describes what was encoded.)

Example:
  >>> fp = source_fingerprint("tests/fixtures")  # doctest: +SKIP
  >>> sorted(fp)[:1]  # doctest: +SKIP
  ['config.json']
"""

from __future__ import annotations

import hashlib
import os
import pathlib

from macjax.errors import ModelLoadError

FULL_HASH_BYTES = 256 << 20
_HEAD = 16 << 20
_WINDOW = 1 << 20
_WINDOWS = 64


def file_digest(path: pathlib.Path) -> str:
  """``sha256:<hex>`` of the whole file, or ``sampled-sha256:<hex>`` of its head and windows (module docstring)."""
  size = path.stat().st_size
  h = hashlib.sha256()
  with open(path, "rb") as f:
    if size <= FULL_HASH_BYTES:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
      return "sha256:" + h.hexdigest()
    h.update(f.read(_HEAD))
    for k in range(_WINDOWS):
      f.seek(_HEAD + (size - _HEAD - _WINDOW) * k // (_WINDOWS - 1))
      h.update(f.read(_WINDOW))
  return "sampled-sha256:" + h.hexdigest()


def source_fingerprint(path: str | os.PathLike) -> dict[str, dict]:
  """``{file name: {"bytes": size, "digest": ...}}`` for a model folder (every plain file in it) or a file.

  Raises:
    ModelLoadError: the path does not exist.
  """
  path = pathlib.Path(path)
  if path.is_file():
    files = [path]
  elif path.is_dir():
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
  else:
    raise ModelLoadError(f"{path}: no such file or folder")
  return {p.name: {"bytes": p.stat().st_size, "digest": file_digest(p)} for p in files}
