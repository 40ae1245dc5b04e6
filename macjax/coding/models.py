"""Probability models over an integer alphabet: serialized tables and the integer counts they define.

Every kind turns its stored table into non-negative integer ``counts`` over the alphabet
``k ∈ {offset, …, offset + alphabet − 1}`` with exact integer arithmetic only (no floating point on the decode
path, so encoder and decoder agree on every machine); :func:`macjax.coding.tables.weights_from_counts` then makes
the coder's weights. Kinds:

* ``histogram`` — the (scaled) histogram, as varints (see :mod:`macjax.coding.tables`); table ≈ 1–3 bytes/symbol.
* ``laplace``  — discrete Laplace (two-sided geometric), ``c(k) ∝ θ^|k−μ|``;
* ``gaussian`` — discrete Gaussian, ``c(k) ∝ q^((k−μ)²)``;
* ``logistic`` — discrete logistic, ``c(k) ∝ u^|k−μ| / (1 + u^|k−μ|)²``.

A parametric table is 4 bytes of the parameter (``θ``, ``q`` or ``u`` as an unsigned 32-bit fixed-point fraction,
little-endian) plus ``μ`` as a zigzag varint: 5–8 bytes in all. Powers are computed in 32-bit fixed point by
binary exponentiation on ``uint64`` (``(a·b) >> 32``), which is exact integer arithmetic.

The encoder fits the parameter (moments, then the best of a few scalings by measured information bits); the
decoder never fits, it only evaluates the table.
"""

from __future__ import annotations

import numpy as np

from macjax.coding import tables
from macjax.errors import ArtifactError

PARAMETRIC = ("laplace", "gaussian", "logistic")
KINDS = ("histogram",) + PARAMETRIC
ONE_FX = 1 << 32
# Scalings of the moment estimate tried by the encoder (the exponent applied to θ, q or u).
FIT_SCALINGS = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4)


def zigzag(v: int) -> int:
  """Maps ints to non-negative ints: 0, −1, 1, −2, … → 0, 1, 2, 3, …"""
  return 2 * v if v >= 0 else -2 * v - 1


def unzigzag(z: int) -> int:
  return z // 2 if z % 2 == 0 else -(z + 1) // 2


def fx_pow(base_fx: int, exponents: np.ndarray) -> np.ndarray:
  """``base^e`` for a fixed-point ``base = base_fx / 2**32`` (0 < base_fx < 2**32), as uint64 in units of 2**−32.

  Exact integer arithmetic: binary exponentiation with ``(a·b) >> 32`` truncation on uint64 (no overflow since
  both factors are ≤ 2**32 and one is < 2**32).

  Example:
    >>> fx_pow(1 << 31, np.array([0, 1, 3])).tolist()  # 0.5 ** [0, 1, 3] in units of 2**-32
    [4294967296, 2147483648, 536870912]
  """
  e = np.asarray(exponents, dtype=np.uint64)
  res = np.full(e.shape, ONE_FX, dtype=np.uint64)
  p = np.uint64(base_fx)
  shift = np.uint64(32)
  n_bits = int(e.max()).bit_length() if e.size else 0
  for b in range(n_bits):
    bit = (e >> np.uint64(b)) & np.uint64(1)
    res = np.where(bit == 1, (res * p) >> shift, res)
    p = (p * p) >> shift
  return res


