"""Compress and decompress: the only module that knows the order of the stages.

Encoder, in this order:

1. **rewrite** (optional, ``[rewrite]``): a function-preserving model rewrite (LLaMA residual/value rotations).
2. **calibrate** (when a stage needs it): statistics of every block matrix's inputs on calibration text.
3. **transform** (``[[transform]]``): each block matrix ``W`` goes to ``W' = T(W)`` with a fitted state: its own
   (stored with it), or with ``[transform_state] share = "role"`` its role's, fitted once on the role's layers
   stacked by rows (input-side chains only) and stored once in a ``transform:{role}`` record.
4. **fit** (``[fit]``): per family (role) of block matrices across layers, ``W' = f_θ(α) + r``; θ is stored.
5. **quantize** (``[quantize]``, optionally GPTQ with the calibration Hessian): the residual ``r`` (or ``W'``) to
   integer codes + side information, with the steps ``W'`` itself would get.
6. **code** (``[coding]``): the codes, entropy coded with a stored probability model.

Other 2-D tensors (embeddings, LM head) are quantized and coded with ``[embeddings]``'s step, or kept as
float16/float32; 1-D tensors (norms, biases) are kept in ``[vectors]``'s dtype.

Every part needed to decode (coded words, probability tables, quantizer side information, transform states, θ,
kept tensors) goes through :class:`~macjax.artifact.Packer` into the artifact, and the tokenizer files beside it.
The manifest records per tensor its shape, treatment, coder header, the bits of each part, and the SHA-256 of the
encoder's reconstruction. The decoder runs the stages backwards from the parts alone (``Ŵ = T⁻¹(f_θ(α) + r̂)``)
and checks each tensor against that hash, so "decode is bit-identical to what the encoder reconstructed" is
verified on every decode, not assumed (on the encoder's backend; see the README for other backends).

Example:
  >>> compressed = compress(load_model("minilm-l6"), PipelineConfig())  # doctest: +SKIP
  >>> params = decompress(compressed.buckets, compressed.manifest)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import macjax
from macjax import artifact, coding, fit, transforms
from macjax.errors import ArtifactError, ConfigError, MacjaxError, NonFiniteError
from macjax.load.layout import MATRIX_ROLES, MatrixInfo, Model, ModelLayout
from macjax.pipeline import components
from macjax.pipeline.config import CodingConfig, PipelineConfig, from_dict, to_dict
from macjax.quantize.uniform import group_view


#: Manifest record groups that hold a state shared by several block matrices (θ of f_θ, a role's transform state),
#: not a tensor of the model: they have no ``shape``/``sha256`` and are not decoded as tensors.
STATE_GROUPS = ("fit", "transform")


@dataclasses.dataclass
class Compressed:
  """The output of :func:`compress`.

  Attributes:
    buckets: flat arrays to store (see :mod:`macjax.artifact.pack`).
    manifest: JSON-able description (config, layout, index, per-tensor headers and bit counts, hashes).
    assets: tokenizer files to store beside the buckets.
    reconstruction: the encoder's reconstruction of every tensor, HF names, float32.
    reference: the tensors that were compressed: the model's own, or the rewritten model's when a
      function-preserving rewrite ran first (weight errors are measured against these).
    timings: seconds spent per stage.
  """

  buckets: dict[str, np.ndarray]
  manifest: dict
  assets: dict[str, bytes]
  reconstruction: dict[str, np.ndarray]
  reference: dict[str, np.ndarray]
  timings: dict[str, float]


def tensor_digest(array: np.ndarray) -> str:
  """SHA-256 of a tensor's float32 bytes (C order): the bit-exactness witness stored in the manifest."""
  return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Components built once per config (and cached, so decoding many tensors compiles once per shape).


@dataclasses.dataclass(frozen=True)
class _Chain:
  """The per-matrix transform chain, jitted (one compile per matrix shape)."""

  t: transforms.WeightTransform
  specs: tuple

  @functools.cached_property
  def init(self):
    return jax.jit(lambda W, key, stats: self.t.init(W, key=key, stats=stats))

  @functools.cached_property
  def apply(self):
    return jax.jit(self.t.apply)

  @functools.cached_property
  def inverse(self):
    return jax.jit(self.t.inverse)

  def stats_for(self, input_stats) -> dict[str, Any] | None:
    """The ``stats`` mapping of the named chain for one matrix, from its :class:`InputStats` (or None)."""
    out = {}
    for i, spec in enumerate(self.specs):
      kind = components.stats_kind(spec.name, spec.kwargs)
      if kind is not None:
        out[f"{i}:{spec.name}"] = jnp.asarray(getattr(input_stats, kind), jnp.float32)
    return out or None

  def state_structure(self, shape: tuple[int, int]):
    d = shape[1]
    stats = {}
    for i, spec in enumerate(self.specs):
      kind = components.stats_kind(spec.name, spec.kwargs)
      if kind is not None:
        stats[f"{i}:{spec.name}"] = jax.ShapeDtypeStruct((d, d) if kind == "second_moment" else (d,), jnp.float32)
    return jax.eval_shape(self.init, jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct((2,), jnp.uint32),
                          stats or None)

  def input_side_only(self) -> bool:
    return all(s.kwargs.get("side", "input") == "input" for s in self.specs)


