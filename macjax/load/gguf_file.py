"""Read a GGUF file of architecture ``llama`` into Hugging Face ``LlamaForCausalLM`` names, layout and config.

Every tensor is dequantized to float32 with ``gguf.quants.dequantize`` when it is accessed: ``gguf.GGUFReader``
parses the header (and maps the file, which gives each tensor's offset, dtype and block shape); the tensor's bytes
are read with a plain file read, so nothing but the header is read up front and pages already read do not stay
resident. GGUF lists shapes innermost-first
(``[in, out]``); the dequantized numpy array is ``(out, in)``, the Hugging Face layout, and that is checked.
llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` (rotary pairs interleaved per head); the inverse,
with ``n = head_count`` for q and ``head_count_kv`` for k, is

    W_hf = W.reshape(n, rows / n / 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)

Example:
  >>> raw = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
  >>> raw.params["model.layers.0.self_attn.k_proj.weight"].shape, raw.config["num_key_value_heads"]  # doctest: +SKIP
  ((192, 576), 3)
"""

from __future__ import annotations

import functools
import pathlib
import re
import types
from typing import Mapping

import numpy as np

from macjax.errors import ModelLoadError, ShapeError
from macjax.load.gguf_tokenizer import tokenizer_files_from_gguf
from macjax.load.lazy import LazyTensors
from macjax.load.raw import RawCheckpoint

