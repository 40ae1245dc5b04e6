"""How much of a family's energy ``f_θ`` explains, and whether that pays for θ's bits."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from macjax.errors import ShapeError


class ExplainedEnergy(NamedTuple):
  """Fraction of energy explained by a prediction, per layer and in total.

  Attributes:
    per_layer: ``f64[..., L]``: ``1 − ‖W_l − P_l‖² / ‖W_l‖²`` for each matrix of the family.
    total: ``f64[...]``: ``1 − ‖W − P‖² / ‖W‖²`` over the whole family (the energy-weighted mean of
      ``per_layer``).
  """

  per_layer: np.ndarray
  total: np.ndarray


def _fraction(residual: np.ndarray, energy: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(energy > 0, 1.0 - residual / np.where(energy > 0, energy, 1.0),
                    np.where(residual == 0, 1.0, -np.inf))


def explained_energy(Ws, pred) -> ExplainedEnergy:
  """Explained energy ``1 − ‖W − P‖² / ‖W‖²`` per layer and in total, in float64 on the host.

  Works on one family ``[L, rows, cols]`` or a stack ``[..., L, rows, cols]``. A value ≤ 0 means the prediction
  does not help (it can be negative: then subtracting it adds energy). A layer of zero energy counts as 1 if the
  prediction is exactly zero there, −inf otherwise.

  Raises:
    ShapeError: ``Ws`` and ``pred`` differ in shape or have fewer than 3 axes.

  Example:
    >>> W = np.ones((2, 2, 2)); P = np.zeros((2, 2, 2)); P[0] = 1
    >>> e = explained_energy(W, P)
    >>> e.per_layer.tolist(), float(e.total)
    ([1.0, 0.0], 0.5)
  """
  Ws, pred = np.asarray(Ws, np.float64), np.asarray(pred, np.float64)
  if Ws.shape != pred.shape or Ws.ndim < 3:
    raise ShapeError(f"explained_energy: Ws {Ws.shape} vs pred {pred.shape}; expected equal shapes "
                     "(..., layers, rows, cols)")
  energy = np.sum(np.square(Ws), axis=(-2, -1))
  residual = np.sum(np.square(Ws - pred), axis=(-2, -1))
  return ExplainedEnergy(_fraction(residual, energy), _fraction(residual.sum(-1), energy.sum(-1)))


def gaussian_rate_gain(explained: float | np.ndarray) -> np.ndarray:
  """Bits per weight a Gaussian-like residual saves at high rate when its energy shrinks by ``explained``.

  At equal distortion ``D``, ``R = ½ log2(σ²/D)``; removing a fraction ``E`` of the energy saves
  ``−½ log2(1 − E)`` bits per weight. ``f_θ`` pays for itself only if its θ costs fewer bits per weight than
  this (a rule of thumb: the residual's actual coder and distribution decide in the end).

  Example:
    >>> round(float(gaussian_rate_gain(0.75)), 3)
    1.0
  """
  explained = np.clip(np.asarray(explained, np.float64), -np.inf, 1.0)
  with np.errstate(divide="ignore"):
    return -0.5 * np.log2(1.0 - explained)