@functools.lru_cache(maxsize=8)
def _chain(specs: tuple) -> _Chain | None:
  t = components.build_chain([(s.name, s.kwargs) for s in specs])
  return None if t is None else _Chain(t, specs)


@dataclasses.dataclass(frozen=True)
class _Q:
  """A jitted quantizer and how to rebuild its meta's structure for a matrix shape."""

  quantize: Callable
  dequantize: Callable
  gptq: bool

  def meta_structure(self, shape: tuple[int, int]):
    W = jax.ShapeDtypeStruct(shape, jnp.float32)
    args = (W, jax.ShapeDtypeStruct((shape[1], shape[1]), jnp.float32)) if self.gptq else (W,)
    return jax.eval_shape(self.quantize, *args, 1.0)[1]


@functools.lru_cache(maxsize=32)
def _quantizer(method: str, step: float, group_size: int, options: tuple, gptq: tuple | None) -> _Q:
  q = components.build_quantizer(method, step, group_size, dict(options), gptq=dict(gptq) if gptq else None)
  return _Q(jax.jit(q.quantize), jax.jit(q.dequantize), gptq is not None)


def _block_quantizer(cfg: dict) -> _Q:
  q = cfg["quantize"]
  gptq = ((("block_size", q["gptq_block_size"]), ("damp", q["gptq_damp"]), ("order", q["gptq_order"]))
          if q["gptq"] else None)
  return _quantizer(q["method"], q["step"], q["group_size"], tuple(sorted(q["options"].items())), gptq)


def _embedding_quantizer(cfg: dict) -> _Q:
  q, e = cfg["quantize"], cfg["embeddings"]
  return _quantizer(q["method"], e["step"], e["group_size"], tuple(sorted(q["options"].items())), None)


@functools.lru_cache(maxsize=8)
def _fitter(options: tuple) -> fit.FunctionalFit:
  return fit.functional_fit(**dict(options))


def _family_fit_options(cfg: dict, shape: tuple[int, int, int]) -> dict[str, Any]:
  """A family's f_θ options: ``[fit.options]``, with the width chosen by ``fit.theta_bits_per_weight`` if set."""
  options = dict(cfg["fit"]["options"])
  budget = cfg["fit"]["theta_bits_per_weight"]
  if budget:
    options["width"] = fit.width_for_budget(int(budget * np.prod(shape)), shape, **options)
  return options


def _fit_roles(cfg: dict, layout: ModelLayout) -> list[str]:
  if not cfg["fit"]["enabled"]:
    return []
  wanted = cfg["fit"]["roles"] or list(MATRIX_ROLES)
  return [r for r in MATRIX_ROLES if r in wanted and layout.by_role(r)]


