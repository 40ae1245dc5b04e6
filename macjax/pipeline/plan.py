"""What must be known about the whole model before its tensors are encoded one layer at a time.

A config whose stages are all per-matrix (the default: quantize + code; per-matrix transforms) needs nothing here
and streams. These stages look across matrices and so need a pass over the model first:

* **rewrite** (``[rewrite]``): a function-preserving model rewrite (LLaMA residual/value rotations);
* **calibrate** (GPTQ, activation-aware transforms, layer-output allocation): input statistics of every matrix;
* **shared transform states** (``[transform_state] share = "role"``): one state per role, fitted on the role's
  layers stacked by rows, stored once in a ``transform:{role}`` record;
* **f_θ** (``[fit]``): per family (role) across layers, ``W' = f_θ(α) + r``; θ stored in a ``fit:{role}`` record;
* **allocation** (``[allocation]``): per-matrix step multipliers from a measured distortion or a target rate.

:func:`make_plan` runs those that the config asks for and returns a :class:`Plan`: the per-matrix facts
(:meth:`Plan.context`) the stages of :mod:`macjax.pipeline.stages` read, plus the records and parts of the shared
states. The plan holds what these stages hold by nature (a role's stack for f_θ, every matrix's probe for the
allocation), which is why those configs need memory in proportion to the model while the default config does not.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import zlib
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from macjax import fit, transforms
from macjax.errors import ConfigError, MacjaxError
from macjax.load.layout import MATRIX_ROLES, MatrixInfo, Model
from macjax.pipeline import components
from macjax.pipeline.config import PipelineConfig, to_dict
from macjax.pipeline.stages import (MatrixContext, Parts, TransformChain, leaves_parts, quantizer, residual_step_scale,
                                    transform_chain)

#: Manifest record groups that hold a state shared by several block matrices (θ of f_θ, a role's transform state),
#: not a tensor of the model: they have no ``shape``/``sha256`` and are not decoded as tensors.
STATE_GROUPS = ("fit", "transform")


@dataclasses.dataclass
class Plan:
  """The whole-model facts for one compression (see the module docstring).

  Attributes:
    model: the model to encode (the rewritten one when ``[rewrite]`` ran).
    stats: calibration statistics per block matrix, or None.
    states: per-matrix transform states fitted ahead (shared by a role, or fitted for f_θ / the allocation).
    shared_families: block matrix -> its family (:meth:`~macjax.load.layout.ModelLayout.families`) when the
      family shares one transform state (stored once in ``transform:{family}``).
    predictions: ``f_θ(α)`` per block matrix (families whose fit was kept).
    fit_roles: block matrix -> the family of its kept fit (``fit:{family}``).
    step_scales: per block matrix step multiplier (allocation), 1 when off.
    records: manifest records of the shared states (``transform:{role}``, ``fit:{role}``).
    parts: their parts, ``{record name: parts}``.
    rewrite, allocation, fit_decisions: what the manifest says about those stages (None when off).
    timings: seconds per stage.
    gptq: whether the quantizer takes the calibration Hessian (then the contexts carry it).
    sequential: a :class:`~macjax.calibrate.SequentialCalibration` when the statistics are measured layer by layer
      during encoding (then ``stats`` holds the current layer's), else None.
    calibration: ``"sequential"``, ``"whole_model"`` or None (no calibration), for the manifest.
    hessians: GPTQ's Hessian per block matrix where it is not ``XᵀX`` (``calibration.hessian = "fisher"``: the
      output-weighted ones of :func:`macjax.calibrate.fisher.fisher_hessians`); the others take the second moment
      ``S = XᵀX / n`` from ``stats`` (GPTQ is invariant to the Hessian's scale).
    tuning: per layer refit in this run (``calibration.tune_steps``), the relative output error ``before`` and
      ``after`` the refit of its vectors.
  """

  model: Model
  stats: dict | None = None
  states: dict[str, Any] = dataclasses.field(default_factory=dict)
  shared_families: dict[str, str] = dataclasses.field(default_factory=dict)
  predictions: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
  fit_roles: dict[str, str] = dataclasses.field(default_factory=dict)
  step_scales: dict[str, float] = dataclasses.field(default_factory=dict)
  records: dict[str, dict] = dataclasses.field(default_factory=dict)
  parts: dict[str, Parts] = dataclasses.field(default_factory=dict)
  rewrite: dict | None = None
  allocation: dict | None = None
  fit_decisions: dict | None = None
  timings: dict[str, float] = dataclasses.field(default_factory=dict)
  gptq: bool = False
  sequential: Any = None
  calibration: str | None = None
  hessians: dict[str, Any] = dataclasses.field(default_factory=dict)
  tuning: dict[str, dict] = dataclasses.field(default_factory=dict)

  def context(self, info: MatrixInfo, index: int, seed: int, device=None) -> MatrixContext:
    """The :class:`MatrixContext` of block matrix ``info`` (``index``: its position in the layout)."""
    stats = self.stats.get(info.name) if self.stats is not None else None
    hessian = None
    if self.gptq and info.name in self.hessians:
      hessian = jax.device_put(jnp.asarray(self.hessians[info.name], jnp.float32), device)
    elif stats is not None and self.gptq:
      hessian = jax.device_put(jnp.asarray(stats.second_moment, jnp.float32), device)
    return MatrixContext(
        name=info.name, shape=tuple(info.shape), role=info.role, key=matrix_key(seed, index), stats=stats,
        hessian=hessian, transform_state=self.states.get(info.name),
        transform_shared=self.shared_families.get(info.name),
        prediction=self.predictions.get(info.name), fit_role=self.fit_roles.get(info.name),
        step_scale=jnp.float32(self.step_scales.get(info.name, 1.0)), device=device)


def matrix_key(seed: int, index: int) -> jax.Array:
  """The PRNG key of the ``index``-th block matrix."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def role_key(seed: int, family: str) -> jax.Array:
  """The key of a family's shared transform state (apart from the per-matrix keys and the fit's): by role for the
  families named by a role, by a hash of the name for the others (``"gate.experts"`` ...)."""
  index = MATRIX_ROLES.index(family) if family in MATRIX_ROLES else 30_000 + zlib.crc32(family.encode()) % 1_000_000
  return jax.random.fold_in(jax.random.PRNGKey(seed), 20_000 + index)


def fit_key(seed: int, role_index: int) -> jax.Array:
  """The key of the ``role_index``-th fitted family's f_θ."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 10_000 + role_index)


def needs_calibration(config: PipelineConfig) -> bool:
  """Whether some stage of ``config`` reads calibration statistics (GPTQ, layer-output allocation, a transform
  fitted to input activations); :func:`make_plan` computes them only then."""
  return bool(config.quantize.gptq or config.allocation.sensitivity in ("layer_output", "input_energy")
              or any(components.needs_stats(t.name, t.kwargs) for t in config.transform))


def calibrates_sequentially(config: PipelineConfig) -> bool:
  """Whether ``config``'s statistics are measured layer by layer during encoding: it asks for calibration, allows
  it (``calibration.sequential``), and every consumer reads one matrix's statistics when that matrix is encoded
  (GPTQ, per-matrix activation-aware transforms), and GPTQ takes the plain ``XᵀX`` (the Fisher-weighted Hessians
  come from one pass over the reference model)."""
  chain = transform_chain(config.transform)
  allocating = config.allocation.sensitivity != "none" or bool(config.allocation.target_bits)
  if not (needs_calibration(config) and config.calibration.sequential) or config.allocation.sensitivity in (
      "layer_output", "input_energy") or config.calibration.hessian != "inputs":
    return False
  ahead = config.transform_state.share == "role" or config.fit.enabled or allocating  # states fitted before encoding
  return not (chain is not None and chain.needs_stats() and ahead)


def check_tuning(config: PipelineConfig, stats: dict | None = None) -> None:
  """Raises :class:`ConfigError` when ``calibration.tune_steps`` is set but nothing calibrates sequentially."""
  if config.calibration.tune_steps and (stats is not None or not calibrates_sequentially(config)):
    raise ConfigError("calibration.tune_steps refits each layer's vectors as the layers are encoded, on the hidden "
                      "states sequential calibration carries; this config does not calibrate sequentially (it needs "
                      "calibration.sequential = true, a calibrated quantizer such as GPTQ, calibration.hessian = "
                      "\"inputs\", and no stage that needs every layer's statistics first) or was given precomputed "
                      "stats")


def streams(config: PipelineConfig) -> bool:
  """Whether ``config`` needs no whole-model pass (then compression holds one layer at a time)."""
  calibrated_ahead = needs_calibration(config) and not calibrates_sequentially(config)
  return not (config.rewrite.active or calibrated_ahead or config.transform_state.share == "role"
              or config.fit.enabled or config.allocation.sensitivity != "none" or config.allocation.target_bits)


def calibration_stats(model: Model, config: PipelineConfig) -> dict:
  """The calibration statistics :func:`make_plan` computes for ``config`` (pass them back as its ``stats`` to
  share one calibration pass across configs with the same ``[calibration]``; with ``[rewrite]`` on, ``model``
  must be the rewritten model)."""
  from macjax import calibrate  # pylint: disable=g-import-not-at-top
  return calibrate.input_statistics(model, **config.calibration.sizes())


def _fisher_hessians(plan: Plan, config: PipelineConfig, say) -> None:
  """GPTQ's Hessians weighted by the model's sensitivity (``calibration.hessian = "fisher"``), into the plan."""
  import time  # pylint: disable=g-import-not-at-top
  from macjax.calibrate import fisher  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  say("calibrate: GPTQ Hessians weighted by the Fisher information of the model's predictions")
  plan.hessians = {n: o.hessian for n, o in fisher.fisher_hessians(plan.model, **config.calibration.sizes(),
                                                                   seed=config.seed).items()}
  plan.timings["calibrate_fisher"] = time.perf_counter() - t0


def _reads_input_stats(plan: Plan, config: PipelineConfig, chain: TransformChain | None) -> bool:
  """Whether some stage reads the input statistics ``XᵀX``: a transform fitted to activations, a layer-output
  allocation, or GPTQ on a matrix that has no Fisher Hessian (all of them without ``calibration.hessian =
  "fisher"``; experts and routers with it)."""
  return bool((chain is not None and chain.needs_stats())
              or config.allocation.sensitivity in ("layer_output", "input_energy")
              or (config.quantize.gptq and any(m.name not in plan.hessians for m in plan.model.layout.matrices)))


#: Why the invariance rewrite does not apply to a family (said when a config asks for it).
_NO_REWRITE = {
    "bert": "post-LayerNorm blocks re-normalize the residual stream after each sub-layer, so a residual rotation "
            "cannot be absorbed",
    "gpt2": "LayerNorm re-centres the residual stream (a rotation must first fold the mean away, not implemented)",
    "llama": "attention biases would have to be rotated with the value heads (not implemented)",
    "qwen2": "its q/k/v biases would have to be rotated with the value heads (not implemented)",
    "qwen3": "QK-norm acts on each head, which a head rotation would have to commute with (not implemented)",
    "gemma2": "its sandwich norms after each sub-block re-normalize the residual stream",
    "gemma3": "its sandwich norms after each sub-block re-normalize the residual stream",
    "phi3": "its fused qkv/gate_up projections are not split by the rewrite (not implemented)",
    "mixtral": "its routers and experts are not rotated by the rewrite (not implemented)",
    "qwen2_moe": "its routers and experts are not rotated by the rewrite (not implemented)",
}


def rewrite_model(model: Model, config: PipelineConfig) -> tuple[Model, dict]:
  """Applies the config's function-preserving model rewrite (LLaMA: fold norms, rotate the residual stream and value
  heads); returns the rewritten model and a record of what it cost (e.g. untied LM-head weights).

  Raises:
    ConfigError: the model's family has no such rewrite, or a tied model would need ``rewrite.untie``.
  """
  if model.layout.family != "llama" or model.layout.config.get("attention_bias"):
    why = _NO_REWRITE.get(model.layout.family, "the rewrite was written and tested for LLaMA blocks only")
    raise ConfigError(f"rewrite: the computational-invariance rewrite is implemented for the llama family (LLaMA, "
                      f"Mistral, SmolLM; no attention biases); {model.source} is {model.layout.family}: {why}")
  rw = transforms.rotate_llama(dict(model.params), model.layout.config, key=jax.random.PRNGKey(config.seed),
                               residual=config.rewrite.residual, head_rotation=config.rewrite.head_rotation,
                               untie=config.rewrite.untie)
  layout = dataclasses.replace(model.layout, config=dict(rw.config))
  rewritten = dataclasses.replace(model, params=dict(rw.params), layout=layout)
  return rewritten, {"residual": rw.residual, "head_rotation": rw.head_rotation, "untied": rw.untied,
                     "extra_params": int(rw.extra_params)}


def pooled_stats(members: list) -> Any:
  """The :class:`~macjax.calibrate.InputStats` of the row-stacked inputs of several matrices: the count-weighted
  mean of the second moments (``Σ_l n_l S_l / Σ_l n_l``), the max of the absolute maxima, the sum of the counts."""
  from macjax.calibrate import InputStats  # pylint: disable=g-import-not-at-top
  counts = np.array([float(s.count) for s in members])
  weights = counts / counts.sum() if counts.sum() > 0 else np.full(len(members), 1.0 / len(members))
  second = sum(w * np.asarray(s.second_moment, np.float64) for w, s in zip(weights, members))
  absmax = np.max(np.stack([np.asarray(s.absmax, np.float32) for s in members]), axis=0)
  return InputStats(second.astype(np.float32), absmax, int(counts.sum()))


def _check_chain(config: PipelineConfig, chain: TransformChain | None) -> None:
  if config.quantize.gptq and chain is not None and not chain.input_side_only():
    raise ConfigError("quantize.gptq with a transform acting on the output side: GPTQ's Hessian lives in the input "
                      "coordinates; use input-side transforms (side = \"input\") with GPTQ")
  if config.transform_state.share == "role" and chain is not None and not chain.input_side_only():
    raise ConfigError("transform_state.share = \"role\" with a transform acting on the output side: sharing pools "
                      "a role's layers by stacking their rows, which only input-side transforms (side = "
                      "\"input\") allow; use input-side members or share = \"none\"")


def _shared_states(plan: Plan, config: PipelineConfig, chain: TransformChain, say) -> None:
  """One input-side chain state per family (:meth:`~macjax.load.layout.ModelLayout.families`): ``chain.init`` on
  the members' rows stacked, ``[W_1; …; W_L]``, with their pooled calibration statistics."""
  model = plan.model
  for family, fam in model.layout.families().items():
    say(f"transform: one state for the {len(fam)} '{family}' matrices")
    pooled = jnp.concatenate([jnp.asarray(model.params[m.name], jnp.float32) for m in fam], axis=0)
    s = (chain.stats_for(pooled_stats([plan.stats[m.name] for m in fam]))
         if plan.stats is not None and chain.needs_stats() else None)
    try:
      state = chain.init(pooled, role_key(config.seed, family), s)
    except MacjaxError as e:
      raise type(e)(f"shared transform of family '{family}' ({len(fam)} matrices): {e}") from e
    name = f"transform:{family}"
    plan.parts[name] = leaves_parts("transform", "transform", state)
    plan.records[name] = {
        "group": "transform", "role": fam[0].role, "family": family, "members": [m.name for m in fam],
        "pooled_shape": [int(pooled.shape[0]), int(fam[0].shape[1])],
        "bits": {"transform": int(sum(a.nbytes for _, a in plan.parts[name].values()) * 8)}}
    for m in fam:
      plan.states[m.name] = state
      plan.shared_families[m.name] = family


