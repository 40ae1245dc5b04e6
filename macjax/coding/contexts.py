"""Row × column context classes for the ``classed`` model: which rows and columns share a probability model.

Weight matrices are not identically distributed: rows (output channels) and columns (input channels) have unequal
spreads, and with one step per matrix (the weight-MSE optimum) the codes inherit them. A single table codes the
mixture; giving each of ``R × C`` contexts (row class, column class) its own table codes each part at its own
entropy. On MiniLM's block matrices (trellis codes, one step per matrix) 4 × 4 contexts save ≈ 0.04 bit/weight
after paying for the tables and the class maps — about as much as the trellis gains from 4 to 32 states.

The encoder chooses the classes (:func:`assign`: log-quantile bins of the mean ``|symbol − median|`` per row and
per column, refined by a few rounds of moving each row, then each column, to the class whose tables code it in the
fewest bits); the decoder only reads them: the class maps are stored bit-packed (:func:`pack`, :func:`unpack`),
``⌈log2 R⌉`` bits a row and ``⌈log2 C⌉`` a column.

Example:
  >>> s = np.array([[0, 0, 1], [5, 9, 7]], np.int32)
  >>> rows, cols = assign(s, alphabet=10, row_classes=2, col_classes=1)
  >>> rows.tolist(), cols.tolist()
  ([0, 1], [0, 0, 0])
  >>> unpack(pack(rows, 2), 2, 2).tolist()
  [0, 1]
"""

from __future__ import annotations

import numpy as np

from macjax.errors import ArtifactError, ConfigError

#: Most classes per axis (a class index fits in a byte).
MAX_CLASSES = 256
# Additive smoothing of the per-context histograms while assigning (the stored tables are fitted afterwards).
_SMOOTH = 0.05
# While assigning, a symbol counts by its distance from the median, clipped here: the classes are about spread, and
# the search then costs the same for any alphabet.
_BUCKETS = 32


def index_bits(n_classes: int) -> int:
  """Bits of one stored class index: ``⌈log2 n_classes⌉`` (0 for one class)."""
  return int(n_classes - 1).bit_length()