def parametric_counts(kind: str, param_fx: int, mu: int, offset: int, alphabet: int) -> np.ndarray:
  """Integer counts (int64, < 2**33) of a parametric kind over ``k = offset … offset + alphabet − 1``."""
  k = offset + np.arange(alphabet, dtype=np.int64)
  d = np.abs(k - mu).astype(np.uint64)
  if kind == "laplace":
    return fx_pow(param_fx, d).astype(np.int64)
  if kind == "gaussian":
    return fx_pow(param_fx, d * d).astype(np.int64)
  if kind == "logistic":
    a = fx_pow(param_fx, d)  # u^|k−μ| ∈ [0, 2**32]
    quarter = (np.uint64(ONE_FX) + a) >> np.uint64(2)  # (1 + u^d)/4 ∈ [2**30, 2**31] in units of 2**−32
    den = (quarter * quarter) >> np.uint64(32)  # ((1 + u^d)/4)², ∈ [2**28, 2**30]
    return ((a << np.uint64(28)) // den).astype(np.int64)  # u^d / (1 + u^d)² in units of 2**−32
  raise ArtifactError(f"probability table: unknown parametric kind {kind!r}, expected one of {PARAMETRIC}")


def parametric_table(param_fx: int, mu: int) -> np.ndarray:
  """Serializes a parametric model: uint32 LE parameter, then zigzag-varint ``μ``."""
  return np.concatenate([np.frombuffer(int(param_fx).to_bytes(4, "little"), dtype=np.uint8),
                         tables.varint_encode(np.array([zigzag(int(mu))]))])


def parse_parametric_table(table: np.ndarray, what: str = "table") -> tuple[int, int]:
  """Inverse of :func:`parametric_table`; raises :class:`ArtifactError` on a malformed table."""
  t = np.asarray(table)
  if t.dtype != np.uint8 or t.ndim != 1 or t.size < 5:
    raise ArtifactError(f"{what}: a parametric table needs >= 5 uint8 bytes, got dtype {t.dtype} shape {t.shape}")
  param_fx = int.from_bytes(t[:4].tobytes(), "little")
  if not 0 < param_fx < ONE_FX:
    raise ArtifactError(f"{what}: parameter {param_fx} / 2**32 outside (0, 1) (altered)")
  mu = unzigzag(int(tables.varint_decode(t[4:], 1, what=what)[0]))
  return param_fx, mu


def table_counts(kind: str, table: np.ndarray, offset: int, alphabet: int, what: str = "table") -> np.ndarray:
  """The one decoder of a table of any kind into integer counts over the alphabet."""
  if kind == "histogram":
    return tables.varint_decode(table, alphabet, what=what)
  param_fx, mu = parse_parametric_table(table, what)
  if abs(mu) > 1 << 40:
    raise ArtifactError(f"{what}: location {mu} out of range (altered)")
  return parametric_counts(kind, param_fx, mu, offset, alphabet)


def bits_under(hist: np.ndarray, counts: np.ndarray) -> float:
  """``Σ_s hist[s]·(24 − log2 w[s])`` with ``w = weights_from_counts(counts)``: the information a table gives."""
  w = tables.weights_from_counts(counts)
  used = hist > 0
  return float(np.sum(hist[used] * (tables.PRECISION - np.log2(w[used].astype(np.float64)))))


def _to_fx(x: float) -> int:
  return int(min(max(round(x * ONE_FX), 1), ONE_FX - 1))


def fit_table(kind: str, hist: np.ndarray, offset: int, table_bits: int) -> np.ndarray:
  """Fits a model of ``kind`` to a histogram over ``k = offset + s`` and returns its serialized table.

  Parametric kinds: ``μ`` = the median; ``θ = (√(1+m²) − 1)/m`` with ``m = E|k−μ|`` (the two-sided geometric's
  maximum-likelihood estimate), ``q = exp(−1/(2σ²))``, ``u = exp(−π/√(3σ²))``; then the best of
  ``param ** c`` for ``c`` in :data:`FIT_SCALINGS` by measured information bits.
  """
  hist = np.asarray(hist, dtype=np.int64)
  if kind == "histogram":
    return tables.varint_encode(tables.quantize_histogram(hist, table_bits))
  if kind not in PARAMETRIC:
    raise ArtifactError(f"probability table: unknown kind {kind!r}, expected one of {KINDS}")
  n = int(hist.sum())
  k = offset + np.arange(hist.size, dtype=np.int64)
  if n == 0:
    return parametric_table(1 << 31, 0)
  mu = int(k[np.searchsorted(np.cumsum(hist), (n + 1) // 2)])
  d = np.abs(k - mu).astype(np.float64)
  m1 = float(np.sum(hist * d)) / n
  var = max(float(np.sum(hist * d * d)) / n, 1e-6)
  if kind == "laplace":
    base = (np.sqrt(1 + m1 * m1) - 1) / m1 if m1 > 0 else 1e-6
  elif kind == "gaussian":
    base = float(np.exp(-1.0 / (2 * var)))
  else:
    base = float(np.exp(-np.pi / np.sqrt(3 * var)))
  base = min(max(base, 1e-9), 1 - 1e-9)
  best = None
  for c in FIT_SCALINGS:
    param_fx = _to_fx(base ** c)
    bits = bits_under(hist, parametric_counts(kind, param_fx, mu, offset, hist.size))
    if best is None or bits < best[0]:
      best = (bits, param_fx)
  return parametric_table(best[1], mu)
