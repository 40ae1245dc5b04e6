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
# Rows are judged on at most this many evenly spaced columns, and columns on at most this many rows.
_SAMPLE = 512


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


def search_cells(n_rows: int, n_cols: int, row_classes: int, col_classes: int) -> int:
  """Histogram cells :func:`assign` builds at most (its memory, in int64 cells)."""
  return (n_rows * col_classes + n_cols * row_classes) * _BUCKETS


def _quantile_bins(stat: np.ndarray, k: int) -> np.ndarray:
  """Equal-count bins of ``log(stat)``: k classes, 0 = smallest."""
  if k == 1 or stat.size == 0:
    return np.zeros(stat.size, np.int64)
  v = np.log(stat + 1e-3)
  edges = np.quantile(v, np.linspace(0.0, 1.0, k + 1)[1:-1])
  return np.searchsorted(edges, v, side="right").astype(np.int64)


def _context_log_p(hist: np.ndarray, member: np.ndarray, n_classes: int) -> np.ndarray:
  """Smoothed ``log2 p`` of each class's pooled histogram: ``hist`` is ``[items, contexts·A]`` (one row per row or
  column), ``member`` each item's class; returns ``[n_classes, contexts·A]`` normalized over each ``A`` block."""
  pooled = np.stack([hist[member == k].sum(axis=0) for k in range(n_classes)]).astype(np.float64) + _SMOOTH
  pooled = pooled.reshape(n_classes, -1, _BUCKETS)
  return np.log2(pooled / pooled.sum(axis=-1, keepdims=True)).reshape(n_classes, -1)


def _check_grid(row_classes, col_classes) -> tuple[int, int]:
  for name, k in (("row_classes", row_classes), ("col_classes", col_classes)):
    if not (isinstance(k, (int, np.integer)) and 1 <= k <= MAX_CLASSES):
      raise ConfigError(f"coding: {name} must be an int in [1, {MAX_CLASSES}], got {k!r}")
  return int(row_classes), int(col_classes)


