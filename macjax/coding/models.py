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

The encoder fits the parameter (moments, then the best of a few scalings by information bits); the
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


def fx_pow(base_fx, exponents: np.ndarray) -> np.ndarray:
  """``base^e`` for a fixed-point ``base = base_fx / 2**32`` (0 < base_fx < 2**32), as uint64 in units of 2**−32.

  Exact integer arithmetic: binary exponentiation with ``(a·b) >> 32`` truncation on uint64 (no overflow since
  both factors are ≤ 2**32 and one is < 2**32). ``base_fx`` may be an array broadcasting against ``exponents``
  (e.g. one base per row: shape ``[K, 1]`` against ``[K, A]``); each element gets the same arithmetic as alone.

  Example:
    >>> fx_pow(1 << 31, np.array([0, 1, 3])).tolist()  # 0.5 ** [0, 1, 3] in units of 2**-32
    [4294967296, 2147483648, 536870912]
  """
  e = np.asarray(exponents, dtype=np.uint64)
  p = np.asarray(base_fx, dtype=np.uint64)
  res = np.full(np.broadcast_shapes(e.shape, p.shape), ONE_FX, dtype=np.uint64)
  shift = np.uint64(32)
  n_bits = int(e.max()).bit_length() if e.size else 0
  for b in range(n_bits):
    bit = (e >> np.uint64(b)) & np.uint64(1)
    res = np.where(bit == 1, (res * p) >> shift, res)
    p = (p * p) >> shift
  return res


