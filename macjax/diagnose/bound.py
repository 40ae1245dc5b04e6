"""How few bits any coder could spend on a set of weights at a mean-squared error: the Shannon lower bound.

For a memoryless source ``X`` with differential entropy ``h(X)`` and MSE distortion ``D``, every code spends at
least ``R(D) ≥ h(X) − ½·log2(2πe·D)`` bits per sample (Shannon's lower bound, tight as ``D → 0``). Weights are not
identically distributed — rows and columns have their own spreads — so the bound here is conditioned on them, as
if the decoder knew each row's RMS ``s_i`` and each column's RMS ``c_j`` (of the row-normalized matrix) for free:
``X = s_i·c_j·Z`` and ``h(X | s, c) = h(Z) + E[log2 s_i] + E[log2 c_j]``. That makes the bound *lower* (a coder
that adapts to row and column spreads is allowed; their side information is not charged), so a method above it by
``Δ`` bits could gain at most ``Δ`` by any memoryless scalar or vector quantizer with context modelling of spreads.
Dependence between weights beyond their spreads (low rank, shared structure across layers) is outside it.

``h`` is estimated by a fine histogram, ``h ≈ H(round(x/δ)) + log2 δ`` with ``δ = σ/64``
(:func:`macjax.diagnose.stats.code_entropy` at ``step_rel = 1/64``; plug-in, so biased slightly low on small
matrices: the bound stays a lower bound). Reference points: uniform scalar quantization
with ideal entropy coding sits ``≈ 0.254`` bit above the bound at high rate (``½·log2(πe/6)``); a trellis
(4–32 states) recovers 1.0–1.2 dB of it (≈ 0.17–0.2 bit).

Example:
  >>> import numpy as np
  >>> W = np.random.default_rng(0).normal(size=(512, 512))
  >>> round(float(shannon_lower_bound([W], [0.1], scales="none")[0]), 2)   # ½·log2(1/0.1²) = 3.32 for a Gaussian
  3.32
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from macjax.diagnose.stats import code_entropy
from macjax.errors import ConfigError, NonFiniteError, ShapeError

SCALES = ("none", "matrix", "row", "row_col")
_BINS_PER_STD = 64


def _entropy_bits(x: np.ndarray) -> float:
  """Plug-in differential entropy estimate ``H(round(x/δ)) + log2 δ`` (bits), ``δ = std(x)/64``."""
  sigma = float(np.std(x))
  if sigma == 0:  # a constant: no spread to code
    return 0.0
  return float(code_entropy(np.asarray(x, np.float32), step_rel=1 / _BINS_PER_STD)) + np.log2(sigma / _BINS_PER_STD)


def _normalized(W: np.ndarray, scales: str) -> tuple[np.ndarray, float]:
  """``(Z, E[log2 scale])`` with ``W = scale · Z`` at the given conditioning (``matrix``, ``row`` or ``row_col``)."""
  if scales == "matrix":
    s = float(np.sqrt(np.mean(W**2))) or 1.0
    return W / s, float(np.log2(s))
  rows = np.sqrt(np.mean(W**2, axis=1, keepdims=True))
  rows = np.where(rows > 0, rows, 1.0)
  Z, log_s = W / rows, float(np.mean(np.log2(rows)))
  if scales == "row":
    return Z, log_s
  cols = np.sqrt(np.mean(Z**2, axis=0, keepdims=True))
  cols = np.where(cols > 0, cols, 1.0)
  return Z / cols, log_s + float(np.mean(np.log2(cols)))


def differential_entropy(weights: Sequence[np.ndarray], scales: str = "row_col") -> float:
  """``h(X | scales)`` in bits per weight, pooled over ``weights`` (weighted by size).

  Args:
    weights: 2-D arrays (any sizes).
    scales: what the bound may condition on: ``none`` (all weights one source), ``matrix`` (each matrix its own
      source), ``row`` (each row's RMS known), ``row_col`` (row and column RMS known).

  Raises:
    ConfigError: unknown ``scales`` or no weights. ShapeError: a non-2-D array. NonFiniteError: NaN or inf.
  """
  if scales not in SCALES:
    raise ConfigError(f"bound: scales must be one of {SCALES}, got {scales!r}")
  mats = [np.asarray(W, np.float64) for W in weights]
  if not mats or not sum(W.size for W in mats):
    raise ConfigError("bound: no weights given")
  for W in mats:
    if W.ndim != 2:
      raise ShapeError(f"bound: expected 2-D weight matrices, got shape {W.shape}")
    if not np.all(np.isfinite(W)):
      raise NonFiniteError(f"bound: a weight matrix of shape {W.shape} holds NaN or inf")
  if scales == "none":
    return _entropy_bits(np.concatenate([W.ravel() for W in mats]))
  total, n = 0.0, 0
  for W in mats:
    Z, log_scale = _normalized(W, scales)
    total += W.size * (_entropy_bits(Z) + log_scale)
    n += W.size
  return total / n


def shannon_lower_bound(weights: Sequence[np.ndarray], rel_errors: Sequence[float],
                        scales: str = "row_col") -> np.ndarray:
  """Bits per weight no coder can beat at each relative weight error ``sqrt(Σ‖W−Ŵ‖²) / sqrt(Σ‖W‖²)``.

  Args:
    weights: the 2-D matrices coded together (the error is pooled over them, as
      :func:`macjax.evaluate.metrics.aggregate_rel_weight_error` pools it).
    rel_errors: target relative errors (> 0).
    scales: see :func:`differential_entropy`.

  Returns:
    float64[len(rel_errors)]: ``max(0, h − ½·log2(2πe·D))`` with ``D = e²·mean(W²)``.
  """
  h = differential_entropy(weights, scales)
  power = sum(float(np.sum(np.asarray(W, np.float64) ** 2)) for W in weights) / sum(np.size(W) for W in weights)
  return bound_from_entropy(h, power, rel_errors)


def bound_from_entropy(h: float, power: float, rel_errors: Sequence[float]) -> np.ndarray:
  """:func:`shannon_lower_bound` from its two ingredients, ``h`` (bits per weight, :func:`differential_entropy`)
  and ``power = mean(W²)``: what a caller that pools matrices one at a time (size-weighted ``h``, summed ``W²``)
  combines without holding them all."""
  errs = np.asarray(rel_errors, np.float64)
  if errs.ndim != 1 or not np.all(np.isfinite(errs)) or np.any(errs <= 0):
    raise ConfigError(f"bound: rel_errors must be a list of finite numbers > 0, got {rel_errors!r}")
  return np.maximum(0.0, h - 0.5 * np.log2(2 * np.pi * np.e * errs**2 * power))


__all__ = ["SCALES", "bound_from_entropy", "differential_entropy", "shannon_lower_bound"]