def _matrix_key(seed: int, index: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def _role_key(seed: int, role: str) -> jax.Array:
  """The key of a role's shared transform state (apart from the per-matrix keys and the fit's)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 20_000 + MATRIX_ROLES.index(role))


def pooled_stats(members: list) -> Any:
  """The :class:`~macjax.calibrate.InputStats` of the row-stacked inputs of several matrices: the count-weighted
  mean of the second moments (``Σ_l n_l S_l / Σ_l n_l``), the max of the absolute maxima, the sum of the counts."""
  from macjax.calibrate import InputStats  # pylint: disable=g-import-not-at-top
  counts = np.array([float(s.count) for s in members])
  weights = counts / counts.sum() if counts.sum() > 0 else np.full(len(members), 1.0 / len(members))
  second = sum(w * np.asarray(s.second_moment, np.float64) for w, s in zip(weights, members))
  absmax = np.max(np.stack([np.asarray(s.absmax, np.float32) for s in members]), axis=0)
  return InputStats(second.astype(np.float32), absmax, int(counts.sum()))


def _shared_state(chain: _Chain, model: Model, fam: tuple[MatrixInfo, ...], stats: dict | None, key: jax.Array):
  """One input-side chain state for a role: ``chain.init`` on the members' rows stacked, ``[W_1; …; W_L]``, with
  their pooled calibration statistics."""
  pooled = jnp.concatenate([jnp.asarray(model.params[m.name], jnp.float32) for m in fam], axis=0)
  needs = stats is not None and any(components.stats_kind(t.name, t.kwargs) for t in chain.specs)
  s = chain.stats_for(pooled_stats([stats[m.name] for m in fam])) if needs else None
  try:
    return chain.init(pooled, key, s)
  except MacjaxError as e:
    raise type(e)(f"shared transform of role '{fam[0].role}' ({len(fam)} matrices): {e}") from e


@jax.jit
def _all_finite(x):
  return jnp.all(jnp.isfinite(x))


def _check_finite(name: str, a: np.ndarray) -> None:
  if not bool(_all_finite(a)):
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    raise NonFiniteError(f"tensor {name} (shape {a.shape}) has {bad} NaN/inf values; expected finite weights")


@functools.partial(jax.jit, static_argnames=("group_size",))
def _residual_step_scale(W: jax.Array, R: jax.Array, group_size: int | None) -> jax.Array:
  """Per-group ``RMS(W) / RMS(R)``: multiplies a quantizer's steps on the residual ``R`` so that they are the steps
  ``W`` itself would get (equal distortion; the fit's gain shows up as rate)."""
  rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(group_view(x, group_size)), axis=-1))
  return rms(W) / jnp.maximum(rms(R), 1e-30)


def _fit_code_bits_saved(cfg: dict, stack: jax.Array, pred: jax.Array) -> float:
  """Entropy of a family's codes without f_θ minus with it, at the same steps (what the fit buys in code bits)."""
  from macjax.quantize.allocation import empirical_bits  # pylint: disable=g-import-not-at-top
  q = cfg["quantize"]
  plain = _quantizer(q["method"], q["step"], q["group_size"], tuple(sorted(q["options"].items())), None)
  saved = 0.0
  for W, P in zip(stack, pred):
    saved += empirical_bits(plain.quantize(W, 1.0)[0])
    saved -= empirical_bits(plain.quantize(W - P, _step_scale_for(cfg, W, W - P))[0])
  return float(saved)


def _step_scale_for(cfg: dict, W: jax.Array, R: jax.Array):
  q = cfg["quantize"]
  scope = q["options"].get("scope", "row")
  if scope == "row":
    return _residual_step_scale(W, R, q["group_size"] or None)
  if scope == "matrix":
    return jnp.sqrt(jnp.mean(W**2)) / jnp.maximum(jnp.sqrt(jnp.mean(R**2)), 1e-30)
  return 1.0  # absolute steps do not depend on the input


# ---------------------------------------------------------------------------------------------------------------
# Encoding pieces.


def _compact(a: np.ndarray) -> np.ndarray:
  """float32 → float16 when that is lossless (quantizer steps are float16-representable by construction)."""
  if a.dtype == np.float32 and np.array_equal(a.astype(np.float16).astype(np.float32), a):
    return a.astype(np.float16)
  return a


def _pack_leaves(packer: artifact.Packer, tensor: str, prefix: str, kind: str, tree) -> int:
  leaves = [_compact(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)]
  for i, leaf in enumerate(leaves):
    packer.add(tensor, f"{prefix}.{i}", kind, leaf)
  return int(sum(leaf.nbytes for leaf in leaves) * 8)


def _unpack_leaves(parts: dict[str, np.ndarray], prefix: str, structure):
  n = len(jax.tree_util.tree_leaves(structure))
  leaves = []
  for i, s in enumerate(jax.tree_util.tree_leaves(structure)):
    a = parts.get(f"{prefix}.{i}")
    if a is not None and a.dtype == np.float16 and s.dtype == np.float32:
      a = a.astype(np.float32)  # stored compactly by _compact, exactly
    if a is None or a.shape != s.shape or a.dtype != s.dtype:
      raise ArtifactError(f"artifact: {prefix} leaf {i} of {n} is missing or is not {s.shape} {s.dtype}")
    leaves.append(jnp.asarray(a))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(structure), leaves)


def _code(name: str, codes: np.ndarray, meta, cfg: CodingConfig, packer: artifact.Packer) -> dict:
  coded = coding.encode(codes, model=cfg.model, classes=cfg.class_grid() if codes.ndim >= 1 else None)
  packer.add(name, "words", "codes", coded.words)
  packer.add(name, "table", "tables", coded.table)
  return {
      "coder": coded.header,
      "bits": {"codes": int(coded.words.nbytes * 8), "tables": int(coded.table.nbytes * 8),
               "scales": _pack_leaves(packer, name, "meta", "scales", meta)},
      "information_bits": float(coding.information_bits(codes, coded)),
  }


