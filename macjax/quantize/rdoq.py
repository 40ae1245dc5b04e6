"""Rate–distortion-optimized quantization (RDOQ) on the uniform grid.

Same grid and reconstruction as :func:`macjax.quantize.uniform.uniform` (``ŵ = code · Δ_g``), but each code is
chosen to minimize a Lagrangian instead of the distance alone. In step units ``y = w / Δ_g``:

    code = argmin_{c ∈ {round(y), round(y) − sign(round(y)), 0}}  (y − c)² + λ · bits(c)

``bits(c) = −log2 p̂(c)`` under the empirical distribution of the current codes (what a histogram coder
stores), re-estimated ``iters`` times (greedy, as in video codecs' RDOQ): moving a value to a cheaper, more frequent
code makes that code cheaper still, so ``λ`` (in squared steps per bit) sets the trade-off. ``λ = 0`` is plain
rounding. The decoder needs nothing new: the metadata is :class:`UniformMeta`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from macjax.coding import rate
from macjax.errors import ConfigError, ShapeError
from macjax.quantize.base import Quantizer
from macjax.quantize.uniform import (UniformMeta, check_matrix, column_steps, expand_steps, group_rms_steps,
                                     uniform)


def histogram_bits(codes: jax.Array, max_abs: int) -> jax.Array:
  """``−log2 p̂(k)`` for ``k ∈ [−max_abs, max_abs]`` from the empirical distribution of ``codes`` (clipped).

  Unseen codes cost ``log2(N) + 1`` bits (between "seen once" and the coder's floor).
  """
  n = codes.size
  counts = jnp.bincount(jnp.clip(codes.ravel(), -max_abs, max_abs) + max_abs, length=2 * max_abs + 1)
  return jnp.where(counts > 0, jnp.log2(n / jnp.maximum(counts, 1)), jnp.log2(n) + 1.0)


def rd_choose(y: jax.Array, bits_of) -> jax.Array:
  """The code among ``{round(y), round(y) − sign(round(y)), 0}`` minimizing ``(y − c)² + bits_of(c)``
  (``bits_of`` already includes ``λ``)."""
  c0 = jnp.round(y)
  c1 = c0 - jnp.sign(c0)
  zero = jnp.zeros_like(y)
  cands = jnp.stack([c0, c1, zero])
  costs = jnp.square(y[None] - cands) + bits_of(cands)
  return jnp.take_along_axis(cands, jnp.argmin(costs, axis=0)[None], axis=0)[0].astype(jnp.int32)


def rdoq(step: float = 1 / 8, group_size: int | None = None, lam: float = 0.1, iters: int = 4,
         max_abs: int = 4096, scope: str = "row") -> Quantizer:
  """RDOQ quantizer: uniform grid, codes chosen by ``(y − c)² + λ·bits(c)`` under the codes' own histogram.

  Args:
    step: the step as a fraction of each group's RMS, as in :func:`uniform`.
    group_size: ``None`` for one group per row, else the number of consecutive columns per group.
    lam: ``λ``, squared steps per bit (≥ 0). About 0.05–0.3 is useful; larger values zero more weights.
    iters: re-estimations of the histogram (≥ 1).
    max_abs: codes beyond ``±max_abs`` are kept as rounded (static bound of the histogram).
    scope: ``row``, ``matrix`` or ``absolute``, as in :func:`uniform`.

  Returns:
    A :class:`Quantizer` with ``(int32 codes, UniformMeta)``; ``dequantize`` is the uniform one. Its
    ``quantize_column`` (for :func:`macjax.quantize.gptq.gptq`) prices codes with a Laplace model fitted to the
    column, since the matrix histogram is not known column by column.

  Example:
    >>> import jax
    >>> W = jax.random.laplace(jax.random.key(0), (64, 256))
    >>> codes, meta = rdoq(step=1 / 2, lam=0.2).quantize(W)
    >>> plain, _ = uniform(step=1 / 2).quantize(W)
    >>> bool((codes == 0).mean() > (plain == 0).mean())
    True
  """
  if not (isinstance(lam, (int, float)) and np.isfinite(lam) and lam >= 0):
    raise ConfigError(f"rdoq: lam must be a finite number >= 0, got {lam!r}")
  if not (isinstance(iters, int) and iters >= 1):
    raise ConfigError(f"rdoq: iters must be an int >= 1, got {iters!r}")
  if not (isinstance(max_abs, int) and 1 <= max_abs <= 1 << 20):
    raise ConfigError(f"rdoq: max_abs must be an int in [1, 2**20], got {max_abs!r}")
  base = uniform(step, group_size, scope)  # validates step, group_size and scope
  lam = float(lam)

  def quantize(W, step_scale=1.0):
    check_matrix(W)
    W = W.astype(jnp.float32)
    steps = group_rms_steps(W, step * step_scale, group_size, scope)
    y = W / expand_steps(steps, W.shape[1])
    c_round = jnp.round(y).astype(jnp.int32)
    far = jnp.abs(c_round) > max_abs

    def one_pass(_, codes):
      table = lam * histogram_bits(codes, max_abs)
      chosen = rd_choose(y, lambda c: table[jnp.clip(c.astype(jnp.int32), -max_abs, max_abs) + max_abs])
      return jnp.where(far, c_round, chosen)

    codes = jax.lax.fori_loop(0, iters, one_pass, c_round)
    return codes, UniformMeta(step=steps)

  def quantize_column(w, meta: UniformMeta, j, cols: int):
    if w.ndim != 1:
      raise ShapeError(f"rdoq.quantize_column: expected a column f32[rows], got shape {tuple(w.shape)}")
    col_step = column_steps(meta.step.astype(jnp.float32), j, cols)
    y = w.astype(jnp.float32) / col_step
    scale = rate.fit_scale(jnp.round(y), "laplace")
    codes = rd_choose(y, lambda c: lam * rate.family_bits(c, scale, "laplace"))
    return codes, codes.astype(jnp.float32) * col_step

  return Quantizer(quantize=quantize, dequantize=base.dequantize, quantize_column=quantize_column)
