"""Per-group uniform scalar quantization with float16-representable steps.

For a group ``g`` (``scope="row"``: a whole row, or a run of ``group_size`` columns of a row; ``scope="matrix"``:
the whole matrix) with entries ``w``:

    RMS_g  = sqrt(mean(w²))
    Δ_g    = fp16(step · RMS_g)            (clipped into float16's normal range, so a zero group is safe)

or, with ``scope="absolute"``, ``Δ = fp16(step)`` for every matrix (one step in the weights' own units: under a
plain MSE criterion, equal steps everywhere are the equal-slope allocation across matrices and rows).
    code   = round(w / Δ_g)                (round half to even)
    ŵ      = code · Δ_g                    with |w − ŵ| ≤ Δ_g / 2

``Δ_g`` is rounded to a float16 value, so storing the steps as float16 is lossless and the decoder's
reconstruction is bit-identical to the encoder's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError, ShapeError
from macjax.quantize.base import Quantizer

# Smallest normal and largest finite float16: steps are clipped into this range.
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 2**-14
FP16_MAX = float(np.finfo(np.float16).max)  # 65504


class UniformMeta(NamedTuple):
  """Metadata of :func:`uniform`.

  Attributes:
    step: f32[rows, n_groups], or f32[1, 1] for the ``matrix``/``absolute`` scopes (broadcast over the matrix);
      each value exactly representable in float16; ``n_groups = 1`` for per-row groups, else
      ``cols // group_size``. The group size is derived from the shapes (``cols // n_groups``).
  """

  step: jax.Array


def check_matrix(W, name: str = "W") -> None:
  """Raises :class:`ShapeError` unless ``W`` is a rank-2 floating array (static check, works under jit)."""
  if W.ndim != 2:
    raise ShapeError(f"{name}: expected a matrix f32[rows, cols], got shape {tuple(W.shape)}")
  if not jnp.issubdtype(W.dtype, jnp.floating):
    raise ShapeError(f"{name}: expected a floating dtype, got {W.dtype} with shape {tuple(W.shape)}")


def group_view(W: jax.Array, group_size: int | None) -> jax.Array:
  """Reshapes ``W[rows, cols]`` to ``[rows, n_groups, group]``; raises :class:`ShapeError` if cols is not a multiple."""
  rows, cols = W.shape
  if group_size is None:
    return W.reshape(rows, 1, cols)
  if cols % group_size:
    raise ShapeError(
        f"W: shape {(rows, cols)} has {cols} columns, not a multiple of group_size={group_size}")
  return W.reshape(rows, cols // group_size, group_size)


def fp16_step(raw_step: jax.Array) -> jax.Array:
  """Rounds positive steps to float16-representable float32 values inside float16's normal range."""
  clipped = jnp.clip(raw_step, FP16_MIN_NORMAL, FP16_MAX)
  return clipped.astype(jnp.float16).astype(jnp.float32)


SCOPES = ("row", "matrix", "absolute")


def check_grid_knobs(name: str, step, group_size, scope) -> None:
  """Validates the knobs shared by the uniform-grid quantizers; raises :class:`ConfigError` naming the bad one."""
  if not (isinstance(step, (int, float)) and not isinstance(step, bool) and np.isfinite(step) and step > 0):
    raise ConfigError(f"{name}: step must be a finite number > 0, got {step!r}")
  if group_size is not None and not (isinstance(group_size, int) and group_size >= 1):
    raise ConfigError(f"{name}: group_size must be None or an int >= 1, got {group_size!r}")
  if scope not in SCOPES:
    raise ConfigError(f"{name}: scope must be one of {SCOPES}, got {scope!r}")
  if scope != "row" and group_size is not None:
    raise ConfigError(f"{name}: group_size={group_size} needs scope='row' (scope {scope!r} has one step per matrix)")