def _encode_raw(name: str, a: np.ndarray, dtype: str, packer: artifact.Packer) -> tuple[np.ndarray, dict]:
  stored = a.astype(dtype)
  packer.add(name, "raw", "raw", stored)
  return stored.astype(np.float32), {"bits": {"raw": int(stored.nbytes * 8)}}


def rewrite_model(model: Model, config: PipelineConfig) -> tuple[Model, dict]:
  """Applies the config's function-preserving model rewrite (LLaMA: fold norms, rotate the residual stream and value
  heads); returns the rewritten model and a record of what it cost (e.g. untied LM-head weights).

  Raises:
    ConfigError: the model's family has no such rewrite, or a tied model would need ``rewrite.untie``.
  """
  if model.layout.family != "llama":
    raise ConfigError(f"rewrite: the computational-invariance rewrite is implemented for the LLaMA family; "
                      f"{model.source} is {model.layout.family} (BERT's post-LayerNorm blocks re-normalize the "
                      "residual stream after each sub-layer, so a residual rotation cannot be absorbed)")
  rw = transforms.rotate_llama(model.params, model.layout.config, key=jax.random.PRNGKey(config.seed),
                               residual=config.rewrite.residual, head_rotation=config.rewrite.head_rotation,
                               untie=config.rewrite.untie)
  layout = dataclasses.replace(model.layout, config=dict(rw.config))
  rewritten = dataclasses.replace(model, params=dict(rw.params), layout=layout)
  return rewritten, {"residual": rw.residual, "head_rotation": rw.head_rotation, "untied": rw.untied,
                     "extra_params": int(rw.extra_params)}


def layout_from_json(d: dict) -> ModelLayout:
  """The model layout recorded in an artifact's manifest."""
  try:
    return ModelLayout.from_json(d)
  except ValueError as e:
    raise ArtifactError(f"artifact manifest: {e}") from e


def needs_calibration(config: PipelineConfig) -> bool:
  """Whether some stage of ``config`` reads calibration statistics (GPTQ, layer-output allocation, a transform
  fitted to input activations); :func:`compress` computes them only then."""
  return bool(config.quantize.gptq or config.allocation.sensitivity in ("layer_output", "input_energy")
              or any(components.needs_stats(t.name, t.kwargs) for t in config.transform))


def _unit_distortions(config: PipelineConfig, model: Model, targets: dict[str, jax.Array],
                      reconstruct: Callable[[str, jax.Array], jax.Array], stats, say) -> tuple[dict, dict]:
  """``d_i``: the distortion matrix ``i`` adds on its own when quantized plainly at ``quantize.step`` (see
  :class:`~macjax.pipeline.config.AllocationConfig`), and what to record about how it was measured."""
  from macjax import calibrate  # pylint: disable=g-import-not-at-top
  q = to_dict(config)["quantize"]
  plain = _quantizer(q["method"], q["step"], q["group_size"], tuple(sorted(q["options"].items())), None)
  kind = {"input_energy": "layer_output"}.get(config.allocation.sensitivity, config.allocation.sensitivity)
  d, record = {}, {"sensitivity": kind}
  probes = {}
  for name, target in targets.items():
    T_hat = plain.dequantize(*plain.quantize(target))
    if kind == "weight":
      d[name] = float(jnp.sum(jnp.square(target - T_hat)))
    else:
      probes[name] = np.asarray(reconstruct(name, T_hat), np.float32)
      if kind == "layer_output":
        d[name] = calibrate.output_energy(stats[name], np.asarray(model.params[name], np.float32) - probes[name])
  if kind == "model_output":
    from macjax.calibrate import probe  # pylint: disable=g-import-not-at-top
    from macjax.evaluate import Evaluator  # pylint: disable=g-import-not-at-top
    a = config.allocation
    ev = Evaluator(model, split="calibration", n_seq=a.probe_n_seq, seq_len=a.probe_seq_len,
                   n_sentences=a.probe_n_sentences)
    members = {m.name: (m.role, m.layer) for m in model.layout.matrices if m.name in targets}
    roles = {r: [n for n, (rr, _) in members.items() if rr == r] for r in sorted({r for r, _ in members.values()})}
    say(f"  probe {len(roles)} roles at the model output on calibration text")
    by_role = probe.output_distortion(ev, model.params, probes, roles)
    record["probe_by_role"] = by_role
    if a.probe_groups == "role_layer":
      layers = {l: [n for n, (_, ll) in members.items() if ll == l] for l in sorted({l for _, l in members.values()})}
      say(f"  probe {len(layers)} layers at the model output on calibration text")
      by_layer = probe.output_distortion(ev, model.params, probes, layers)
      record["probe_by_layer"] = {str(l): v for l, v in by_layer.items()}
      d = probe.separable(by_role, by_layer, members)
    else:  # a role's matrices share its per-weight sensitivity
      d = probe.by_size(by_role, roles, {n: int(targets[n].size) for n in members})
  return d, record