SUPPORTED_ARCHITECTURES = ("llama",)
GGUF_MAGIC = b"GGUF"
# GGUF name (without .weight/.bias) -> Hugging Face name, outside the blocks.
GLOBAL_NAMES = types.MappingProxyType(
    {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"})
# GGUF block part -> Hugging Face module inside ``model.layers.N``.
BLOCK_NAMES = types.MappingProxyType({
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
})
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str | None:
  """The Hugging Face LLaMA name of a GGUF tensor name, or None if it has none.

  Example:
    >>> hf_name("blk.3.attn_output.weight")
    'model.layers.3.self_attn.o_proj.weight'
  """
  if m := _BLOCK_RE.fullmatch(gguf_name):
    layer, part, kind = m.groups()
    return f"model.layers.{int(layer)}.{BLOCK_NAMES[part]}.{kind}" if part in BLOCK_NAMES else None
  if m := _GLOBAL_RE.fullmatch(gguf_name):
    part, kind = m.groups()
    return f"{GLOBAL_NAMES[part]}.{kind}" if part in GLOBAL_NAMES else None
  return None


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undo llama.cpp's q/k row permutation: ``(n, 2, r/n/2, ...) -> (n, r/n/2, 2, ...)`` back to HF order.

  The forward (llama.cpp ``convert_hf_to_gguf.py``) is ``w.reshape(n, 2, r/n/2, ...).swapaxes(1, 2)``; this is its
  inverse. Works for weights ``(rows, cols)`` and biases ``(rows,)``.

  Example:
    >>> fwd = lambda w, n: w.reshape(n, 2, w.shape[0] // n // 2, -1).swapaxes(1, 2).reshape(w.shape)
    >>> w = np.arange(24.0).reshape(8, 3)
    >>> bool((unpermute_rows(fwd(w, 2), 2) == w).all())
    True
  """
  rows = w.shape[0]
  if rows % (2 * n_head):
    raise ShapeError(f"cannot undo the q/k row permutation: {rows} rows is not a multiple of 2 x {n_head} heads")
  return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _value(field) -> object:
  """A reader field's value as plain Python (str, int, float, bool or list of them)."""
  import gguf

  value = field.contents()
  if isinstance(value, list):
    return [v.item() if isinstance(v, np.generic) else v for v in value]
  if field.types == [gguf.GGUFValueType.FLOAT32]:
    # float32 metadata (1e-05 is stored as 9.99999974738e-06): keep the shortest decimal that rounds to it.
    return float(str(np.float32(value)))
  if isinstance(value, np.generic):
    return value.item()
  return value


def _read_metadata(reader, where: str) -> dict[str, object]:
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("GGUF."):
      continue
    try:
      out[key] = _value(field)
    except Exception as e:  # a corrupt field; the gguf library raises assorted types
      raise ModelLoadError(f"{where}: cannot decode GGUF metadata {key!r} ({type(e).__name__}: {e})") from e
  return out


def _meta(metadata: Mapping[str, object], key: str, where: str, kind: type, default: object = ...) -> object:
  if key not in metadata:
    if default is ...:
      raise ModelLoadError(f"{where}: GGUF metadata lacks {key!r}")
    return default
  value = metadata[key]
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
    raise ModelLoadError(f"{where}: GGUF metadata {key!r} is {value!r}; expected a {kind.__name__}")
  return value


def llama_config(metadata: Mapping[str, object], has_output: bool, where: str) -> dict[str, object]:
  """The Hugging Face ``config.json`` of a llama GGUF, from its metadata.

  Args:
    metadata: GGUF key -> value.
    has_output: whether the file has ``output.weight`` (an untied LM head).
    where: the file name, for messages.

  Example:
    >>> llama_config(meta, has_output=False, where="x.gguf")["tie_word_embeddings"]  # doctest: +SKIP
    True
  """
  a = "llama."
  n_q = _meta(metadata, a + "attention.head_count", where, int)
  hidden = _meta(metadata, a + "embedding_length", where, int)
  head_dim = _meta(metadata, a + "attention.key_length", where, int, default=hidden // n_q if n_q else 0)
  rope_dims = _meta(metadata, a + "rope.dimension_count", where, int, default=head_dim)
  if rope_dims != head_dim:
    raise ModelLoadError(f"{where}: llama.rope.dimension_count is {rope_dims}; expected the head dimension "
                         f"{head_dim} (partial rotary embeddings are not supported)")
  for key in (a + "rope.scaling.type", a + "expert_count"):
    if key in metadata and metadata[key] not in ("none", 0):
      raise ModelLoadError(f"{where}: GGUF metadata {key!r} = {metadata[key]!r} is not supported")
  tokens = metadata.get("tokenizer.ggml.tokens")
  vocab_default = len(tokens) if isinstance(tokens, list) else ...
  config: dict[str, object] = {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "hidden_size": hidden,
      "intermediate_size": _meta(metadata, a + "feed_forward_length", where, int),
      "num_attention_heads": n_q,
      "num_key_value_heads": _meta(metadata, a + "attention.head_count_kv", where, int, default=n_q),
      "num_hidden_layers": _meta(metadata, a + "block_count", where, int),
      "head_dim": head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": _meta(metadata, a + "attention.layer_norm_rms_epsilon", where, float),
      "rope_theta": _meta(metadata, a + "rope.freq_base", where, float, default=10000.0),
      "rope_scaling": None,
      "vocab_size": _meta(metadata, a + "vocab_size", where, int, default=vocab_default),
      "max_position_embeddings": _meta(metadata, a + "context_length", where, int),
      "tie_word_embeddings": not has_output,
      "attention_bias": False,
      "mlp_bias": False,
      "torch_dtype": "float32",
  }
  for hf_key, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                           ("pad_token_id", "padding_token_id")):
    if "tokenizer.ggml." + gguf_key in metadata:
      config[hf_key] = _meta(metadata, "tokenizer.ggml." + gguf_key, where, int)
  return config


def read_gguf(path: str | pathlib.Path) -> RawCheckpoint:
  """Read a llama GGUF file: dequantized float32 weights in HF names/layout, HF config, tokenizer files.

  Returns:
    A :class:`RawCheckpoint` whose params are a :class:`~macjax.load.lazy.LazyTensors` over the file's map (each
    tensor dequantized when it is accessed); ``source_dtypes`` holds each tensor's GGUF type (``"Q4_1"``,
    ``"Q8_0"``, ``"F32"``).

  Raises:
    ModelLoadError: not a GGUF file, truncated or corrupt, another architecture, an unknown tensor name, a
      quantization type the ``gguf`` library cannot dequantize.
    ShapeError: a dequantized tensor's shape disagrees with its GGUF header.

  Example:
    >>> read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf").source_dtypes["model.embed_tokens.weight"]  # doctest: +SKIP
    'Q8_0'
  """
  path = pathlib.Path(path)
  where = str(path)
  try:
    import gguf  # imported here: the gguf package is only needed for GGUF files
  except ImportError as e:
    raise ModelLoadError(f"{where}: reading GGUF files needs the Python package gguf (`pip install gguf`)") from e
  try:
    with path.open("rb") as f:
      magic = f.read(4)
  except OSError as e:
    raise ModelLoadError(f"{where}: cannot read ({e})") from e
  if magic != GGUF_MAGIC:
    raise ModelLoadError(f"{where}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
  try:
    reader = gguf.GGUFReader(path, "r")
  except Exception as e:  # the gguf library raises ValueError, IndexError, struct errors ... on bad input
    raise ModelLoadError(f"{where}: corrupt or truncated GGUF file of {path.stat().st_size} bytes "
                         f"({type(e).__name__}: {e})") from e
  metadata = _read_metadata(reader, where)
  arch = metadata.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ModelLoadError(f"{where}: GGUF general.architecture is {arch!r}; supported: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
  n_heads = {"q_proj": _meta(metadata, "llama.attention.head_count", where, int)}
  n_heads["k_proj"] = _meta(metadata, "llama.attention.head_count_kv", where, int, default=n_heads["q_proj"])

  readers, shapes, dtypes = {}, {}, {}
  for tensor in reader.tensors:
    name = hf_name(tensor.name)
    if name is None:
      raise ModelLoadError(f"{where}: GGUF tensor {tensor.name!r} has no Hugging Face LLaMA equivalent; known: "
                           f"{', '.join(GLOBAL_NAMES)}, blk.N.{{{', '.join(BLOCK_NAMES)}}}")
    if name in readers:
      raise ModelLoadError(f"{where}: GGUF tensor {tensor.name!r} appears twice")
    readers[name] = functools.partial(_dequantized, tensor, path, n_heads.get(name.split(".")[-2]))
    shapes[name] = tuple(int(d) for d in reversed(tensor.shape))
    dtypes[name] = tensor.tensor_type.name
  params = LazyTensors(readers, shapes, dtypes, where=where, keep_open=(reader,))
  config = llama_config(metadata, has_output="lm_head.weight" in params, where=where)
  return RawCheckpoint(params=params, config=config, tokenizer_files=tokenizer_files_from_gguf(metadata, where),
                       source_dtypes=dtypes)


def _stored_bytes(tensor, path: pathlib.Path) -> np.ndarray:
  """The tensor's stored blocks, read with plain file reads (the reader's memory map gives their dtype, shape and
  offset; reading through the map would keep every page read in this process's resident memory)."""
  view = tensor.data
  data = np.fromfile(path, dtype=view.dtype, count=view.size, offset=int(tensor.data_offset))
  if data.size != view.size:
    raise ModelLoadError(f"{path}: tensor {tensor.name!r} is truncated: read {data.size} of {view.size} values")
  return data.reshape(view.shape)


def _dequantized(tensor, path: pathlib.Path, n_head: int | None) -> np.ndarray:
  """One GGUF tensor as a fresh float32 array in Hugging Face layout (q/k rows un-permuted when ``n_head``)."""
  import gguf  # pylint: disable=g-import-not-at-top
  where = str(path)
  expected = tuple(int(d) for d in reversed(tensor.shape))
  try:
    array = np.asarray(gguf.quants.dequantize(_stored_bytes(tensor, path), tensor.tensor_type), dtype=np.float32)
  except NotImplementedError as e:
    raise ModelLoadError(f"{where}: tensor {tensor.name!r} has quantization {tensor.tensor_type.name}, which "
                         f"gguf cannot dequantize ({e})") from e
  except (ValueError, AssertionError) as e:
    raise ModelLoadError(f"{where}: tensor {tensor.name!r} ({tensor.tensor_type.name}, GGUF shape "
                         f"{list(map(int, tensor.shape))}) cannot be dequantized: {e}") from e
  if array.shape != expected:
    raise ShapeError(f"{where}: tensor {tensor.name!r} dequantized to shape {array.shape}; its GGUF shape "
                     f"{list(map(int, tensor.shape))} reversed is {expected}")
  if n_head is not None:
    try:
      array = unpermute_rows(array, n_head)
    except ShapeError as e:
      raise ShapeError(f"{where}: tensor {tensor.name!r} of shape {array.shape}: {e}") from e
  return array
