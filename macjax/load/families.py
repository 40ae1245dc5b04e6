"""What each supported model family's checkpoint must contain, derived from its ``config.json``.

A family spec lists every tensor the Hugging Face model expects, with its shape computed from the config, the
transformer-block matrices and their roles, the derived buffers that are dropped on load (they are recomputed by
the model, not weights), and the name prefixes that belong to the base model (a tensor under such a prefix that
the spec does not know means the checkpoint is not what its config says, and is an error). Tensors outside the base
model (task heads such as ``cls.*`` of ``BertForMaskedLM``) are kept as they are.

Example:
  >>> spec = family_spec({"model_type": "bert", "hidden_size": 8, "intermediate_size": 16,
  ...     "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 10, "max_position_embeddings": 4,
  ...     "type_vocab_size": 2})
  >>> [m.role for m in spec.matrices]
  ['q', 'k', 'v', 'o', 'up', 'down']
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping

import numpy as np

from macjax.errors import ModelLoadError, ShapeError
from macjax.load.lazy import shape_of
from macjax.load.layout import MATRIX_ROLES, MatrixInfo, ModelLayout

# model_type in config.json -> family name of ModelLayout.
SUPPORTED_MODEL_TYPES = types.MappingProxyType({"llama": "llama", "bert": "bert"})

# Role -> module path inside one transformer block.
LLAMA_BLOCK_MATRICES = types.MappingProxyType({
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
})
BERT_BLOCK_MATRICES = types.MappingProxyType({
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "o": "attention.output.dense", "up": "intermediate.dense", "down": "output.dense",
})
# The prefix of BERT base-model names in checkpoints of BERT models with a head (BertForMaskedLM, ...).
BERT_PREFIXES = ("", "bert.")


@dataclasses.dataclass(frozen=True)
class FamilySpec:
  """The tensors a checkpoint of one family must (or may) hold.

  Attributes:
    family: ``"llama"`` or ``"bert"``.
    num_layers: ``config["num_hidden_layers"]``.
    required: name -> shape of every tensor the model needs.
    optional: name -> shape of tensors the model accepts but does not need (e.g. BERT's pooler, a tied LM head).
    matrices: the transformer-block matrices, ordered by (layer, :data:`MATRIX_ROLES` order).
    base_prefixes: a name starting with one of these must be in ``required``/``optional``/``buffer_suffixes``.
    buffer_suffixes: names ending with one of these are derived buffers, dropped on load.
    name_prefix: prefix of all base-model names (``"bert."`` for BERT-with-head checkpoints, else ``""``).
  """

  family: str
  num_layers: int
  required: Mapping[str, tuple[int, ...]]
  optional: Mapping[str, tuple[int, ...]]
  matrices: tuple[MatrixInfo, ...]
  base_prefixes: tuple[str, ...]
  buffer_suffixes: tuple[str, ...]
  name_prefix: str = ""

  def is_buffer(self, name: str) -> bool:
    return any(name.endswith(s) for s in self.buffer_suffixes)

  def is_base(self, name: str) -> bool:
    return any(name.startswith(p) for p in self.base_prefixes)

  def expected_shape(self, name: str) -> tuple[int, ...] | None:
    if name in self.required:
      return self.required[name]
    return self.optional.get(name)


def family_of(config: Mapping[str, object], where: str = "config.json") -> str:
  """The :class:`ModelLayout` family of a Hugging Face config.

  Raises:
    ModelLoadError: ``model_type`` is missing or not supported; the message lists the supported ones.

  Example:
    >>> family_of({"model_type": "llama"})
    'llama'
  """
  model_type = config.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ModelLoadError(
        f"{where}: model_type {model_type!r} (architectures {config.get('architectures')!r}) is not supported; "
        f"supported model_type values: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
  return SUPPORTED_MODEL_TYPES[model_type]


def _int(config: Mapping[str, object], key: str, where: str, default: int | None = None) -> int:
  value = config.get(key)
  if value is None:  # absent, or null as some configs write it: the family's default
    value = default
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
    raise ModelLoadError(f"{where}: key {key!r} is {value!r}; expected a positive integer")
  return int(value)


def _block_matrices(num_layers: int, name_of: Mapping[str, str], shape_of: Mapping[str, tuple[int, int]],
                    block_prefix: str) -> tuple[MatrixInfo, ...]:
  return tuple(
      MatrixInfo(name=f"{block_prefix}{layer}.{name_of[role]}.weight", role=role, layer=layer, shape=shape_of[role])
      for layer in range(num_layers) for role in MATRIX_ROLES if role in name_of)


def llama_spec(config: Mapping[str, object], where: str = "config.json") -> FamilySpec:
  """The tensors of a Hugging Face ``LlamaForCausalLM`` checkpoint.

  With ``H`` = hidden_size, ``I`` = intermediate_size, ``d`` = head_dim (default ``H / num_attention_heads``),
  ``n_q``/``n_kv`` heads: q ``(n_q d, H)``, k and v ``(n_kv d, H)``, o ``(H, n_q d)``, gate and up ``(I, H)``,
  down ``(H, I)``, norms ``(H,)``, embeddings ``(vocab, H)``; ``lm_head.weight`` is required unless
  ``tie_word_embeddings`` (default false, as in ``LlamaConfig``); biases when ``attention_bias``/``mlp_bias``.

  Example:
    >>> spec = llama_spec({"hidden_size": 8, "intermediate_size": 12, "num_attention_heads": 2,
    ...     "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 5, "tie_word_embeddings": True})
    >>> spec.required["model.layers.0.self_attn.k_proj.weight"]
    (4, 8)
  """
  hidden = _int(config, "hidden_size", where)
  inter = _int(config, "intermediate_size", where)
  n_q = _int(config, "num_attention_heads", where)
  n_kv = _int(config, "num_key_value_heads", where, default=n_q)
  layers = _int(config, "num_hidden_layers", where)
  vocab = _int(config, "vocab_size", where)
  if config.get("head_dim") is None and hidden % n_q:
    raise ModelLoadError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {n_q} "
                         "and there is no head_dim")
  head_dim = _int(config, "head_dim", where, default=hidden // n_q)
  if n_q % n_kv:
    raise ModelLoadError(f"{where}: num_attention_heads {n_q} is not a multiple of num_key_value_heads {n_kv}")
  shapes = {"q": (n_q * head_dim, hidden), "k": (n_kv * head_dim, hidden), "v": (n_kv * head_dim, hidden),
            "o": (hidden, n_q * head_dim), "gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}
  matrices = _block_matrices(layers, LLAMA_BLOCK_MATRICES, shapes, "model.layers.")
  required = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
  for m in matrices:
    required[m.name] = m.shape
    if config.get("attention_bias") and m.role in ("q", "k", "v", "o"):
      required[m.name[:-len("weight")] + "bias"] = (m.shape[0],)
    if config.get("mlp_bias") and m.role in ("gate", "up", "down"):
      required[m.name[:-len("weight")] + "bias"] = (m.shape[0],)
  for layer in range(layers):
    for norm in ("input_layernorm", "post_attention_layernorm"):
      required[f"model.layers.{layer}.{norm}.weight"] = (hidden,)
  optional = {}
  if config.get("tie_word_embeddings", False):
    optional["lm_head.weight"] = (vocab, hidden)
  else:
    required["lm_head.weight"] = (vocab, hidden)
  return FamilySpec(family="llama", num_layers=layers, required=required, optional=optional, matrices=matrices,
                    base_prefixes=("model.", "lm_head."), buffer_suffixes=(".rotary_emb.inv_freq",))


def bert_spec(config: Mapping[str, object], where: str = "config.json", name_prefix: str = "") -> FamilySpec:
  """The tensors of a Hugging Face ``BertModel`` checkpoint (names prefixed with ``name_prefix``).

  With ``H`` = hidden_size and ``I`` = intermediate_size: q, k, v, o ``(H, H)``, up (``intermediate.dense``)
  ``(I, H)``, down (``output.dense``) ``(H, I)``, every dense layer with a bias, LayerNorms with weight and bias,
  word/position/token-type embeddings; the pooler is optional. ``embeddings.position_ids`` is a buffer.

  Example:
    >>> spec = bert_spec({"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
    ...     "num_hidden_layers": 1, "vocab_size": 10, "max_position_embeddings": 4, "type_vocab_size": 2})
    >>> spec.required["encoder.layer.0.intermediate.dense.weight"]
    (16, 8)
  """
  if name_prefix not in BERT_PREFIXES:
    raise ValueError(f"name_prefix {name_prefix!r} is not one of {BERT_PREFIXES}")
  hidden = _int(config, "hidden_size", where)
  inter = _int(config, "intermediate_size", where)
  _int(config, "num_attention_heads", where)
  layers = _int(config, "num_hidden_layers", where)
  vocab = _int(config, "vocab_size", where)
  max_pos = _int(config, "max_position_embeddings", where, default=512)
  type_vocab = _int(config, "type_vocab_size", where, default=2)
  p = name_prefix
  shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "o": (hidden, hidden),
            "up": (inter, hidden), "down": (hidden, inter)}
  matrices = _block_matrices(layers, BERT_BLOCK_MATRICES, shapes, f"{p}encoder.layer.")
  required = {
      f"{p}embeddings.word_embeddings.weight": (vocab, hidden),
      f"{p}embeddings.position_embeddings.weight": (max_pos, hidden),
      f"{p}embeddings.token_type_embeddings.weight": (type_vocab, hidden),
      f"{p}embeddings.LayerNorm.weight": (hidden,),
      f"{p}embeddings.LayerNorm.bias": (hidden,),
  }
  for m in matrices:
    required[m.name] = m.shape
    required[m.name[:-len("weight")] + "bias"] = (m.shape[0],)
  for layer in range(layers):
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
      required[f"{p}encoder.layer.{layer}.{norm}.weight"] = (hidden,)
      required[f"{p}encoder.layer.{layer}.{norm}.bias"] = (hidden,)
  optional = {f"{p}pooler.dense.weight": (hidden, hidden), f"{p}pooler.dense.bias": (hidden,)}
  return FamilySpec(family="bert", num_layers=layers, required=required, optional=optional, matrices=matrices,
                    base_prefixes=(f"{p}embeddings.", f"{p}encoder.", f"{p}pooler."),
                    buffer_suffixes=(f"{p}embeddings.position_ids",), name_prefix=p)


def family_spec(config: Mapping[str, object], where: str = "config.json",
                names: frozenset[str] | None = None) -> FamilySpec:
  """The spec of a config's family; for BERT, the name prefix is detected from ``names`` when given.

  Example:
    >>> family_spec({"model_type": "llama", "hidden_size": 8, "intermediate_size": 12, "num_attention_heads": 2,
    ...     "num_hidden_layers": 2, "vocab_size": 5}).num_layers
    2
  """
  family = family_of(config, where)
  if family == "llama":
    return llama_spec(config, where)
  prefix = ""
  if names is not None and "embeddings.word_embeddings.weight" not in names and any(
      n.startswith("bert.embeddings.") for n in names):
    prefix = "bert."
  return bert_spec(config, where, name_prefix=prefix)


def check_required(names: frozenset[str], spec: FamilySpec, where: str) -> None:
  """Raise :class:`ModelLoadError` listing the required tensors missing from ``names``."""
  missing = [n for n in spec.required if n not in names]
  if missing:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise ModelLoadError(f"{where}: missing {len(missing)} tensor(s) that a {spec.family} model with this config "
                         f"needs: {shown}")


def check_tensors(params: Mapping[str, np.ndarray], spec: FamilySpec, where: str) -> None:
  """Check that ``params`` holds every required tensor with the right shape and nothing unknown in the base model.

  Raises:
    ModelLoadError: a required tensor is missing, or an unknown tensor sits inside the base model's namespace.
    ShapeError: a tensor's shape is not the one the config implies.

  Example:
    >>> spec = llama_spec({"hidden_size": 4, "intermediate_size": 6, "num_attention_heads": 2,
    ...     "num_hidden_layers": 1, "vocab_size": 3, "tie_word_embeddings": True})
    >>> check_tensors({"model.embed_tokens.weight": np.zeros((3, 5))}, spec, "x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    macjax.errors.ModelLoadError: x: missing 10 tensor(s) that a llama model with this config needs: model.norm...
  """
  check_required(frozenset(params), spec, where)
  for name in params:
    check_tensor(name, shape_of(params, name), spec, where)  # (header shapes when lazy: nothing is read)


def check_tensor(name: str, shape: tuple[int, ...], spec: FamilySpec, where: str) -> None:
  """Check one tensor: known to the base model (or outside it, or a buffer) and of the shape the config implies.

  Raises:
    ModelLoadError: an unknown tensor inside the base model's namespace. ShapeError: another shape.
  """
  expected = spec.expected_shape(name)
  if expected is None:
    if spec.is_base(name) and not spec.is_buffer(name):
      raise ModelLoadError(f"{where}: unexpected tensor {name!r} with shape {tuple(shape)} in a "
                           f"{spec.family} checkpoint; it is not part of the {spec.family} model this config "
                           "describes")
    return
  if tuple(shape) != tuple(expected):
    raise ShapeError(f"{where}: tensor {name!r} has shape {tuple(shape)}; the config implies {tuple(expected)}")


def build_layout(spec: FamilySpec, config: Mapping[str, object]) -> ModelLayout:
  """The :class:`ModelLayout` of a checked model.

  Example:
    >>> cfg = {"model_type": "llama", "hidden_size": 4, "intermediate_size": 6, "num_attention_heads": 2,
    ...     "num_hidden_layers": 1, "vocab_size": 3, "tie_word_embeddings": True}
    >>> len(build_layout(family_spec(cfg), cfg).matrices)
    7
  """
  return ModelLayout(family=spec.family, num_layers=spec.num_layers, matrices=spec.matrices, config=dict(config),
                     name_prefix=spec.name_prefix)