def _allocate(config: PipelineConfig, cfg: dict, model: Model, targets: dict[str, jax.Array],
              reconstruct: Callable[[str, jax.Array], jax.Array], stats, say) -> tuple[dict[str, float], dict]:
  """Per-matrix step multipliers from ``[allocation]`` (1 for every matrix when it is off)."""
  from macjax.quantize import allocation  # pylint: disable=g-import-not-at-top
  scales = {n: 1.0 for n in targets}
  record: dict[str, Any] = {}
  sizes = {n: int(t.size) for n, t in targets.items()}
  if config.allocation.sensitivity != "none":
    d, record = _unit_distortions(config, model, targets, reconstruct, stats, say)
    floor = 1e-6 * max(max(d.values()), 1e-30)  # a matrix quantized exactly (all zeros) is not infinitely cheap
    sens = {n: max(v, floor) / sizes[n] for n, v in d.items()}
    scales = allocation.equal_slope_scales(sens, sizes)
    record["unit_distortion"] = d
  if config.allocation.target_bits:
    q = cfg["quantize"]
    plain = components.build_quantizer(q["method"], q["step"], q["group_size"], dict(q["options"]))
    base = allocation.base_step_for_rate(plain, {n: np.asarray(t) for n, t in targets.items()},
                                         config.allocation.target_bits, scales)
    scales = {n: base * c for n, c in scales.items()}
    record["base_step_scale"] = base
  record["step_scales"] = scales
  return scales, record


def calibration_stats(model: Model, config: PipelineConfig) -> dict:
  """The calibration statistics :func:`compress` computes for ``config`` (pass them back as its ``stats`` to share
  one calibration pass across configs with the same ``[calibration]``; with ``[rewrite]`` on, ``model`` must be
  the rewritten model)."""
  from macjax import calibrate  # pylint: disable=g-import-not-at-top
  return calibrate.input_statistics(model, **config.calibration.sizes())


