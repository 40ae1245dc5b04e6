"""Small functions of :class:`~macjax.calibrate.statistics.InputStats`: the Hessian and output-space errors.

For a matrix ``W: (out, in)`` whose inputs have second moment :math:`S = X^\\top X / n`, the mean squared output
of a matrix ``M`` of the same shape over the calibration tokens is

.. math::

  \\frac{1}{n}\\sum_t \\lVert M x_t \\rVert^2 = \\frac{1}{n}\\lVert X M^\\top \\rVert_F^2
    = \\mathrm{tr}(M S M^\\top) = \\sum_{ij} (M S)_{ij} M_{ij},

so with ``M = W`` it is the layer's output energy and with ``M = Ŵ − W`` the mean squared error a compressed
matrix adds to the layer's output (the quantity GPTQ minimizes, per token), a curvature-weighted distortion in place
of the plain weight MSE ``‖Ŵ − W‖²_F``.

Example:
  >>> s = stats["model.layers.0.mlp.down_proj.weight"]                 # doctest: +SKIP
  >>> relative_output_error(s, W, W_hat)                                # doctest: +SKIP
  0.041
"""

from __future__ import annotations

import numpy as np

from macjax.calibrate.statistics import InputStats
from macjax.errors import ShapeError


def _check(stats: InputStats, W, what: str) -> np.ndarray:
  W = np.asarray(W, np.float64)
  size = stats.second_moment.shape[0]
  if W.ndim != 2 or W.shape[1] != size:
    raise ShapeError(f"calibrate.{what}: matrix of shape {W.shape}; expected (out, {size}) to match the input "
                     f"statistics' second moment {stats.second_moment.shape}")
  return W


def hessian(stats: InputStats) -> np.ndarray:
  """:math:`H = X^\\top X = n S`, ``f32[in, in]``: what :func:`macjax.quantize.gptq.gptq`'s ``quantize`` takes.

  Example:
    >>> s = InputStats(np.eye(2, dtype=np.float32), np.ones(2, np.float32), 10)
    >>> float(hessian(s)[0, 0])
    10.0
  """
  return (np.asarray(stats.second_moment, np.float64) * stats.count).astype(np.float32)


def output_energy(stats: InputStats, M) -> float:
  """:math:`\\mathrm{tr}(M S M^\\top) = \\frac{1}{n}\\sum_t \\lVert M x_t\\rVert^2` in float64.

  With ``M = W`` the layer's mean output energy per token; with ``M = Ŵ − W`` the mean squared output error.

  Raises:
    ShapeError: ``M`` is not ``(out, in)`` with ``in`` the statistics' size.

  Example:
    >>> s = InputStats(np.diag([4.0, 1.0]).astype(np.float32), np.ones(2, np.float32), 10)
    >>> output_energy(s, np.array([[1.0, 1.0]]))
    5.0
  """
  M = _check(stats, M, "output_energy")
  return float(np.sum((M @ np.asarray(stats.second_moment, np.float64)) * M))


def relative_output_error(stats: InputStats, W, W_hat) -> float:
  """:math:`\\sqrt{\\mathrm{tr}(\\Delta S \\Delta^\\top) / \\mathrm{tr}(W S W^\\top)}`, ``Δ = Ŵ − W``.

  The output-space analogue of ``‖Ŵ − W‖_F / ‖W‖_F``: the RMS error of ``Ŵ x`` relative to the RMS of ``W x``
  over the calibration inputs (``inf`` if ``W`` sends every input to zero and ``Ŵ`` does not; 0 if both do).

  Raises:
    ShapeError: ``W`` and ``W_hat`` differ in shape or do not take ``in`` inputs.

  Example:
    >>> s = InputStats(np.eye(2, dtype=np.float32), np.ones(2, np.float32), 10)
    >>> relative_output_error(s, np.array([[1.0, 0.0]]), np.array([[1.0, 0.1]]))
    0.1
  """
  W = _check(stats, W, "relative_output_error")
  W_hat = _check(stats, W_hat, "relative_output_error")
  if W.shape != W_hat.shape:
    raise ShapeError(f"calibrate.relative_output_error: W {W.shape} and W_hat {W_hat.shape}; expected equal shapes")
  err, ref = output_energy(stats, W_hat - W), output_energy(stats, W)
  if ref == 0.0:
    return 0.0 if err == 0.0 else float("inf")
  return float(np.sqrt(err / ref))
