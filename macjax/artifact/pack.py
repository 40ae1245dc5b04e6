"""Packing many small per-tensor arrays into a few flat buckets, and back.

An artifact holds, for every tensor, several *parts* (the coded words, the probability table, the step sizes, …).
Saving each part as its own Orbax array would cost a container entry (hundreds of bytes) per part; instead parts
of the same *kind* and dtype are concatenated into one flat bucket, and an index records where each part lives.

Kinds name what the bytes are for; they are the rows of the bit-accounting breakdown:

* ``codes``     — entropy-coded streams (``uint32`` words);
* ``tables``    — serialized probability models of the entropy coder;
* ``scales``    — quantizer side information (step sizes, zero points);
* ``theta``     — parameters of ``f_θ`` (the functional fit);
* ``transform`` — stored transform state (bases, scales) that is not absorbed into the model;
* ``raw``       — tensors kept as they are (norms, biases).

(``assets``, the tokenizer files, are plain files beside the buckets: see :func:`macjax.artifact.save`.)

Example:
  >>> p = Packer()
  >>> p.add("w", "codes", "codes", np.arange(3, dtype=np.uint32))
  >>> buckets, index = p.finish()
  >>> unpack(buckets, index)["w"]["codes"]
  array([0, 1, 2], dtype=uint32)
"""

from __future__ import annotations

import collections

import numpy as np

from macjax.errors import ArtifactError

KINDS = ("codes", "tables", "scales", "theta", "transform", "raw")


def bucket_name(kind: str, dtype: np.dtype) -> str:
  """The bucket that holds parts of ``kind`` and ``dtype``, e.g. ``codes__uint32``."""
  return f"{kind}__{np.dtype(dtype).name}"


def bucket_kind(name: str) -> str:
  """The kind of a bucket name made by :func:`bucket_name`."""
  return name.split("__", 1)[0]


class Packer:
  """Collects ``(tensor, part) -> array`` and lays them out in flat buckets."""

  def __init__(self):
    self._chunks: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    self._sizes: dict[str, int] = collections.defaultdict(int)
    self._index: dict[str, dict[str, dict]] = collections.defaultdict(dict)

  def add(self, tensor: str, part: str, kind: str, array: np.ndarray) -> None:
    """Adds one part. ``array`` is stored flat; its shape and dtype go to the index."""
    if kind not in KINDS:
      raise ValueError(f"unknown part kind {kind!r} for {tensor}/{part}; expected one of {KINDS}")
    if part in self._index[tensor]:
      raise ValueError(f"part {part!r} of tensor {tensor!r} added twice")
    array = np.asarray(array)  # (not ascontiguousarray: it turns 0-d arrays into shape (1,))
    name = bucket_name(kind, array.dtype)
    self._index[tensor][part] = {
        "bucket": name,
        "offset": self._sizes[name],
        "size": int(array.size),
        "shape": list(array.shape),
    }
    self._chunks[name].append(np.ascontiguousarray(array).reshape(-1))
    self._sizes[name] += int(array.size)

  def finish(self) -> tuple[dict[str, np.ndarray], dict[str, dict[str, dict]]]:
    """Returns ``(buckets, index)``: ``{bucket name: flat array}`` and ``{tensor: {part: location}}``."""
    buckets = {name: np.concatenate(chunks) for name, chunks in self._chunks.items()}
    return buckets, {t: dict(parts) for t, parts in self._index.items()}


def unpack(buckets: dict[str, np.ndarray], index: dict[str, dict[str, dict]]) -> dict[str, dict[str, np.ndarray]]:
  """Inverse of :class:`Packer`: ``{tensor: {part: array}}`` (views into the buckets, reshaped).

  Raises:
    ArtifactError: if the index points outside a bucket or to a missing bucket.
  """
  out: dict[str, dict[str, np.ndarray]] = {}
  for tensor, parts in index.items():
    out[tensor] = {}
    for part, loc in parts.items():
      bucket = buckets.get(loc["bucket"])
      if bucket is None:
        raise ArtifactError(f"artifact index: part {tensor}/{part} refers to missing bucket {loc['bucket']!r}")
      start, size = int(loc["offset"]), int(loc["size"])
      shape = tuple(int(s) for s in loc["shape"])
      if start < 0 or start + size > bucket.size or int(np.prod(shape, dtype=np.int64)) != size:
        raise ArtifactError(
            f"artifact index: part {tensor}/{part} spans [{start}, {start + size}) with shape {shape}, "
            f"but bucket {loc['bucket']!r} has {bucket.size} elements")
      out[tensor][part] = bucket[start:start + size].reshape(shape)
  return out