def compress(model: Model, config: PipelineConfig, *, stats: dict | None = None,
             progress: Callable[[str], None] | None = None) -> Compressed:
  """Encodes every tensor of ``model`` under ``config`` (stages in the module docstring's order).

  Args:
    model: the loaded model.
    config: the pipeline config.
    stats: precomputed calibration statistics (:func:`macjax.calibrate.input_statistics` of ``model``, or of the
      rewritten model when ``[rewrite]`` is on), to reuse one calibration pass across many configs; computed here
      when a stage needs them and this is None.
    progress: called with a short line per stage (for the CLI).

  Returns:
    A :class:`Compressed` with the buckets and manifest to save and the encoder's reconstruction.

  Raises:
    NonFiniteError: a tensor holds NaN or inf.
    ConfigError: a stage cannot run on this model with this config (named in the message).
  """
  say = progress or (lambda _: None)
  timings: dict[str, float] = {}
  cfg = to_dict(config)
  t0 = time.perf_counter()
  for name, a in model.params.items():
    _check_finite(name, a)
  timings["validate"] = time.perf_counter() - t0

  rewrite_record = None
  if config.rewrite.active:
    t0 = time.perf_counter()
    say(f"rewrite: residual rotation {config.rewrite.residual}, head rotation {config.rewrite.head_rotation}")
    model, rewrite_record = rewrite_model(model, config)
    timings["rewrite"] = time.perf_counter() - t0

  chain = _chain(config.transform)
  if config.quantize.gptq and chain is not None and not chain.input_side_only():
    raise ConfigError("quantize.gptq with a transform acting on the output side: GPTQ's Hessian lives in the input "
                      "coordinates; use input-side transforms (side = \"input\") with GPTQ")
  if stats is not None:
    missing = sorted({m.name for m in model.layout.matrices} - set(stats))
    if missing:
      raise ConfigError(f"compress: stats has no entry for {len(missing)} block matrices, e.g. {missing[0]}")
  elif needs_calibration(config):
    t0 = time.perf_counter()
    say("calibrate: input statistics of every block matrix on calibration text")
    stats = calibration_stats(model, config)
    timings["calibrate"] = time.perf_counter() - t0

  mats = list(model.layout.matrices)
  packer = artifact.Packer()
  records: dict[str, dict] = {}
  recon: dict[str, np.ndarray] = {}

  # 3. transform each block matrix (with a state of its own, or its role's shared state).
  t0 = time.perf_counter()
  coords: dict[str, jax.Array] = {}
  states: dict[str, Any] = {}
  shared = config.transform_state.share == "role"
  if shared:
    if not chain.input_side_only():
      raise ConfigError("transform_state.share = \"role\" with a transform acting on the output side: sharing pools "
                        "a role's layers by stacking their rows, which only input-side transforms (side = "
                        "\"input\") allow; use input-side members or share = \"none\"")
    for role in MATRIX_ROLES:
      fam = model.layout.by_role(role)
      if not fam:
        continue
      say(f"transform: one state for the {len(fam)} '{role}' matrices")
      state = _shared_state(chain, model, fam, stats, _role_key(config.seed, role))
      records[f"transform:{role}"] = {
          "group": "transform", "role": role, "members": [m.name for m in fam],
          "pooled_shape": [int(sum(model.params[m.name].shape[0] for m in fam)), int(fam[0].shape[1])],
          "bits": {"transform": _pack_leaves(packer, f"transform:{role}", "transform", "transform", state)}}
      for m in fam:
        states[m.name] = state
  for i, m in enumerate(mats):
    W = jnp.asarray(model.params[m.name], jnp.float32)
    rec = {"group": "block", "role": m.role, "layer": m.layer, "treatment": "quantize", "bits": {}}
    if chain is not None:
      if shared:
        rec["transform_shared"] = m.role
      else:
        s = chain.stats_for(stats[m.name]) if stats is not None else None
        try:
          states[m.name] = chain.init(W, _matrix_key(config.seed, i), s)
        except MacjaxError as e:
          raise type(e)(f"transform of {m.name}: {e}") from e
        rec["bits"]["transform"] = _pack_leaves(packer, m.name, "transform", "transform", states[m.name])
      W = chain.apply(W, states[m.name])
    coords[m.name] = W
    records[m.name] = rec
  if chain is not None:
    timings["transform"] = time.perf_counter() - t0

  # 4. fit f_θ per family, in the transformed coordinates.
  predictions: dict[str, jax.Array] = {}
  fit_decisions: dict[str, dict] = {}
  fit_roles = _fit_roles(cfg, model.layout)
  if fit_roles:
    t0 = time.perf_counter()
    for r_idx, role in enumerate(fit_roles):
      fam = model.layout.by_role(role)
      stack = jnp.stack([coords[m.name] for m in fam])
      options = _family_fit_options(cfg, tuple(stack.shape))
      ff = _fitter(tuple(sorted(options.items())))
      say(f"fit f_θ (width {ff.config.width}) for {len(fam)} '{role}' matrices {tuple(stack.shape)}")
      progress_cb = lambda p, role=role: say(f"  f_θ '{role}' step {p.step}/{p.steps}: unexplained energy "
                                            f"{float(np.mean(p.loss)):.4f}")
      theta = ff.fit(stack, key=jax.random.fold_in(jax.random.PRNGKey(config.seed), 10_000 + r_idx),
                     callback=progress_cb)
      pred = ff.predict(theta, tuple(stack.shape))
      energy = fit.explained_energy(stack, pred)
      arrays = fit.to_numpy(theta)
      theta_bits = int(sum(a.nbytes for a in arrays.values()) * 8)
      saved = _fit_code_bits_saved(cfg, stack, pred)
      fit_decisions[role] = {"explained_energy": float(energy.total), "theta_bits": theta_bits,
                             "code_bits_saved": saved, "kept": saved > theta_bits or cfg["fit"]["keep"] == "always"}
      if not fit_decisions[role]["kept"]:
        say(f"  f_θ '{role}' dropped: saves {saved:,.0f} code bits, costs {theta_bits:,} θ bits")
        continue
      for k, a in sorted(arrays.items()):
        packer.add(f"fit:{role}", f"theta.{k}", "theta", a)
      records[f"fit:{role}"] = {
          "group": "fit", "role": role, "shape": list(stack.shape), "theta_keys": sorted(arrays),
          "options": options,
          "bits": {"theta": int(sum(a.nbytes for a in arrays.values()) * 8)},
          "explained_energy": float(energy.total),
          "explained_energy_per_layer": [float(x) for x in np.asarray(energy.per_layer)],
      }
      for li, m in enumerate(fam):
        predictions[m.name] = pred[li]
        records[m.name]["fit"] = role
    timings["fit"] = time.perf_counter() - t0

  # 5–6. quantize (the residual) and entropy code.
  t0 = time.perf_counter()
  targets = {m.name: coords[m.name] - predictions[m.name] if m.name in predictions else coords[m.name] for m in mats}
  allocation_record = None
  if config.allocation.sensitivity != "none" or config.allocation.target_bits:
    say("allocate: per-matrix step multipliers" + (f" for {config.allocation.target_bits} bits/weight"
                                                   if config.allocation.target_bits else ""))

    def reconstruct(name: str, T_hat: jax.Array) -> jax.Array:  # quantized target -> model coordinates
      W_hat = predictions[name] + T_hat if name in predictions else T_hat
      return chain.inverse(W_hat, states[name]) if chain is not None else W_hat

    t_alloc = time.perf_counter()
    alloc, allocation_record = _allocate(config, cfg, model, targets, reconstruct, stats, say)
    timings["allocate"] = time.perf_counter() - t_alloc
    t0 += timings["allocate"]  # quantize+code is timed without it
  else:
    alloc = {m.name: 1.0 for m in mats}
  say(f"quantize + entropy-code {len(mats)} block matrices")
  qb = _block_quantizer(cfg)
  for m in mats:
    W2 = coords[m.name]
    target = targets[m.name]
    scale = _step_scale_for(cfg, W2, target) if m.name in predictions else 1.0
    scale = scale * jnp.float32(alloc[m.name])
    records[m.name]["step_scale"] = float(alloc[m.name])
    if qb.gptq:
      H = jnp.asarray(stats[m.name].second_moment, jnp.float32)
      if chain is not None:  # the Hessian in the transformed input coordinates: A⁻¹ H A⁻ᵀ
        A_inv = chain.inverse(jnp.eye(W2.shape[1], dtype=jnp.float32), states[m.name])
        H = A_inv @ H @ A_inv.T
      codes, meta = qb.quantize(target, H, scale)
    else:
      codes, meta = qb.quantize(target, scale)
    W_hat = qb.dequantize(codes, meta)
    if m.name in predictions:
      W_hat = predictions[m.name] + W_hat
    if chain is not None:
      W_hat = chain.inverse(W_hat, states[m.name])
    rec = records[m.name]
    coded = _code(m.name, np.asarray(codes, np.int32), meta, config.coding, packer)
    rec["bits"].update(coded.pop("bits"))
    rec.update(coded)
    recon[m.name] = np.asarray(W_hat, np.float32)

  # Everything else: embeddings / LM head, norms, biases.
  qe = _embedding_quantizer(cfg)
  for name in sorted(set(model.params) - {m.name for m in mats}):
    a = model.params[name]
    if a.ndim == 2 and config.embeddings.treatment == "quantize":
      codes, meta = qe.quantize(jnp.asarray(a, jnp.float32), 1.0)
      W_hat = np.asarray(qe.dequantize(codes, meta), np.float32)
      rec = {"group": "other", "treatment": "quantize"}
      rec.update(_code(name, np.asarray(codes, np.int32), meta, config.coding, packer))
    elif a.ndim == 2:
      W_hat, rec = _encode_raw(name, a, config.embeddings.treatment, packer)
      rec.update(group="other", treatment=config.embeddings.treatment)
    else:
      W_hat, rec = _encode_raw(name, a, config.vectors.dtype, packer)
      rec.update(group="vector", treatment=config.vectors.dtype)
    records[name] = rec
    recon[name] = W_hat.reshape(a.shape)
  timings["quantize+code"] = time.perf_counter() - t0

  for name, rec in records.items():
    if rec["group"] not in STATE_GROUPS:
      rec["shape"] = list(model.params[name].shape)
      rec["sha256"] = tensor_digest(recon[name])
  buckets, index = packer.finish()
  manifest = {
      "macjax_version": macjax.__version__,
      "source": model.source,
      "config": cfg,
      "layout": model.layout.to_json(),
      "tensors": records,
      "index": index,
      "rewrite": rewrite_record,
      "allocation": allocation_record,
      "fit_decisions": fit_decisions or None,
  }
  return Compressed(buckets=buckets, manifest=manifest, assets=dict(model.tokenizer_files), reconstruction=recon,
                    reference=model.params, timings=timings)


