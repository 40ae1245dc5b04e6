"""Baselines run on the same block matrices: GGUF quantizers (the ``gguf`` package's reference implementations of
llama.cpp's formats) and round-to-nearest with per-group scale and zero.

A baseline replaces each block matrix ``W`` by its dequantized round trip and counts its *nominal* bits per weight
(the format's codes and per-block scales, which is what a file of that format spends on the matrix); embeddings and
vectors are left as they are, which favours the baselines slightly on quality.

Example:
  >>> W = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
  >>> What, bits = quantize("Q8_0", W)
  >>> bits, bool(np.abs(What - W).max() < 0.05)
  (8.5, True)
"""

from __future__ import annotations

import numpy as np

from macjax.errors import ConfigError, ShapeError

#: Nominal bits per weight of the GGUF formats the ``gguf`` package quantizes (codes + fp16 block scales/mins).
GGUF_BITS = {"Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5}
#: Round-to-nearest baselines: name -> bits per code (groups of :data:`RTN_GROUP` inputs, fp16 scale and zero).
RTN_BITS = {"rtn_int8": 8, "rtn_int4": 4, "rtn_int3": 3, "rtn_int2": 2}
RTN_GROUP = 64
NAMES = tuple(GGUF_BITS) + tuple(RTN_BITS)


def rtn_groups(W: np.ndarray, bits: int, group: int = RTN_GROUP) -> np.ndarray:
  """Asymmetric round-to-nearest with min/max per group of ``group`` consecutive inputs; float16 scale and zero
  (both stored: ``bits + 32/group`` bits/weight)."""
  rows, cols = W.shape
  g = W.reshape(rows, cols // group, group).astype(np.float32)
  lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
  levels = 2**bits - 1
  scale = ((hi - lo) / levels).astype(np.float16).astype(np.float32)
  scale = np.where(scale == 0, np.float32(1.0), scale)
  zero = lo.astype(np.float16).astype(np.float32)
  q = np.clip(np.rint((g - zero) / scale), 0, levels)
  return (q * scale + zero).reshape(rows, cols)


def block_size(name: str) -> int:
  """Inputs per block of the baseline ``name`` (its input width must be a multiple).

  Raises:
    ConfigError: an unknown name.
  """
  if name in RTN_BITS:
    return RTN_GROUP
  if name not in GGUF_BITS:
    raise ConfigError(f"baseline {name!r}; expected one of {list(NAMES)}")
  import gguf  # pylint: disable=g-import-not-at-top
  return int(gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, name)][0])


def check(name: str, shape: tuple[int, ...], what: str = "matrix") -> None:
  """Raises ShapeError when the baseline's blocks do not divide the input width of ``shape`` (ConfigError for an
  unknown name)."""
  block = block_size(name)
  if shape[-1] % block:
    raise ShapeError(f"{name}: {what} {tuple(shape)} has {shape[-1]} input columns, not a multiple of its block "
                     f"size {block}")


def quantize(name: str, W: np.ndarray) -> tuple[np.ndarray, float]:
  """``(dequantized W, nominal bits/weight)`` of the baseline ``name`` (one of :data:`NAMES`).

  Raises:
    ConfigError: an unknown name. ShapeError: an input width the format's blocks do not divide.
  """
  W = np.ascontiguousarray(W, np.float32)
  check(name, W.shape)
  if name in RTN_BITS:
    return rtn_groups(W, RTN_BITS[name]), RTN_BITS[name] + 32 / RTN_GROUP
  import gguf  # pylint: disable=g-import-not-at-top
  from gguf import quants  # pylint: disable=g-import-not-at-top
  qtype = getattr(gguf.GGMLQuantizationType, name)
  packed = quants.quantize(W, qtype)
  return np.asarray(quants.dequantize(packed, qtype), np.float32).reshape(W.shape), GGUF_BITS[name]


__all__ = ["GGUF_BITS", "NAMES", "RTN_BITS", "RTN_GROUP", "block_size", "check", "quantize", "rtn_groups"]
