"""Typed, validated pipeline configs, read from TOML.

A config is a tree of frozen dataclasses. :func:`from_dict` rejects unknown keys (naming the key and the keys that
are allowed), values of the wrong type, and values out of range, with a :class:`~macjax.errors.ConfigError`.
The defaults of :class:`PipelineConfig` are the default operating point; ``configs/default.toml`` spells them out.

Example:
  >>> cfg = from_dict({"quantize": {"step": 0.1}})
  >>> cfg.quantize.step
  0.1
  >>> cfg = with_overrides(cfg, ["coding.model=histogram"])
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tomllib
import typing
from typing import Any

from macjax.errors import ConfigError

QUANTIZERS = ("uniform",)
CODING_MODELS = ("histogram",)
TREATMENTS = ("quantize", "float16", "float32")
VECTOR_DTYPES = ("float16", "float32")


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
  """Quantizer of the transformer-block matrices.

  Attributes:
    method: quantizer name (``uniform``: per-group uniform scalar quantization).
    step: step size relative to the RMS of each group (smaller: more bits, less error).
    group_size: columns per group within a row; 0 means one group per row.
  """

  method: str = "uniform"
  step: float = 1 / 16
  group_size: int = 0

  def __post_init__(self):
    _check(self.method in QUANTIZERS, f"quantize.method = {self.method!r}; expected one of {QUANTIZERS}")
    _check(0 < self.step <= 4, f"quantize.step = {self.step}; expected 0 < step <= 4 (relative to group RMS)")
    _check(self.group_size >= 0, f"quantize.group_size = {self.group_size}; expected >= 0 (0: whole row)")


@dataclasses.dataclass(frozen=True)
class EmbeddingsConfig:
  """Treatment of the 2-D tensors outside the transformer blocks (token/position embeddings, LM head).

  Attributes:
    treatment: ``quantize`` (same quantizer and coder as the blocks, with the step below), or keep as
      ``float16`` / ``float32``.
    step: step relative to each row's RMS, when quantized.
    group_size: columns per group; 0 means one group per row.
  """

  treatment: str = "quantize"
  step: float = 1 / 16
  group_size: int = 0

  def __post_init__(self):
    _check(self.treatment in TREATMENTS, f"embeddings.treatment = {self.treatment!r}; expected one of {TREATMENTS}")
    _check(0 < self.step <= 4, f"embeddings.step = {self.step}; expected 0 < step <= 4")
    _check(self.group_size >= 0, f"embeddings.group_size = {self.group_size}; expected >= 0")


@dataclasses.dataclass(frozen=True)
class VectorsConfig:
  """Storage of 1-D tensors (norm weights, biases): kept, in this dtype, and counted."""

  dtype: str = "float32"

  def __post_init__(self):
    _check(self.dtype in VECTOR_DTYPES, f"vectors.dtype = {self.dtype!r}; expected one of {VECTOR_DTYPES}")


@dataclasses.dataclass(frozen=True)
class CodingConfig:
  """Entropy coder of the quantized codes.

  Attributes:
    model: probability model (``histogram``: a per-tensor table stored in the artifact).
  """

  model: str = "histogram"

  def __post_init__(self):
    _check(self.model in CODING_MODELS, f"coding.model = {self.model!r}; expected one of {CODING_MODELS}")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """Model-quality evaluation after compression (0 means the evaluator's default size).

  Attributes:
    enabled: run the evaluation.
    n_seq: number of held-out sequences (causal LMs).
    seq_len: tokens per sequence (causal LMs).
    n_sentences: number of held-out sentences (encoders).
  """

  enabled: bool = True
  n_seq: int = 0
  seq_len: int = 0
  n_sentences: int = 0

  def __post_init__(self):
    for k in ("n_seq", "seq_len", "n_sentences"):
      _check(getattr(self, k) >= 0, f"evaluate.{k} = {getattr(self, k)}; expected >= 0 (0: default)")


@dataclasses.dataclass(frozen=True)
class TransformSpec:
  """One member of the per-matrix transform chain (``[[transform]]`` tables in TOML, applied in order).

  Attributes:
    name: a key of :data:`macjax.pipeline.components.TRANSFORMS` (``hadamard``, ``orthogonal``, ``pca``,
      ``scaling``, ``learned``).
    options: the factory's keyword options, as sorted ``(key, value)`` pairs (e.g. ``side = "input"``).
  """

  name: str
  options: tuple[tuple[str, Any], ...] = ()

  @property
  def kwargs(self) -> dict[str, Any]:
    return dict(self.options)


@dataclasses.dataclass(frozen=True)
class RewriteConfig:
  """Model-level computational-invariance rewrite before compression (LLaMA family).

  Attributes:
    residual: rotation of the residual stream: ``none``, ``hadamard`` (randomized, from the seed).
    head_rotation: rotate each value head (and the matching ``o_proj`` columns) by a randomized Hadamard.
    untie: allow untying tied embeddings, which a residual rotation requires (the LM head then costs its own
      ``vocab × hidden`` weights, counted like every other tensor).
  """

  residual: str = "none"
  head_rotation: bool = False
  untie: bool = False

  def __post_init__(self):
    _check(self.residual in ("none", "hadamard"), f"rewrite.residual = {self.residual!r}; expected 'none' or "
           "'hadamard'")

  @property
  def active(self) -> bool:
    return self.residual != "none" or self.head_rotation


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The whole pipeline. Each field is a section of the TOML file."""

  rewrite: RewriteConfig = RewriteConfig()
  transform: tuple[TransformSpec, ...] = ()
  quantize: QuantizeConfig = QuantizeConfig()
  embeddings: EmbeddingsConfig = EmbeddingsConfig()
  vectors: VectorsConfig = VectorsConfig()
  coding: CodingConfig = CodingConfig()
  evaluate: EvaluateConfig = EvaluateConfig()
  seed: int = 0


def _type_ok(value: Any, annotation: Any) -> bool:
  if annotation is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if annotation is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, annotation)


