"""One description of every supported architecture: naming rules, not model code.

Each :class:`Architecture` is a table of the tensors a Hugging Face checkpoint of that ``model_type`` holds — per
transformer block and outside the blocks — each with

* a **field**: the name the JAX forwards (:mod:`macjax.evaluate.decoder`, :mod:`macjax.evaluate.bert`) use for it;
* the checkpoint **suffix** (inside ``<prefix><block>.N.`` for block tensors; ``{e}`` stands for an expert index);
* a **shape** in symbols of the config (:data:`SYMBOLS`: ``H`` hidden, ``I`` intermediate, ``QO = heads·head_dim``,
  ``KVO = kv_heads·head_dim``, ``QKV = QO + 2·KVO``, ``V`` vocabulary, ...);
* the matrix **role** when it is a transformer-block matrix that the pipeline compresses (q, k, v, o, qkv, gate,
  up, gate_up, down, router), and whether it is stored as GPT-2's ``Conv1D`` (``(in, out)``: the loader presents
  it as ``(out, in)`` like every ``nn.Linear``, and the exporter transposes it back);
* a **condition** (a config flag such as ``attention_bias``) when the tensor exists only under it.

:func:`describe` turns an architecture and a config into a :class:`~macjax.load.families.FamilySpec`-ready list
of concrete tensors. Everything else — loaders, the forwards, calibration sites, export — reads these tables, so
adding a family is adding a table (and, when it computes something new, an option of the forward).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Callable, Mapping, NamedTuple

import numpy as np

from macjax.errors import ModelLoadError

#: Matrix roles. Appending keeps every existing role's index (the PRNG keys of shared states fold it in).
MATRIX_ROLES = ("q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up", "router")


class Tensor(NamedTuple):
  """One naming rule (see the module docstring)."""

  field: str
  suffix: str
  shape: tuple[str, ...]
  role: str | None = None
  conv1d: bool = False
  when: str | None = None      # a config flag; the tensor exists only when it is true
  optional: bool = False       # accepted, not required (e.g. a tied LM head)


def T(field, suffix, shape, role=None, *, conv1d=False, when=None, optional=False) -> Tensor:  # pylint: disable=invalid-name
  return Tensor(field, suffix, tuple(shape.split(",")) if isinstance(shape, str) else tuple(shape), role, conv1d,
                when, optional)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The naming rules of one ``model_type`` (module docstring).

  Attributes:
    name: the family name recorded in layouts and reports (``"llama"``, ``"qwen2"``, ``"gpt2"`` ...).
    model_types: the ``config.json`` ``model_type`` values it covers.
    kind: ``"decoder"`` (causal LM: perplexity/KL) or ``"encoder"`` (sentence embeddings).
    block_prefix: the blocks' name prefix, before the layer index (after the base-model prefix).
    block: rules of one block's tensors.
    experts: rules of one expert's tensors inside a block (``{e}`` in the suffix), for mixture-of-experts.
    globals: rules of the tensors outside the blocks.
    base_prefixes: possible prefixes of all base-model names (``("transformer.", "")`` for GPT-2: its original
      checkpoints have none); the first one that the checkpoint's names use is taken.
    buffer_suffixes: derived buffers, dropped on load.
    dims: config keys of each symbol when they differ from the common names (GPT-2's ``n_embd`` ...).
    defaults: a symbol's value when the config lacks it, as a function of the others.
  """

  name: str
  model_types: tuple[str, ...]
  kind: str
  block_prefix: str
  block: tuple[Tensor, ...]
  globals: tuple[Tensor, ...]
  experts: tuple[Tensor, ...] = ()
  base_prefixes: tuple[str, ...] = ("",)
  buffer_suffixes: tuple[str, ...] = ()
  dims: Mapping[str, str] = dataclasses.field(default_factory=dict)
  defaults: Mapping[str, Callable[[dict], int]] = dataclasses.field(default_factory=dict)

  def field_suffixes(self) -> dict[str, str]:
    """``{field: suffix}`` of the block rules (experts excluded)."""
    return {t.field: t.suffix for t in self.block}


_ATTENTION = (
    T("q", "self_attn.q_proj.weight", "QO,H", "q"),
    T("k", "self_attn.k_proj.weight", "KVO,H", "k"),
    T("v", "self_attn.v_proj.weight", "KVO,H", "v"),
    T("o", "self_attn.o_proj.weight", "H,QO", "o"),
)


