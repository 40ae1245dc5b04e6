"""Activation-aware channel scaling (SmoothQuant), exactly invertible.

For a linear layer ``y = W x`` with ``W ∈ R^{out×in}`` and calibration statistics ``a_j = max_t |X_{t,j}|`` (the
largest input activation of channel ``j``), SmoothQuant migrates difficulty between activations and weights with

    s_j = a_j^α / w_j^(1−α),   w_j = max_i |W_{i,j}|,

``W' = W diag(s)`` and ``x' = diag(s)^{-1} x`` (so ``W' x' = W x``). After scaling, the column maxima are
``w_j s_j = a_j^α w_j^α``: ``α = 0`` leaves ``W`` untouched up to normalising its columns, ``α = 1`` puts all
activation outliers into ``W``. Channels with ``a_j = 0`` or ``w_j = 0`` get ``s_j = 1``.

The scales are stored in ``storage_dtype`` (float16: 16 bits per input channel) and ``apply`` / ``inverse`` use
the stored values, so the decoder reproduces them; ``inverse`` divides, exact to one rounding. With
``power_of_two=True`` the scales are ``2^e`` with integer ``e = round(log2 s)`` stored as int8 (8 bits per channel):
multiplying by a power of two is exact in floating point, so ``inverse(apply(W))`` equals ``W`` bit for bit.
``absorbed=True`` declares that ``diag(s)^{-1}`` is folded into the previous operation (a norm's gain, or the
previous layer's output rows), so the scales cost 0 bits here.

Example:
  >>> import jax.numpy as jnp
  >>> t = channel_scaling(alpha=0.5, power_of_two=True)
  >>> W = jnp.array([[1.0, 0.01], [-2.0, 0.02]])
  >>> s = t.init(W, stats=jnp.array([1.0, 100.0]))
  >>> bool((t.inverse(t.apply(W, s), s) == W).all()), t.state_bits(s)
  (True, 16)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from macjax.errors import ConfigError, ShapeError
from macjax.transforms import base

_MAX_LOG2 = 14  # scales are clipped to [2^-14, 2^14]: float16-normal, int8-representable exponents


class ScaleState(NamedTuple):
  """Per-input-channel scales.

  Attributes:
    scale: ``(in,)``; float scales in the storage dtype, or int8 exponents ``e`` (scale ``2^e``) with
      ``power_of_two``.
  """

  scale: jax.Array


def smoothquant_scales(W: jax.Array, act_absmax: jax.Array, alpha: float) -> jax.Array:
  """``s_j = a_j^α / w_j^(1−α)`` with ``w_j = max_i |W_ij|`` over all leading axes, 1 where undefined.

  Example:
    >>> smoothquant_scales(jnp.array([[4.0, 1.0]]), jnp.array([1.0, 0.0]), 0.5).tolist()
    [0.5, 1.0]
  """
  w = jnp.max(jnp.abs(W).reshape(-1, W.shape[-1]), axis=0)
  a = jnp.abs(act_absmax).astype(jnp.float32)
  ok = (a > 0) & (w > 0)
  safe_a, safe_w = jnp.where(ok, a, 1.0), jnp.where(ok, w, 1.0)
  s = jnp.exp(alpha * jnp.log(safe_a) - (1.0 - alpha) * jnp.log(safe_w))
  return jnp.clip(jnp.where(ok, s, 1.0), 2.0**-_MAX_LOG2, 2.0**_MAX_LOG2)


def channel_scaling(*, alpha: float = 0.5, power_of_two: bool = False, storage_dtype=jnp.float16,
                    absorbed: bool = False) -> base.WeightTransform:
  """SmoothQuant channel scaling ``W' = W diag(s)`` (see the module docstring).

  ``init(W, stats=a)`` takes ``a``, the ``(in,)`` per-channel maximum absolute input activation.

  Args:
    alpha: migration strength in ``[0, 1]``.
    power_of_two: round the scales to powers of two (int8 exponents; bit-exact inverse).
    storage_dtype: the floating dtype scales are stored in when not ``power_of_two``.
    absorbed: the inverse scaling is folded into the model elsewhere: 0 bits.

  Returns:
    A :class:`base.WeightTransform` with state :class:`ScaleState`.

  Example:
    >>> t = channel_scaling(alpha=0.5)
    >>> W = jnp.ones((3, 4))
    >>> s = t.init(W, stats=jnp.full((4,), 4.0))
    >>> t.apply(W, s)[0].tolist(), t.state_bits(s)
    ([2.0, 2.0, 2.0, 2.0], 64)
  """
  if not 0.0 <= float(alpha) <= 1.0:
    raise ConfigError(f"channel_scaling: alpha={alpha}; expected a value in [0, 1]")
  if not power_of_two and not jnp.issubdtype(storage_dtype, jnp.floating):
    raise ConfigError(f"channel_scaling: storage_dtype={storage_dtype!r}; expected a floating dtype")

  def init_fn(W, *, key=None, stats=None):
    del key
    base.check_matrix(W, "channel_scaling.init")
    if stats is None:
      raise ConfigError("channel_scaling.init: stats is None; expected the (in,) per-channel max |X| of the "
                        "layer's calibration inputs")
    if getattr(stats, "shape", None) != (W.shape[-1],):
      raise ShapeError(f"channel_scaling.init: stats has shape {getattr(stats, 'shape', None)}; expected "
                       f"({W.shape[-1]},), one max |X_j| per input channel of W {W.shape}")
    s = smoothquant_scales(W, stats, alpha)
    if power_of_two:
      return ScaleState(jnp.round(jnp.log2(s)).astype(jnp.int8))
    return ScaleState(s.astype(storage_dtype))

  def _check(W, state, where):
    if state.scale.shape[-1] != W.shape[-1]:
      raise ShapeError(f"{where}: weight W of shape {W.shape}; the state scales {state.scale.shape[-1]} "
                       "input channels")

  def apply_fn(W, state):
    _check(W, state, "channel_scaling.apply")
    if power_of_two:
      return jnp.ldexp(W, state.scale.astype(jnp.int32))
    return W * state.scale.astype(W.dtype)

  def inverse_fn(W2, state):
    _check(W2, state, "channel_scaling.inverse")
    if power_of_two:
      return jnp.ldexp(W2, -state.scale.astype(jnp.int32))
    return W2 / state.scale.astype(W2.dtype)

  def state_bits_fn(state):
    return 0 if absorbed else base.array_bits(state.scale)

  return base.WeightTransform(init_fn, apply_fn, inverse_fn, state_bits_fn)