def _build(cls: type, data: Any, where: str):
  if not isinstance(data, dict):
    raise ConfigError(f"config section {where or '(top level)'} must be a table, got {type(data).__name__}")
  hints = typing.get_type_hints(cls)
  if cls is PipelineConfig:
    hints = {k: v for k, v in hints.items() if k != "transform"}
  fields = {f.name: f for f in dataclasses.fields(cls) if f.name in hints}
  unknown = sorted(set(data) - set(fields))
  if unknown:
    prefix = f"{where}." if where else ""
    raise ConfigError(f"unknown config key {prefix}{unknown[0]}; allowed in {where or 'the top level'}: "
                      f"{sorted(fields)}")
  kwargs = {}
  for name, value in data.items():
    key = f"{where}.{name}" if where else name
    hint = hints[name]
    if dataclasses.is_dataclass(hint):
      kwargs[name] = _build(hint, value, key)
    else:
      if not _type_ok(value, hint):
        raise ConfigError(f"config key {key} = {value!r} has type {type(value).__name__}; expected {hint.__name__}")
      kwargs[name] = float(value) if hint is float else value
  return cls(**kwargs)


def _transform_specs(items: Any) -> tuple[TransformSpec, ...]:
  from macjax.pipeline import components  # pylint: disable=g-import-not-at-top
  if not isinstance(items, (list, tuple)):
    raise ConfigError(f"config key transform must be a list of tables ([[transform]] in TOML), got "
                      f"{type(items).__name__}")
  specs = []
  for i, item in enumerate(items):
    if not isinstance(item, dict) or "name" not in item:
      raise ConfigError(f"transform[{i}] must be a table with a 'name' key, got {item!r:.80}")
    options = {k: v for k, v in item.items() if k != "name"}
    components.check_transform(i, item["name"], options)
    specs.append(TransformSpec(name=item["name"], options=tuple(sorted(options.items()))))
  return tuple(specs)


def from_dict(data: dict) -> PipelineConfig:
  """Builds a validated :class:`PipelineConfig` from nested dicts (missing keys take defaults)."""
  if not isinstance(data, dict):
    raise ConfigError(f"a config must be a table, got {type(data).__name__}")
  data = dict(data)
  specs = _transform_specs(data.pop("transform", []))
  return dataclasses.replace(_build(PipelineConfig, data, ""), transform=specs)


def to_dict(cfg: PipelineConfig) -> dict:
  """The config as nested dicts (JSON/TOML-ready); ``from_dict(to_dict(c)) == c``."""
  d = dataclasses.asdict(cfg)
  d["transform"] = [{"name": t.name, **t.kwargs} for t in cfg.transform]
  return d


def load(path: str | os.PathLike) -> PipelineConfig:
  """Reads a TOML config file.

  Raises:
    ConfigError: missing file, TOML syntax error, or an invalid key/value.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} does not exist")
  try:
    data = tomllib.loads(path.read_text())
  except tomllib.TOMLDecodeError as e:
    raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
  return from_dict(data)


def _parse_scalar(text: str) -> Any:
  try:
    return tomllib.loads(f"v = {text}")["v"]
  except tomllib.TOMLDecodeError:
    return text  # a bare word is a string


def with_overrides(cfg: PipelineConfig, assignments: list[str]) -> PipelineConfig:
  """Applies ``section.key=value`` overrides (values parsed as TOML scalars; bare words are strings)."""
  data = to_dict(cfg)
  for a in assignments:
    if "=" not in a:
      raise ConfigError(f"override {a!r} is not of the form section.key=value")
    key, text = a.split("=", 1)
    *sections, leaf = key.strip().split(".")
    node = data
    for s in sections:
      if not isinstance(node.get(s), dict):
        raise ConfigError(f"override {a!r}: unknown config section {s!r}")
      node = node[s]
    if leaf not in node:
      raise ConfigError(f"override {a!r}: unknown config key {key.strip()}; allowed: {sorted(node)}")
    node[leaf] = _parse_scalar(text.strip())
  return from_dict(data)
