"""Tensors read from their files one at a time, on access: a checkpoint that is never whole in memory.

:class:`LazyTensors` is a read-only ``Mapping[str, np.ndarray]`` over memory-mapped files (safetensors shards via
``safetensors.safe_open``, GGUF tensors via ``gguf.GGUFReader``'s map). Shapes and stored dtypes come from the
files' headers, so a loader can check a checkpoint against its config without reading any weight. Each
``tensors[name]`` reads, converts to float32 (floats) and returns a fresh array that nobody else holds: the caller
decides how long it lives, and a pass over the model one layer at a time holds one layer.

Every floating-point tensor is checked for NaN/inf when it is read (:func:`check_finite_array`): a corrupt weight is
an error naming the tensor, whichever stage reads it first.

Example:
  >>> t = LazyTensors({"w": (lambda: np.ones((2, 3), np.float32))}, {"w": (2, 3)}, {"w": "F32"}, where="x")
  >>> t["w"].shape, t.shape("w"), len(t)
  ((2, 3), (2, 3), 1)
"""

from __future__ import annotations

import collections.abc
from typing import Callable, Iterator, Mapping

import numpy as np

from macjax.errors import NonFiniteError

#: Stored dtypes (safetensors names, GGUF quantization types) whose tensors are floating point: everything but
#: safetensors' integer and bool types.
INTEGER_DTYPES = frozenset({"I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL"})


def check_finite_array(name: str, array: np.ndarray, where: str) -> None:
  """Raise :class:`NonFiniteError` naming ``name`` and its first bad index if ``array`` holds NaN or infinity.

  Example:
    >>> check_finite_array("w", np.ones(3, np.float32), "x")
  """
  if not np.issubdtype(array.dtype, np.floating):
    return
  finite = np.isfinite(array)
  if not finite.all():
    bad = np.argwhere(~finite)
    raise NonFiniteError(f"{where}: tensor {name!r} (shape {array.shape}) has {len(bad)} NaN/inf value(s), "
                         f"first at index {tuple(int(i) for i in bad[0])}; expected finite weights")


class LazyTensors(collections.abc.Mapping):
  """``{name: array}`` whose arrays are read from disk on each access (nothing is cached).

  Args:
    readers: name -> a function of no arguments returning the tensor (floats as float32).
    shapes: name -> shape, from the file header.
    dtypes: name -> stored dtype (``"BF16"``, ``"F32"``, ``"Q4_1"`` ...), from the file header.
    where: the file or folder, for error messages.
    keep_open: objects (open files, maps) that the readers need, held as long as this mapping lives.
  """

  def __init__(self, readers: Mapping[str, Callable[[], np.ndarray]], shapes: Mapping[str, tuple[int, ...]],
               dtypes: Mapping[str, str], *, where: str, keep_open: tuple = ()):
    self._readers = dict(readers)
    self._shapes = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
    self._dtypes = dict(dtypes)
    self._where = where
    self._keep_open = keep_open

  def __getitem__(self, name: str) -> np.ndarray:
    array = self._readers[name]()
    check_finite_array(name, array, self._where)
    return array

  def __iter__(self) -> Iterator[str]:
    return iter(self._readers)

  def __len__(self) -> int:
    return len(self._readers)

  def __contains__(self, name: object) -> bool:
    return name in self._readers

  def shape(self, name: str) -> tuple[int, ...]:
    """The tensor's shape from the file header (no read)."""
    return self._shapes[name]

  def dtype(self, name: str) -> str:
    """How the file stores the tensor (``"BF16"``, ``"F32"``, ``"Q4_1"`` ...)."""
    return self._dtypes[name]

  def select(self, names) -> "LazyTensors":
    """The same files, restricted to ``names`` (e.g. without derived buffers)."""
    names = [n for n in names if n in self._readers]
    return LazyTensors({n: self._readers[n] for n in names}, {n: self._shapes[n] for n in names},
                       {n: self._dtypes[n] for n in names}, where=self._where, keep_open=self._keep_open)

  def transposed(self, names) -> "LazyTensors":
    """The same files, with the 2-D tensors ``names`` read transposed (GPT-2's ``Conv1D`` weights, stored
    ``(in, out)``, presented as ``(out, in)``)."""
    names = frozenset(n for n in names if n in self._readers)
    bad = [n for n in names if len(self._shapes[n]) != 2]
    if bad:
      raise ValueError(f"transposed: {bad[0]!r} is not 2-D")

    def transpose(read):
      return lambda: np.ascontiguousarray(read().T)

    return LazyTensors({n: transpose(r) if n in names else r for n, r in self._readers.items()},
                       {n: s[::-1] if n in names else s for n, s in self._shapes.items()}, self._dtypes,
                       where=self._where, keep_open=self._keep_open)

  def materialize(self) -> dict[str, np.ndarray]:
    """Every tensor read into memory (each checked finite), as a plain dict."""
    return {name: self[name] for name in self._readers}


def shape_of(params: Mapping[str, np.ndarray], name: str) -> tuple[int, ...]:
  """A tensor's shape without reading it when ``params`` is lazy."""
  return params.shape(name) if isinstance(params, LazyTensors) else tuple(np.shape(params[name]))
