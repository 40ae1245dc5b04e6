"""Sensitivity measured at the model's output: how much distortion each group of matrices adds when perturbed.

Layer-local measures (weight MSE, a layer's output MSE ``tr(ΔW S ΔWᵀ)``) weigh every layer alike; the model does
not: some roles move the output far more per weight than others (the allocation records each probe's distortion in
the manifest, ``allocation.probe_by_role``, so a run shows it). A probe measures that directly: the model is run on calibration text (never the held-out text the
quality claims use) with one group's matrices replaced by their quantized values and everything else exact, and
the distortion it adds is

* causal LMs: the mean KL divergence (nats/token) of the next-token distribution from the reference model's;
* encoders: ``1 − mean cosine`` of the pooled sentence embeddings against the reference model's.

Groups are whatever the caller names (a role across layers, a layer across roles, one matrix). Distortions of
disjoint groups add up only approximately (errors compound), which is why :func:`separable` combines per-role
and per-layer probes into per-matrix estimates rather than probing all ``roles × layers`` matrices one by one.

Example:
  >>> ev = Evaluator(model, n_seq=8, split="calibration")                          # doctest: +SKIP
  >>> groups = {r: [m.name for m in model.layout.by_role(r)] for r in ("q", "v")}  # doctest: +SKIP
  >>> output_distortion(ev, model.params, quantized, groups)                       # doctest: +SKIP
  {'q': 0.044, 'v': 0.154}
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from macjax.errors import ConfigError, ShapeError


def distortion_of(quality: Mapping[str, Any]) -> float:
  """The probe's distortion from an :class:`~macjax.evaluate.Evaluator` result: ``kl``, else ``1 − cosine_mean``.

  Raises:
    ConfigError: the result has neither (an evaluator of an unsupported family).
  """
  if "kl" in quality:
    return float(quality["kl"])
  if "cosine_mean" in quality:
    return 1.0 - float(quality["cosine_mean"])
  raise ConfigError(f"probe: the evaluator returned neither 'kl' nor 'cosine_mean' (keys {sorted(quality)})")


def output_distortion(evaluator, params: Mapping[str, Any], replacements: Mapping[str, Any],
                      groups: Mapping[str, Sequence[str]],
                      bar: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, float]:
  """The distortion each group adds at the model output when only its matrices take their ``replacements``.

  Args:
    evaluator: an :class:`~macjax.evaluate.Evaluator` of the reference model (build it with
      ``split="calibration"`` when the result steers compression).
    params: the reference parameters ``{name: array}``.
    replacements: ``{name: array}`` the perturbed value of every matrix some group names (same shapes).
    groups: ``{group: [matrix names]}``; one evaluation per group.
    bar: wraps the loop over groups (a progress bar).

  Returns:
    ``{group: distortion}`` (:func:`distortion_of`; ≥ 0 up to float noise: clip before dividing by it).

  Raises:
    ConfigError: a group is empty or names a matrix without a replacement.
    ShapeError: a replacement's shape differs from the parameter's.
  """
  out = {}
  for group, names in bar(list(groups.items())):
    if not names:
      raise ConfigError(f"probe: group {group!r} names no matrices")
    candidate = dict(params)
    for name in names:
      if name not in replacements:
        raise ConfigError(f"probe: group {group!r} names {name!r}, which has no replacement")
      new = np.asarray(replacements[name])
      if new.shape != tuple(np.shape(params[name])):
        raise ShapeError(f"probe: replacement of {name} has shape {new.shape}; the parameter has "
                         f"{tuple(np.shape(params[name]))}")
      candidate[name] = new
    out[group] = distortion_of(evaluator(candidate))
  return out


def separable(by_role: Mapping[str, float], by_layer: Mapping[int, float],
              members: Mapping[str, tuple[str, int]], floor: float = 1e-3) -> dict[str, float]:
  """Per-matrix distortions from per-role and per-layer probes, under independence: ``d_rl = T · p_r · q_l``.

  ``p_r = d_r / Σ d_r`` and ``q_l = d_l / Σ d_l`` are the roles' and layers' shares, and ``T = Σ_r d_r`` the total;
  so the estimates of a role's matrices sum to its probe, and likewise (approximately) for a layer's. Each probe
  is first clipped to ``floor × max`` of its kind, so that a probe lost in noise (≈ 0 or slightly negative) does not
  make its matrices look free.

  Args:
    by_role: ``{role: distortion}`` with every role of ``members``.
    by_layer: ``{layer: distortion}`` with every layer of ``members``.
    members: ``{matrix name: (role, layer)}``.
    floor: relative floor (0 < floor ≤ 1).

  Returns:
    ``{matrix name: estimated distortion}`` (> 0).

  Example:
    >>> d = separable({"q": 1.0, "v": 3.0}, {0: 2.0, 1: 2.0}, {"a": ("q", 0), "b": ("v", 1)})
    >>> d["a"], d["b"]
    (0.5, 1.5)
  """
  missing = sorted({r for r, _ in members.values()} - set(by_role)) + sorted(
      str(l) for l in {l for _, l in members.values()} - set(by_layer))
  if missing:
    raise ConfigError(f"probe.separable: no probe for {missing[:5]}")

  roles, layers = _clipped(by_role, floor, "separable"), _clipped(by_layer, floor, "separable")
  layer_total = sum(layers.values())
  return {name: roles[r] * layers[l] / layer_total for name, (r, l) in members.items()}


def by_size(by_group: Mapping[str, float], groups: Mapping[str, Sequence[str]], sizes: Mapping[str, int],
            floor: float = 1e-3) -> dict[str, float]:
  """Per-matrix distortions from per-group probes alone: a group's distortion split among its matrices by size.

  Every weight of a group is taken as equally sensitive (the per-layer alternative is :func:`separable`). Probes
  are clipped to ``floor × max`` first, as in :func:`separable`.

  Args:
    by_group: ``{group: distortion}`` with every group of ``groups``.
    groups: ``{group: [matrix names]}`` (disjoint).
    sizes: ``{matrix name: number of weights}`` for every named matrix.
    floor: relative floor (0 < floor ≤ 1).

  Returns:
    ``{matrix name: estimated distortion}`` (> 0); a group's estimates sum to its clipped probe.

  Example:
    >>> by_size({"q": 1.0}, {"q": ["a", "b"]}, {"a": 3, "b": 1})
    {'a': 0.75, 'b': 0.25}
  """
  missing = sorted(set(groups) - set(by_group))
  if missing:
    raise ConfigError(f"probe.by_size: no probe for {missing[:5]}")
  clipped = _clipped({g: by_group[g] for g in groups}, floor, "by_size")
  out = {}
  for g, names in groups.items():
    n = sum(int(sizes[name]) for name in names)
    out.update({name: clipped[g] * int(sizes[name]) / n for name in names})
  return out


def _clipped(d: Mapping, floor: float, who: str) -> dict:
  """``d`` with every value raised to at least ``floor × max`` (checked: finite, positive maximum)."""
  if not 0 < floor <= 1:
    raise ConfigError(f"probe.{who}: floor must be in (0, 1], got {floor!r}")
  vals = np.array([float(v) for v in d.values()])
  if vals.size == 0 or not np.all(np.isfinite(vals)) or vals.max() <= 0:
    raise ConfigError(f"probe.{who}: probe distortions must be finite with a positive maximum, got {dict(d)}")
  return dict(zip(d, np.maximum(vals, floor * vals.max()).tolist()))


__all__ = ["by_size", "distortion_of", "output_distortion", "separable"]
