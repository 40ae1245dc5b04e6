"""Typed, validated pipeline configs, read from TOML.

A config is a tree of frozen dataclasses. :func:`from_dict` rejects unknown keys (naming the key and the keys that
are allowed), values of the wrong type, and values out of range, with a :class:`~macjax.errors.ConfigError`.
The defaults of :class:`PipelineConfig` are the *plain* operating point (one step per row, no calibration:
``configs/plain.toml``); :func:`preset` names the operating points the command line offers, ``"default"`` (what
``macjax compress`` uses without ``--config``: ``configs/default.toml``) among them.

Example:
  >>> cfg = from_dict({"quantize": {"step": 0.1}})
  >>> cfg.quantize.step
  0.1
  >>> cfg = with_overrides(cfg, ["coding.model=histogram"])
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tomllib
import typing
from typing import Any

from macjax.errors import ConfigError

TREATMENTS = ("quantize", "float16", "float32")
VECTOR_DTYPES = ("float16", "float32")
HESSIANS = ("inputs", "fisher")  # calibration.hessian


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


Options = tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
  """Quantizer of the transformer-block matrices (the embeddings use the same method and options).

  Attributes:
    method: quantizer name, a key of :data:`macjax.quantize.QUANTIZERS`: ``uniform`` (per-group uniform scalar),
      ``dead_zone`` (wider zero bin), ``rdoq`` (rate–distortion-optimized rounding), ``trellis`` (dependent
      quantization).
    step: step size relative to the RMS of each group (smaller: more bits, less error).
    group_size: columns per group within a row; 0 means one group per row.
    options: the method's other keyword options (``[quantize.options]`` in TOML, e.g. ``width = 1.4`` for
      ``dead_zone``, ``lam = 0.1`` for ``rdoq``), validated against the factory's signature.
    gptq: wrap the quantizer in GPTQ error feedback with the Hessian ``XᵀX`` of each matrix's inputs on calibration
      text (see ``[calibration]``), so the error is minimized on the layer's output, not on the weights.
    gptq_block_size: columns per lazy-update block of GPTQ.
    gptq_damp: GPTQ's diagonal damping, relative to the mean diagonal of the Hessian.
    gptq_order: the order GPTQ visits columns in: ``descending`` (by decreasing input energy ``H_jj``,
      "act-order", the default: it puts the loudest columns first, before errors fed back from other columns
      accumulate; benchmarks/results/rd_models_* measure it against natural order) or
      ``natural``; decoding does not depend on it and nothing is stored for it.
    gptq_column_steps: ``none``, or ``curvature``: each input column's step scaled by the curvature GPTQ sees there
      (``∝ U_jj``, equal layer-output distortion per column; :mod:`macjax.quantize.gptq`), stored as one int8
      exponent per column (counted in the metadata).
  """

  method: str = "uniform"
  step: float = 1 / 16
  group_size: int = 0
  options: Options = ()
  gptq: bool = False
  gptq_block_size: int = 128
  gptq_damp: float = 0.01
  gptq_order: str = "descending"
  gptq_column_steps: str = "none"

  def __post_init__(self):
    from macjax.pipeline import components  # pylint: disable=g-import-not-at-top
    components.check_quantizer(self.method, dict(self.options))
    _check(0 < self.step <= 4, f"quantize.step = {self.step}; expected 0 < step <= 4 (relative to group RMS)")
    _check(self.group_size >= 0, f"quantize.group_size = {self.group_size}; expected >= 0 (0: whole row)")
    _check(self.gptq_block_size >= 1, f"quantize.gptq_block_size = {self.gptq_block_size}; expected >= 1")
    _check(self.gptq_damp > 0, f"quantize.gptq_damp = {self.gptq_damp}; expected > 0")
    from macjax.quantize.gptq import ORDERS  # pylint: disable=g-import-not-at-top
    _check(self.gptq_order in ORDERS, f"quantize.gptq_order = {self.gptq_order!r}; expected one of {ORDERS}")
    _check(self.gptq_column_steps in ("none", "curvature"),  # "given" exponents come from code, not a config
           f"quantize.gptq_column_steps = {self.gptq_column_steps!r}; expected 'none' or 'curvature'")
    _check(self.gptq or self.gptq_column_steps == "none",
           "quantize.gptq_column_steps needs quantize.gptq = true (the steps come from GPTQ's Hessian factor)")


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
    model: probability model, a key of :data:`macjax.coding.ENCODE_MODELS` (``histogram``: a per-tensor table stored
      in the artifact; parametric and context models; ``auto`` picks the fewest measured bits per tensor).
    classes: context classes of each 2-D code tensor (:mod:`macjax.coding.contexts`): ``none`` (one model per
      tensor), ``RxC`` (e.g. ``4x4``: rows sorted into R classes, columns into C, one model per context, the class
      maps stored) or ``auto`` (one model or a grid of :data:`macjax.coding.codec.AUTO_CLASSES`, whichever costs
      fewer bits per tensor). Pays when rows/columns have unequal spreads, e.g. with one step per matrix
      (``quantize.options.scope = "matrix"``); costs encode time (≈ 10–35 ms per MiniLM matrix, mostly the class
      search), none at decode.
  """

  model: str = "histogram"
  classes: str = "none"

  def __post_init__(self):
    from macjax import coding  # pylint: disable=g-import-not-at-top
    _check(self.model in coding.ENCODE_MODELS, f"coding.model = {self.model!r}; expected one of "
           f"{tuple(coding.ENCODE_MODELS)}")
    self.class_grid()  # validates

  def class_grid(self) -> tuple[int, int] | str | None:
    """``classes`` as :func:`macjax.coding.encode` takes it: None, ``"auto"`` or ``(R, C)``."""
    from macjax.coding import contexts  # pylint: disable=g-import-not-at-top
    if self.classes in ("none", "auto"):
      return None if self.classes == "none" else "auto"
    r, sep, c = str(self.classes).partition("x")
    ok = sep and r.isdigit() and c.isdigit() and all(1 <= int(v) <= contexts.MAX_CLASSES for v in (r, c))
    _check(bool(ok) and self.model != "raw", f"coding.classes = {self.classes!r}; expected 'none', 'auto' or 'RxC' "
           f"with R, C in [1, {contexts.MAX_CLASSES}] (e.g. '4x4'), and not with coding.model = 'raw'")
    return int(r), int(c)


