"""Read a Hugging Face model folder: ``config.json``, safetensors weights (single file or sharded), tokenizer files.

Weights are read from safetensors files (never pickle, never torch) one tensor at a time when it is accessed
(:class:`~macjax.load.lazy.LazyTensors`), and converted to float32 numpy arrays; F16, BF16 and F64 are converted
(F16 and BF16 exactly; F64 by rounding). Integer and bool
tensors keep their dtype so that the caller can recognise buffers such as ``embeddings.position_ids``.

Example:
  >>> raw = read_hf_folder("path/to/model")  # doctest: +SKIP
  >>> raw.config["model_type"], sorted(raw.tokenizer_files)[:2]  # doctest: +SKIP
  ('bert', ['special_tokens_map.json', 'tokenizer.json'])
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import types

import numpy as np

from macjax.errors import ModelLoadError
from macjax.load.lazy import LazyTensors
from macjax.load.raw import RawCheckpoint

SINGLE_WEIGHTS = "model.safetensors"
SHARDED_INDEX = "model.safetensors.index.json"
# Files that make up a Hugging Face tokenizer; those present are carried through load -> export unchanged.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "spiece.model", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")
# safetensors dtype -> how to make a numpy array of it from raw little-endian bytes.
_FLOAT_DTYPES = types.MappingProxyType({"F32": np.float32, "F16": np.float16, "F64": np.float64})
_OTHER_DTYPES = types.MappingProxyType({
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16,
    "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_})


def read_json(path: pathlib.Path) -> dict:
  """Parse a JSON object file, raising :class:`ModelLoadError` naming the file on any problem."""
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ModelLoadError(f"{path}: cannot read JSON ({type(e).__name__}: {e})") from e
  if not isinstance(value, dict):
    raise ModelLoadError(f"{path}: expected a JSON object, found {type(value).__name__}")
  return value


_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
             "U32": 4, "U64": 8, "BOOL": 1}
_MAX_HEADER = 100 << 20


def _read_header(path: pathlib.Path) -> tuple[int, dict[str, tuple[str, tuple[int, ...], int, int]]]:
  """Parses and checks a safetensors header: ``(data start, {name: (dtype, shape, begin, end)})``.

  Raises:
    ModelLoadError: the header is unreadable, or a tensor's offsets leave the file or disagree with its shape.
  """
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 2 <= n <= min(_MAX_HEADER, size - 8):
      raise ModelLoadError(f"{path}: not a valid safetensors file, or truncated ({size} bytes): header length {n}")
    try:
      header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
      raise ModelLoadError(f"{path}: not a valid safetensors file, or truncated ({size} bytes): "
                           f"{type(e).__name__}: {str(e)[:200]}") from e
  if not isinstance(header, dict):
    raise ModelLoadError(f"{path}: not a valid safetensors file: the header is not a JSON object")
  start, out = 8 + n, {}
  is_count = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62  # noqa: E731
  for name, view in header.items():
    if name == "__metadata__":
      continue
    if not (isinstance(view, dict) and isinstance(view.get("dtype"), str) and isinstance(view.get("shape"), list)
            and all(map(is_count, view["shape"])) and isinstance(view.get("data_offsets"), list)
            and len(view["data_offsets"]) == 2 and all(map(is_count, view["data_offsets"]))):
      raise ModelLoadError(f"{path}: tensor {name!r} has a malformed header entry (expected dtype, a shape of "
                           "non-negative ints and two data offsets)")
    dtype, shape, (begin, end) = view["dtype"], tuple(view["shape"]), view["data_offsets"]
    if dtype not in _ITEMSIZE:
      raise ModelLoadError(f"{path}: tensor {name!r} has dtype {dtype}; expected one of {', '.join(_ITEMSIZE)}")
    if not begin <= end <= size - start or end - begin != math.prod(shape) * _ITEMSIZE[dtype]:  # (exact ints)
      raise ModelLoadError(f"{path}: not a valid safetensors file, or truncated ({size} bytes): tensor {name!r} "
                           f"{dtype} {list(shape)[:8]} claims bytes [{begin}, {end}) of {size - start}")
    out[name] = (dtype, shape, begin, end)
  spans = sorted((b, e, n) for n, (_, _, b, e) in out.items() if e > b)
  for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
    if b1 < e0:
      raise ModelLoadError(f"{path}: not a valid safetensors file: the data of tensors {n0!r} and {n1!r} overlap")
  return start, out


def _read_tensor(path: pathlib.Path, name: str, dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
  """One tensor read with plain file reads (floats widened to a fresh float32 array, integers/bools as stored)."""
  count = int(np.prod(shape, dtype=np.int64))
  try:
    if dtype == "BF16":  # the upper 16 bits of a float32: widening is exact
      raw = np.fromfile(path, dtype="<u2", count=count, offset=offset)
      array = (raw.astype(np.uint32) << 16).view(np.float32)
    elif dtype in _FLOAT_DTYPES:
      array = np.fromfile(path, dtype=np.dtype(_FLOAT_DTYPES[dtype]).newbyteorder("<"), count=count,
                          offset=offset).astype(np.float32, copy=False)
    else:
      array = np.fromfile(path, dtype=np.dtype(_OTHER_DTYPES[dtype]).newbyteorder("<"), count=count,
                          offset=offset).astype(_OTHER_DTYPES[dtype])
  except OSError as e:
    raise ModelLoadError(f"{path}: tensor {name!r} cannot be read ({e})") from e
  if array.size != count:
    raise ModelLoadError(f"{path}: tensor {name!r} is truncated: read {array.size} of {count} values")
  return array.reshape(shape)


def open_safetensors(path: pathlib.Path) -> LazyTensors:
  """The tensors of one safetensors file, read on access (:class:`LazyTensors`).

  Only the header is parsed here (and checked: every tensor's bytes inside the file and matching its shape). Each
  access reads one tensor with plain file reads rather than through a memory map, so the pages of tensors already
  read do not stay in this process's resident memory: a pass over a model larger than RAM holds what it is
  working on, nothing more (the layout is safetensors' documented one: an 8-byte header length, a JSON header of
  dtype / shape / data offsets, the data).

  Raises:
    ModelLoadError: the file is missing, truncated, or not a valid safetensors file.

  Example:
    >>> t = open_safetensors(pathlib.Path("model.safetensors"))  # doctest: +SKIP
    >>> t.dtype("embeddings.word_embeddings.weight"), t["embeddings.word_embeddings.weight"].dtype  # doctest: +SKIP
    ('F32', dtype('float32'))
  """
  if not path.is_file():
    raise ModelLoadError(f"{path}: cannot read safetensors file (no such file)")
  start, header = _read_header(path)
  readers = {name: functools.partial(_read_tensor, path, name, dtype, shape, start + begin)
             for name, (dtype, shape, begin, _) in header.items()}
  return LazyTensors(readers, {n: h[1] for n, h in header.items()}, {n: h[0] for n, h in header.items()},
                     where=str(path))


def open_weights(folder: pathlib.Path) -> LazyTensors:
  """The tensors of ``model.safetensors``, or of every shard of ``model.safetensors.index.json``, read on access.

  Raises:
    ModelLoadError: no safetensors weights (only pickle ``.bin`` files are refused), a shard is missing, or the
      index and the shards disagree about which tensor lives where.

  Example:
    >>> sorted(open_weights(pathlib.Path("minilm")))[0]  # doctest: +SKIP
    'embeddings.LayerNorm.bias'
  """
  single, index = folder / SINGLE_WEIGHTS, folder / SHARDED_INDEX
  if single.is_file():
    return open_safetensors(single)
  if not index.is_file():
    present = sorted(p.name for p in folder.iterdir())
    raise ModelLoadError(f"{folder}: no {SINGLE_WEIGHTS} or {SHARDED_INDEX}; found {present} (pickle checkpoints "
                         "such as pytorch_model.bin are not read)")
  weight_map = read_json(index).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise ModelLoadError(f"{index}: expected a non-empty object 'weight_map' of tensor name -> shard file")
  readers, shapes, dtypes, handles = {}, {}, {}, []
  for shard_name in sorted(set(map(str, weight_map.values()))):
    shard = folder / shard_name
    if pathlib.Path(shard_name).name != shard_name or not shard.is_file():
      raise ModelLoadError(f"{index}: shard {shard_name!r} is not a file in {folder}")
    tensors = open_safetensors(shard)
    listed = {n for n, s in weight_map.items() if s == shard_name}
    if set(tensors) != listed:
      extra, absent = sorted(set(tensors) - listed), sorted(listed - set(tensors))
      raise ModelLoadError(f"{shard}: holds tensors {extra[:3]} that the index does not list, and lacks "
                           f"{absent[:3]} that it lists")
    readers.update(tensors._readers)  # pylint: disable=protected-access
    shapes.update({n: tensors.shape(n) for n in tensors})
    dtypes.update({n: tensors.dtype(n) for n in tensors})
    handles.append(tensors)
  return LazyTensors(readers, shapes, dtypes, where=str(folder), keep_open=tuple(handles))


def read_tokenizer_files(folder: pathlib.Path) -> dict[str, bytes]:
  """The bytes of the tokenizer files (:data:`TOKENIZER_FILES`) present in ``folder``, unchanged."""
  return {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).is_file()}


def read_hf_folder(folder: str | pathlib.Path) -> RawCheckpoint:
  """Read a Hugging Face model folder.

  Args:
    folder: a folder with ``config.json`` and safetensors weights.

  Returns:
    A :class:`RawCheckpoint`: ``{name: array}`` as a :class:`LazyTensors` (each tensor read from its
    memory-mapped file on access, floats as float32), the parsed ``config.json``, ``{file name: bytes}`` of the
    tokenizer files, and each tensor's safetensors dtype.

  Example:
    >>> read_hf_folder("minilm").config["model_type"]  # doctest: +SKIP
    'bert'
  """
  folder = pathlib.Path(folder)
  config = read_json(folder / "config.json")
  params = open_weights(folder)
  return RawCheckpoint(params=params, config=config, tokenizer_files=read_tokenizer_files(folder),
                       source_dtypes={name: params.dtype(name) for name in params})