def _coords(plan: Plan, config: PipelineConfig, chain: TransformChain | None) -> dict[str, jax.Array]:
  """Every block matrix in its transformed coordinates (states fitted here are kept in the plan)."""
  out = {}
  for i, m in enumerate(plan.model.layout.matrices):
    W = jnp.asarray(plan.model.params[m.name], jnp.float32)
    if chain is not None:
      if m.name not in plan.states:
        s = chain.stats_for(plan.stats[m.name]) if chain.needs_stats() else None
        try:
          plan.states[m.name] = chain.init(W, matrix_key(config.seed, i), s)
        except MacjaxError as e:
          raise type(e)(f"transform of {m.name}: {e}") from e
      W = chain.apply(W, plan.states[m.name])
    out[m.name] = W
  return out


@functools.lru_cache(maxsize=8)
def fitter(options: tuple) -> fit.FunctionalFit:
  """The f_θ fitter of ``[fit.options]`` (a sorted item tuple, so that it is cached)."""
  return fit.functional_fit(**dict(options))


def family_fit_options(cfg: dict, shape: tuple[int, int, int]) -> dict[str, Any]:
  """A family's f_θ options: ``[fit.options]``, with the width chosen by ``fit.theta_bits_per_weight`` if set."""
  options = dict(cfg["fit"]["options"])
  budget = cfg["fit"]["theta_bits_per_weight"]
  if budget:
    options["width"] = fit.width_for_budget(int(budget * np.prod(shape)), shape, **options)
  return options


