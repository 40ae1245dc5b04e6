"""Bit allocation across matrices from sensitivities: one global step (or target rate), not bits per layer.

Minimizing the sensitivity-weighted distortion ``Σ_i n_i s_i D_i`` at a total rate ``Σ_i n_i R_i`` with the
high-rate model ``R_i = h_i − ½ log2(12 D_i)`` (``n_i`` weights, sensitivity ``s_i``) gives equal slopes where
``D_i ∝ 1 / s_i``, i.e. steps ``Δ_i = Δ_0 · s_i^(−1/2)``. :func:`equal_slope_scales` returns those multipliers
(normalized to a weighted geometric mean of 1, so the total rate stays roughly where ``Δ_0`` puts it), to pass as
``step_scale`` to a quantizer; :func:`base_step_for_rate` finds ``Δ_0`` for a target bits/weight by bisection on the
codes' measured entropy. With all sensitivities equal and ``scope="absolute"``, this is the MSE-optimal choice
of one step for every matrix. Sensitivities come from wherever distortion matters: ``trace(XᵀX)/cols`` of the
layer's calibration inputs (:func:`input_sensitivity`) for the layer-output error, or 1 for plain weight MSE.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError, ShapeError
from macjax.quantize.base import Quantizer


def input_sensitivity(H) -> float:
  """``trace(H) / cols`` for ``H = XᵀX``: the mean energy the layer's inputs put on one weight column."""
  H = np.asarray(H)
  if H.ndim != 2 or H.shape[0] != H.shape[1]:
    raise ShapeError(f"input_sensitivity: H must be square [cols, cols], got shape {H.shape}")
  return float(np.trace(H)) / H.shape[0]


def equal_slope_scales(sensitivity: Mapping[str, float], sizes: Mapping[str, int]) -> dict[str, float]:
  """Step multipliers ``c_i = s_i^(−1/2) / G`` with ``G`` the ``n_i``-weighted geometric mean of ``s_i^(−1/2)``.

  Example:
    >>> c = equal_slope_scales({"a": 4.0, "b": 1.0}, {"a": 100, "b": 100})
    >>> round(c["a"] / c["b"], 3), round(c["a"] * c["b"], 3)
    (0.5, 1.0)
  """
  names = list(sensitivity)
  if set(names) != set(sizes):
    raise ConfigError(f"equal_slope_scales: sensitivity and sizes name different matrices: "
                      f"{sorted(set(names) ^ set(sizes))}")
  s = np.array([float(sensitivity[k]) for k in names])
  if not np.all(np.isfinite(s)) or np.any(s <= 0):
    bad = [k for k, v in zip(names, s) if not (np.isfinite(v) and v > 0)]
    raise ConfigError(f"equal_slope_scales: sensitivities must be finite and > 0, got {bad[:5]}")
  n = np.array([float(sizes[k]) for k in names])
  log_c = -0.5 * np.log(s)
  log_c -= np.sum(n * log_c) / np.sum(n)
  return {k: float(np.exp(v)) for k, v in zip(names, log_c)}


def empirical_bits(codes) -> float:
  """``N · H`` of the codes' empirical distribution: what a histogram coder reaches, less its table."""
  _, counts = np.unique(np.asarray(codes), return_counts=True)
  p = counts / counts.sum()
  return float(-counts.sum() * np.sum(p * np.log2(p)))


def base_step_for_rate(quantizer: Quantizer, matrices: Mapping[str, np.ndarray], target_bits_per_weight: float,
                       scales: Mapping[str, float] | None = None, *, lo: float = 1e-4, hi: float = 1e4,
                       iters: int = 30, rel_tol: float = 0.002) -> float:
  """The ``step_scale`` ``Δ_0`` at which ``Σ_i entropy(codes_i) / Σ n_i`` ≈ the target (bisection in log space).

  Each matrix is quantized with ``step_scale = Δ_0 · scales[name]`` (the quantizer is jitted once; the scale is a
  traced argument). The rate is the codes' empirical entropy; tables, headers and steps add a little on top (see
  :func:`macjax.coding.coded_bits`).

  Raises:
    ConfigError: a bad target, or a target outside what ``[lo, hi]`` reaches.
  """
  if not (np.isfinite(target_bits_per_weight) and target_bits_per_weight > 0):
    raise ConfigError(f"base_step_for_rate: target must be a finite number of bits/weight > 0, got "
                      f"{target_bits_per_weight!r}")
  scales = {k: 1.0 for k in matrices} if scales is None else scales
  quantize = jax.jit(quantizer.quantize)
  n = sum(int(np.asarray(W).size) for W in matrices.values())

  def rate(base: float) -> float:
    bits = 0.0
    for name, W in matrices.items():
      codes, _ = quantize(jnp.asarray(W), step_scale=jnp.float32(base * scales[name]))
      bits += empirical_bits(codes)
    return bits / n

  log_lo, log_hi = np.log(lo), np.log(hi)
  r_lo, r_hi = rate(lo), rate(hi)
  if not r_hi <= target_bits_per_weight <= r_lo:
    raise ConfigError(f"base_step_for_rate: target {target_bits_per_weight} bits/weight outside the reachable "
                      f"[{r_hi:.3f}, {r_lo:.3f}] for step scales in [{lo}, {hi}]")
  for _ in range(iters):
    mid = 0.5 * (log_lo + log_hi)
    r = rate(float(np.exp(mid)))
    if abs(r - target_bits_per_weight) <= rel_tol * target_bits_per_weight:
      return float(np.exp(mid))
    if r > target_bits_per_weight:
      log_lo = mid
    else:
      log_hi = mid
  return float(np.exp(0.5 * (log_lo + log_hi)))


__all__ = ["base_step_for_rate", "empirical_bits", "equal_slope_scales", "input_sensitivity"]