def _biases(rules: tuple[Tensor, ...], when: str | None) -> tuple[Tensor, ...]:
  """The bias rule of each matrix rule (``{field}_bias``, ``….bias``, the matrix's output size)."""
  return tuple(T(f"{t.field}_bias", t.suffix[:-len("weight")] + "bias", t.shape[:1], when=when) for t in rules)


_ATTENTION_BIAS = _biases(_ATTENTION, "attention_bias")
_QKV_BIAS = _biases(_ATTENTION[:3], None)  # Qwen2: q, k, v biases, no o bias
_GATED_MLP = (
    T("gate", "mlp.gate_proj.weight", "I,H", "gate"),
    T("up", "mlp.up_proj.weight", "I,H", "up"),
    T("down", "mlp.down_proj.weight", "H,I", "down"),
)
_MLP_BIAS = _biases(_GATED_MLP, "mlp_bias")
_PRE_NORMS = (T("attn_norm", "input_layernorm.weight", "H"), T("mlp_norm", "post_attention_layernorm.weight", "H"))
_SANDWICH_NORMS = (  # Gemma 2/3: a norm before and after each sub-block
    T("attn_norm", "input_layernorm.weight", "H"), T("post_attn_norm", "post_attention_layernorm.weight", "H"),
    T("mlp_norm", "pre_feedforward_layernorm.weight", "H"), T("post_mlp_norm", "post_feedforward_layernorm.weight", "H"),
)
_QK_NORM = (T("q_norm", "self_attn.q_norm.weight", "HD"), T("k_norm", "self_attn.k_norm.weight", "HD"))
_DECODER_GLOBALS = (
    T("embed", "model.embed_tokens.weight", "V,H"),
    T("final_norm", "model.norm.weight", "H"),
    T("lm_head", "lm_head.weight", "V,H"),  # optional when tie_word_embeddings (see describe)
)
_ROTARY = (".rotary_emb.inv_freq",)


def _decoder(name, model_types, block, experts=(), **kw) -> Architecture:
  return Architecture(name=name, model_types=model_types, kind="decoder", block_prefix="model.layers.",
                      block=block, globals=_DECODER_GLOBALS, experts=experts, buffer_suffixes=_ROTARY, **kw)