def _plain_quantizer(cfg: dict):
  q = cfg["quantize"]
  return quantizer(q["method"], q["step"], q["group_size"], tuple(sorted(q["options"].items())), None)


def _fit_code_bits_saved(cfg: dict, stack: jax.Array, pred: jax.Array) -> float:
  """Entropy of a family's codes without f_θ minus with it, at the same steps (what the fit buys in code bits)."""
  from macjax.quantize.allocation import empirical_bits  # pylint: disable=g-import-not-at-top
  q = cfg["quantize"]
  plain = _plain_quantizer(cfg)
  saved = 0.0
  for W, P in zip(stack, pred):
    saved += empirical_bits(plain.quantize(W, 1.0)[0])
    scale = residual_step_scale(q["options"].get("scope", "row"), q["group_size"] or None, W, W - P)
    saved -= empirical_bits(plain.quantize(W - P, scale)[0])
  return float(saved)


def _fit_role(cfg: dict, role: str, stack: jax.Array, key: jax.Array, say) -> tuple[dict, dict, np.ndarray]:
  """One family's f_θ: ``(decision, θ as numpy arrays, prediction on the host)``; runs where ``stack`` lives."""
  options = family_fit_options(cfg, tuple(stack.shape))
  ff = fitter(tuple(sorted(options.items())))
  say(f"fit f_θ (width {ff.config.width}) for {stack.shape[0]} '{role}' matrices {tuple(stack.shape)}")
  callback = lambda p: say(f"  f_θ '{role}' step {p.step}/{p.steps}: unexplained energy {float(np.mean(p.loss)):.4f}")
  theta = ff.fit(stack, key=key, callback=callback)
  pred = ff.predict(theta, tuple(stack.shape))
  energy = fit.explained_energy(stack, pred)
  arrays = fit.to_numpy(theta)
  theta_bits = int(sum(a.nbytes for a in arrays.values()) * 8)
  saved = _fit_code_bits_saved(cfg, stack, pred)
  decision = {"explained_energy": float(energy.total), "theta_bits": theta_bits, "code_bits_saved": saved,
              "kept": saved > theta_bits or cfg["fit"]["keep"] == "always",
              "options": options, "per_layer": [float(x) for x in np.asarray(energy.per_layer)]}
  return decision, arrays, np.asarray(pred)