@dataclasses.dataclass(frozen=True)
class FitSection:
  """The functional fit ``W = f_θ(α) + r`` across layers (``[fit]``; options in ``[fit.options]``).

  One ``f_θ`` per family (role) of block matrices, in the coordinates the transform chain produced; the residual
  ``r`` goes to the quantizer with the steps the weights themselves would get (so ``f_θ`` buys rate at equal
  distortion, or nothing), and θ is stored and counted.

  Attributes:
    enabled: run the fit.
    roles: roles whose families are fitted (``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``, ``qkv``,
      ``gate_up``, ``router``); empty means all.
    across: the index a family runs over (:meth:`~macjax.load.layout.ModelLayout.families`): ``layers`` (one f_θ
      per role across layers; experts across layers and experts) or ``experts`` (a mixture of experts' expert
      matrices: one f_θ per role and layer, across that layer's experts).
    keep: ``if_pays`` keeps a family's f_θ only when the codes' entropy it saves (measured at the same steps) exceeds
      θ's stored bits, else θ is dropped and the decision recorded; ``always`` keeps every fit.
    theta_bits_per_weight: if > 0, θ's size is chosen by this rate budget: each family gets the largest MLP width
      whose stored θ fits in ``budget × (weights of the family)`` bits (recorded per family for the decoder).
    options: :class:`macjax.fit.FitConfig` fields (``width``, ``depth``, ``n_fourier``, ``tile``, ``steps``,
      ``theta_dtype`` …).
  """

  enabled: bool = False
  roles: tuple[str, ...] = ()
  across: str = "layers"
  keep: str = "if_pays"
  theta_bits_per_weight: float = 0.0
  options: Options = ()

  def __post_init__(self):
    from macjax import fit  # pylint: disable=g-import-not-at-top
    _check(self.keep in ("if_pays", "always"), f"fit.keep = {self.keep!r}; expected 'if_pays' or 'always'")
    _check(self.across in ("layers", "experts"), f"fit.across = {self.across!r}; expected 'layers' or 'experts'")
    _check(0 <= self.theta_bits_per_weight <= 8, f"fit.theta_bits_per_weight = {self.theta_bits_per_weight}; "
           "expected 0 (off: width from fit.options) or a budget in (0, 8] bits per weight of the family")
    _check(not (self.theta_bits_per_weight and "width" in dict(self.options)),
           "fit.theta_bits_per_weight chooses the width: do not also set fit.options.width")
    from macjax.load.layout import MATRIX_ROLES  # pylint: disable=g-import-not-at-top
    for r in self.roles:
      _check(r in MATRIX_ROLES, f"fit.roles has {r!r}; expected roles from {MATRIX_ROLES}")
    fields = {f.name for f in dataclasses.fields(fit.FitConfig)}
    for k, _ in self.options:
      _check(k in fields, f"unknown config key fit.options.{k}; allowed: {sorted(fields)}")
    fit.FitConfig(**dict(self.options))  # validates values, raising ConfigError


