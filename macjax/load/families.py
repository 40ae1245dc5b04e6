"""What each supported model family's checkpoint must contain, from its ``config.json`` and the naming rules of
:mod:`macjax.load.architectures`.

A family spec lists every tensor the Hugging Face model expects, with its shape computed from the config, the
transformer-block matrices and their roles (and expert index, for mixture-of-experts), the ``Conv1D`` weights that
are stored transposed, the derived buffers that are dropped on load (recomputed by the model, not weights), and
the name prefixes that belong to the base model (a tensor under such a prefix that the spec does not know means
the checkpoint is not what its config says, and is an error). Tensors outside the base model (task heads such as
``cls.*`` of ``BertForMaskedLM``) are kept as they are.

Example:
  >>> spec = family_spec({"model_type": "bert", "hidden_size": 8, "intermediate_size": 16,
  ...     "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 10, "max_position_embeddings": 4,
  ...     "type_vocab_size": 2})
  >>> [m.role for m in spec.matrices]
  ['q', 'k', 'v', 'o', 'up', 'down']
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from macjax.errors import ModelLoadError, ShapeError
from macjax.load import architectures
from macjax.load.architectures import Architecture
from macjax.load.lazy import shape_of
from macjax.load.layout import MatrixInfo, ModelLayout


@dataclasses.dataclass(frozen=True)
class FamilySpec:
  """The tensors a checkpoint of one family must (or may) hold.

  Attributes:
    family: the architecture's name (:data:`~macjax.load.architectures.FAMILIES`).
    num_layers: the number of transformer blocks.
    required: name -> shape of every tensor the model needs (``(out, in)`` for matrices, ``Conv1D`` included).
    optional: name -> shape of tensors the model accepts but does not need (e.g. BERT's pooler, a tied LM head).
    matrices: the transformer-block matrices, ordered by (layer, rule order of the architecture, expert).
    base_prefixes: a name starting with one of these must be in ``required``/``optional``/``buffer_suffixes``.
    buffer_suffixes: names ending with one of these are derived buffers, dropped on load.
    name_prefix: prefix of all base-model names (``"bert."`` for BERT-with-head checkpoints, ``"transformer."``
      for GPT-2 checkpoints saved by ``GPT2LMHeadModel``, else ``""``).
    conv1d: names of ``Conv1D`` weights (stored ``(in, out)``; loaders transpose them, exporters transpose back).
    fields: name -> ``(field, layer, expert)`` of every block and global tensor (layer/expert None outside).
  """

  family: str
  num_layers: int
  required: Mapping[str, tuple[int, ...]]
  optional: Mapping[str, tuple[int, ...]]
  matrices: tuple[MatrixInfo, ...]
  base_prefixes: tuple[str, ...]
  buffer_suffixes: tuple[str, ...]
  name_prefix: str = ""
  conv1d: frozenset = frozenset()
  fields: Mapping[str, tuple] = dataclasses.field(default_factory=dict)

  def is_buffer(self, name: str) -> bool:
    return any(name.endswith(s) for s in self.buffer_suffixes)

  def is_base(self, name: str) -> bool:
    return any(name.startswith(p) for p in self.base_prefixes)

  def expected_shape(self, name: str) -> tuple[int, ...] | None:
    if name in self.required:
      return self.required[name]
    return self.optional.get(name)


def family_of(config: Mapping[str, object], where: str = "config.json") -> str:
  """The family name of a Hugging Face config (see :func:`architectures.architecture_of`).

  Example:
    >>> family_of({"model_type": "llama"})
    'llama'
  """
  return architectures.architecture_of(config, where).name


def _name_prefix(arch: Architecture, names: frozenset[str] | None) -> str:
  """The first of the architecture's base prefixes that the checkpoint's names use (the first one if none)."""
  if names is not None:
    embed = next(t.suffix for t in arch.globals if t.field == "embed")
    for prefix in arch.base_prefixes:
      if prefix + embed in names:
        return prefix
  return arch.base_prefixes[0]


def _tied(arch: Architecture, config: Mapping[str, object]) -> bool:
  default = arch.name in ("gpt2", "gemma2", "gemma3")  # the families whose configs default to tied embeddings
  value = config.get("tie_word_embeddings")
  return default if value is None else bool(value)


def _check_supported(arch: Architecture, config: Mapping[str, object], where: str) -> None:
  """Refuses configs whose tensors the tables do not describe (named)."""
  if arch.name == "qwen2_moe":
    if config.get("mlp_only_layers") or int(config.get("decoder_sparse_step") or 1) != 1:
      raise ModelLoadError(f"{where}: qwen2_moe with dense layers (mlp_only_layers {config.get('mlp_only_layers')!r}, "
                           f"decoder_sparse_step {config.get('decoder_sparse_step')!r}) is not supported; expected "
                           "every layer sparse")


def family_spec(config: Mapping[str, object], where: str = "config.json",
                names: frozenset[str] | None = None, name_prefix: str | None = None) -> FamilySpec:
  """The spec of a config's family; the base-model name prefix is ``name_prefix`` when given, else detected from
  ``names`` (else the family's first).

  Raises:
    ModelLoadError: an unsupported ``model_type``, a config key the shapes need is missing or invalid, or a
      name prefix the family does not use.

  Example:
    >>> spec = family_spec({"model_type": "llama", "hidden_size": 8, "intermediate_size": 12,
    ...     "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 2, "vocab_size": 5,
    ...     "tie_word_embeddings": True})
    >>> spec.num_layers, spec.required["model.layers.0.self_attn.k_proj.weight"]
    (2, (4, 8))
  """
  arch = architectures.architecture_of(config, where)
  _check_supported(arch, config, where)
  dims = architectures.dims_of(arch, config, where)
  p = _name_prefix(arch, names) if name_prefix is None else name_prefix
  if p not in arch.base_prefixes:
    raise ModelLoadError(f"{where}: name prefix {p!r} is not one of the {arch.name} prefixes {arch.base_prefixes}")
  required: dict[str, tuple[int, ...]] = {}
  optional: dict[str, tuple[int, ...]] = {}
  fields: dict[str, tuple] = {}
  conv1d, matrices = set(), []
  tied = _tied(arch, config)

  def add(rule, name, layer, expert):
    if not architectures.flag(config, rule.when):
      return
    shape = architectures.shape(rule, dims)
    (optional if rule.optional or (rule.field == "lm_head" and tied) else required)[name] = shape
    fields[name] = (rule.field, layer, expert)
    if rule.conv1d:
      conv1d.add(name)
    if rule.role is not None and layer is not None:
      matrices.append(MatrixInfo(name=name, role=rule.role, layer=layer, shape=shape, expert=expert))

  lm_head_prefix = "" if arch.kind == "decoder" else p  # LM heads sit outside the base model
  for rule in arch.globals:
    add(rule, (lm_head_prefix if rule.field == "lm_head" else p) + rule.suffix, None, None)
  for layer in range(dims["L"]):
    block = f"{p}{arch.block_prefix}{layer}."
    for rule in arch.block:
      add(rule, block + rule.suffix, layer, None)
    for e in range(dims.get("E", 0) if arch.experts else 0):
      for rule in arch.experts:
        add(rule, block + rule.suffix.format(e=e), layer, e)
  bases = tuple(sorted({(lm_head_prefix if t.field == "lm_head" else p) + t.suffix.split(".", 1)[0] + "."
                        for t in arch.globals} | {p + arch.block_prefix}))
  return FamilySpec(family=arch.name, num_layers=dims["L"], required=required, optional=optional,
                    matrices=tuple(matrices), base_prefixes=bases,
                    buffer_suffixes=tuple(p + s if not s.startswith(".") else s for s in arch.buffer_suffixes),
                    name_prefix=p, conv1d=frozenset(conv1d), fields=fields)


def llama_spec(config: Mapping[str, object], where: str = "config.json") -> FamilySpec:
  """The tensors of a Hugging Face ``LlamaForCausalLM`` checkpoint (:func:`family_spec` of ``model_type`` llama)."""
  return family_spec({**config, "model_type": "llama"}, where)


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