def parametric_counts(kind: str, param_fx, mu, offset: int, alphabet: int) -> np.ndarray:
  """Integer counts (int64, < 2**33) of a parametric kind over ``k = offset … offset + alphabet − 1``.

  ``param_fx`` and ``mu`` may be arrays of shape ``[K]``: then the result is ``[K, alphabet]``, one row per model.
  """
  k = offset + np.arange(alphabet, dtype=np.int64)
  many = np.ndim(param_fx) > 0
  p = np.asarray(param_fx, dtype=np.uint64)[:, None] if many else param_fx
  m = np.asarray(mu, dtype=np.int64)[:, None] if many else mu
  d = np.abs(k - m).astype(np.uint64)
  if kind == "laplace":
    return fx_pow(p, d).astype(np.int64)
  if kind == "gaussian":
    return fx_pow(p, d * d).astype(np.int64)
  if kind == "logistic":
    a = fx_pow(p, d)  # u^|k−μ| ∈ [0, 2**32]
    quarter = (np.uint64(ONE_FX) + a) >> np.uint64(2)  # (1 + u^d)/4 ∈ [2**30, 2**31] in units of 2**−32
    den = (quarter * quarter) >> np.uint64(32)  # ((1 + u^d)/4)², ∈ [2**28, 2**30]
    return ((a << np.uint64(28)) // den).astype(np.int64)  # u^d / (1 + u^d)² in units of 2**−32
  raise ArtifactError(f"probability table: unknown parametric kind {kind!r}, expected one of {PARAMETRIC}")


def parametric_table(param_fx: int, mu: int) -> np.ndarray:
  """Serializes a parametric model: uint32 LE parameter, then zigzag-varint ``μ``."""
  return np.frombuffer(int(param_fx).to_bytes(4, "little") + tables.varint_bytes(zigzag(int(mu))), dtype=np.uint8)


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
  return tables_counts([(kind, table)], offset, alphabet, what)[0]


def tables_counts(parts, offset: int, alphabet: int, what: str = "table") -> np.ndarray:
  """:func:`table_counts` of many ``(kind, table)`` parts at once: int64 ``[len(parts), alphabet]``.

  Tables of one kind are decoded together (one varint pass for all histograms, one vectorized power per
  parametric kind), with the same integer arithmetic as one at a time.
  """
  out = np.zeros((len(parts), alphabet), dtype=np.int64)
  by_kind: dict = {}
  for i, (kind, _) in enumerate(parts):
    if kind not in KINDS:
      raise ArtifactError(f"probability table: unknown kind {kind!r}, expected one of {KINDS}")
    by_kind.setdefault(kind, []).append(i)
  for kind, idx in by_kind.items():
    if kind == "histogram":
      data = [np.asarray(parts[i][1]) for i in idx]
      for d in data:  # each must end on a varint boundary: decoded together, a damaged one could borrow bytes
        if (d.dtype != np.uint8 or d.ndim != 1 or (d.size and d[-1] >= 0x80)
            or np.count_nonzero(d < 0x80) != alphabet):
          tables.varint_decode(d, alphabet, what=what)  # raises with the precise reason
      out[idx] = tables.varint_decode(np.concatenate(data), len(idx) * alphabet, what=what).reshape(len(idx), -1)
      continue
    params = [parse_parametric_table(parts[i][1], what) for i in idx]
    mu = np.array([m for _, m in params], dtype=np.int64)
    if np.any(np.abs(mu) > 1 << 40):
      raise ArtifactError(f"{what}: location {int(mu[np.argmax(np.abs(mu))])} out of range (altered)")
    out[idx] = parametric_counts(kind, np.array([p for p, _ in params], dtype=np.uint64), mu, offset, alphabet)
  return out


def information(hists: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """``Σ_s hist[s]·(24 − log2 w[s])`` along the last axis: the information the coder's integer weights give each
  histogram (float64, one per row; broadcasting allowed)."""
  h, w = np.broadcast_arrays(np.asarray(hists), np.asarray(weights))
  bits = np.where(h > 0, tables.PRECISION - np.log2(np.maximum(w, 1).astype(np.float64)), 0.0)
  return (h * bits).sum(axis=-1)


def bits_under(hist: np.ndarray, counts: np.ndarray) -> float:
  """:func:`information` of ``hist`` under the table whose integer counts are ``counts``."""
  return float(information(hist, tables.weights_from_counts(counts)))


def _to_fx(x: float) -> int:
  return int(min(max(round(x * ONE_FX), 1), ONE_FX - 1))


def fit_table(kind: str, hist: np.ndarray, offset: int, table_bits: int) -> np.ndarray:
  """Fits a model of ``kind`` to a histogram over ``k = offset + s`` and returns its serialized table.

  Parametric kinds: ``μ`` = the median; ``θ = (√(1+m²) − 1)/m`` with ``m = E|k−μ|`` (the two-sided geometric's
  maximum-likelihood estimate), ``q = exp(−1/(2σ²))``, ``u = exp(−π/√(3σ²))``; then the best of
  ``param ** c`` for ``c`` in :data:`FIT_SCALINGS` by information bits (ranked in floating point; the exact integer
  table is then built once for the choice). See :func:`fit_tables` for many histograms at once.
  """
  tables_, _ = fit_tables(kind, np.asarray(hist, dtype=np.int64)[None], offset, table_bits)
  return tables_[0]


def fit_tables(kind: str, hists: np.ndarray, offset: int, table_bits: int) -> tuple[list[np.ndarray], np.ndarray]:
  """:func:`fit_table` for each row of ``hists`` (int[K, alphabet]), vectorized over the rows.

  Returns:
    ``(tables, estimated_bits float64[K])``: the serialized tables and, for each, the information of its histogram
    under the fitted model in floating point (the coder's integer weights add a little) plus the table's bits. The
    estimate ranks kinds without building every integer table.
  """
  hists = np.asarray(hists, dtype=np.int64)
  n_ctx, alphabet = hists.shape
  n = hists.sum(axis=1)
  log2_floor = -float(tables.PRECISION)  # the coder's floor: one weight in 2**24
  if kind == "histogram":
    q = tables.quantize_histogram(hists, table_bits)
    with np.errstate(divide="ignore"):
      log_p = np.maximum(np.log2(q / np.maximum(q.sum(axis=1, keepdims=True), 1)), log2_floor)
    info = -np.where(hists > 0, hists * log_p, 0.0).sum(axis=1)
    n_bytes = tables.varint_lengths(q).sum(axis=1)
    return np.split(tables.varint_encode(q), np.cumsum(n_bytes)[:-1]), info + 8.0 * n_bytes
  if kind not in PARAMETRIC:
    raise ArtifactError(f"probability table: unknown kind {kind!r}, expected one of {KINDS}")
  k = offset + np.arange(alphabet, dtype=np.int64)
  half = np.cumsum(hists, axis=1) >= ((n + 1) // 2)[:, None]
  mu = np.where(n > 0, k[np.argmax(half, axis=1)], 0)
  d = np.abs(k[None, :] - mu[:, None]).astype(np.float64)  # [K, A]
  n_safe = np.maximum(n, 1).astype(np.float64)
  m1 = (hists * d).sum(axis=1) / n_safe
  var = np.maximum((hists * d * d).sum(axis=1) / n_safe, 1e-6)
  if kind == "laplace":
    base = np.where(m1 > 0, (np.sqrt(1 + m1 * m1) - 1) / np.where(m1 > 0, m1, 1.0), 1e-6)
  elif kind == "gaussian":
    base = np.exp(-1.0 / (2 * var))
  else:
    base = np.exp(-np.pi / np.sqrt(3 * var))
  base = np.where(n > 0, np.clip(base, 1e-9, 1 - 1e-9), 0.5)
  exponent = d * d if kind == "gaussian" else d
  bits = np.empty((len(FIT_SCALINGS), n_ctx))
  for i, c in enumerate(FIT_SCALINGS):  # rank the scalings in floating point; the chosen table stays exact
    log_c = (c * np.log(base))[:, None] * exponent
    if kind == "logistic":
      log_c = log_c - 2.0 * np.log1p(np.exp(log_c))
    top = log_c.max(axis=1, keepdims=True)
    log_z = top + np.log(np.exp(log_c - top).sum(axis=1, keepdims=True))
    log_p = np.maximum((log_c - log_z) / np.log(2.0), log2_floor)
    bits[i] = -(hists * log_p).sum(axis=1)
  best = np.argmin(bits, axis=0)
  out = [parametric_table(_to_fx(float(b) ** FIT_SCALINGS[j]), int(m)) if nk > 0 else parametric_table(1 << 31, 0)
         for b, j, m, nk in zip(base, best, mu, n)]
  return out, bits[best, np.arange(n_ctx)] + 8.0 * np.array([t.size for t in out])
