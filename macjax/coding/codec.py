"""Entropy coding of integer code tensors with constriction's ANS coder and stored probability models.

Three tiers, as in tensorflow-compression: the model is built once from the serialized table
(:func:`model_weights`, shared by encoder and decoder), the real coder writes ``uint32`` words on the host, and
:func:`information_bits` computes ``−Σ log2 p(code)`` under that same stored model in JAX.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import constriction
import jax.numpy as jnp
import numpy as np

from macjax.coding import tables
from macjax.errors import ArtifactError, ConfigError, ShapeError

FORMAT = "macjax.coded.v1"
CODER = "ans"
MODELS = ("histogram", "raw")
# "raw" codes each symbol as RAW_CHUNKS chunks of RAW_CHUNK_BITS bits under a uniform model: any int32 range.
RAW_CHUNK_BITS = 16
RAW_CHUNKS = 2
# A 32-bit sentinel sits under the symbols on the ANS stack (encoded first, decoded last): a stream decoded with
# the wrong symbol count or a truncated/altered tail ends on the wrong sentinel (2**-32 chance to pass).
SENTINEL = np.array([0x6D61, 0x636A], dtype=np.int32)  # "macj"
_SENTINEL_MODEL = constriction.stream.model.Uniform(1 << 16)
_HEADER_KEYS = {"format": str, "coder": str, "model": str, "shape": list, "offset": int, "alphabet": int,
                "precision": int, "table_bits": int, "n_words": int}


class CodedTensor(NamedTuple):
  """An entropy-coded integer tensor.

  Attributes:
    words: uint32[n_words], the compressed stream.
    table: uint8[...], the serialized probability model (everything the decoder needs besides ``header``).
    header: JSON-able dict: ``format``, ``coder``, ``model``, ``shape`` (list of ints), ``offset`` (symbol = code −
      offset), ``alphabet`` (number of symbols), ``precision`` (probability bits), ``table_bits``, ``n_words``.
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


def _check_header(header) -> dict:
  if not isinstance(header, dict):
    raise ArtifactError(f"coded tensor header: expected a dict, got {type(header).__name__}")
  for key, typ in _HEADER_KEYS.items():
    if key not in header:
      raise ArtifactError(f"coded tensor header: missing key {key!r} (has {sorted(header)})")
    val = header[key]
    if typ is int and (isinstance(val, bool) or not isinstance(val, (int, np.integer))):
      raise ArtifactError(f"coded tensor header: {key!r} must be an int, got {val!r}")
    if typ is list and not isinstance(val, (list, tuple)):
      raise ArtifactError(f"coded tensor header: {key!r} must be a list, got {val!r}")
    if typ is str and not isinstance(val, str):
      raise ArtifactError(f"coded tensor header: {key!r} must be a str, got {val!r}")
  if header["format"] != FORMAT or header["coder"] != CODER or header["precision"] != tables.PRECISION:
    raise ArtifactError(
        f"coded tensor header: unsupported format/coder/precision {header['format']!r}/{header['coder']!r}/"
        f"{header['precision']!r}, expected {FORMAT!r}/{CODER!r}/{tables.PRECISION}")
  if header["model"] not in MODELS:
    raise ArtifactError(f"coded tensor header: unknown model {header['model']!r}, expected one of {MODELS}")
  shape = header["shape"]
  if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
    raise ArtifactError(f"coded tensor header: shape must be a list of ints >= 0, got {shape!r}")
  if not 2 <= header["alphabet"] <= tables.MAX_ALPHABET or not 1 <= header["table_bits"] <= 32:
    raise ArtifactError(f"coded tensor header: alphabet {header['alphabet']} or table_bits {header['table_bits']}"
                        f" out of range")
  if header["n_words"] < 0:
    raise ArtifactError(f"coded tensor header: n_words {header['n_words']} < 0")
  return header


def model_weights(coded: CodedTensor) -> np.ndarray:
  """Integer weights ``w`` (``Σ w = 2**24``, ``w ≥ 1``) of the stored model; ``p(code) = w[code − offset] / 2**24``.

  This is the one place a model is built from its serialized table; :func:`encode`, :func:`decode` and
  :func:`information_bits` all call it.

  Raises:
    ArtifactError: the header or table is malformed, truncated, or altered.
  """
  header = _check_header(coded.header)
  if header["model"] == "raw":
    if np.asarray(coded.table).size != 0:
      raise ArtifactError("coded tensor table: the raw model has an empty table, got "
                          f"{np.asarray(coded.table).size} bytes")
    return np.full(1 << RAW_CHUNK_BITS, tables.TOTAL >> RAW_CHUNK_BITS, dtype=np.int64)
  counts = tables.varint_decode(coded.table, header["alphabet"], what="coded tensor table")
  return tables.weights_from_counts(counts)


def _constriction_model(weights: np.ndarray):
  # weights − 1 sums to 2**24 − n, so constriction's fast quantizer reproduces `weights` exactly (see tables.py).
  return constriction.stream.model.Categorical((weights - 1).astype(np.float64), perfect=False)


def _symbols(arr: np.ndarray, header: dict) -> np.ndarray:
  """Maps codes to the coder's symbols: ``code − offset``, or two 16-bit chunks per code for the raw model."""
  flat = arr.ravel().astype(np.int64) - header["offset"]
  if header["model"] == "raw":
    mask = (1 << RAW_CHUNK_BITS) - 1
    return np.stack([flat >> RAW_CHUNK_BITS, flat & mask], axis=1).ravel().astype(np.int32)
  return flat.astype(np.int32)