def _fits(plan: Plan, cfg: dict, coords: dict[str, jax.Array], seed: int, say, devices: list) -> None:
  """f_θ per family (:meth:`~macjax.load.layout.ModelLayout.families`, ``fit.across``) in the transformed
  coordinates; kept when it pays (or ``fit.keep = "always"``). The family's index (layer, or expert) is f_θ's
  first coordinate.

  The families are independent fits: with several devices each runs on its own (largest first, on the least
  loaded device), concurrently; a fit's arithmetic does not depend on where it runs, so neither does the artifact.
  """
  wanted = cfg["fit"]["roles"] or list(MATRIX_ROLES)
  families = {f: ms for f, ms in plan.model.layout.families(cfg["fit"]["across"]).items() if ms[0].role in wanted}
  names = list(families)
  sizes = {f: sum(int(np.prod(m.shape)) for m in ms) for f, ms in families.items()}
  load, where = [0] * len(devices), {}
  for f in sorted(names, key=lambda f: (-sizes[f], names.index(f))):
    k = min(range(len(devices)), key=lambda i: (load[i], i))
    where[f], load[k] = devices[k], load[k] + sizes[f]

  def run(index: int, family: str):
    with jax.default_device(where[family]):
      stack = jax.device_put(jnp.stack([coords[m.name] for m in families[family]]), where[family])
      return _fit_role(cfg, family, stack, jax.device_put(fit_key(seed, index), where[family]), say)

  with concurrent.futures.ThreadPoolExecutor(max(1, min(len(devices), len(names)))) as pool:
    outcomes = list(pool.map(run, range(len(names)), names))
  decisions = {}
  for family, (decision, arrays, pred) in zip(names, outcomes):
    options, per_layer = decision.pop("options"), decision.pop("per_layer")
    decisions[family] = decision
    if not decision["kept"]:
      say(f"  f_θ '{family}' dropped: saves {decision['code_bits_saved']:,.0f} code bits, costs "
          f"{decision['theta_bits']:,} θ bits")
      continue
    name = f"fit:{family}"
    members = families[family]
    plan.parts[name] = {f"theta.{k}": ("theta", a) for k, a in sorted(arrays.items())}
    plan.records[name] = {
        "group": "fit", "role": members[0].role, "family": family, "members": [m.name for m in members],
        "shape": list(pred.shape), "theta_keys": sorted(arrays), "options": options,
        "bits": {"theta": decision["theta_bits"]}, "explained_energy": decision["explained_energy"],
        "explained_energy_per_layer": per_layer}
    for li, m in enumerate(members):
      plan.predictions[m.name] = jnp.asarray(pred[li])  # uncommitted: usable on whichever device encodes m
      plan.fit_roles[m.name] = family
  plan.fit_decisions = decisions or None