# [allocation] sensitivity kinds; "input_energy" is an older name of "layer_output".
SENSITIVITIES = ("none", "weight", "layer_output", "model_output", "input_energy")


@dataclasses.dataclass(frozen=True)
class AllocationConfig:
  """Bit allocation across block matrices by one global knob (see :mod:`macjax.quantize.allocation`).

  Every matrix ``i`` (``n_i`` weights) is first quantized with the plain quantizer at ``quantize.step`` to
  measure ``d_i``, the distortion it adds on its own; equal slopes then give step multipliers
  ``c_i ∝ sqrt(n_i / d_i)`` (normalized so the total rate stays near where ``quantize.step`` puts it).

  Attributes:
    sensitivity: what ``d_i`` measures: ``none`` (no allocation: every matrix gets ``quantize.step``);
      ``weight`` (``‖W − Ŵ‖²``, plain weight MSE); ``layer_output`` (``tr(ΔW S ΔWᵀ)``, the layer's output MSE on
      calibration inputs; ``input_energy`` is an older name for it); ``model_output`` (measured at the model's
      output on calibration text: KL for causal LMs, 1 − cosine for encoders, see
      :mod:`macjax.calibrate.probe`), probed per role and per layer and combined (``probe_groups``).
    probe_groups: ``role_layer`` (one probe per role and one per layer, combined by :func:`~macjax.calibrate.
      probe.separable`) or ``role`` (per role only; a role's matrices share its per-weight sensitivity).
    probe_n_seq, probe_seq_len, probe_n_sentences: calibration text per probe (causal LMs: windows × tokens;
      encoders: passages).
    target_bits: if > 0, the base step is chosen (bisection on the codes' entropy) so that the block matrices' codes
      take this many bits/weight; ``quantize.step`` is then only the starting unit. Not combined with ``[fit]``.
  """

  sensitivity: str = "none"
  probe_groups: str = "role_layer"
  probe_n_seq: int = 8
  probe_seq_len: int = 256
  probe_n_sentences: int = 128
  target_bits: float = 0.0

  def __post_init__(self):
    _check(self.sensitivity in SENSITIVITIES, f"allocation.sensitivity = {self.sensitivity!r}; "
           f"expected one of {SENSITIVITIES}")
    _check(self.probe_groups in ("role_layer", "role"), f"allocation.probe_groups = {self.probe_groups!r}; "
           "expected 'role_layer' or 'role'")
    for k in ("probe_n_seq", "probe_seq_len", "probe_n_sentences"):
      _check(getattr(self, k) >= 1, f"allocation.{k} = {getattr(self, k)}; expected >= 1")
    _check(self.target_bits == 0 or 0.05 <= self.target_bits <= 16,
           f"allocation.target_bits = {self.target_bits}; expected 0 (off) or a rate in [0.05, 16] bits/weight")


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
  """Statistics of each layer's inputs on the calibration text (disjoint from the held-out text), computed when a
  stage needs them (GPTQ, activation PCA, channel scaling, rate–distortion rotations). 0 means the default size.

  Attributes:
    n_seq: calibration sequences (causal LMs).
    seq_len: tokens per sequence (causal LMs).
    n_sentences: calibration sentences (encoders).
    sequential: measure each layer's statistics on the outputs of the layers already compressed, one layer in
      memory at a time (:class:`~macjax.calibrate.SequentialCalibration`); false, or a stage that needs every
      layer's statistics before the first layer is encoded (layer-output allocation, role-shared or f_θ /
      allocation-fitted activation-aware transforms), runs the reference model once for all layers instead.
    offload: where sequential calibration keeps the hidden states carried between layers: ``"memory"`` (host
      RAM) or ``"disk"`` (``.npy`` files in a temporary folder under ``$TMPDIR``, one batch in memory at a time;
      the same numbers).
    hessian: GPTQ's Hessian: ``"inputs"`` (``XᵀX``, the layer-output error) or ``"fisher"`` (``Σ_t ‖g_t‖² x_t
      x_tᵀ``, each token weighted by the Fisher information of the model's next-token predictions at the matrix's
      output: the model-output KL's curvature for decoders, the sentence embedding's for encoders,
      :mod:`macjax.calibrate.fisher`; a forward + backward pass over the calibration text (``XᵀX`` is then measured
      only where something else reads it: experts, routers, activation-aware transforms), on the reference
      model, so the statistics are whole-model, not sequential, and the job does not stream: the pass holds every
      layer's inputs, output gradients and ``[in, in]`` sums at once: 6.4 GB peak on SmolLM2-135M against 3.6 GB
      for the default, README).
    tune_steps: Adam steps that refit each layer's kept float parameters (norm gains and biases, linear biases: the
      1-D tensors stored beside the codes, so the refit costs no bits) after its matrices are quantized, so that the
      layer with its decoded matrices, run on the compressed model's calibration hidden states, reproduces the
      reference layer's output on the reference hidden states (per-token relative squared error;
      :mod:`macjax.calibrate.tuning`): the diagonal part of the learned transform, absorbed into the norms, fitted
      to the layer's output. 0: off. Needs sequential calibration (it refits layer by layer as the layers are
      encoded, carrying the reference model's hidden states beside the compressed model's: twice the activations).
      The refit compares float32 values; with ``vectors.dtype`` float16 / bfloat16 they are rounded when stored.
      Measured (README): pays on MiniLM at low rates only; not in any preset.
    tune_lr: Adam's learning rate for ``tune_steps``.
  """

  n_seq: int = 0
  seq_len: int = 0
  n_sentences: int = 0
  sequential: bool = True
  offload: str = "memory"
  hessian: str = "inputs"
  tune_steps: int = 0
  tune_lr: float = 1e-3

  def __post_init__(self):
    for k in ("n_seq", "seq_len", "n_sentences"):
      _check(getattr(self, k) >= 0, f"calibration.{k} = {getattr(self, k)}; expected >= 0 (0: default)")
    _check(self.offload in ("memory", "disk"), f"calibration.offload = {self.offload!r}; expected 'memory' or 'disk'")
    _check(self.hessian in HESSIANS, f"calibration.hessian = {self.hessian!r}; expected one of {HESSIANS}")
    _check(0 <= self.tune_steps <= 100_000, f"calibration.tune_steps = {self.tune_steps}; expected 0 (off) to 100000")
    _check(math.isfinite(self.tune_lr) and 0 < self.tune_lr <= 1,
           f"calibration.tune_lr = {self.tune_lr}; expected 0 < tune_lr <= 1")

  def sizes(self) -> dict[str, int]:
    return {k: getattr(self, k) for k in ("n_seq", "seq_len", "n_sentences") if getattr(self, k)}


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """Model-quality evaluation after compression (0 means the evaluator's default size).

  Attributes:
    enabled: run the evaluation.
    n_seq: number of held-out sequences (causal LMs).
    seq_len: tokens per sequence (causal LMs).
    n_sentences: number of held-out sentences (encoders).
    other_domain: also score on text of a domain no recipe is calibrated on (the ``"prose"`` split of
      :mod:`macjax.evaluate.text`: encyclopedia prose, where calibration and the held-out text are plays), with the
      same sizes; the report shows both.
  """

  enabled: bool = True
  n_seq: int = 0
  seq_len: int = 0
  n_sentences: int = 0
  other_domain: bool = True

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


