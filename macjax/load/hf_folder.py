"""Read a Hugging Face model folder: ``config.json``, safetensors weights (single file or sharded), tokenizer files.

Weights are parsed by :mod:`safetensors` (never pickle, never torch) and converted to float32 numpy arrays; F16,
BF16 and F64 are converted (BF16 by widening its 16 bits, which is exact; F64 by rounding). Integer and bool
tensors keep their dtype so that the caller can recognise buffers such as ``embeddings.position_ids``.

Example:
  >>> raw = read_hf_folder("path/to/model")  # doctest: +SKIP
  >>> raw.config["model_type"], sorted(raw.tokenizer_files)[:2]  # doctest: +SKIP
  ('bert', ['special_tokens_map.json', 'tokenizer.json'])
"""

from __future__ import annotations

import json
import pathlib
import types

import numpy as np
import safetensors

from macjax.errors import ModelLoadError
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


def _to_array(path: pathlib.Path, name: str, view: dict) -> np.ndarray:
  dtype, shape, data = view["dtype"], tuple(view["shape"]), view["data"]
  if dtype == "BF16":
    raw = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
    return raw.view(np.float32).reshape(shape)
  if dtype in _FLOAT_DTYPES:  # (F32 data is used in place: frombuffer over the bytearray, no copy)
    return np.frombuffer(data, dtype=np.dtype(_FLOAT_DTYPES[dtype]).newbyteorder("<")).astype(
        np.float32, copy=False).reshape(shape)
  if dtype in _OTHER_DTYPES:
    return np.frombuffer(data, dtype=np.dtype(_OTHER_DTYPES[dtype]).newbyteorder("<")).astype(
        _OTHER_DTYPES[dtype]).reshape(shape)
  raise ModelLoadError(f"{path}: tensor {name!r} has dtype {dtype}; expected one of "
                       f"{', '.join(['BF16', *_FLOAT_DTYPES, *_OTHER_DTYPES])}")


def read_safetensors(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Every tensor of one safetensors file (floats as float32, integers/bools as they are), and its stored dtype.

  Raises:
    ModelLoadError: the file is missing, truncated, or not a valid safetensors file.

  Example:
    >>> arrays, dtypes = read_safetensors(pathlib.Path("model.safetensors"))  # doctest: +SKIP
    >>> arrays["embeddings.word_embeddings.weight"].dtype, dtypes["embeddings.word_embeddings.weight"]  # doctest: +SKIP
    (dtype('float32'), 'F32')
  """
  try:
    blob = path.read_bytes()
  except OSError as e:
    raise ModelLoadError(f"{path}: cannot read safetensors file ({e})") from e
  try:
    views = safetensors.deserialize(blob)
  except safetensors.SafetensorError as e:
    raise ModelLoadError(f"{path}: not a valid safetensors file, or truncated ({len(blob)} bytes): {e}") from e
  del blob
  return ({name: _to_array(path, name, view) for name, view in views},
          {name: str(view["dtype"]) for name, view in views})


def read_weights(folder: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """The tensors (and stored dtypes) of ``model.safetensors``, or of every shard of ``model.safetensors.index.json``.

  Raises:
    ModelLoadError: no safetensors weights (only pickle ``.bin`` files are refused), a shard is missing, or the
      index and the shards disagree about which tensor lives where.

  Example:
    >>> sorted(read_weights(pathlib.Path("minilm"))[0])[0]  # doctest: +SKIP
    'embeddings.LayerNorm.bias'
  """
  single, index = folder / SINGLE_WEIGHTS, folder / SHARDED_INDEX
  if single.is_file():
    return read_safetensors(single)
  if not index.is_file():
    present = sorted(p.name for p in folder.iterdir())
    raise ModelLoadError(f"{folder}: no {SINGLE_WEIGHTS} or {SHARDED_INDEX}; found {present} (pickle checkpoints "
                         "such as pytorch_model.bin are not read)")
  weight_map = read_json(index).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise ModelLoadError(f"{index}: expected a non-empty object 'weight_map' of tensor name -> shard file")
  params: dict[str, np.ndarray] = {}
  dtypes: dict[str, str] = {}
  for shard_name in sorted(set(weight_map.values())):
    shard = folder / str(shard_name)
    if pathlib.Path(str(shard_name)).name != shard_name or not shard.is_file():
      raise ModelLoadError(f"{index}: shard {shard_name!r} is not a file in {folder}")
    tensors, shard_dtypes = read_safetensors(shard)
    listed = {n for n, s in weight_map.items() if s == shard_name}
    if set(tensors) != listed:
      extra, absent = sorted(set(tensors) - listed), sorted(listed - set(tensors))
      raise ModelLoadError(f"{shard}: holds tensors {extra[:3]} that the index does not list, and lacks "
                           f"{absent[:3]} that it lists")
    params.update(tensors)
    dtypes.update(shard_dtypes)
  return params, dtypes


def read_tokenizer_files(folder: pathlib.Path) -> dict[str, bytes]:
  """The bytes of the tokenizer files (:data:`TOKENIZER_FILES`) present in ``folder``, unchanged."""
  return {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).is_file()}


def read_hf_folder(folder: str | pathlib.Path) -> RawCheckpoint:
  """Read a Hugging Face model folder.

  Args:
    folder: a folder with ``config.json`` and safetensors weights.

  Returns:
    A :class:`RawCheckpoint`: ``{name: array}`` as stored (floats as float32), the parsed ``config.json``,
    ``{file name: bytes}`` of the tokenizer files, and each tensor's safetensors dtype.

  Example:
    >>> read_hf_folder("minilm").config["model_type"]  # doctest: +SKIP
    'bert'
  """
  folder = pathlib.Path(folder)
  config = read_json(folder / "config.json")
  params, dtypes = read_weights(folder)
  return RawCheckpoint(params=params, config=config, tokenizer_files=read_tokenizer_files(folder),
                       source_dtypes=dtypes)