def _unit_distortions(plan: Plan, config: PipelineConfig, targets: dict[str, jax.Array],
                      reconstruct: Callable[[str, jax.Array], jax.Array], say, bar) -> tuple[dict, dict]:
  """``d_i``: the distortion matrix ``i`` adds on its own when quantized plainly at ``quantize.step`` (see
  :class:`~macjax.pipeline.config.AllocationConfig`), and what to record about how it was measured."""
  from macjax import calibrate  # pylint: disable=g-import-not-at-top
  model = plan.model
  plain = _plain_quantizer(to_dict(config))
  kind = {"input_energy": "layer_output"}.get(config.allocation.sensitivity, config.allocation.sensitivity)
  d, record, probes = {}, {"sensitivity": kind}, {}
  for name, target in targets.items():
    T_hat = plain.dequantize(*plain.quantize(target))
    if kind == "weight":
      d[name] = float(jnp.sum(jnp.square(target - T_hat)))
    else:
      probes[name] = np.asarray(reconstruct(name, T_hat), np.float32)
      if kind == "layer_output":
        d[name] = calibrate.output_energy(plan.stats[name], np.asarray(model.params[name], np.float32) - probes[name])
  if kind == "model_output":
    from macjax.calibrate import probe  # pylint: disable=g-import-not-at-top
    from macjax.evaluate import Evaluator  # pylint: disable=g-import-not-at-top
    a = config.allocation
    ev = Evaluator(model, split="calibration", n_seq=a.probe_n_seq, seq_len=a.probe_seq_len,
                   n_sentences=a.probe_n_sentences)
    members = {m.name: (m.role, m.layer) for m in model.layout.matrices if m.name in targets}
    roles = {r: [n for n, (rr, _) in members.items() if rr == r] for r in sorted({r for r, _ in members.values()})}
    say(f"  probe {len(roles)} roles at the model output on calibration text")
    by_role = probe.output_distortion(ev, model.params, probes, roles, bar=lambda it: bar(it, desc="probe roles",
                                                                                         unit="probe"))
    record["probe_by_role"] = by_role
    if a.probe_groups == "role_layer":
      layers = {l: [n for n, (_, ll) in members.items() if ll == l] for l in sorted({l for _, l in members.values()})}
      say(f"  probe {len(layers)} layers at the model output on calibration text")
      by_layer = probe.output_distortion(ev, model.params, probes, layers,
                                         bar=lambda it: bar(it, desc="probe layers", unit="probe"))
      record["probe_by_layer"] = {str(l): v for l, v in by_layer.items()}
      d = probe.separable(by_role, by_layer, members)
    else:  # a role's matrices share its per-weight sensitivity
      d = probe.by_size(by_role, roles, {n: int(targets[n].size) for n in members})
  return d, record