def decompress(buckets: dict[str, np.ndarray], manifest: dict, *, verify: bool = True) -> dict[str, np.ndarray]:
  """Decodes every tensor from an artifact's buckets and manifest: ``Ŵ = T⁻¹(f_θ(α) + r̂)`` for block matrices.

  Args:
    buckets, manifest: as returned by :func:`macjax.artifact.load` (or held in a :class:`Compressed`).
    verify: compare each decoded tensor's SHA-256 with the encoder's (raises on any difference).

  Returns:
    ``{HF name: float32 array}``, bit-identical to the encoder's reconstruction.

  Raises:
    ArtifactError: a part is missing or malformed, or a decoded tensor differs from the encoder's reconstruction.
  """
  parts = artifact.unpack(buckets, manifest["index"])
  try:
    config = from_dict(manifest["config"])
  except (ConfigError, KeyError, TypeError) as e:
    raise ArtifactError(f"artifact manifest: its config is not valid for this macjax ({e})") from e
  cfg = to_dict(config)
  chain = _chain(config.transform)
  qb, qe = _block_quantizer(cfg), _embedding_quantizer(cfg)
  tensors = manifest["tensors"]

  shared_states: dict[str, Any] = {}
  for tname, rec in tensors.items():
    if rec.get("group") != "transform":
      continue
    try:
      if chain is None:
        raise ValueError("the config has no [[transform]] chain")
      shape = tuple(int(s) for s in rec["pooled_shape"])
      shared_states[rec["role"]] = _unpack_leaves(parts.get(tname, {}), "transform", chain.state_structure(shape))
    except (KeyError, ValueError, TypeError, MacjaxError) as e:
      raise ArtifactError(f"artifact: the shared transform state {tname} cannot be restored "
                          f"({type(e).__name__}: {e})") from e

  predictions: dict[str, jax.Array] = {}
  for fname, rec in tensors.items():
    if rec.get("group") != "fit":
      continue
    try:
      ff = _fitter(tuple(sorted(rec["options"].items())))
      arrays = {k: parts[fname][f"theta.{k}"] for k in rec["theta_keys"]}
      shape = tuple(int(s) for s in rec["shape"])
      theta = fit.from_numpy(arrays, ff.config, shape)
    except (KeyError, ValueError, TypeError, MacjaxError) as e:
      raise ArtifactError(f"artifact: θ of {fname} cannot be restored ({type(e).__name__}: {e})") from e
    pred = ff.predict(theta, shape)
    members = sorted((r["layer"], n) for n, r in tensors.items() if r.get("fit") == rec["role"])
    for li, (_, n) in enumerate(members):
      predictions[n] = pred[li]

  out: dict[str, np.ndarray] = {}
  for name, rec in tensors.items():
    if rec.get("group") in STATE_GROUPS:
      continue
    p = parts.get(name)
    if p is None:
      raise ArtifactError(f"artifact: tensor {name} has no stored parts")
    shape = tuple(rec["shape"])
    try:
      if rec["treatment"] == "quantize":
        q = qb if rec["group"] == "block" else qe
        codes = coding.decode(coding.CodedTensor(words=p["words"], table=p["table"], header=rec["coder"]))
        meta = _unpack_leaves(p, "meta", q.meta_structure(shape))
        W = q.dequantize(jnp.asarray(codes), meta)
        if name in predictions:
          W = predictions[name] + W
        if rec["group"] == "block" and chain is not None:
          if "transform_shared" in rec:
            state = shared_states.get(rec["transform_shared"])
            if state is None:
              raise ArtifactError(f"artifact: tensor {name} uses the shared transform state "
                                  f"transform:{rec['transform_shared']}, which the artifact does not hold")
          else:
            state = _unpack_leaves(p, "transform", chain.state_structure(shape))
          W = chain.inverse(W, state)
        W = np.asarray(W, dtype=np.float32)
      else:
        W = p["raw"].astype(np.float32)
    except (KeyError, ValueError, TypeError) as e:
      raise ArtifactError(f"artifact: tensor {name} cannot be decoded ({type(e).__name__}: {e})") from e
    if W.shape != shape:
      raise ArtifactError(f"artifact: tensor {name} decoded to shape {W.shape}, manifest says {shape}")
    if verify and tensor_digest(W) != rec["sha256"]:
      raise ArtifactError(
          f"artifact: decoded tensor {name} differs from the encoder's reconstruction (SHA-256 mismatch); the "
          "artifact is damaged, or it was decoded on a backend whose arithmetic differs from the encoder's")
    out[name] = W
  return out
