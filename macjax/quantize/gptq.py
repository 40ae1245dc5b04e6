"""GPTQ: Hessian-aware error feedback in front of any quantizer that can quantize one column on a fixed grid.

For a linear layer ``y = W x`` (``W: [out, in]``) and calibration inputs ``X: [n, in]``, the output error of a
quantized ``Ŵ`` is ``‖X (W − Ŵ)ᵀ‖² = Σ_rows (w − ŵ)ᵀ H (w − ŵ)`` with ``H = XᵀX``. GPTQ (Frantar et al., 2023)
quantizes the columns in order and, after each, spreads its error over the columns not yet quantized, which is the
optimal (OBS) update for that quadratic. With the upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = UᵀU``):

    q_j  = Q(w_j)                                   (the base quantizer on the grid fixed by its meta)
    e_j  = (w_j − q_j) / U_jj
    w_k ← w_k − e_j U_jk        for k > j          (lazily, in blocks of ``block_size`` columns)

``H`` is damped, ``H + damp · mean(diag H) · I``, and dead inputs (``H_jj = 0``) get ``H_jj = 1`` and zero weights.
The base quantizer's metadata (its grid) is computed once from the original ``W``; the codes and the decoder are
the base quantizer's, so nothing changes downstream.

With ``order="descending"`` ("act-order" in the GPTQ reference code) the columns are visited by decreasing
``H_jj``: the inputs with the most energy are quantized first, while the most unquantized columns remain to absorb
their error. The permutation is internal: each column is still quantized on its own grid (its original index is
passed to ``quantize_column``, so group steps stay those of the original column), and the codes come back in the
original order, so the decoder neither knows nor stores the order.

With ``column_steps="curvature"`` each input column also gets its own step multiplier, set by the curvature GPTQ
sees there. After error feedback, column ``j``'s rounding error reaches the layer output with weight
``1/U_jj²`` (the Schur complement of ``H`` given the columns quantized before it; their geometric mean equals that
of ``H``'s eigenvalues). One step for all columns spends the same precision on every column; high-rate theory
(reverse water-filling in the Hessian metric) says equal output distortion per column is optimal, i.e. steps
``∝ U_jj``, which wins ``½·log2(AM/GM)`` of those weights at equal output error. The multipliers are stored as
int8 exponents at 1/8 octave (``m_j = 2^(e_j/8)``, geometric mean ≈ 1, ``e_j ∈ [−64, 64]``): 8 bits per input
column, counted with the rest of the metadata. The codes are the base quantizer's on the column's scaled grid
(``round(w_j / (Δ_row · m_j))``); low-curvature columns get coarse steps and mostly zero codes — the seed notes'
dead zones where the model does not look.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError, ShapeError
from macjax.quantize.base import Quantizer
from macjax.quantize.uniform import check_matrix


def damped_hessian(H: jax.Array, damp: float) -> tuple[jax.Array, jax.Array]:
  """``(H + damp·mean(diag H)·I with dead diagonals set to 1, dead mask)``."""
  diag = jnp.diag(H)
  dead = diag <= 0
  H = H.at[jnp.diag_indices(H.shape[0])].set(jnp.where(dead, 1.0, diag))
  mean_diag = jnp.mean(jnp.diag(H))
  return H + damp * mean_diag * jnp.eye(H.shape[0], dtype=H.dtype), dead


def inverse_cholesky_upper(H: jax.Array) -> jax.Array:
  """Upper-triangular ``U`` with ``UᵀU = H⁻¹`` (``H`` symmetric positive definite)."""
  L = jnp.linalg.cholesky(H)
  eye = jnp.eye(H.shape[0], dtype=H.dtype)
  L_inv = jax.scipy.linalg.solve_triangular(L, eye, lower=True)
  H_inv = L_inv.T @ L_inv
  return jnp.linalg.cholesky(H_inv).T


def _block_divisor(cols: int, block_size: int) -> int:
  """The largest divisor of ``cols`` not above ``block_size`` (blocks are equal so the loop compiles once)."""
  return max(d for d in range(1, min(block_size, cols) + 1) if cols % d == 0)


ORDERS = ("natural", "descending")
COLUMN_STEPS = ("none", "curvature", "given")
EXPONENT_RESOLUTION = 8  # column step multipliers 2^(e/8): 1/8 octave
_MAX_EXPONENT = 64
# The multiplier of every int8 exponent, rounded once to float32 here, so that encoder and decoder (on any
# platform) multiply by the same constants and decode stays bit-exact.
_MULTIPLIERS = np.asarray(2.0 ** (np.arange(-128, 128) / EXPONENT_RESOLUTION), np.float32)


class ColumnStepsMeta(NamedTuple):
  """The metadata of a GPTQ quantizer with ``column_steps="curvature"``.

  Attributes:
    base: the base quantizer's metadata (its row or group steps).
    exponent: int8[cols]; column ``j``'s step multiplier is ``2^(exponent_j / 8)``.
  """

  base: Any
  exponent: jax.Array


def column_multipliers(exponent: jax.Array) -> jax.Array:
  """f32[cols] step multipliers ``2^(e/8)`` of int8 exponents (a fixed table: bit-exact across platforms)."""
  return jnp.asarray(_MULTIPLIERS)[exponent.astype(jnp.int32) + 128]


def curvature_exponents(U: jax.Array, dead: jax.Array) -> jax.Array:
  """int8 exponents of steps ``∝ U_jj`` (``U``: upper Cholesky factor of the damped ``H⁻¹``, in the order GPTQ
  visits the columns), geometric mean 1 over the live columns; 0 for dead ones.

  Example:
    >>> curvature_exponents(jnp.diag(jnp.array([1.0, 4.0])), jnp.array([False, False])).tolist()
    [-8, 8]
  """
  log_u = jnp.log2(jnp.diag(U))
  live = ~dead
  centre = jnp.sum(jnp.where(live, log_u, 0.0)) / jnp.maximum(jnp.sum(live), 1)
  e = jnp.round(EXPONENT_RESOLUTION * (log_u - centre))
  return jnp.where(live, jnp.clip(e, -_MAX_EXPONENT, _MAX_EXPONENT), 0).astype(jnp.int8)


def _error_feedback(base: Quantizer, meta, W, U, perm, mult, block: int):
  """GPTQ's column loop over ``W`` (columns already in visiting order; ``perm`` maps them to their original
  index, ``mult`` holds their step multipliers): codes in visiting order."""
  rows, cols = W.shape

  def one_block(b, carry):
    W, codes = carry
    i1 = b * block
    W1 = jax.lax.dynamic_slice(W, (0, i1), (rows, block))
    U1 = jax.lax.dynamic_slice(U, (i1, i1), (block, block))

    def one_column(i, inner):
      W1, C1, E1 = inner
      w = jax.lax.dynamic_index_in_dim(W1, i, axis=1, keepdims=False)
      m = mult[i1 + i]
      c, q = base.quantize_column(w / m, meta, perm[i1 + i], cols)
      err = (w - q * m) / U1[i, i]
      W1 = W1 - err[:, None] * U1[i][None, :]  # U1 is upper triangular: only columns ≥ i move
      return W1, C1.at[:, i].set(c), E1.at[:, i].set(err)

    zeros = jnp.zeros((rows, block), jnp.float32)
    _, C1, E1 = jax.lax.fori_loop(0, block, one_column, (W1, zeros.astype(jnp.int32), zeros))
    # Lazy update of everything right of the block (U's rows i1..i1+block are zero left of i1; the block's own
    # columns are already coded, so updating them too is harmless).
    W = W - E1 @ jax.lax.dynamic_slice(U, (i1, 0), (block, cols))
    return W, jax.lax.dynamic_update_slice(codes, C1, (0, i1))

  _, codes = jax.lax.fori_loop(0, cols // block, one_block, (W, jnp.zeros((rows, cols), jnp.int32)))
  return codes


def _check_options(base, block_size, damp, order, column_steps) -> None:
  if not isinstance(base, Quantizer) or base.quantize_column is None:
    raise ConfigError("gptq: the base quantizer must provide quantize_column (uniform, dead_zone and rdoq do)")
  if not (isinstance(block_size, int) and block_size >= 1):
    raise ConfigError(f"gptq: block_size must be an int >= 1, got {block_size!r}")
  if not (isinstance(damp, (int, float)) and np.isfinite(damp) and damp > 0):
    raise ConfigError(f"gptq: damp must be a finite number > 0, got {damp!r}")
  if order not in ORDERS:
    raise ConfigError(f"gptq: order must be one of {ORDERS}, got {order!r}")
  if column_steps not in COLUMN_STEPS:
    raise ConfigError(f"gptq: column_steps must be one of {COLUMN_STEPS}, got {column_steps!r}")


def gptq(base: Quantizer, *, block_size: int = 128, damp: float = 0.01, order: str = "natural",
         column_steps: str = "none") -> Quantizer:
  """Wraps ``base`` with GPTQ error feedback; the wrapped ``quantize`` takes the Hessian as a second argument.

  Args:
    base: a quantizer with ``quantize_column`` (uniform, dead_zone, rdoq, trellis).
    block_size: columns per lazy-update block (≥ 1); the largest divisor of the column count not above it is used.
    damp: relative diagonal damping (> 0), in units of the mean diagonal of ``H``.
    order: ``natural`` (columns left to right) or ``descending`` (by decreasing ``H_jj``, "act-order"); the
      codes and their decoder are the same either way.
    column_steps: ``none`` (the base quantizer's steps), ``curvature`` (each input column's step multiplied by
      ``2^(e_j/8)`` with ``e_j`` from GPTQ's curvature there; module docstring), or ``given`` (the int8
      exponents come from the caller: ``quantize(W, H, step_scale, exponent)``, e.g. from a model-output
      sensitivity measured elsewhere).

  Returns:
    ``Quantizer(quantize=(W, H, step_scale=1) -> (codes, meta), dequantize)`` where ``W: f32[out, in]`` and
    ``H: f32[in, in] = XᵀX`` from calibration inputs ``X: [n, in]``; jit- and vmap-able. ``meta`` is the base's
    (``column_steps="none"``) or a :class:`ColumnStepsMeta`. ``step_scale`` is passed to the base quantizer
    (``None`` for a base without it).

  Raises:
    ConfigError: ``base`` has no ``quantize_column``, or bad ``block_size``/``damp``/``order``/``column_steps``.
    ShapeError: ``H`` is not ``[in, in]`` for ``W: [out, in]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from macjax.quantize import uniform
    >>> X = jax.random.normal(jax.random.key(0), (512, 64)) @ jax.random.normal(jax.random.key(1), (64, 64))
    >>> W = jax.random.normal(jax.random.key(2), (32, 64))
    >>> q = gptq(uniform(step=1 / 2), block_size=16)
    >>> codes, meta = jax.jit(q.quantize)(W, X.T @ X)
    >>> err = lambda Wq: float(jnp.linalg.norm(X @ (W - Wq).T))
    >>> err(q.dequantize(codes, meta)) < err(uniform(step=1 / 2).dequantize(*uniform(step=1 / 2).quantize(W)))
    True
  """
  _check_options(base, block_size, damp, order, column_steps)
  damp = float(damp)
  descending = order == "descending"
  has_steps = column_steps != "none"  # curvature or given: the meta carries the exponents

  def quantize(W, H, step_scale=1.0, exponent=None):
    check_matrix(W)
    rows, cols = W.shape
    if H.shape != (cols, cols):
      raise ShapeError(f"gptq: H must be f32[{cols}, {cols}] (XᵀX over W's {cols} input columns), got shape "
                       f"{tuple(H.shape)} for W of shape {(rows, cols)}")
    W = W.astype(jnp.float32)
    _, meta = base.quantize(W) if step_scale is None else base.quantize(W, step_scale=step_scale)
    H, dead = damped_hessian(H.astype(jnp.float32), damp)
    W = jnp.where(dead[None, :], 0.0, W)
    perm = jnp.arange(cols)
    if descending:  # visit columns by decreasing H_jj (stable: ties keep their order)
      perm = jnp.argsort(-jnp.diag(H), stable=True)
      W, H, dead = W[:, perm], H[perm][:, perm], dead[perm]
    U = inverse_cholesky_upper(H)
    if column_steps == "given":
      if exponent is None or exponent.shape != (cols,):
        raise ShapeError(f"gptq: column_steps='given' needs int8 exponents of shape ({cols},), got "
                         f"{None if exponent is None else tuple(exponent.shape)}")
      exponent = jnp.where(dead, 0, exponent.astype(jnp.int8)[perm]).astype(jnp.int8)
    else:
      exponent = curvature_exponents(U, dead) if has_steps else jnp.zeros((cols,), jnp.int8)
    codes = _error_feedback(base, meta, W, U, perm, column_multipliers(exponent), _block_divisor(cols, block_size))
    if descending:  # codes and exponents back to the original column order
      codes = jnp.zeros_like(codes).at[:, perm].set(codes)
      exponent = jnp.zeros_like(exponent).at[perm].set(exponent)
    return (codes, ColumnStepsMeta(meta, exponent)) if has_steps else (codes, meta)

  def dequantize(codes, meta):
    if not has_steps:
      return base.dequantize(codes, meta)
    if meta.exponent.shape != (codes.shape[-1],):
      raise ShapeError(f"gptq: codes of shape {tuple(codes.shape)} need {codes.shape[-1]} column exponents, got "
                       f"shape {tuple(meta.exponent.shape)}")
    return base.dequantize(codes, meta.base) * column_multipliers(meta.exponent)[None, :]

  return Quantizer(quantize=quantize, dequantize=dequantize)
