"""Entropy coding of integer code tensors with constriction's ANS coder and stored probability models.

Three tiers, as in tensorflow-compression: the model is built once from the serialized table
(:func:`model_weights`, shared by encoder and decoder), the real coder writes ``uint32`` words on the host, and
:func:`information_bits` computes ``−Σ log2 p(code)`` under that same stored model in JAX.

Layout of a coded tensor: the symbols ``code − offset``, split into ``G`` segments, each coded with its own model,
over a 32-bit sentinel at the bottom of the ANS stack. The segments (context-adaptive modes view the tensor as
``[shape[0], −1]``):

* one model: ``G = 1``, the symbols in row-major order;
* ``grouped``: one segment per run of ``group_rows`` rows (a channel group), in row-major order;
* ``classed``: one segment per non-empty context ``(row class r, column class c)`` (see
  :mod:`macjax.coding.contexts`), ordered by ``r`` then ``c``, each holding its rows × columns in row-major order;
  the class maps are stored, bit-packed, at the head of the table.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import constriction
import jax
import jax.numpy as jnp
import numpy as np

from macjax.coding import contexts, models, tables
from macjax.errors import ArtifactError, ConfigError, ShapeError

FORMAT = "macjax.coded.v1"
CODER = "ans"
# Stored model kinds: one model (a kind of models.KINDS), one model per row group ("grouped"), one per row-class ×
# column-class context ("classed"), or "raw".
STORED_MODELS = models.KINDS + ("grouped", "classed", "raw")
# What encode(model=...) accepts: a kind, "auto" (the kind with the fewest measured bits, table included), or "raw".
ENCODE_MODELS = models.KINDS + ("auto", "raw")
# "raw" codes each symbol as RAW_CHUNKS chunks of RAW_CHUNK_BITS bits under a uniform model: any int32 range.
RAW_CHUNK_BITS = 16
RAW_CHUNKS = 2
# A 32-bit sentinel sits under the symbols on the ANS stack (encoded first, decoded last): a stream decoded with
# the wrong symbol count or a truncated/altered tail ends on the wrong sentinel (2**-32 chance to pass).
SENTINEL = np.array([0x6D61, 0x636A], dtype=np.int32)  # "macj"
_SENTINEL_MODEL = constriction.stream.model.Uniform(1 << 16)
_HEADER_KEYS = {"format": str, "coder": str, "model": str, "shape": list, "offset": int, "alphabet": int,
                "precision": int, "table_bits": int, "n_words": int}
_MAX_GROUPS = 1 << 16
#: Context grids ``classes="auto"`` tries (rows × columns), besides one model for the whole tensor.
AUTO_CLASSES = ((2, 2), (4, 4), (8, 8))
# Most histogram cells a grid's class search and context histograms may take (memory bound); auto skips beyond it.
_MAX_ASSIGN_CELLS = 1 << 24
#: Most probability-table cells (segments × alphabet, int64 each) a coded tensor of ``n`` symbols may ask for:
#: ``MAX_TABLE_CELLS + 4·n``. The decoder expands every table to ``alphabet`` cells, so a header that asks for more
#: is refused before anything is allocated (a hostile header could otherwise ask for 2^16 groups × 2^20 symbols).
MAX_TABLE_CELLS = 1 << 24


def _too_many_table_cells(header: dict, n: int) -> str:
  """What is wrong when the header's tables would take more than ``MAX_TABLE_CELLS + 4·n`` cells, else ``""``."""
  model = header["model"]
  if model == "grouped":
    rows = int(header["shape"][0])
    contexts = -(-rows // header["group_rows"])
  elif model == "classed":
    contexts = header["row_classes"] * header["col_classes"]
  else:
    contexts = 1
  cells = contexts * header["alphabet"] if model != "raw" else 0
  if cells <= MAX_TABLE_CELLS + 4 * n:
    return ""
  return (f"{contexts} tables × alphabet {header['alphabet']} = {cells} table cells for {n} symbols, more than "
          f"{MAX_TABLE_CELLS} + 4 per symbol")


class CodedTensor(NamedTuple):
  """An entropy-coded integer tensor.

  Attributes:
    words: uint32[n_words], the compressed stream.
    table: uint8[...], the serialized probability model(s) (everything the decoder needs besides ``header``).
    header: JSON-able dict: ``format``, ``coder``, ``model`` (a stored kind: ``histogram``, ``laplace``,
      ``gaussian``, ``logistic``, ``grouped``, ``classed`` or ``raw``), ``shape`` (list of ints), ``offset``
      (symbol = code − offset), ``alphabet`` (number of symbols), ``precision`` (probability bits), ``table_bits``,
      ``n_words``; ``group_rows`` for ``grouped``; ``row_classes`` and ``col_classes`` for ``classed``.
  """

  words: np.ndarray
  table: np.ndarray
  header: dict


def _as_codes(codes, name: str = "codes") -> np.ndarray:
  arr = np.asarray(codes)
  if not np.issubdtype(arr.dtype, np.integer):
    raise ShapeError(f"{name}: expected an integer array, got dtype {arr.dtype} with shape {arr.shape}")
  if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
    raise ShapeError(f"{name}: values outside int32 range in array of shape {arr.shape}")
  return arr.astype(np.int32, copy=False)


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_header(header) -> dict:
  if not isinstance(header, dict):
    raise ArtifactError(f"coded tensor header: expected a dict, got {type(header).__name__}")
  for key, typ in _HEADER_KEYS.items():
    if key not in header:
      raise ArtifactError(f"coded tensor header: missing key {key!r} (has {sorted(header)})")
    val = header[key]
    if typ is int and not _is_int(val):
      raise ArtifactError(f"coded tensor header: {key!r} must be an int, got {val!r}")
    if typ is list and not isinstance(val, (list, tuple)):
      raise ArtifactError(f"coded tensor header: {key!r} must be a list, got {val!r}")
    if typ is str and not isinstance(val, str):
      raise ArtifactError(f"coded tensor header: {key!r} must be a str, got {val!r}")
  if header["format"] != FORMAT or header["coder"] != CODER or header["precision"] != tables.PRECISION:
    raise ArtifactError(
        f"coded tensor header: unsupported format/coder/precision {header['format']!r}/{header['coder']!r}/"
        f"{header['precision']!r}, expected {FORMAT!r}/{CODER!r}/{tables.PRECISION}")
  if header["model"] not in STORED_MODELS:
    raise ArtifactError(f"coded tensor header: unknown model {header['model']!r}, expected one of {STORED_MODELS}")
  shape = header["shape"]
  if not all(_is_int(d) and d >= 0 for d in shape):
    raise ArtifactError(f"coded tensor header: shape must be a list of ints >= 0, got {shape!r}")
  if not 2 <= header["alphabet"] <= tables.MAX_ALPHABET or not 1 <= header["table_bits"] <= 32:
    raise ArtifactError(f"coded tensor header: alphabet {header['alphabet']} or table_bits {header['table_bits']}"
                        f" out of range")
  if header["n_words"] < 0:
    raise ArtifactError(f"coded tensor header: n_words {header['n_words']} < 0")
  i32 = np.iinfo(np.int32)
  if header["model"] == "raw":
    if not i32.min <= header["offset"] <= i32.max:
      raise ArtifactError(f"coded tensor header: offset {header['offset']} outside int32")
  elif not (i32.min <= header["offset"] and header["offset"] + header["alphabet"] - 1 <= i32.max):
    raise ArtifactError(f"coded tensor header: alphabet [{header['offset']}, {header['offset']} + "
                        f"{header['alphabet']}) leaves int32 (altered)")
  if header["model"] == "grouped":
    gr = header.get("group_rows")
    if not (_is_int(gr) and gr >= 1 and len(shape) >= 1):
      raise ArtifactError(f"coded tensor header: a grouped model needs an int group_rows >= 1 and a shape of rank"
                          f" >= 1, got group_rows={gr!r}, shape={shape!r}")
  if header["model"] == "classed":
    rc, cc = header.get("row_classes"), header.get("col_classes")
    if not (all(_is_int(k) and 1 <= k <= contexts.MAX_CLASSES for k in (rc, cc)) and len(shape) >= 1):
      raise ArtifactError(f"coded tensor header: a classed model needs int row_classes and col_classes in "
                          f"[1, {contexts.MAX_CLASSES}] and a shape of rank >= 1, got {rc!r}, {cc!r}, shape={shape!r}")
  too_many = _too_many_table_cells(header, math.prod(int(d) for d in shape))
  if too_many:
    raise ArtifactError(f"coded tensor header: {too_many} (altered)")
  return header


def _matrix_shape(header: dict) -> tuple[int, int]:
  """The tensor viewed as ``[shape[0], −1]``."""
  shape = [int(d) for d in header["shape"]]
  rows = shape[0]
  return rows, (math.prod(shape) // rows if rows else math.prod(shape[1:]))


class _Classes(NamedTuple):
  """A classed model's stored layout: class maps, the non-empty contexts, and where the framed tables start."""
  rows: np.ndarray  # int64[rows]
  cols: np.ndarray  # int64[cols]
  contexts: list[tuple[int, int]]  # non-empty (r, c), coding order
  sizes: list[int]  # symbols of each of those contexts
  tables_at: int


def _classes(header: dict, table: np.ndarray) -> _Classes:
  """Reads the class maps at the head of a classed model's table; raises ArtifactError if they are damaged."""
  t = np.asarray(table)
  if t.dtype != np.uint8 or t.ndim != 1:
    raise ArtifactError(f"coded tensor table: expected 1-D uint8, got dtype {t.dtype} shape {t.shape}")
  n_rows, n_cols = _matrix_shape(header)
  R, C = header["row_classes"], header["col_classes"]
  a, b = contexts.map_bytes(n_rows, R), contexts.map_bytes(n_cols, C)
  if t.size < a + b:
    raise ArtifactError(f"coded tensor table: {t.size} bytes, the class maps alone need {a + b} (truncated)")
  rows = contexts.unpack(t[:a], n_rows, R, "coded tensor row classes")
  cols = contexts.unpack(t[a:a + b], n_cols, C, "coded tensor column classes")
  used_r, used_c = np.bincount(rows, minlength=R), np.bincount(cols, minlength=C)
  ctx = [(r, c) for r in range(R) for c in range(C) if used_r[r] and used_c[c]]
  return _Classes(rows, cols, ctx, [int(used_r[r] * used_c[c]) for r, c in ctx], a + b)


def _order(cls: _Classes) -> np.ndarray:
  """Flat (row-major) positions of the tensor in coding order: context by context, each row-major."""
  n_cols = cls.cols.size
  out = []
  for r, c in cls.contexts:
    ri, ci = np.flatnonzero(cls.rows == r), np.flatnonzero(cls.cols == c)
    out.append((ri[:, None] * n_cols + ci[None, :]).ravel())
  return np.concatenate(out) if out else np.zeros(0, np.int64)


def _segments(header: dict, table: np.ndarray | None = None) -> list[int]:
  """Number of symbols of each segment (one per row group or context, or one in all), in coding order.

  A classed model's segments depend on its class maps, read from ``table``."""
  shape = [int(d) for d in header["shape"]]
  n = math.prod(shape)
  if header["model"] == "raw":
    return [n * RAW_CHUNKS]
  if header["model"] == "classed":
    return _classes(header, table).sizes
  if header["model"] != "grouped":
    return [n]
  rows, gr = shape[0], header["group_rows"]
  per_row = n // rows if rows else 0
  n_groups = -(-rows // gr)
  if n_groups > _MAX_GROUPS:
    raise ArtifactError(f"coded tensor header: {n_groups} row groups, more than {_MAX_GROUPS}")
  return [per_row * (min(rows, (g + 1) * gr) - g * gr) for g in range(n_groups)]


def _frame(kind: str, table: np.ndarray) -> np.ndarray:
  return np.concatenate([np.array([models.KINDS.index(kind)], np.uint8),
                         tables.varint_encode(np.array([table.size])), table])


def _unframe(table: np.ndarray, n_groups: int) -> list[tuple[str, np.ndarray]]:
  """Splits a grouped table into (kind, sub-table) per group; raises ArtifactError on any inconsistency."""
  t = np.asarray(table)
  if t.dtype != np.uint8 or t.ndim != 1:
    raise ArtifactError(f"coded tensor table: expected 1-D uint8, got dtype {t.dtype} shape {t.shape}")
  out, pos = [], 0
  for g in range(n_groups):
    if pos >= t.size:
      raise ArtifactError(f"coded tensor table: truncated at group {g} of {n_groups}")
    kind_id = int(t[pos])
    if kind_id >= len(models.KINDS):
      raise ArtifactError(f"coded tensor table: group {g} has unknown model id {kind_id} (altered)")
    end = pos + 1
    while end < t.size and end - pos <= tables.MAX_VARINT_BYTES and t[end] >= 0x80:
      end += 1
    length = int(tables.varint_decode(t[pos + 1:end + 1], 1, what=f"coded tensor table (group {g} length)")[0])
    start, stop = end + 1, end + 1 + length
    if stop > t.size:
      raise ArtifactError(f"coded tensor table: group {g} needs {length} bytes, {t.size - start} left (truncated)")
    out.append((models.KINDS[kind_id], t[start:stop]))
    pos = stop
  if pos != t.size:
    raise ArtifactError(f"coded tensor table: {t.size - pos} bytes left after {n_groups} groups (altered)")
  return out


def model_weights(coded: CodedTensor) -> np.ndarray:
  """Integer weights ``w[g, s]`` (each row sums to ``2**24``, all ≥ 1) of the stored model of each segment ``g``.

  ``p(code) = w[g, code − offset] / 2**24`` for a code of segment ``g`` (``G = 1`` unless the model is grouped or
  classed).
  This is the one place models are built from their serialized tables; :func:`encode`, :func:`decode` and
  :func:`information_bits` all call it.

  Raises:
    ArtifactError: the header or table is malformed, truncated, or altered.
  """
  header = _check_header(coded.header)
  model = header["model"]
  if model == "raw":
    if np.asarray(coded.table).size != 0:
      raise ArtifactError(f"coded tensor table: the raw model has an empty table, got "
                          f"{np.asarray(coded.table).size} bytes")
    return np.full((1, 1 << RAW_CHUNK_BITS), tables.TOTAL >> RAW_CHUNK_BITS, dtype=np.int64)
  offset, alphabet = header["offset"], header["alphabet"]
  if model == "grouped":
    parts = _unframe(coded.table, len(_segments(header)))
  elif model == "classed":
    cls = _classes(header, coded.table)
    if not cls.contexts:  # an empty tensor: no segment, no table
      return np.zeros((0, alphabet), np.int64)
    parts = _unframe(np.asarray(coded.table)[cls.tables_at:], len(cls.contexts))
  else:
    parts = [(model, coded.table)]
  return tables.weights_from_counts(models.tables_counts(parts, offset, alphabet, what="coded tensor table"))


def _constriction_model(weights: np.ndarray):
  # weights − 1 sums to 2**24 − n, so constriction's fast quantizer reproduces `weights` exactly (see tables.py).
  return constriction.stream.model.Categorical((weights - 1).astype(np.float64), perfect=False)


def _symbols(arr: np.ndarray, header: dict) -> np.ndarray:
  """Maps codes to the coder's symbols: ``code − offset``, or two 16-bit chunks per code for the raw model.

  The caller guarantees the codes lie in ``[offset, offset + alphabet)``; for table models ``alphabet ≤ 2**20``,
  so the int32 difference is exact.
  """
  if header["model"] == "raw":
    flat = arr.ravel().astype(np.int64) - header["offset"]
    mask = (1 << RAW_CHUNK_BITS) - 1
    return np.stack([flat >> RAW_CHUNK_BITS, flat & mask], axis=1).ravel().astype(np.int32)
  return np.subtract(arr.ravel(), np.int32(header["offset"]), dtype=np.int32)


def _choose_table(model: str, hist: np.ndarray, offset: int, table_bits: int) -> tuple[str, np.ndarray]:
  """(kind, table) for a requested model; ``auto`` keeps the kind with the fewest information + table bits, measured
  under the coder's integer weights of each candidate table."""
  kinds = models.KINDS if model == "auto" else (model,)
  fitted = [models.fit_table(kind, hist, offset, table_bits) for kind in kinds]
  if len(kinds) == 1:
    return kinds[0], fitted[0]
  w = tables.weights_from_counts(models.tables_counts(list(zip(kinds, fitted)), offset, hist.size))
  best = int(np.argmin(models.information(hist, w) + 8 * np.array([t.size for t in fitted])))
  return kinds[best], fitted[best]


def _choose_tables(model: str, hists: np.ndarray, offset: int, table_bits: int) -> list[tuple[str, np.ndarray]]:
  """(kind, table) for each row of ``hists`` (one per context or row group); ``auto`` keeps, per row, the kind with
  the fewest estimated information + table bits (:func:`macjax.coding.models.fit_tables`, vectorized over rows)."""
  kinds = models.KINDS if model == "auto" else (model,)
  fits = [models.fit_tables(kind, hists, offset, table_bits) for kind in kinds]
  best = np.argmin(np.stack([bits for _, bits in fits]), axis=0)
  return [(kinds[j], fits[j][0][i]) for i, j in enumerate(best)]


def _table_bits(kind: str, table: np.ndarray, hist: np.ndarray, offset: int) -> float:
  """Information bits of ``hist`` under a stored table, plus the table's own bits."""
  return models.bits_under(hist, models.table_counts(kind, table, offset, hist.size)) + 8 * table.size


class _Grid(NamedTuple):
  """An encoder's candidate classed layout: the stored class maps and each context's histogram."""
  grid: tuple[int, int]
  head: np.ndarray  # uint8: the packed row and column class maps
  hists: np.ndarray  # int64[R·C, alphabet]


def _grid(sym: np.ndarray, header: dict, grid: tuple[int, int] | None, candidates=AUTO_CLASSES,
          counts: np.ndarray | None = None) -> _Grid:
  """The classed layout of ``grid``, or of the best-looking of ``candidates`` when ``grid`` is None (``counts``: the
  symbols' histogram)."""
  n_rows, n_cols = _matrix_shape(header)
  alphabet = header["alphabet"]
  s = sym.reshape(n_rows, n_cols)
  if grid is None:
    grid, rows, cols = contexts.choose_grid(s, alphabet, candidates, counts=counts)
  else:
    rows, cols = contexts.assign(s, alphabet, *grid)
  R, C = grid
  ctx = rows.astype(np.intp)[:, None] * (C * alphabet) + cols.astype(np.intp)[None, :] * alphabet  # bincount's type
  hists = np.bincount((ctx + s).ravel(), minlength=R * C * alphabet).reshape(R * C, alphabet)
  return _Grid((R, C), np.concatenate([contexts.pack(rows, R), contexts.pack(cols, C)]), hists)


def _classed_table(g: _Grid, header: dict, model: str) -> np.ndarray:
  """The classed model's table for ``g``: the maps, then a framed table per non-empty context."""
  used = g.hists[g.hists.sum(axis=1) > 0]
  chosen = _choose_tables(model, used, header["offset"], header["table_bits"]) if used.size else []
  return np.concatenate([g.head] + [_frame(kind, t) for kind, t in chosen])


def _check_classes(classes, model: str, group_rows, ndim: int) -> None:
  if classes is None:
    return
  grid_ok = (isinstance(classes, tuple) and len(classes) == 2
             and all(_is_int(k) and 1 <= k <= contexts.MAX_CLASSES for k in classes))
  if not (classes == "auto" or grid_ok) or model == "raw" or group_rows is not None:
    raise ConfigError(f"coding: classes must be None, 'auto' or (row_classes, col_classes) with each in "
                      f"[1, {contexts.MAX_CLASSES}], and not with model='raw' or group_rows; got {classes!r}")
  if ndim == 0:
    raise ShapeError("codes: a scalar cannot be coded with classes; pass classes=None")


def encode(codes, *, model: str = "histogram", table_bits: int = 16, group_rows: int | None = None,
           classes: tuple[int, int] | str | None = None) -> CodedTensor:
  """Entropy codes an integer tensor with an ANS coder under a model stored alongside the words.

  Models (``p`` over the alphabet ``[min, max]`` of the codes):

  * ``histogram``: the histogram, scaled to ``2**table_bits`` total and stored as varints; coded length ≈ ``N·H``.
  * ``laplace`` / ``gaussian`` / ``logistic``: a fitted discrete parametric model (5–8 byte table).
  * ``auto``: whichever of the four gives the fewest bits, table included (measured, not guessed).
  * ``raw``: uniform over ``[min, min + 2**32)``, 32 bits per code, for ranges too wide for a table.

  With ``group_rows``, the tensor is viewed as ``[shape[0], −1]`` and each run of ``group_rows`` rows (a channel
  group) gets its own model (chosen per group with ``auto``): a context-adaptive model for tensors whose rows have
  unequal statistics.

  With ``classes = (R, C)``, the tensor viewed as ``[shape[0], −1]`` has its rows sorted into ``R`` classes and its
  columns into ``C`` (chosen by the encoder, :func:`macjax.coding.contexts.assign`; the maps are stored) and each
  context (row class, column class) gets its own model: for matrices whose rows and columns have unequal spreads.
  ``classes = "auto"`` ranks the grids of :data:`AUTO_CLASSES` by the estimated bits of their starting classes
  (:func:`macjax.coding.contexts.choose_grid`), runs the class search for the best-looking one, and keeps it only if
  its information under the stored models + tables + maps is below one model's (the coder adds only a few words).
  With ``auto`` and classes or row groups, each context's (group's) kind is chosen by estimated bits
  (:func:`macjax.coding.models.fit_tables`); with one model, by measured bits.

  Args:
    codes: integer array of any shape with values in int32 range.
    model: one of ``histogram``, ``laplace``, ``gaussian``, ``logistic``, ``auto``, ``raw``.
    table_bits: precision of a stored histogram (its total is at most ``2**table_bits``).
    group_rows: ``None`` for one model, else the rows per channel group (not with ``raw``).
    classes: ``None``, ``(row_classes, col_classes)`` or ``"auto"`` (not with ``raw`` or ``group_rows``).

  Returns:
    A :class:`CodedTensor`; ``decode`` of it returns ``codes`` exactly (as int32).

  Raises:
    ShapeError: ``codes`` is not integer, or its range needs more than ``2**20`` symbols (use ``raw``).
    ConfigError: unknown ``model``, bad ``table_bits`` or ``group_rows``.

  Example:
    >>> c = encode(np.array([[0, 1], [1, -3]], np.int32), model="auto")
    >>> decode(c).tolist()
    [[0, 1], [1, -3]]
  """
  if model not in ENCODE_MODELS:
    raise ConfigError(f"coding: unknown model {model!r}, expected one of {ENCODE_MODELS}")
  if not (_is_int(table_bits) and 1 <= table_bits <= 32):
    raise ConfigError(f"coding: table_bits must be an int in [1, 32], got {table_bits!r}")
  if group_rows is not None and (not _is_int(group_rows) or group_rows < 1 or model == "raw"):
    raise ConfigError(f"coding: group_rows must be None or an int >= 1 (and model not 'raw'), got {group_rows!r}")
  arr = _as_codes(codes)
  if group_rows is not None and arr.ndim == 0:
    raise ShapeError("codes: a scalar cannot be coded with group_rows; pass group_rows=None")
  _check_classes(classes, model, group_rows, arr.ndim)
  lo = int(arr.min()) if arr.size else 0
  hi = int(arr.max()) if arr.size else 0
  weights = None  # the coder's model, when a candidate already built it
  header = {"format": FORMAT, "coder": CODER, "model": model, "shape": [int(d) for d in arr.shape],
            "offset": lo, "alphabet": 2, "precision": tables.PRECISION, "table_bits": int(table_bits),
            "n_words": 0}
  if model == "raw":
    header["alphabet"] = 1 << RAW_CHUNK_BITS
    table = np.zeros(0, dtype=np.uint8)
  else:
    if hi == lo:  # a one-symbol tensor still gets a 2-symbol alphabet (constriction's minimum), inside int32
      lo, hi = (lo, lo + 1) if lo < np.iinfo(np.int32).max else (lo - 1, hi)
      header["offset"] = lo
    alphabet = hi - lo + 1
    if alphabet > tables.MAX_ALPHABET:
      raise ShapeError(f"codes: shape {arr.shape} spans [{lo}, {hi}] ({alphabet} symbols), more than a model's"
                       f" {tables.MAX_ALPHABET}; use model='raw' or a coarser quantizer")
    header["alphabet"] = alphabet
    sym = _symbols(arr, header)
    if group_rows is None:
      hist = histogram(sym, alphabet)
      header["model"], table = _choose_table(model, hist, lo, table_bits)
      grids = AUTO_CLASSES if classes == "auto" else ([classes] if classes is not None else [])
      n_rows, n_cols = _matrix_shape(header) if grids else (0, 0)
      cells = lambda g: contexts.search_cells(n_rows, n_cols, *g) + g[0] * g[1] * alphabet  # noqa: E731
      if classes == "auto":  # skip grids whose class search would not fit in memory, and empty tensors
        grids = [g for g in grids if sym.size and cells(g) <= _MAX_ASSIGN_CELLS]
      elif grids and cells(grids[0]) > _MAX_ASSIGN_CELLS:
        raise ConfigError(f"coding: classes {classes} on codes of shape {arr.shape} with {alphabet} symbols needs "
                          f"more than {_MAX_ASSIGN_CELLS} histogram cells; use fewer classes or a coarser quantizer")
      if grids:  # the best-looking grid gets real tables; "auto" keeps it only if it beats one model
        g = _grid(sym, header, None, grids, hist) if classes == "auto" else _grid(sym, header, grids[0])
        classed = dict(header, model="classed", row_classes=int(g.grid[0]), col_classes=int(g.grid[1]))
        t = _classed_table(g, classed, model)
        w = model_weights(CodedTensor(np.zeros(0, np.uint32), t, classed))
        bits = float(models.information(g.hists[g.hists.sum(axis=1) > 0], w).sum()) + 8 * t.size
        if classes != "auto" or bits < _table_bits(header["model"], table, hist, lo):
          header, table, weights = classed, t, w
    else:
      header["model"], header["group_rows"] = "grouped", int(group_rows)
      too_many = _too_many_table_cells(header, arr.size)
      if too_many:
        raise ConfigError(f"coding: group_rows={group_rows} on codes of shape {arr.shape}: {too_many}; use larger "
                          "groups or a coarser quantizer")
      bounds = np.cumsum([0] + _segments(header))
      hists = np.array([np.bincount(sym[a:b], minlength=alphabet) for a, b in zip(bounds[:-1], bounds[1:])],
                       np.int64).reshape(-1, alphabet)
      framed = [_frame(kind, t) for kind, t in _choose_tables(model, hists, lo, table_bits)]
      table = np.concatenate(framed) if framed else np.zeros(0, np.uint8)
  if weights is None:
    weights = model_weights(CodedTensor(np.zeros(0, np.uint32), table, header))
  symbols = sym if model != "raw" else _symbols(arr, header)
  if header["model"] == "classed":
    symbols = symbols[_order(_classes(header, table))]
  coder = constriction.stream.stack.AnsCoder()
  if symbols.size:
    coder.encode_reverse(SENTINEL, _SENTINEL_MODEL)
    bounds = np.cumsum([0] + _segments(header, table))
    for g in reversed(range(len(bounds) - 1)):  # a stack: the first segment goes on last
      if bounds[g + 1] > bounds[g]:
        coder.encode_reverse(symbols[bounds[g]:bounds[g + 1]], _constriction_model(weights[g]))
  words = np.ascontiguousarray(coder.get_compressed(), dtype=np.uint32)
  header["n_words"] = int(words.size)
  return CodedTensor(words=words, table=table, header=header)


def decode(coded: CodedTensor) -> np.ndarray:
  """Decodes a :class:`CodedTensor` back to its int32 codes, bit for bit.

  Raises:
    ArtifactError: malformed/truncated header, table or words, or a stream that does not end exactly where the
      symbols do. (An altered stream of the right length may still decode to wrong symbols without error; the
      artifact's checksum catches that.)

  Example:
    >>> x = np.arange(-5, 5, dtype=np.int32).reshape(2, 5)
    >>> bool(np.array_equal(decode(encode(x)), x))
    True
  """
  if not isinstance(coded, tuple) or len(coded) != 3:
    raise ArtifactError(f"coded tensor: expected CodedTensor(words, table, header), got {type(coded).__name__}")
  header = _check_header(coded.header)
  words = np.asarray(coded.words)
  if words.dtype != np.uint32 or words.ndim != 1:
    raise ArtifactError(f"coded tensor words: expected 1-D uint32, got dtype {words.dtype} shape {words.shape}")
  if words.size != header["n_words"]:
    raise ArtifactError(f"coded tensor words: {words.size} words, header says {header['n_words']} (truncated?)")
  weights = model_weights(coded)
  shape = tuple(int(d) for d in header["shape"])
  segments = _segments(header, coded.table)
  n = sum(segments)
  if n == 0:
    if words.size:
      raise ArtifactError(f"coded tensor words: {words.size} words for an empty tensor of shape {shape}")
    return np.zeros(shape, dtype=np.int32)
  try:
    coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words))
    parts = [coder.decode(_constriction_model(weights[g]), m) for g, m in enumerate(segments) if m]
    sentinel = coder.decode(_SENTINEL_MODEL, SENTINEL.size)
    exhausted = coder.is_empty()
  except Exception as e:  # constriction reports bad streams as ValueError/AssertionError
    raise ArtifactError(f"coded tensor words: cannot decode {n} symbols of shape {shape}: {e}") from e
  if not (exhausted and np.array_equal(sentinel, SENTINEL)):
    raise ArtifactError(f"coded tensor words: stream of {words.size} words does not end after the {n} symbols of "
                        f"shape {shape} (truncated or altered)")
  symbols = parts[0] if len(parts) == 1 else np.concatenate(parts)
  if header["model"] == "raw":
    pairs = symbols.astype(np.int64).reshape(-1, RAW_CHUNKS)
    values = ((pairs[:, 0] << RAW_CHUNK_BITS) | pairs[:, 1]) + header["offset"]
    if values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max:
      raise ArtifactError(f"coded tensor: decoded values outside int32 for shape {shape} (altered)")
    return values.astype(np.int32).reshape(shape)
  # Table models: symbols < alphabet, and the header check keeps [offset, offset + alphabet) inside int32.
  symbols = symbols.astype(np.int32, copy=False)
  if header["model"] == "classed":  # back from coding order to row-major
    flat = np.empty_like(symbols)
    flat[_order(_classes(header, coded.table))] = symbols
    symbols = flat
  symbols += np.int32(header["offset"])
  return symbols.reshape(shape)


def information_bits(codes, coded: CodedTensor) -> float:
  """Shannon information ``−Σ_i log2 p(codes_i)`` under the stored model of ``coded``, computed in JAX.

  ``p(c) = w[g, c − offset] / 2**24`` with ``w`` from :func:`model_weights`, i.e. exactly the coder's model, so the
  real coded size ``32·len(words)`` exceeds it only by the coder's overhead (a few words, including a 32-bit
  sentinel that lets :func:`decode` detect a wrong symbol count or a damaged stream end).

  Example:
    >>> x = np.zeros(1000, np.int32); x[::2] = 1
    >>> round(information_bits(x, encode(x)))
    1000
  """
  arr = _as_codes(codes)
  header = _check_header(coded.header)
  if list(arr.shape) != [int(d) for d in header["shape"]]:
    raise ShapeError(f"codes: shape {arr.shape} does not match the coded tensor's shape {header['shape']}")
  weights = model_weights(coded)
  if header["model"] == "raw":
    symbols = _symbols(arr, header).astype(np.int64)
  else:
    offset = header["offset"]  # (int32 symbols when they fit: no int64 copy of a large tensor)
    symbols = arr.ravel() - np.int32(offset) if _fits_int32(arr, offset) else arr.ravel().astype(np.int64) - offset
  if symbols.size and (symbols.min() < 0 or symbols.max() >= weights.shape[1]):
    raise ShapeError(f"codes: values of shape {arr.shape} fall outside the coded alphabet "
                     f"[{header['offset']}, {header['offset'] + weights.shape[1]})")
  segments = np.asarray(_segments(header, coded.table), dtype=np.int64)
  if header["model"] == "classed":  # into coding order, where the segments apply
    symbols = symbols[_order(_classes(header, coded.table))]
  # Exact integer counts per (segment, symbol) on the host, a chunk of symbols at a time (a few copies of a chunk,
  # not of the tensor); the information itself in JAX.
  counts = _segment_counts(symbols, segments, weights.shape[1])
  # Pad to a power of two so the jitted sum compiles for a handful of lengths, not once per alphabet size; padded
  # entries have count 0 and weight 2**24 (log2 = PRECISION), so they add exactly 0.
  n = 1 << max(int(counts.size - 1).bit_length(), 4)
  counts = np.pad(counts.astype(np.float32), (0, n - counts.size))
  w = np.pad(weights.ravel().astype(np.float32), (0, n - weights.size), constant_values=float(1 << tables.PRECISION))
  return float(_information(jnp.asarray(counts), jnp.asarray(w)))


_COUNT_CHUNK = 1 << 22


def _fits_int32(arr: np.ndarray, offset: int) -> bool:
  """Whether ``arr - offset`` stays inside int32."""
  return np.iinfo(np.int32).min <= offset <= np.iinfo(np.int32).max and (arr.size == 0 or (
      int(arr.min()) - offset >= np.iinfo(np.int32).min and int(arr.max()) - offset <= np.iinfo(np.int32).max))


def histogram(symbols: np.ndarray, alphabet: int) -> np.ndarray:
  """``np.bincount(symbols, minlength=alphabet)`` over chunks of :data:`_COUNT_CHUNK` symbols (bincount converts
  its input to int64: chunking keeps that copy to a chunk's size on large tensors).

  Example:
    >>> histogram(np.array([0, 2, 2], np.int32), 3).tolist()
    [1, 0, 2]
  """
  flat = symbols.ravel()
  if flat.size <= _COUNT_CHUNK:
    return np.bincount(flat, minlength=alphabet)
  counts = np.zeros(max(alphabet, int(flat.max()) + 1), np.int64)
  for lo in range(0, flat.size, _COUNT_CHUNK):
    part = np.bincount(flat[lo:lo + _COUNT_CHUNK], minlength=alphabet)
    counts[:part.size] += part
  return counts


def _segment_counts(symbols: np.ndarray, segments: np.ndarray, alphabet: int) -> np.ndarray:
  """``counts[g * alphabet + s]``: how often symbol ``s`` occurs in segment ``g`` (segments are consecutive runs of
  ``symbols`` of the given lengths), in chunks of :data:`_COUNT_CHUNK` symbols."""
  if segments.size == 1:
    return histogram(symbols, alphabet)
  starts = np.concatenate([[0], np.cumsum(segments)])
  counts = np.zeros(segments.size * alphabet, np.int64)
  for lo in range(0, symbols.size, _COUNT_CHUNK):
    hi = min(symbols.size, lo + _COUNT_CHUNK)
    seg = np.searchsorted(starts, np.arange(lo, hi), side="right") - 1
    counts += np.bincount(seg * alphabet + symbols[lo:hi], minlength=counts.size)
  return counts


@jax.jit
def _information(counts: jax.Array, weights: jax.Array) -> jax.Array:
  """``Σ_s counts[s] · (24 − log2 w[s])``."""
  return jnp.sum(counts * (tables.PRECISION - jnp.log2(weights)))


def coded_bits(coded: CodedTensor) -> dict:
  """Bits a coded tensor occupies, by part: ``words`` (32 each), ``table`` (8 per byte), ``header`` (compact JSON).

  Example:
    >>> sorted(coded_bits(encode(np.zeros(4, np.int32))))
    ['header', 'table', 'total', 'words']
  """
  words = 32 * int(np.asarray(coded.words).size)
  table = 8 * int(np.asarray(coded.table).size)
  header = 8 * len(json.dumps(coded.header, separators=(",", ":")).encode())
  return {"words": words, "table": table, "header": header, "total": words + table + header}
