"""Probability tables: serialized compactly, turned into the coder's integer model by ONE function.

Every model kind reduces to integer weights ``w[s] ≥ 1`` with ``Σ w = 2**PRECISION`` over the alphabet
``{0, …, alphabet−1}`` (symbol = code − offset). The coder's probability is exactly ``p(s) = w[s] / 2**PRECISION``:
we hand constriction ``w − 1`` (which sums to ``2**PRECISION − alphabet``), and its fast quantizer
(``left_cdf[i] = ⌊Σ_{j<i} q_j · scale⌋ + i`` with ``scale = (2**PRECISION − n) / Σ q = 1``) then reproduces ``w``
exactly. So the Shannon information computed in JAX from ``w`` is the information under the model the coder uses.

Histogram table format (``uint8``): the alphabet's counts as unsigned LEB128 varints (7 bits per byte, high bit =
"more bytes follow"), one per symbol, nothing else. Counts are the exact histogram when the tensor has at most
``2**table_bits`` symbols, else the histogram scaled to total ≈ ``2**table_bits`` with every observed symbol kept
at ≥ 1 (so no observed symbol falls to the floor probability).
"""

from __future__ import annotations

import numpy as np

from macjax.errors import ArtifactError

# constriction's default stream coders (AnsCoder, RangeEncoder) use 24-bit probabilities and 32-bit words.
PRECISION = 24
TOTAL = 1 << PRECISION
# Largest alphabet the histogram model accepts (constriction needs < 2**24 − 1; the table must stay small).
MAX_ALPHABET = 1 << 20
MAX_VARINT_BYTES = 5  # a uint32 count


def varint_lengths(values: np.ndarray) -> np.ndarray:
  """Bytes of each value's unsigned LEB128 varint (int64, same shape): 1 + the number of 7-bit groups above the
  first."""
  v = np.asarray(values, dtype=np.uint64)
  n_bytes = np.ones(v.shape, dtype=np.int64)
  for k in range(1, MAX_VARINT_BYTES):
    n_bytes += v >= (np.uint64(1) << np.uint64(7 * k))
  return n_bytes


def varint_encode(values: np.ndarray) -> np.ndarray:
  """Unsigned LEB128 of non-negative ints < 2**35, vectorized: returns uint8[Σ bytes].

  Example:
    >>> varint_encode(np.array([0, 1, 300])).tolist()
    [0, 1, 172, 2]
  """
  v = np.asarray(values, dtype=np.uint64).ravel()
  n_bytes = varint_lengths(v)
  ends = np.cumsum(n_bytes)
  out = np.empty(int(ends[-1]) if v.size else 0, dtype=np.uint8)
  starts = ends - n_bytes
  for k in range(MAX_VARINT_BYTES):
    sel = n_bytes > k
    byte = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
    more = (n_bytes[sel] > k + 1).astype(np.uint64) << np.uint64(7)
    out[starts[sel] + k] = (byte | more).astype(np.uint8)
  return out


def varint_bytes(value: int) -> bytes:
  """:func:`varint_encode` of one int, without numpy (for the few-byte tables built once per context).

  Example:
    >>> list(varint_bytes(300))
    [172, 2]
  """
  v, out = int(value), []
  while True:
    out.append((v & 0x7F) | (0x80 if v >= 0x80 else 0))
    v >>= 7
    if not v:
      return bytes(out)


def varint_decode(data: np.ndarray, count: int, *, what: str = "table") -> np.ndarray:
  """Inverse of :func:`varint_encode`; raises :class:`ArtifactError` unless ``data`` holds exactly ``count`` varints.

  Example:
    >>> varint_decode(np.array([0, 1, 172, 2], np.uint8), 3).tolist()
    [0, 1, 300]
  """
  b = np.asarray(data)
  if b.dtype != np.uint8 or b.ndim != 1:
    raise ArtifactError(f"{what}: expected a 1-D uint8 array, got dtype {b.dtype} with shape {b.shape}")
  ends = np.flatnonzero(b < 0x80)
  if b.size and (ends.size == 0 or ends[-1] != b.size - 1):
    raise ArtifactError(f"{what}: truncated ({b.size} bytes end inside a varint)")
  if ends.size != count:
    raise ArtifactError(f"{what}: holds {ends.size} entries, expected {count} (truncated or altered)")
  if count == 0:
    return np.zeros(0, dtype=np.int64)
  starts = np.concatenate([[0], ends[:-1] + 1])
  lengths = ends - starts + 1
  if np.any(lengths > MAX_VARINT_BYTES):
    raise ArtifactError(f"{what}: a varint is longer than {MAX_VARINT_BYTES} bytes (altered)")
  pos_in_group = np.arange(b.size) - np.repeat(starts, lengths)
  parts = (b.astype(np.uint64) & np.uint64(0x7F)) << (np.uint64(7) * pos_in_group.astype(np.uint64))
  return np.add.reduceat(parts, starts).astype(np.int64)


def quantize_histogram(hist: np.ndarray, table_bits: int) -> np.ndarray:
  """Scales a histogram to total ≈ ``2**table_bits`` (exact when it is already smaller); observed symbols stay ≥ 1.

  ``c[s] = max(1, round(h[s] · 2**table_bits / N))`` for ``h[s] > 0``, else 0, where ``N = Σ h``. A 2-D ``hist``
  is scaled row by row.
  """
  hist = np.asarray(hist, dtype=np.int64)
  n = hist.sum(axis=-1, keepdims=True)
  limit = 1 << table_bits
  scaled = (hist * (2 * limit) + n) // np.maximum(2 * n, 1)
  return np.where(n <= limit, hist, np.where(hist > 0, np.maximum(scaled, 1), 0))


def weights_from_counts(counts: np.ndarray) -> np.ndarray:
  """The one function that turns stored counts into the coder's integer weights (encoder and decoder both call it).

  With ``n`` symbols, ``F = 2**PRECISION − n`` and ``S = Σ c``: ``w[s] = 1 + ⌊c[s]·F / S⌋``, and the rounding
  remainder ``F − Σ⌊·⌋`` (< n) goes to the first most frequent symbol; ``S = 0`` gives all of ``F`` to symbol 0.
  So ``w ≥ 1`` (every symbol in range stays codable) and ``Σ w = 2**PRECISION`` exactly. A 2-D ``counts``
  (one model per row) gives each row the same arithmetic as alone.

  Example:
    >>> w = weights_from_counts(np.array([3, 0, 1]))
    >>> int(w.sum()) == 2**24, int(w[1])
    (True, 1)
  """
  c = np.asarray(counts, dtype=np.int64)
  c2 = c.reshape(-1, c.shape[-1]) if c.ndim else c.reshape(1, 1)
  n = c2.shape[1]
  if not 2 <= n <= MAX_ALPHABET:
    raise ArtifactError(f"probability table: alphabet of {n} symbols, expected 2..{MAX_ALPHABET}")
  if np.any(c2 < 0) or np.any(c2 >= (1 << 36)):
    raise ArtifactError("probability table: counts out of range [0, 2**36) (altered)")
  free = TOTAL - n
  s = c2.sum(axis=1, keepdims=True)
  base = np.where(s > 0, (c2 * free) // np.maximum(s, 1), 0)
  rows = np.arange(c2.shape[0])
  base[rows, np.argmax(c2, axis=1)] += free - base.sum(axis=1)
  return (base + 1).reshape(c.shape)