def map_bytes(n: int, n_classes: int) -> int:
  """Bytes of a packed map of ``n`` class indices."""
  return -(-n * index_bits(n_classes) // 8)


def pack(classes: np.ndarray, n_classes: int) -> np.ndarray:
  """Bit-packs class indices (each ``< n_classes``) into ``uint8[map_bytes(len, n_classes)]``, LSB first."""
  c = np.asarray(classes, dtype=np.int64).ravel()
  b = index_bits(n_classes)
  if b == 0:
    return np.zeros(0, np.uint8)
  bits = ((c[:, None] >> np.arange(b)) & 1).astype(np.uint8).ravel()
  return np.packbits(bits, bitorder="little")


def unpack(data: np.ndarray, n: int, n_classes: int, what: str = "class map") -> np.ndarray:
  """Inverse of :func:`pack`: ``int64[n]`` class indices.

  Raises:
    ArtifactError: ``data`` has the wrong length, an index ``≥ n_classes``, or set padding bits (altered).
  """
  b = index_bits(n_classes)
  data = np.asarray(data)
  if data.dtype != np.uint8 or data.shape != (map_bytes(n, n_classes),):
    raise ArtifactError(f"{what}: expected uint8[{map_bytes(n, n_classes)}], got dtype {data.dtype} shape "
                        f"{data.shape} (truncated or altered)")
  if b == 0:
    return np.zeros(n, np.int64)
  bits = np.unpackbits(data, bitorder="little")
  if bits[n * b:].any():
    raise ArtifactError(f"{what}: padding bits set (altered)")
  classes = (bits[:n * b].reshape(n, b).astype(np.int64) << np.arange(b)).sum(axis=1)
  if classes.size and classes.max() >= n_classes:
    raise ArtifactError(f"{what}: class index {int(classes.max())} >= {n_classes} classes (altered)")
  return classes


def _quantile_bins(stat: np.ndarray, k: int) -> np.ndarray:
  """Equal-count bins of ``log(stat)``: k classes, 0 = smallest."""
  if k == 1 or stat.size == 0:
    return np.zeros(stat.size, np.int64)
  v = np.log(stat + 1e-3)
  edges = np.quantile(v, np.linspace(0.0, 1.0, k + 1)[1:-1])
  return np.searchsorted(edges, v, side="right").astype(np.int64)


def _log_tables(s: np.ndarray, rows: np.ndarray, cols: np.ndarray, R: int, C: int, alphabet: int) -> np.ndarray:
  """Smoothed ``log2 p[r, c, symbol]`` of each context's histogram."""
  ctx = (rows[:, None] * C + cols[None, :]).ravel()
  counts = np.bincount(ctx * alphabet + s.ravel(), minlength=R * C * alphabet).reshape(R, C, alphabet) + _SMOOTH
  return np.log2(counts / counts.sum(axis=-1, keepdims=True))


def assign(symbols: np.ndarray, alphabet: int, row_classes: int, col_classes: int,
           rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """Row and column classes of a 2-D symbol array (values in ``[0, alphabet)``), chosen to shorten the code.

  Deterministic. Starts from log-quantile bins of each row's and column's mean ``|symbol − median|``, then
  ``rounds`` times moves every row to the row class whose context histograms (given the column classes) code it in
  the fewest bits, then every column likewise (counting each symbol by its distance from the median, clipped to
  32 buckets, so the search costs the same for any alphabet). Classes may end up empty.

  Returns:
    ``(row_class int64[rows], col_class int64[cols])``.

  Raises:
    ConfigError: a class count outside ``[1, MAX_CLASSES]``, or ``symbols`` not 2-D.
  """
  for name, k in (("row_classes", row_classes), ("col_classes", col_classes)):
    if not (isinstance(k, (int, np.integer)) and 1 <= k <= MAX_CLASSES):
      raise ConfigError(f"coding: {name} must be an int in [1, {MAX_CLASSES}], got {k!r}")
  s = np.asarray(symbols, dtype=np.int64)
  if s.ndim != 2:
    raise ConfigError(f"coding: context classes need a 2-D array, got shape {s.shape}")
  R, C = int(row_classes), int(col_classes)
  n_rows, n_cols = s.shape
  if s.size == 0:
    return np.zeros(n_rows, np.int64), np.zeros(n_cols, np.int64)
  spread = np.abs(s - int(np.median(s)))
  rows, cols = _quantile_bins(spread.mean(axis=1), R), _quantile_bins(spread.mean(axis=0), C)
  s, alphabet = np.minimum(spread, _BUCKETS - 1), _BUCKETS
  row_ids, col_ids = np.arange(n_rows), np.arange(n_cols)
  for _ in range(rounds):
    if R > 1:
      logp = _log_tables(s, rows, cols, R, C, alphabet)  # [R, C, A]
      # hist[i, c, a]: symbols a of row i in column class c; bits[i, r] = −Σ hist · log p[r]
      hist = np.bincount(((row_ids[:, None] * C + cols[None, :]) * alphabet + s).ravel(),
                         minlength=n_rows * C * alphabet).reshape(n_rows, C * alphabet)
      rows = np.argmin(-hist @ logp.reshape(R, C * alphabet).T, axis=1)
    if C > 1:
      logp = _log_tables(s, rows, cols, R, C, alphabet)
      hist = np.bincount(((col_ids[None, :] * R + rows[:, None]) * alphabet + s).ravel(),
                         minlength=n_cols * R * alphabet).reshape(n_cols, R * alphabet)
      cols = np.argmin(-hist @ logp.transpose(1, 0, 2).reshape(C, R * alphabet).T, axis=1)
  return rows.astype(np.int64), cols.astype(np.int64)


__all__ = ["MAX_CLASSES", "assign", "index_bits", "map_bytes", "pack", "unpack"]
