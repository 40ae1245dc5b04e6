"""Refitting a layer's kept float parameters to its reference output, after its matrices are quantized.

A compressed layer stores its matrices as codes and its 1-D tensors (norm gains and biases, linear biases) as
floats (``[vectors]``). Those floats cost the same whatever their values, so once the matrices are fixed they can be
moved to undo part of the quantization error at no cost in bits. With ``Ŵ`` the layer's decoded matrices, ``v`` its
vectors, ``x̂`` the compressed model's hidden states entering the layer and ``x`` the reference model's (both on
calibration text, carried by :class:`~macjax.calibrate.SequentialCalibration`), the refit solves

.. math::

  \\min_v \\; \\frac{1}{N} \\sum_t \\frac{\\lVert f(\\hat x_t; \\hat W, v)_t - f(x_t; W, v_0)_t \\rVert^2}
                                      {\\lVert f(x_t; W, v_0)_t \\rVert^2}

over the ``N`` calibration tokens (per-token relative error: decoders' residual streams carry a few tokens of very
large norm that would otherwise take the whole loss), by ``steps`` Adam steps from ``v = v_0``, one calibration
batch per step in turn. Because the target is the *reference* layer on the *reference* inputs, the refit also pulls
the stream back toward the reference where earlier layers' errors pushed it. A norm gain multiplies each channel of
what the next linears read, so this is the diagonal part of the seed notes' learned transform ``T``, absorbed into
the model and fitted to the layer's output (BRECQ / OmniQuant's block objective with only the free floats moving).

The loss on the calibration text never rises against the start: the returned vectors are the better of the start
and the last iterate, measured on all batches. On held-out text it can: on MiniLM the refit raises the held-out
cosine at low rates and lowers it slightly at high rates (README, ``benchmarks/results/rd/aligned_minilm-l6``);
holding one calibration batch aside to pick the iterate was tried and did not prevent that (the per-layer error
is not the final embedding's), and took part of the low-rate gain.

Example:
  >>> refit = Refit(lambda p, x, mask: block_step(p, config, x, mask=mask)[0])                  # doctest: +SKIP
  >>> tuned, (before, after) = refit(p_hat, ["attn_ln"], batches, steps=32, lr=1e-3)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from macjax.errors import ConfigError


def relative_error(y_hat: jax.Array, y: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(Σ_t m_t ‖ŷ_t − y_t‖² / ‖y_t‖², Σ_t m_t)`` over the tokens ``t`` of ``[batch, seq, hidden]`` outputs.

  Example:
    >>> s, n = relative_error(jnp.ones((1, 2, 4)) * 1.1, jnp.ones((1, 2, 4)))
    >>> round(float(s / n), 6)
    0.01
  """
  err = jnp.sum(jnp.square(y_hat - y), axis=-1) / jnp.maximum(jnp.sum(jnp.square(y), axis=-1), 1e-12)
  m = jnp.ones(err.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  return jnp.sum(err * m), jnp.sum(m)


class Refit:
  """Adam on some fields of a block's params to bring its output to the batches' targets (module docstring).

  Build one per block forward and reuse it: the loss and its gradient are compiled once per batch shape, for every
  layer and call that shares the forward.

  Args:
    block: ``block(params, x, mask) -> y``, the layer's forward (``[batch, seq, hidden]``; ``mask`` may be None).
  """

  def __init__(self, block: Callable[..., jax.Array]):
    def loss(free, fixed, x, mask, y):
      total, count = relative_error(block({**fixed, **free}, x, mask), y, mask)
      return total / count, (total, count)

    self._grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    self._loss = jax.jit(loss)

  def _mean_loss(self, free, fixed, batches) -> float:
    sums = [self._loss(free, fixed, *batches[i])[1] for i in range(len(batches))]
    return float(sum(float(s) for s, _ in sums) / sum(float(c) for _, c in sums))

  def __call__(self, params: dict[str, jax.Array], free: Sequence[str], batches: Sequence[tuple[Any, Any, Any]], *,
               steps: int, lr: float) -> tuple[dict[str, np.ndarray], tuple[float, float]]:
    """Refits the ``free`` fields of ``params``.

    Args:
      params: the layer's fields (decoded matrices, current vectors), as the forward takes them.
      free: the fields that move (1-D tensors).
      batches: ``(x̂, mask or None, y)`` per calibration batch: the compressed stream's input and the target.
      steps: Adam steps (≥ 1), one batch each, cycling through the batches.
      lr: the learning rate.

    Returns:
      ``({field: float32 array}, (loss before, loss after))``: the refit fields and the mean relative error over
      all batches at the start and for the returned values (≤ the start).

    Raises:
      ConfigError: no batches, no free fields, steps < 1, or a free field not in ``params``.
    """
    if not len(batches) or not free or steps < 1:
      raise ConfigError(f"tuning: need batches, free fields and steps >= 1; got {len(batches)} batches, "
                        f"free={list(free)}, steps={steps}")
    missing = [f for f in free if f not in params]
    if missing:
      raise ConfigError(f"tuning: free fields {missing} are not among the layer's fields {sorted(params)}")
    fixed = {k: jnp.asarray(v) for k, v in params.items() if k not in free}
    start = {k: jnp.asarray(params[k], jnp.float32) for k in free}
    opt = optax.adam(lr)
    v, state = start, opt.init(start)
    for k in range(steps):
      _, g = self._grad(v, fixed, *batches[k % len(batches)])
      updates, state = opt.update(g, state, v)
      v = optax.apply_updates(v, updates)
    before, after = self._mean_loss(start, fixed, batches), self._mean_loss(v, fixed, batches)
    best = v if after <= before else start
    return {k: np.asarray(a, np.float32) for k, a in best.items()}, (before, min(before, after))