#: ``[transform_state] share`` values.
SHARE_MODES = ("none", "role")


@dataclasses.dataclass(frozen=True)
class TransformStateConfig:
  """Where the transform chain's fitted state lives (``[transform_state]``).

  Attributes:
    share: ``none``: one state per block matrix, fitted on that matrix and stored with it; ``role``: one state per
      role (family: q, k, v, o, gate, up, down), fitted once on the role's matrices pooled across layers and stored
      (and counted) once. Pooling stacks the layers' rows, ``W_pooled = [W_1; …; W_L]`` (so a weight-source
      input-side PCA sees ``Σ_l W_lᵀ W_l``) and merges their calibration statistics (count-weighted mean of the
      second moments, max of the absolute maxima), which only input-side transforms allow; needs a non-empty
      ``[[transform]]`` chain.
  """

  share: str = "none"

  def __post_init__(self):
    _check(self.share in SHARE_MODES, f"transform_state.share = {self.share!r}; expected one of {SHARE_MODES}")


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
  transform_state: TransformStateConfig = TransformStateConfig()
  fit: FitSection = FitSection()
  quantize: QuantizeConfig = QuantizeConfig()
  allocation: AllocationConfig = AllocationConfig()
  embeddings: EmbeddingsConfig = EmbeddingsConfig()
  vectors: VectorsConfig = VectorsConfig()
  coding: CodingConfig = CodingConfig()
  calibration: CalibrationConfig = CalibrationConfig()
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
    elif hint == tuple[str, ...]:
      if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config key {key} = {value!r}; expected a list of strings")
      kwargs[name] = tuple(value)
    elif hint == Options:
      if not isinstance(value, dict):
        raise ConfigError(f"config key {key} must be a table of options, got {type(value).__name__}")
      kwargs[name] = tuple(sorted(value.items()))
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
  components.check_chain_stats([(t.name, t.kwargs) for t in specs])
  return tuple(specs)