def encode(codes, *, model: str = "histogram", table_bits: int = 16) -> CodedTensor:
  """Entropy codes an integer tensor with an ANS coder under a model stored alongside the words.

  ``histogram``: the histogram of the codes over ``[min, max]``, scaled to ``2**table_bits`` total
  (:func:`tables.quantize_histogram`) and stored as varints; coded length ≈ ``N·H`` + table. ``raw``: a uniform
  model over ``[min, min + 2**32)`` (32 bits per code, empty table), for ranges too wide for a histogram.

  Args:
    codes: integer array of any shape with values in int32 range.
    model: ``"histogram"`` or ``"raw"``.
    table_bits: precision of the stored histogram (its total is at most ``2**table_bits``).

  Returns:
    A :class:`CodedTensor`; ``decode`` of it returns ``codes`` exactly (as int32).

  Raises:
    ShapeError: ``codes`` is not integer, or its range needs more than ``2**20`` histogram symbols.
    ConfigError: unknown ``model``.

  Example:
    >>> c = encode(np.array([[0, 1], [1, -3]], np.int32))
    >>> decode(c).tolist()
    [[0, 1], [1, -3]]
  """
  if model not in MODELS:
    raise ConfigError(f"coding: unknown model {model!r}, expected one of {MODELS}")
  if not (isinstance(table_bits, int) and 1 <= table_bits <= 32):
    raise ConfigError(f"coding: table_bits must be an int in [1, 32], got {table_bits!r}")
  arr = _as_codes(codes)
  lo = int(arr.min()) if arr.size else 0
  hi = int(arr.max()) if arr.size else 0
  header = {"format": FORMAT, "coder": CODER, "model": model, "shape": [int(d) for d in arr.shape],
            "offset": lo, "alphabet": 2, "precision": tables.PRECISION, "table_bits": int(table_bits),
            "n_words": 0}
  if model == "histogram":
    alphabet = max(hi - lo + 1, 2)
    if alphabet > tables.MAX_ALPHABET:
      raise ShapeError(f"codes: shape {arr.shape} spans [{lo}, {hi}] ({alphabet} symbols), more than the histogram"
                       f" model's {tables.MAX_ALPHABET}; use model='raw' or a coarser quantizer")
    header["alphabet"] = alphabet
    hist = np.bincount((arr.ravel().astype(np.int64) - lo), minlength=alphabet)
    table = tables.varint_encode(tables.quantize_histogram(hist, table_bits))
  else:
    header["alphabet"] = 1 << RAW_CHUNK_BITS
    table = np.zeros(0, dtype=np.uint8)
  weights = model_weights(CodedTensor(np.zeros(0, np.uint32), table, header))
  coder = constriction.stream.stack.AnsCoder()
  symbols = _symbols(arr, header)
  if symbols.size:
    coder.encode_reverse(SENTINEL, _SENTINEL_MODEL)
    coder.encode_reverse(symbols, _constriction_model(weights))
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
  n = math.prod(shape) * (RAW_CHUNKS if header["model"] == "raw" else 1)
  if n == 0:
    if words.size:
      raise ArtifactError(f"coded tensor words: {words.size} words for an empty tensor of shape {shape}")
    return np.zeros(shape, dtype=np.int32)
  try:
    coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words))
    symbols = coder.decode(_constriction_model(weights), n)
    sentinel = coder.decode(_SENTINEL_MODEL, SENTINEL.size)
    exhausted = coder.is_empty()
  except Exception as e:  # constriction reports bad streams as ValueError/AssertionError
    raise ArtifactError(f"coded tensor words: cannot decode {n} symbols of shape {shape}: {e}") from e
  if not (exhausted and np.array_equal(sentinel, SENTINEL)):
    raise ArtifactError(f"coded tensor words: stream of {words.size} words does not end after the {n} symbols of "
                        f"shape {shape} (truncated or altered)")
  symbols = symbols.astype(np.int64)
  if header["model"] == "raw":
    pairs = symbols.reshape(-1, RAW_CHUNKS)
    flat = (pairs[:, 0] << RAW_CHUNK_BITS) | pairs[:, 1]
  else:
    flat = symbols
  values = flat + header["offset"]
  if values.size and (values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max):
    raise ArtifactError(f"coded tensor: decoded values outside int32 for shape {shape} (altered)")
  return values.astype(np.int32).reshape(shape)


def information_bits(codes, coded: CodedTensor) -> float:
  """Shannon information ``−Σ_i log2 p(codes_i)`` under the stored model of ``coded``, computed in JAX.

  ``p(c) = w[c − offset] / 2**24`` with ``w`` from :func:`model_weights`, i.e. exactly the coder's model, so the
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
  symbols = _symbols(arr, header)
  if symbols.size and (symbols.min() < 0 or symbols.max() >= weights.size):
    raise ShapeError(f"codes: values of shape {arr.shape} fall outside the coded alphabet "
                     f"[{header['offset']}, {header['offset'] + weights.size})")
  counts = jnp.bincount(jnp.asarray(symbols), length=weights.size)
  bits_per_symbol = tables.PRECISION - jnp.log2(jnp.asarray(weights, jnp.float32))
  return float(jnp.sum(counts.astype(jnp.float32) * bits_per_symbol))


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