class _Search:
  """The class search's data, shared by every grid: each row's symbols on the sampled columns and each column's on
  the sampled rows, as clipped distances from the median."""

  def __init__(self, symbols: np.ndarray, alphabet: int, counts: np.ndarray | None = None):
    s = np.asarray(symbols)
    if s.ndim != 2:
      raise ConfigError(f"coding: context classes need a 2-D array, got shape {s.shape}")
    self.shape = s.shape
    n_rows, n_cols = s.shape
    counts = np.bincount(s.ravel(), minlength=alphabet) if counts is None else np.asarray(counts)
    median = np.int32(np.searchsorted(np.cumsum(counts), (s.size + 1) // 2))  # the lower median
    self.col_stride, self.row_stride = -(-n_cols // _SAMPLE), -(-n_rows // _SAMPLE)
    by_rows = np.subtract(s[:, ::self.col_stride], median, dtype=np.int32)  # rows are judged on these columns
    by_cols = np.subtract(np.ascontiguousarray(s[::self.row_stride].T), median, dtype=np.int32)  # columns on these rows
    for b in (by_rows, by_cols):
      np.abs(b, out=b)
    self.row_spread, self.col_spread = by_rows.mean(axis=1), by_cols.mean(axis=1)
    self.by_rows = np.minimum(by_rows, _BUCKETS - 1, out=by_rows)
    self.by_cols = np.minimum(by_cols, _BUCKETS - 1, out=by_cols)
    self.scale = s.size / max(self.by_cols.size, 1)  # sampled symbols -> all symbols
    self._bases: dict = {}

  def _item_hist(self, which: str, other: np.ndarray, n_other: int) -> np.ndarray:
    """``[items, n_other·A]``: each row's (``which="rows"``) or column's bucket counts, split by the class of the
    column (row) each symbol sits in; ``other``: those classes on the sampled columns (rows)."""
    b = self.by_rows if which == "rows" else self.by_cols
    if self._bases.get(which, (None,))[0] != n_other:  # item·n_other·A + bucket, kept while n_other stays
      base = np.arange(b.shape[0], dtype=np.intp)[:, None] * (n_other * _BUCKETS) + b  # intp: bincount's own type
      self._bases[which] = (n_other, base)
    idx = self._bases[which][1] + (other.astype(np.intp) * _BUCKETS)[None, :]
    return np.bincount(idx.ravel(), minlength=b.shape[0] * n_other * _BUCKETS).reshape(b.shape[0], -1)

  def start(self, R: int, C: int) -> tuple[np.ndarray, np.ndarray]:
    return _quantile_bins(self.row_spread, R), _quantile_bins(self.col_spread, C)

  def bits(self, R: int, C: int, rows: np.ndarray, cols: np.ndarray) -> float:
    """Estimated bits of the whole array under these classes: the sampled columns' code length under their context
    tables, scaled up."""
    hist = self._item_hist("cols", rows[::self.row_stride], R)  # [cols, R·A]
    cost = -(hist.astype(np.float64) @ _context_log_p(hist, cols, C).T)  # [cols, C]
    return float(cost[np.arange(cols.size), cols].sum()) * self.scale

  def round(self, R: int, C: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One round: every row, then every column, moves to the class whose context tables code it in the fewest
    bits."""
    if R > 1:
      hist = self._item_hist("rows", cols[::self.col_stride], C)  # [rows, C·A]
      rows = np.argmin(-(hist.astype(np.float64) @ _context_log_p(hist, rows, R).T), axis=1)
    if C > 1:
      hist = self._item_hist("cols", rows[::self.row_stride], R)  # [cols, R·A]
      cols = np.argmin(-(hist.astype(np.float64) @ _context_log_p(hist, cols, C).T), axis=1)
    return rows, cols


def assign_grids(symbols: np.ndarray, alphabet: int, grids, rounds: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
  """:func:`assign` for several ``(row_classes, col_classes)`` grids, sharing the work that does not depend on the
  grid (the sampled, bucketed spreads)."""
  grids = [_check_grid(*g) for g in grids]
  s = np.asarray(symbols)
  if s.ndim == 2 and s.size == 0:
    return [(np.zeros(s.shape[0], np.int64), np.zeros(s.shape[1], np.int64)) for _ in grids]
  search = _Search(s, alphabet)
  out = []
  for R, C in grids:
    rows, cols = search.start(R, C)
    for _ in range(rounds):
      rows, cols = search.round(R, C, rows, cols)
    out.append((rows.astype(np.int64), cols.astype(np.int64)))
  return out


def choose_grid(symbols: np.ndarray, alphabet: int, grids, rounds: int = 3,
                counts: np.ndarray | None = None) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
  """The grid of ``grids`` that looks cheapest from its starting classes, with its classes after ``rounds`` rounds
  of :func:`assign`: ``((R, C), row_class, col_class)``.

  A grid's estimate is the code length of the sampled symbols (bucketed distances from the median, see
  :func:`assign`) under its starting classes' context tables, scaled to the whole array, plus ~64 bits per context
  table and its class maps; only the chosen grid is refined. The caller still compares the result with one model by
  real bits. ``counts``: the symbols' histogram, if the caller has it (saves a pass).
  """
  grids = [_check_grid(*g) for g in grids]
  s = np.asarray(symbols)
  if s.ndim != 2 or s.size == 0 or not grids:
    raise ConfigError(f"coding: choose_grid needs a non-empty 2-D array and at least one grid, got shape {s.shape}")
  search = _Search(s, alphabet, counts)
  n_rows, n_cols = s.shape
  best = None
  for R, C in grids:
    rows, cols = search.start(R, C)
    bits = search.bits(R, C, rows, cols) + 64 * R * C + n_rows * index_bits(R) + n_cols * index_bits(C)
    if best is None or bits < best[0]:
      best = (bits, (R, C), rows, cols)
  _, (R, C), rows, cols = best
  for _ in range(rounds):
    rows, cols = search.round(R, C, rows, cols)
  return (R, C), rows.astype(np.int64), cols.astype(np.int64)


def assign(symbols: np.ndarray, alphabet: int, row_classes: int, col_classes: int,
           rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """Row and column classes of a 2-D symbol array (values in ``[0, alphabet)``), chosen to shorten the code.

  Deterministic. Starts from log-quantile bins of each row's and column's mean ``|symbol − median|`` (over the
  sampled columns / rows below), then
  ``rounds`` times moves every row to the row class whose context histograms (given the column classes) code it in
  the fewest bits, then every column likewise. The search counts each symbol by its distance from the median,
  clipped to 32 buckets, and judges rows on at most 512 evenly spaced columns (columns on at most 512 rows), so a
  round costs about the same for any alphabet and at most ``~512·(rows + cols)`` symbols. Classes may end up empty.

  Returns:
    ``(row_class int64[rows], col_class int64[cols])``.

  Raises:
    ConfigError: a class count outside ``[1, MAX_CLASSES]``, or ``symbols`` not 2-D.
  """
  return assign_grids(symbols, alphabet, [(row_classes, col_classes)], rounds)[0]


__all__ = ["MAX_CLASSES", "assign", "assign_grids", "choose_grid", "index_bits", "map_bytes", "pack", "search_cells",
           "unpack"]
