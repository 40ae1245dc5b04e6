"""Persistence of compressed models: Orbax folders with a verified JSON manifest, and their byte accounting.

This package is the only one that reads or writes artifact files. See :mod:`macjax.artifact.store` for the
folder layout and its guarantees (written unit by unit, resumable, atomic, verified restores, no pickle) and
:mod:`macjax.artifact.pack` for the bucket layout inside a unit.
"""

from __future__ import annotations

import os

import numpy as np

from macjax.artifact.pack import KINDS, Packer, bucket_kind, unpack
from macjax.artifact.store import (FORMAT, FORMAT_VERSION, ArtifactWriter, assets_bytes, bucket_table, disk_bytes,
                                   load, load_assets, load_unit, manifest_bytes, partial_path, read_manifest, save)


def size_breakdown(path: str | os.PathLike, manifest: dict | None = None) -> dict[str, int]:
  """Bytes of an artifact on disk, by what they are for.

  ``total`` is every byte of every file in the folder. It splits exactly into the payload kinds of
  :data:`~macjax.artifact.pack.KINDS` (uncompressed bytes of their buckets; ``assets`` are the plain files under
  ``assets/``), ``manifest`` (the JSON manifest file) and ``container`` (the rest: each unit's Orbax/TensorStore
  files and headers, *minus* what their zstd compression saved — so it can be negative)::

      total == sum(kind bytes) + assets + manifest + container

  Example:
    >>> b = size_breakdown("out/smollm2.mjx")  # doctest: +SKIP
    >>> b["total"] * 8 / n_params  # bits per parameter  # doctest: +SKIP
  """
  manifest = read_manifest(path) if manifest is None else manifest
  out = {kind: 0 for kind in KINDS}
  for unit in manifest["units"].values():
    for name, b in unit["buckets"].items():
      out[bucket_kind(name)] += int(np.prod(b["shape"], dtype=np.int64)) * np.dtype(b["dtype"]).itemsize
  out["assets"] = assets_bytes(path)
  out["manifest"] = manifest_bytes(path)
  out["total"] = disk_bytes(path)
  out["container"] = out["total"] - sum(out[k] for k in KINDS) - out["assets"] - out["manifest"]
  return out


__all__ = [
    "FORMAT", "FORMAT_VERSION", "KINDS", "ArtifactWriter", "Packer", "unpack", "save", "load", "load_unit",
    "read_manifest", "disk_bytes", "load_assets", "partial_path", "size_breakdown", "bucket_table",
]