def expand_steps(step: jax.Array, cols: int) -> jax.Array:
  """Broadcasts per-group steps f32[rows or 1, n_groups] to f32[rows or 1, cols] (each repeated cols/n_groups)."""
  rows, n_groups = step.shape
  if n_groups == 0 or cols % n_groups:
    raise ShapeError(f"step: shape {tuple(step.shape)} does not divide {cols} columns into equal groups")
  return jnp.repeat(step, cols // n_groups, axis=1, total_repeat_length=cols)


def check_meta_step(name: str, codes, step) -> None:
  """Raises :class:`ShapeError` unless ``step`` is f32[rows or 1, n_groups] for ``codes`` int32[rows, cols]."""
  if codes.ndim != 2 or step.ndim != 2 or step.shape[0] not in (1, codes.shape[0]):
    raise ShapeError(f"{name}: codes of shape {tuple(codes.shape)} need meta.step f32[{codes.shape[0]} or 1, "
                     f"n_groups], got shape {tuple(step.shape)}")


def column_steps(step: jax.Array, j, cols: int) -> jax.Array:
  """The steps f32[rows or 1] that apply to column ``j`` (a traced int is fine) of a ``cols``-column matrix."""
  rows, n_groups = step.shape
  if n_groups == 0 or cols % n_groups:
    raise ShapeError(f"step: shape {tuple(step.shape)} does not divide {cols} columns into equal groups")
  return jax.lax.dynamic_index_in_dim(step, j // (cols // n_groups), axis=1, keepdims=False)


def group_rms_steps(W: jax.Array, step: float, group_size: int | None, scope: str = "row") -> jax.Array:
  """``fp16(step · RMS_g)`` per group of ``W`` (f32[rows, n_groups]); f32[1, 1] for ``matrix``/``absolute``."""
  W = W.astype(jnp.float32)
  if scope == "absolute":
    return fp16_step(jnp.full((1, 1), step, jnp.float32))
  if scope == "matrix":
    return fp16_step(step * jnp.sqrt(jnp.mean(jnp.square(W))).reshape(1, 1))
  groups = group_view(W, group_size)
  rms = jnp.sqrt(jnp.mean(jnp.square(groups), axis=-1))
  return fp16_step(step * rms)


def uniform(step: float = 1 / 8, group_size: int | None = None, scope: str = "row") -> Quantizer:
  """Per-group uniform scalar quantization, step relative to each group's RMS.

  ``Δ_g = fp16(step · RMS_g)``, ``codes = round(W / Δ_g)``, ``Ŵ = codes · Δ_g``; so ``|W − Ŵ| ≤ Δ_g / 2``
  element-wise and, for a smooth source at high rate, MSE ≈ Δ_g² / 12.

  Args:
    step: the step as a fraction of the group's RMS (> 0). 1/8 gives ≈ 5 bits/weight entropy on Gaussian-like
      weights; each halving adds ≈ 1 bit.
    group_size: ``None`` for one group per row, else the number of consecutive columns in a group (must divide
      the number of columns of the matrices it is applied to).
    scope: ``row`` (steps relative to each row group's RMS), ``matrix`` (one step relative to the matrix's RMS),
      or ``absolute`` (``step`` is the step itself, in the weights' units, for every matrix).

  Returns:
    A :class:`Quantizer` whose ``quantize(W)`` returns ``(int32 codes, UniformMeta)``; both functions jit and vmap.

  Raises:
    ConfigError: ``step`` or ``group_size`` out of range (at construction).
    ShapeError: ``W`` not a float matrix, or its column count not a multiple of ``group_size`` (at trace time).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> q = uniform(step=1 / 8, group_size=64)
    >>> W = jax.random.normal(jax.random.key(0), (4, 128))
    >>> codes, meta = jax.jit(q.quantize)(W)
    >>> meta.step.shape
    (4, 2)
    >>> bool(jnp.all(jnp.abs(W - q.dequantize(codes, meta)) <= 0.5 * jnp.repeat(meta.step, 64, axis=1)))
    True
  """
  check_grid_knobs("uniform", step, group_size, scope)
  step = float(step)

  def quantize(W, step_scale=1.0):
    check_matrix(W)
    W = W.astype(jnp.float32)
    steps = group_rms_steps(W, step * step_scale, group_size, scope)
    codes = jnp.round(W / expand_steps(steps, W.shape[1])).astype(jnp.int32)
    return codes, UniformMeta(step=steps)

  def dequantize(codes, meta: UniformMeta):
    check_meta_step("uniform", codes, meta.step)
    return codes.astype(jnp.float32) * expand_steps(meta.step.astype(jnp.float32), codes.shape[1])

  def quantize_column(w, meta: UniformMeta, j, cols: int):
    col_step = column_steps(meta.step.astype(jnp.float32), j, cols)
    codes = jnp.round(w.astype(jnp.float32) / col_step).astype(jnp.int32)
    return codes, codes.astype(jnp.float32) * col_step

  return Quantizer(quantize=quantize, dequantize=dequantize, quantize_column=quantize_column)