def _allocate(plan: Plan, config: PipelineConfig, coords: dict[str, jax.Array], chain: TransformChain | None,
              say, bar) -> None:
  """Per-matrix step multipliers from ``[allocation]``."""
  from macjax.quantize import allocation  # pylint: disable=g-import-not-at-top
  cfg = to_dict(config)
  targets = {n: W - plan.predictions[n] if n in plan.predictions else W for n, W in coords.items()}

  def reconstruct(name: str, T_hat: jax.Array) -> jax.Array:  # quantized target -> model coordinates
    W_hat = plan.predictions[name] + T_hat if name in plan.predictions else T_hat
    return chain.inverse(W_hat, plan.states[name]) if chain is not None else W_hat

  say("allocate: per-matrix step multipliers" + (f" for {config.allocation.target_bits} bits/weight"
                                                 if config.allocation.target_bits else ""))
  scales = {n: 1.0 for n in targets}
  record: dict[str, Any] = {}
  sizes = {n: int(t.size) for n, t in targets.items()}
  if config.allocation.sensitivity != "none":
    d, record = _unit_distortions(plan, config, targets, reconstruct, say, bar)
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
  plan.step_scales = scales
  plan.allocation = record


def make_plan(model: Model, config: PipelineConfig, *, stats: dict | None = None,
              say: Callable[[str], None] = lambda _: None, devices: list | None = None,
              bar: Callable[..., Iterable] = lambda it, **_: it) -> Plan:
  """Runs the whole-model stages ``config`` asks for (module docstring), in order.

  Args:
    model: the loaded (or opened) model.
    config: the pipeline config.
    stats: precomputed calibration statistics (of the rewritten model when ``[rewrite]`` is on), to share one
      calibration pass across configs; computed here when a stage needs them and this is None.
    say: progress lines.
    devices: where the f_θ families are fitted (default ``jax.devices()``), one family per device at a time.
    bar: ``bar(items, desc=, unit=)`` wraps long loops (the allocation probes) in a progress bar.

  Raises:
    ConfigError: a stage cannot run on this model with this config (named in the message).
  """
  import time  # pylint: disable=g-import-not-at-top
  check_tuning(config, stats)
  plan = Plan(model=model, gptq=config.quantize.gptq)
  chain = transform_chain(config.transform)
  _check_chain(config, chain)
  if config.rewrite.active:
    t0 = time.perf_counter()
    say(f"rewrite: residual rotation {config.rewrite.residual}, head rotation {config.rewrite.head_rotation}")
    plan.model, plan.rewrite = rewrite_model(model, config)
    plan.timings["rewrite"] = time.perf_counter() - t0
  if config.quantize.gptq and config.calibration.hessian == "fisher":
    _fisher_hessians(plan, config, say)
  if stats is not None:
    missing = sorted({m.name for m in plan.model.layout.matrices} - set(stats))
    if missing:
      raise ConfigError(f"compress: stats has no entry for {len(missing)} block matrices, e.g. {missing[0]}")
    plan.stats, plan.calibration = stats, "whole_model"
  elif calibrates_sequentially(config):
    from macjax import calibrate  # pylint: disable=g-import-not-at-top
    say("calibrate: sequentially, each layer on the outputs of the layers compressed before it")
    plan.sequential = calibrate.SequentialCalibration(plan.model, **config.calibration.sizes(),
                                                    offload=config.calibration.offload,
                                                    reference=config.calibration.tune_steps > 0)
    plan.stats, plan.calibration = {}, "sequential"
  elif needs_calibration(config) and _reads_input_stats(plan, config, chain):
    t0 = time.perf_counter()
    say("calibrate: input statistics of every block matrix on calibration text")
    plan.stats, plan.calibration = calibration_stats(plan.model, config), "whole_model"
    plan.timings["calibrate"] = time.perf_counter() - t0
  elif needs_calibration(config):  # GPTQ's Fisher Hessians cover every matrix and nothing else reads XᵀX
    plan.stats, plan.calibration = {}, "whole_model"
  t0 = time.perf_counter()
  if config.transform_state.share == "role" and chain is not None:
    _shared_states(plan, config, chain, say)
  cfg = to_dict(config)
  allocating = config.allocation.sensitivity != "none" or bool(config.allocation.target_bits)
  if config.fit.enabled or allocating:
    coords = _coords(plan, config, chain)
    if chain is not None:
      plan.timings["transform"] = time.perf_counter() - t0
    if config.fit.enabled:
      t0 = time.perf_counter()
      _fits(plan, cfg, coords, config.seed, say, list(jax.devices() if devices is None else devices))
      plan.timings["fit"] = time.perf_counter() - t0
    if allocating:
      t0 = time.perf_counter()
      _allocate(plan, config, coords, chain, say, bar)
      plan.timings["allocate"] = time.perf_counter() - t0
  return plan
