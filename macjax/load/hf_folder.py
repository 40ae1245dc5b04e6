"""Read a Hugging Face model folder: ``config.json``, safetensors weights (single file or sharded), tokenizer files.

Weights are read by :mod:`safetensors` through a memory map (never pickle, never torch), one tensor at a time when
it is accessed (:class:`~macjax.load.lazy.LazyTensors`), and converted to float32 numpy arrays; F16, BF16 and F64
are converted (F16 and BF16 exactly; F64 by rounding). Integer and bool
tensors keep their dtype so that the caller can recognise buffers such as ``embeddings.position_ids``.

Example:
  >>> raw = read_hf_folder("path/to/model")  # doctest: +SKIP
  >>> raw.config["model_type"], sorted(raw.tokenizer_files)[:2]  # doctest: +SKIP
  ('bert', ['special_tokens_map.json', 'tokenizer.json'])
"""

from __future__ import annotations

import functools
import json
import pathlib
import types

import ml_dtypes  # noqa: F401  (registers numpy's 'bfloat16' dtype, which safetensors returns BF16 tensors in)
import numpy as np
import safetensors

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
_FLOAT_DTYPES = types.MappingProxyType({"F32": np.float32, "F16": np.float16, "BF16": np.float32, "F64": np.float64})
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


def _read_tensor(handle, path: pathlib.Path, name: str, dtype: str) -> np.ndarray:
  """One tensor of an open safetensors file: floats as a fresh float32 array, integers/bools as stored."""
  if dtype not in _FLOAT_DTYPES and dtype not in _OTHER_DTYPES:
    raise ModelLoadError(f"{path}: tensor {name!r} has dtype {dtype}; expected one of "
                         f"{', '.join([*_FLOAT_DTYPES, *_OTHER_DTYPES])}")
  try:
    array = handle.get_tensor(name)
  except Exception as e:  # safetensors raises SafetensorError, OSError ... for a file changed under it
    raise ModelLoadError(f"{path}: tensor {name!r} cannot be read ({type(e).__name__}: {e})") from e
  if dtype in _FLOAT_DTYPES:  # BF16 comes back as ml_dtypes.bfloat16: widening to float32 is exact
    return np.array(array, dtype=np.float32, copy=True)
  return np.asarray(array, dtype=_OTHER_DTYPES[dtype])


def open_safetensors(path: pathlib.Path) -> LazyTensors:
  """The tensors of one safetensors file, memory-mapped and read on access (:class:`LazyTensors`).

  Only the header is parsed here; each access reads one tensor (floats widened to float32, which is exact for
  F16/BF16, rounding for F64).

  Raises:
    ModelLoadError: the file is missing, truncated, or not a valid safetensors file.

  Example:
    >>> t = open_safetensors(pathlib.Path("model.safetensors"))  # doctest: +SKIP
    >>> t.dtype("embeddings.word_embeddings.weight"), t["embeddings.word_embeddings.weight"].dtype  # doctest: +SKIP
    ('F32', dtype('float32'))
  """
  if not path.is_file():
    raise ModelLoadError(f"{path}: cannot read safetensors file (no such file)")
  try:
    handle = safetensors.safe_open(str(path), framework="numpy")
    slices = {name: handle.get_slice(name) for name in handle.keys()}
    shapes = {name: tuple(s.get_shape()) for name, s in slices.items()}
    dtypes = {name: str(s.get_dtype()) for name, s in slices.items()}
  except Exception as e:  # SafetensorError for a bad header, OSError for an unreadable file
    raise ModelLoadError(f"{path}: not a valid safetensors file, or truncated ({path.stat().st_size} bytes): "
                         f"{type(e).__name__}: {e}") from e
  readers = {name: functools.partial(_read_tensor, handle, path, name, dtypes[name]) for name in shapes}
  return LazyTensors(readers, shapes, dtypes, where=str(path), keep_open=(handle,))


def read_safetensors(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Every tensor of one safetensors file (floats as float32, integers/bools as they are), and its stored dtype.

  Raises:
    ModelLoadError: the file is missing, truncated, or not a valid safetensors file.
    NonFiniteError: a floating-point tensor holds NaN or infinity.
  """
  lazy = open_safetensors(path)
  return lazy.materialize(), {name: lazy.dtype(name) for name in lazy}


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


def read_weights(folder: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """:func:`open_weights`, every tensor read into memory; and each tensor's stored dtype."""
  lazy = open_weights(folder)
  return lazy.materialize(), {name: lazy.dtype(name) for name in lazy}


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