def from_dict(data: dict) -> PipelineConfig:
  """Builds a validated :class:`PipelineConfig` from nested dicts (missing keys take defaults)."""
  if not isinstance(data, dict):
    raise ConfigError(f"a config must be a table, got {type(data).__name__}")
  data = dict(data)
  specs = _transform_specs(data.pop("transform", []))
  cfg = dataclasses.replace(_build(PipelineConfig, data, ""), transform=specs)
  _check(cfg.calibration.hessian == "inputs" or cfg.quantize.gptq,
         f"calibration.hessian = {cfg.calibration.hessian!r} is GPTQ's Hessian; set quantize.gptq = true")
  _check(not (cfg.allocation.target_bits and cfg.fit.enabled),
         "allocation.target_bits with fit.enabled: the rate search does not model f_θ's residual steps; set one")
  _check(cfg.transform_state.share == "none" or cfg.transform,
         f"transform_state.share = {cfg.transform_state.share!r} with no [[transform]] chain: there is no state to "
         "share; add a transform or set share = \"none\"")
  return cfg


def to_dict(cfg: PipelineConfig) -> dict:
  """The config as nested dicts (JSON/TOML-ready); ``from_dict(to_dict(c)) == c``."""
  d = dataclasses.asdict(cfg)
  d["transform"] = [{"name": t.name, **t.kwargs} for t in cfg.transform]
  d["quantize"]["options"] = dict(cfg.quantize.options)
  d["fit"]["options"] = dict(cfg.fit.options)
  d["fit"]["roles"] = list(cfg.fit.roles)
  return d


#: Fields added after configs were first recorded (in manifests, resume fingerprints, rd sweep keys), with their
#: defaults: :func:`identity_dict` leaves them out while they hold that default, so records written before a field
#: existed still match the same config. Append new fields here.
LATE_FIELDS = {("quantize", "gptq_column_steps"): "none", ("evaluate", "other_domain"): True,
               ("calibration", "hessian"): "inputs", ("calibration", "tune_steps"): 0,
               ("calibration", "tune_lr"): 1e-3}


def identity_dict(cfg: PipelineConfig) -> dict:
  """:func:`to_dict` without the :data:`LATE_FIELDS` that hold their defaults: what identifies a config in records
  that must keep matching across releases (an rd point's key, a resumable job's fingerprint)."""
  d = to_dict(cfg)
  for (section, key), default in LATE_FIELDS.items():
    if d[section].get(key) == default:
      del d[section][key]
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


#: Named operating points (``macjax compress --config NAME``); each is spelled out in ``configs/NAME.toml``.
PRESETS: dict[str, dict] = {
    # Chosen by measurement on SmolLM2-135M (README "What the main job gives"): act-order GPTQ in front of the
    # uniform quantizer at 1/8 of each row's RMS, steps allocated across roles by their measured effect on the
    # model's output; about 5.1 bits/weight on the block matrices and 1/16 of the RMS on the embeddings.
    "default": {"quantize": {"step": 0.125, "gptq": True, "gptq_order": "descending"},
                "allocation": {"sensitivity": "model_output", "probe_groups": "role"}},
    # No calibration text needed: one step per row at 1/16 of its RMS, everything entropy coded.
    "plain": {},
}


def preset(name: str) -> PipelineConfig:
  """The named operating point (:data:`PRESETS`).

  Raises:
    ConfigError: an unknown name.
  """
  if name not in PRESETS:
    raise ConfigError(f"unknown config preset {name!r}; expected one of {sorted(PRESETS)} or a TOML file")
  return from_dict(PRESETS[name])


def load_or_preset(name_or_path: str) -> PipelineConfig:
  """A preset's config when ``name_or_path`` names one (and is not an existing file), else the TOML file's."""
  if name_or_path in PRESETS and not pathlib.Path(name_or_path).is_file():
    return preset(name_or_path)
  return load(name_or_path)


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