_ARCHITECTURES = (
    _decoder("llama", ("llama", "mistral"), _ATTENTION + _ATTENTION_BIAS + _GATED_MLP + _MLP_BIAS + _PRE_NORMS),
    _decoder("qwen2", ("qwen2",), _ATTENTION + _QKV_BIAS + _GATED_MLP + _PRE_NORMS),
    _decoder("qwen3", ("qwen3",), _ATTENTION + _ATTENTION_BIAS + _QK_NORM + _GATED_MLP + _PRE_NORMS),
    _decoder("gemma2", ("gemma2",), _ATTENTION + _ATTENTION_BIAS + _GATED_MLP + _SANDWICH_NORMS),
    _decoder("gemma3", ("gemma3_text",), _ATTENTION + _ATTENTION_BIAS + _QK_NORM + _GATED_MLP + _SANDWICH_NORMS),
    _decoder("phi3", ("phi3",), (
        T("qkv", "self_attn.qkv_proj.weight", "QKV,H", "qkv"), T("o", "self_attn.o_proj.weight", "H,QO", "o"),
        T("gate_up", "mlp.gate_up_proj.weight", "2I,H", "gate_up"), T("down", "mlp.down_proj.weight", "H,I", "down"),
    ) + _PRE_NORMS),
    _decoder("mixtral", ("mixtral",), _ATTENTION + _PRE_NORMS + (
        T("router", "block_sparse_moe.gate.weight", "E,H", "router"),), experts=(
        T("gate", "block_sparse_moe.experts.{e}.w1.weight", "I,H", "gate"),
        T("up", "block_sparse_moe.experts.{e}.w3.weight", "I,H", "up"),
        T("down", "block_sparse_moe.experts.{e}.w2.weight", "H,I", "down"),
    ), dims={"E": "num_local_experts"}),
    _decoder("qwen2_moe", ("qwen2_moe",), _ATTENTION + tuple(
        T(t.field, t.suffix, t.shape, when="qkv_bias") for t in _QKV_BIAS) + _PRE_NORMS + (
        T("router", "mlp.gate.weight", "E,H", "router"),
        T("shared_gate", "mlp.shared_expert.gate_proj.weight", "SI,H", "gate"),
        T("shared_up", "mlp.shared_expert.up_proj.weight", "SI,H", "up"),
        T("shared_down", "mlp.shared_expert.down_proj.weight", "H,SI", "down"),
        T("shared_expert_gate", "mlp.shared_expert_gate.weight", "1,H"),
    ), experts=(
        T("gate", "mlp.experts.{e}.gate_proj.weight", "EI,H", "gate"),
        T("up", "mlp.experts.{e}.up_proj.weight", "EI,H", "up"),
        T("down", "mlp.experts.{e}.down_proj.weight", "H,EI", "down"),
    ), dims={"E": "num_experts", "EI": "moe_intermediate_size", "SI": "shared_expert_intermediate_size"}),
    Architecture(
        name="gpt2", model_types=("gpt2",), kind="decoder", block_prefix="h.", base_prefixes=("transformer.", ""),
        block=(
            T("qkv", "attn.c_attn.weight", "QKV,H", "qkv", conv1d=True), T("qkv_bias", "attn.c_attn.bias", "QKV"),
            T("o", "attn.c_proj.weight", "H,QO", "o", conv1d=True), T("o_bias", "attn.c_proj.bias", "H"),
            T("up", "mlp.c_fc.weight", "I,H", "up", conv1d=True), T("up_bias", "mlp.c_fc.bias", "I"),
            T("down", "mlp.c_proj.weight", "H,I", "down", conv1d=True), T("down_bias", "mlp.c_proj.bias", "H"),
            T("attn_norm", "ln_1.weight", "H"), T("attn_norm_bias", "ln_1.bias", "H"),
            T("mlp_norm", "ln_2.weight", "H"), T("mlp_norm_bias", "ln_2.bias", "H"),
        ),
        globals=(T("embed", "wte.weight", "V,H"), T("positions", "wpe.weight", "P,H"),
                 T("final_norm", "ln_f.weight", "H"), T("final_norm_bias", "ln_f.bias", "H"),
                 T("lm_head", "lm_head.weight", "V,H")),
        buffer_suffixes=(".attn.bias", ".attn.masked_bias"),
        dims={"H": "n_embd", "L": "n_layer", "P": "n_positions", "I": "n_inner", "heads": "n_head"},
        defaults={"I": lambda d: 4 * d["H"]}),
    Architecture(
        name="bert", model_types=("bert",), kind="encoder", block_prefix="encoder.layer.",
        base_prefixes=("", "bert."),
        block=(
            T("q", "attention.self.query.weight", "H,H", "q"), T("q_bias", "attention.self.query.bias", "H"),
            T("k", "attention.self.key.weight", "H,H", "k"), T("k_bias", "attention.self.key.bias", "H"),
            T("v", "attention.self.value.weight", "H,H", "v"), T("v_bias", "attention.self.value.bias", "H"),
            T("o", "attention.output.dense.weight", "H,H", "o"), T("o_bias", "attention.output.dense.bias", "H"),
            T("up", "intermediate.dense.weight", "I,H", "up"), T("up_bias", "intermediate.dense.bias", "I"),
            T("down", "output.dense.weight", "H,I", "down"), T("down_bias", "output.dense.bias", "H"),
            T("attn_norm", "attention.output.LayerNorm.weight", "H"),
            T("attn_norm_bias", "attention.output.LayerNorm.bias", "H"),
            T("mlp_norm", "output.LayerNorm.weight", "H"), T("mlp_norm_bias", "output.LayerNorm.bias", "H"),
        ),
        globals=(T("embed", "embeddings.word_embeddings.weight", "V,H"),
                 T("positions", "embeddings.position_embeddings.weight", "P,H"),
                 T("token_types", "embeddings.token_type_embeddings.weight", "TV,H"),
                 T("embed_norm", "embeddings.LayerNorm.weight", "H"),
                 T("embed_norm_bias", "embeddings.LayerNorm.bias", "H"),
                 T("pooler", "pooler.dense.weight", "H,H", optional=True),
                 T("pooler_bias", "pooler.dense.bias", "H", optional=True)),
        buffer_suffixes=("embeddings.position_ids",),
        defaults={"P": lambda d: 512, "TV": lambda d: 2}),
)

