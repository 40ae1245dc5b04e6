"""Read a GGUF file into Hugging Face names, layout and config (architectures of :data:`ARCHITECTURES`).

The config is rebuilt from the ``<arch>.*`` metadata (:func:`hf_config`); tensor names come from the family's
naming rules (:mod:`macjax.load.architectures`) mapped to llama.cpp's with the ``gguf`` package's own
``TensorNameMap``; llama.cpp's converter conventions are undone per tensor: the q/k row permutation (``llama``),
the ``+1`` baked into Gemma's ``(1 + w)`` norm gains (``gemma2``, ``gemma3``), the transposition of GPT-2's
``Conv1D`` weights (``gpt2``; given back in the checkpoint's ``(in, out)`` so the loader treats both files alike).

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
import math
import pathlib
import threading
import types
from typing import Mapping

import numpy as np

from macjax.errors import ModelLoadError, ShapeError
from macjax.load import families
from macjax.load.gguf_tokenizer import tokenizer_files_from_gguf
from macjax.load.lazy import LazyTensors
from macjax.load.raw import RawCheckpoint

#: GGUF ``general.architecture`` -> Hugging Face ``model_type`` (Mistral GGUFs are ``llama``).
ARCHITECTURES = types.MappingProxyType({"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                                        "gemma3": "gemma3_text", "phi3": "phi3", "gpt2": "gpt2",
                                        "qwen2moe": "qwen2_moe"})  # llama with <arch>.expert_count: mixtral
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
GGUF_MAGIC = b"GGUF"
_SUFFIXES = (".weight", ".bias")


def name_map(arch: str, spec) -> dict[str, str | list[str]]:
  """``{GGUF tensor name: Hugging Face name}`` for every tensor of ``spec`` (a
  :class:`~macjax.load.families.FamilySpec`), from the ``gguf`` package's ``TensorNameMap`` of ``arch``; a mixture
  of experts' merged tensor (``blk.N.ffn_gate_exps``) maps to the list of its experts' names, in expert order.

  Example:
    >>> from macjax.load import families
    >>> spec = families.family_spec({"model_type": "llama", "hidden_size": 8, "intermediate_size": 12,
    ...     "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 5})
    >>> name_map("llama", spec)["blk.0.attn_output.weight"]
    'model.layers.0.self_attn.o_proj.weight'
  """
  import gguf  # pylint: disable=g-import-not-at-top
  arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
  tmap = gguf.get_tensor_name_map(arch_enum, spec.num_layers)
  out: dict[str, str | list[str]] = {}
  experts: dict[str, list[tuple[int, str]]] = {}
  for name in [*spec.required, *spec.optional]:
    _, layer, expert = spec.fields.get(name, (None, None, None))
    base, suffix = _split(name)
    if expert is not None:  # ….experts.{e}.w1 -> ….experts.w1, the merged tensor's name
      base = base.replace(f".experts.{expert}.", ".experts.")
    mapped = tmap.get_name(base)
    if mapped is None and name == "lm_head.weight":
      mapped = "output"
    if mapped is None:
      continue
    if expert is None:
      out[mapped + suffix] = name
    else:
      experts.setdefault(mapped + suffix, []).append((expert, name))
  out.update({g: [n for _, n in sorted(members)] for g, members in experts.items()})
  return out


def _split(name: str) -> tuple[str, str]:
  for suffix in _SUFFIXES:
    if name.endswith(suffix):
      return name[:-len(suffix)], suffix
  return name, ""


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


def _common(metadata: Mapping[str, object], a: str, where: str) -> dict[str, object]:
  n_q = _meta(metadata, a + "attention.head_count", where, int)
  hidden = _meta(metadata, a + "embedding_length", where, int)
  tokens = metadata.get("tokenizer.ggml.tokens")
  return {
      "hidden_size": hidden, "num_attention_heads": n_q, "num_hidden_layers": _meta(metadata, a + "block_count", where, int),
      "num_key_value_heads": _meta(metadata, a + "attention.head_count_kv", where, int, default=n_q),
      "head_dim": _meta(metadata, a + "attention.key_length", where, int, default=hidden // n_q if n_q else 0),
      "intermediate_size": _meta(metadata, a + "feed_forward_length", where, int, default=None),
      "vocab_size": _meta(metadata, a + "vocab_size", where, int,
                          default=len(tokens) if isinstance(tokens, list) else ...),
      "max_position_embeddings": _meta(metadata, a + "context_length", where, int),
  }


def _rope(metadata: Mapping[str, object], a: str, where: str, head_dim: int, *, partial: bool = False) -> dict:
  rope_dims = _meta(metadata, a + "rope.dimension_count", where, int, default=head_dim)
  if rope_dims != head_dim and not partial:
    raise ModelLoadError(f"{where}: {a}rope.dimension_count is {rope_dims}; expected the head dimension "
                         f"{head_dim} (partial rotary embeddings are not supported for this architecture)")
  rope = {"rope_type": "default", "rope_theta": _meta(metadata, a + "rope.freq_base", where, float, default=10000.0)}
  kind = metadata.get(a + "rope.scaling.type", "none")
  if kind == "linear":
    rope.update(rope_type="linear", factor=_meta(metadata, a + "rope.scaling.factor", where, float))
  elif kind not in ("none", None):
    raise ModelLoadError(f"{where}: GGUF metadata {a}rope.scaling.type = {kind!r} is not supported")
  if partial:
    rope["partial_rotary_factor"] = rope_dims / head_dim
  return rope


def _gemma_scalar(config: dict) -> int:
  """``query_pre_attn_scalar``, which GGUF does not store: llama.cpp's rule, ``hidden / heads`` for the 27B models
  (Gemma 2: 46 layers, Gemma 3: 62 layers), else the head dimension."""
  big = config["num_hidden_layers"] in (46, 62) and config["hidden_size"] in (4608, 5376)
  return config["hidden_size"] // config["num_attention_heads"] if big else config["head_dim"]


def hf_config(arch: str, metadata: Mapping[str, object], has_output: bool, where: str) -> dict[str, object]:
  """The Hugging Face ``config.json`` of a GGUF file of architecture ``arch``, from its metadata.

  Raises:
    ModelLoadError: a needed key is missing or of the wrong type, or an option this toolkit does not compute.
  """
  a = arch + "."
  experts = _meta(metadata, a + "expert_count", where, int, default=0)
  c = _common(metadata, a, where)
  model_type = "mixtral" if arch == "llama" and experts else ARCHITECTURES[arch]
  config: dict[str, object] = {"model_type": model_type, "tie_word_embeddings": not has_output,
                               "torch_dtype": "float32"}
  if experts:
    config.update(_moe(metadata, a, arch, experts, where))
  rms = lambda: _meta(metadata, a + "attention.layer_norm_rms_epsilon", where, float)  # noqa: E731
  if arch == "gpt2":
    config.update(n_embd=c["hidden_size"], n_layer=c["num_hidden_layers"], n_head=c["num_attention_heads"],
                  n_positions=c["max_position_embeddings"], n_inner=c["intermediate_size"],
                  vocab_size=c["vocab_size"], activation_function="gelu_new",
                  layer_norm_epsilon=_meta(metadata, a + "attention.layer_norm_epsilon", where, float))
  else:
    config.update({k: v for k, v in c.items() if v is not None}, rms_norm_eps=rms(), hidden_act="silu",
                  rope_parameters=_rope(metadata, a, where, c["head_dim"], partial=arch == "phi3"))
  if model_type == "llama":
    config.update(architectures=["LlamaForCausalLM"], attention_bias=False, mlp_bias=False)
  if arch in ("gemma2", "gemma3"):
    window = _meta(metadata, a + "attention.sliding_window", where, int)
    # Gemma 2 alternates local/global, Gemma 3 has 5 local then 1 global, unless the file says otherwise
    every = _meta(metadata, a + "attention.sliding_window_pattern", where, int, default=2 if arch == "gemma2" else 6)
    config.update(hidden_activation="gelu_pytorch_tanh", sliding_window=window, query_pre_attn_scalar=_gemma_scalar(c),
                  layer_types=["sliding_attention" if (i + 1) % every else "full_attention"
                               for i in range(c["num_hidden_layers"])])
  if arch == "gemma2":
    config.update(attn_logit_softcapping=_meta(metadata, a + "attn_logit_softcapping", where, float, default=None),
                  final_logit_softcapping=_meta(metadata, a + "final_logit_softcapping", where, float, default=None))
  if arch == "gemma3":  # local layers rotate with base 10000 (llama.cpp's rope_freq_base_train_swa)
    config["rope_parameters"] = {"full_attention": config["rope_parameters"],
                                 "sliding_attention": {"rope_type": "default", "rope_theta": _meta(
                                     metadata, a + "rope.freq_base_swa", where, float, default=10000.0)}}
  if arch == "phi3" and a + "attention.sliding_window" in metadata:
    config["sliding_window"] = _meta(metadata, a + "attention.sliding_window", where, int)
  for hf_key, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                           ("pad_token_id", "padding_token_id")):
    if "tokenizer.ggml." + gguf_key in metadata:
      config[hf_key] = _meta(metadata, "tokenizer.ggml." + gguf_key, where, int)
  return config


def _moe(metadata: Mapping[str, object], a: str, arch: str, experts: int, where: str) -> dict[str, object]:
  """The mixture-of-experts keys of a Mixtral (``llama`` arch) or Qwen2-MoE config."""
  used = _meta(metadata, a + "expert_used_count", where, int)
  if arch == "llama":
    return {"num_local_experts": experts, "num_experts_per_tok": used}
  return {"num_experts": experts, "num_experts_per_tok": used, "qkv_bias": True,
          "moe_intermediate_size": _meta(metadata, a + "expert_feed_forward_length", where, int),
          "shared_expert_intermediate_size": _meta(metadata, a + "expert_shared_feed_forward_length", where, int),
          "norm_topk_prob": _meta(metadata, a + "expert_weights_norm", where, bool, default=False)}


def llama3_rope(factors: np.ndarray, theta: float, head_dim: int, where: str) -> dict[str, object]:
  """Hugging Face's ``llama3`` RoPE parameters from llama.cpp's per-frequency factors (``rope_freqs``).

  llama.cpp divides frequency ``ω_j`` by ``f_j``: 1 above the high-frequency band, ``factor`` below the low one,
  ``1 / ((1 − s)/factor + s)`` between, with ``s = (old/λ_j − low) / (high − low)`` and ``λ_j = 2π/ω_j``. The
  frequencies depend on ``(old, low, high)`` only through ``a = old/(high − low)`` and ``b = low/(high − low)``:
  fitted on the middle band (``low = 1`` chosen), or, with fewer than two middle frequencies, ``low = 1, high = 4``
  assumed (Llama 3.x's values); the result must reproduce every factor (else an error).
  """
  factors = np.asarray(factors, np.float64).reshape(-1)
  omega = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if factors.shape != omega.shape or not np.all(np.isfinite(factors)) or np.any(factors < 1 - 1e-6):
    raise ModelLoadError(f"{where}: rope_freqs has {factors.size} factors {factors[:4]}...; expected {omega.size} "
                         "finite factors >= 1")
  factor = float(factors.max())
  wavelen = 2 * math.pi / omega
  middle = (factors > 1 + 1e-6) & (factors < factor - 1e-6)
  smooth = (1 / factors[middle] - 1 / factor) / (1 - 1 / factor)
  low, high = 1.0, 4.0
  if middle.sum() >= 2:  # s = a/λ − b with a = old/(high − low), b = low/(high − low): both from the band
    (a, b), *_ = np.linalg.lstsq(np.stack([1 / wavelen[middle], -np.ones(middle.sum())], 1), smooth, rcond=None)
    if b > 0:
      old, high = float(a / b), float(1 + 1 / b)
    else:
      old = float(np.mean(wavelen[middle] * (3 * smooth + 1)))
  elif middle.any():
    old = float(np.mean(wavelen[middle] * (3 * smooth + 1)))
  else:  # any old with old/4 above the unscaled wavelengths and old below the scaled ones
    lo = wavelen[factors <= 1 + 1e-6].max(initial=0.0) * 4
    hi = wavelen[factors >= factor - 1e-6].min(initial=np.inf)
    old = float(np.sqrt(lo * hi)) if np.isfinite(hi) and lo > 0 else float(hi if lo == 0 else lo)
  rope = {"rope_type": "llama3", "rope_theta": float(theta), "factor": factor, "low_freq_factor": low,
          "high_freq_factor": high, "original_max_position_embeddings": old}
  from macjax.evaluate.decoder import inv_freq  # pylint: disable=g-import-not-at-top
  ours = np.asarray(inv_freq(rope, head_dim), np.float64)
  if not np.allclose(omega / factors, ours, rtol=1e-4, atol=0):
    raise ModelLoadError(f"{where}: rope_freqs is not llama.cpp's 'llama3' scaling (no factor, band and context "
                         "length reproduce it); convert the Hugging Face checkpoint instead")
  return rope


def _fixup(arch: str, config: Mapping[str, object], hf: str):
  """What undoes llama.cpp's converter on one tensor (None: nothing)."""
  if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
    n = config["num_attention_heads"] if hf.endswith("q_proj.weight") else config["num_key_value_heads"]
    return functools.partial(_unpermuted, n_head=int(n))
  if arch in ("gemma2", "gemma3") and hf.endswith("norm.weight"):
    return _minus_one
  return None


def _unpermuted(array: np.ndarray, name: str, n_head: int) -> np.ndarray:
  try:
    return unpermute_rows(array, n_head)
  except ShapeError as e:
    raise ShapeError(f"tensor {name!r} of shape {array.shape}: {e}") from e


def _minus_one(array: np.ndarray, name: str) -> np.ndarray:
  del name
  return array - np.float32(1)


def _transposed(array: np.ndarray, name: str) -> np.ndarray:
  del name
  return np.ascontiguousarray(array.T)


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
  if arch not in ARCHITECTURES:
    raise ModelLoadError(f"{where}: GGUF general.architecture is {arch!r}; supported: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
  names = {t.name for t in reader.tensors}
  config = hf_config(arch, metadata, has_output="output.weight" in names, where=where)
  if "rope_freqs.weight" in names:  # Llama 3.1/3.2: the 'llama3' RoPE scaling, baked into per-frequency factors
    if arch != "llama":
      raise ModelLoadError(f"{where}: GGUF tensor 'rope_freqs.weight' in a {arch} file is not supported")
    tensor = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    factors = _dequantized(tensor, path, (), tensor.name)
    config["rope_parameters"] = llama3_rope(factors, config["rope_parameters"]["rope_theta"], config["head_dim"],
                                            where)
  spec = families.family_spec(config, where)
  readers, shapes, dtypes = _tensor_readers(reader, path, arch, config, spec)
  params = LazyTensors(readers, shapes, dtypes, where=where, keep_open=(reader,))
  try:  # the weights are usable without a tokenizer (compression needs none unless it calibrates or evaluates)
    tokenizer_files, tokenizer_error = tokenizer_files_from_gguf(metadata, where), None
  except ModelLoadError as e:
    tokenizer_files, tokenizer_error = {}, str(e)
  return RawCheckpoint(params=params, config=config, tokenizer_files=tokenizer_files, source_dtypes=dtypes,
                       tokenizer_error=tokenizer_error)


def _tensor_readers(reader, path: pathlib.Path, arch: str, config: dict, spec) -> tuple[dict, dict, dict]:
  """``(readers, shapes, dtypes)`` of every Hugging Face tensor, each reader dequantizing its GGUF tensor (or its
  expert's slice of a merged one) and undoing llama.cpp's conventions."""
  where = str(path)
  to_hf = name_map(arch, spec)
  readers, shapes, dtypes = {}, {}, {}
  for tensor in reader.tensors:
    if tensor.name == "rope_freqs.weight":
      continue  # read into the config
    target = to_hf.get(tensor.name)
    if target is None:
      raise ModelLoadError(f"{where}: GGUF tensor {tensor.name!r} has no Hugging Face {spec.family} equivalent; "
                           f"known: {', '.join(sorted(to_hf)[:8])} ...")
    names = [target] if isinstance(target, str) else target
    gguf_shape = tuple(int(d) for d in reversed(tensor.shape))
    merged = None if isinstance(target, str) else _Merged(tensor, path, len(names))
    for e, name in enumerate(names):
      if name in readers:
        raise ModelLoadError(f"{where}: GGUF tensor {tensor.name!r} appears twice")
      fixes = tuple(f for f in (_fixup(arch, config, name), _transposed if name in spec.conv1d else None) if f)
      expected = spec.expected_shape(name)
      if merged is not None:
        readers[name] = functools.partial(merged.expert, e, fixes)
        shape = gguf_shape[1:]
      else:
        readers[name] = functools.partial(_dequantized, tensor, path, fixes, name, expected)
        shape = expected if expected and _same_but_ones(expected, gguf_shape) else gguf_shape
      shapes[name] = shape[::-1] if name in spec.conv1d else shape
      dtypes[name] = tensor.tensor_type.name
  return readers, shapes, dtypes


def _same_but_ones(a, b) -> bool:
  """Whether two shapes differ only by axes of size 1 (llama.cpp drops them: ``(1, H)`` is stored ``[H]``)."""
  return tuple(d for d in a if d != 1) == tuple(d for d in b if d != 1)


class _Merged:
  """A merged ``[experts, rows, cols]`` GGUF tensor read once for all its experts (the last one read is kept, so a
  layer's experts, encoded together, cost one dequantization)."""

  def __init__(self, tensor, path: pathlib.Path, experts: int):
    self.tensor, self.path, self.experts = tensor, path, experts
    self._array: np.ndarray | None = None
    self._done: set[int] = set()
    self._lock = threading.Lock()

  def expert(self, e: int, fixes: tuple) -> np.ndarray:
    with self._lock:
      if self._array is None:
        self._array = _dequantized(self.tensor, self.path, (), self.tensor.name, None)
        if self._array.shape[0] != self.experts:
          raise ShapeError(f"{self.path}: merged tensor {self.tensor.name!r} holds {self._array.shape[0]} experts; "
                           f"the metadata says {self.experts}")
      array = np.array(self._array[e])
      self._done.add(e)
      if len(self._done) == self.experts:  # every expert handed out: drop the whole tensor
        self._array, self._done = None, set()
    for fix in fixes:
      array = fix(array, self.tensor.name)
    return array


def _stored_bytes(tensor, path: pathlib.Path) -> np.ndarray:
  """The tensor's stored blocks, read with plain file reads (the reader's memory map gives their dtype, shape and
  offset; reading through the map would keep every page read in this process's resident memory)."""
  view = tensor.data
  data = np.fromfile(path, dtype=view.dtype, count=view.size, offset=int(tensor.data_offset))
  if data.size != view.size:
    raise ModelLoadError(f"{path}: tensor {tensor.name!r} is truncated: read {data.size} of {view.size} values")
  return data.reshape(view.shape)


def _dequantized(tensor, path: pathlib.Path, fixes: tuple, name: str, expected_hf=None) -> np.ndarray:
  """One GGUF tensor as a fresh float32 array in Hugging Face layout (llama.cpp's conventions undone by
  ``fixes``)."""
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
  if expected_hf is not None and array.shape != tuple(expected_hf) and _same_but_ones(expected_hf, array.shape):
    array = array.reshape(expected_hf)  # e.g. Qwen2-MoE's shared-expert gate, (1, H) in HF, [H] in llama.cpp
  for fix in fixes:
    try:
      array = fix(array, tensor.name)
    except ShapeError as e:
      raise ShapeError(f"{where}: {e}") from e
  return array