#: ``model_type`` -> its :class:`Architecture`.
BY_MODEL_TYPE: Mapping[str, Architecture] = types.MappingProxyType(
    {mt: a for a in _ARCHITECTURES for mt in a.model_types})
#: Family name -> its :class:`Architecture`.
BY_NAME: Mapping[str, Architecture] = types.MappingProxyType({a.name: a for a in _ARCHITECTURES})
FAMILIES = tuple(BY_NAME)

#: Symbols of shapes and the config keys they are read from (``dims`` of an architecture may rename them).
SYMBOLS = {"H": "hidden_size", "I": "intermediate_size", "L": "num_hidden_layers", "V": "vocab_size",
           "heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "HD": "head_dim",
           "P": "max_position_embeddings", "TV": "type_vocab_size", "E": "num_experts",
           "EI": "moe_intermediate_size", "SI": "shared_expert_intermediate_size"}


def architecture_of(config: Mapping[str, object], where: str = "config.json") -> Architecture:
  """The :class:`Architecture` of a Hugging Face config.

  Raises:
    ModelLoadError: ``model_type`` is missing or not supported; the message lists the supported ones.

  Example:
    >>> architecture_of({"model_type": "mistral"}).name
    'llama'
  """
  model_type = config.get("model_type")
  if model_type not in BY_MODEL_TYPE:
    raise ModelLoadError(
        f"{where}: model_type {model_type!r} (architectures {config.get('architectures')!r}) is not supported; "
        f"supported model_type values: {', '.join(sorted(BY_MODEL_TYPE))}")
  return BY_MODEL_TYPE[model_type]


def _positive(config: Mapping[str, object], key: str, where: str, default=None) -> int:
  value = config.get(key)
  if value is None:
    value = default
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
    raise ModelLoadError(f"{where}: key {key!r} is {value!r}; expected a positive integer")
  return int(value)


def dims_of(arch: Architecture, config: Mapping[str, object], where: str = "config.json") -> dict[str, int]:
  """Every shape symbol's value for this config (only those the architecture's rules use are required).

  Raises:
    ModelLoadError: a needed key is missing or not a positive integer, or heads that do not divide.

  Example:
    >>> cfg = {"model_type": "gpt2", "n_embd": 8, "n_layer": 2, "n_head": 2, "vocab_size": 5, "n_positions": 4}
    >>> d = dims_of(BY_NAME["gpt2"], cfg); d["I"], d["QKV"]
    (32, 24)
  """
  keys = {**SYMBOLS, **arch.dims}
  d: dict[str, int] = {}
  for sym in ("H", "L", "V", "heads"):
    d[sym] = _positive(config, keys[sym], where)
  d["kv_heads"] = _positive(config, keys["kv_heads"], where, default=d["heads"])
  if config.get(keys["HD"]) is None and d["H"] % d["heads"]:
    raise ModelLoadError(f"{where}: hidden size {d['H']} is not a multiple of the {d['heads']} attention heads "
                         "and there is no head_dim")
  d["HD"] = _positive(config, keys["HD"], where, default=d["H"] // d["heads"])
  if d["heads"] % d["kv_heads"]:
    raise ModelLoadError(f"{where}: num_attention_heads {d['heads']} is not a multiple of num_key_value_heads "
                         f"{d['kv_heads']}")
  d["QO"], d["KVO"] = d["heads"] * d["HD"], d["kv_heads"] * d["HD"]
  d["QKV"] = d["QO"] + 2 * d["KVO"]
  d["1"] = 1
  used = {s for t in arch.block + arch.globals + arch.experts for s in t.shape}
  for sym in ("I", "P", "TV", "E", "EI", "SI"):
    if sym in used or (sym == "I" and "2I" in used):
      default = arch.defaults[sym](d) if sym in arch.defaults else None
      d[sym] = _positive(config, keys[sym], where, default=default)
  if "I" in d:
    d["2I"] = 2 * d["I"]
  return d


def flag(config: Mapping[str, object], name: str | None) -> bool:
  """Whether a rule's condition holds (no condition: always)."""
  return name is None or bool(config.get(name))


def shape(rule: Tensor, dims: Mapping[str, int]) -> tuple[int, ...]:
  """A rule's concrete shape as the loaded model holds it (``(out, in)`` for matrices, ``Conv1D`` included; the
  checkpoint stores a ``Conv1D`` weight the other way round)."""
  return tuple(dims[x] for x in rule.shape)
