"""Differentiable rate estimates in JAX, for learned transforms, ``f_θ`` fitting and rate–distortion search.

Tier one of tensorflow-compression's three: estimates that ``jax.grad`` can go through, paired with the real
coder (:func:`macjax.coding.encode`) whose measured bits they are tested against.

* Parametric: the bits of a value ``y`` (in units of the quantization step) under a zero-mean continuous
  density of scale ``s`` integrated over its unit bin, ``−log2 P(|Y| ∈ [|y| − ½, |y| + ½])`` in the symmetric
  form ``P = S(|y| − ½) − S(|y| + ½)`` with the survival function ``S`` in log space (stable far in the tails),
  floored at the coder's smallest probability ``2**−24``. Families: Laplace, Gaussian, logistic.
* Empirical: :func:`soft_histogram_bits`, ``−Σ_i log2 p̂(y_i)`` with ``p̂`` the histogram of the values with
  linear (triangular-kernel) bin assignment; at integer ``y`` it equals ``N·H`` of the codes' empirical
  distribution — the floor a stored-histogram coder reaches up to its table precision.
* Relaxations of rounding: :func:`ste_round` (straight-through) and :func:`uniform_noise` (additive noise).

Example:
  >>> import jax, jax.numpy as jnp
  >>> y = jnp.array([0.0, 1.0, -3.0])
  >>> b = family_bits(y, 1.0, "laplace")
  >>> bool(jnp.all(b > 0)) and bool(b[0] < b[1] < b[2])
  True
  >>> g = jax.grad(lambda a: soft_histogram_bits(a * jnp.arange(-8.0, 9.0)))(1.0)
  >>> bool(jnp.isfinite(g))
  True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from macjax.errors import ConfigError

FAMILIES = ("laplace", "gaussian", "logistic")
MAX_BITS = 24.0  # the coder's probability floor is 2**-24
_LN2 = math.log(2.0)


def _log_survival(x: jax.Array, scale: jax.Array, family: str) -> jax.Array:
  """``log P(X > x)`` for a zero-mean density of the given scale, stable for large ``|x|``."""
  z = x / scale
  if family == "laplace":
    # S(z) = ½e^{−z} for z ≥ 0, 1 − ½e^{z} for z < 0.
    return jnp.where(z >= 0, math.log(0.5) - jnp.maximum(z, 0.0), jnp.log1p(-0.5 * jnp.exp(jnp.minimum(z, 0.0))))
  if family == "gaussian":
    return jax.scipy.special.log_ndtr(-z)
  if family == "logistic":
    return jax.nn.log_sigmoid(-z)
  raise ConfigError(f"rate: unknown family {family!r}, expected one of {FAMILIES}")


def family_bits(y: jax.Array, scale, family: str = "laplace") -> jax.Array:
  """Per-element bits ``−log2 P(bin of y)`` under a zero-mean ``family`` density of ``scale`` (in step units).

  ``P = S(|y| − ½) − S(|y| + ½)`` computed as ``log S(l) + log1p(−exp(log S(u) − log S(l)))``; the result is
  clipped to ``[0, 24]`` bits (the coder gives every symbol at least ``2**−24``). Differentiable in ``y`` and
  ``scale``; at integer ``y`` it is the bits of a binned continuous model (close to the discrete models the real
  coder stores).

  Args:
    y: values in units of the quantization step (rounded or relaxed).
    scale: the density's scale (Laplace ``b``, Gaussian ``σ``, logistic ``s``), broadcastable to ``y``, > 0.
    family: ``laplace``, ``gaussian`` or ``logistic``.
  """
  a = jnp.abs(y)
  scale = jnp.asarray(scale, jnp.float32)
  log_lo = _log_survival(a - 0.5, scale, family)
  log_hi = _log_survival(a + 0.5, scale, family)
  diff = jnp.minimum(log_hi - log_lo, -1e-7)
  log_p = log_lo + jnp.log1p(-jnp.exp(diff))
  # The central bin straddles 0: P(|Y| < ½) = 1 − 2S(½); the others are one-sided: S(|y| − ½) − S(|y| + ½).
  central = jnp.log1p(-2.0 * jnp.exp(_log_survival(jnp.full_like(a, 0.5), scale, family)))
  log_p = jnp.where(a < 0.5, central, log_p)
  return jnp.clip(-log_p / _LN2, 0.0, MAX_BITS)


def fit_scale(y: jax.Array, family: str = "laplace") -> jax.Array:
  """Moment estimate of the scale of zero-mean ``y``: Laplace ``mean|y|``, Gaussian ``rms``, logistic ``rms·√3/π``.

  Differentiable; floored at 1e-3 so the estimate stays finite on all-zero inputs.
  """
  if family == "laplace":
    s = jnp.mean(jnp.abs(y))
  elif family == "gaussian":
    s = jnp.sqrt(jnp.mean(jnp.square(y)))
  elif family == "logistic":
    s = jnp.sqrt(jnp.mean(jnp.square(y))) * math.sqrt(3.0) / math.pi
  else:
    raise ConfigError(f"rate: unknown family {family!r}, expected one of {FAMILIES}")
  return jnp.maximum(s, 1e-3)


def parametric_bits(y: jax.Array, family: str = "laplace") -> jax.Array:
  """Total bits of ``y`` under its own fitted scale: ``Σ family_bits(y, fit_scale(y))`` (table cost ≈ 0)."""
  return jnp.sum(family_bits(y, fit_scale(y, family), family))


def soft_histogram_bits(y: jax.Array, max_abs: int = 512) -> jax.Array:
  """``−Σ_i Σ_k m_ik log2 p̂_k`` with triangular bin memberships ``m_ik = max(0, 1 − |y_i − k|)`` and
  ``p̂_k = Σ_i m_ik / N`` over the integers ``k ∈ [−max_abs, max_abs]`` (``y`` clipped into that range).

  At integer ``y`` this is exactly ``N·H(codes)``, the empirical-entropy floor of a histogram coder; between
  integers it interpolates, so gradients flow to ``y``. Cost O(N + max_abs).

  Args:
    y: values in step units, any shape.
    max_abs: the largest magnitude binned (static).
  """
  flat = jnp.clip(jnp.ravel(y).astype(jnp.float32), -max_abs, max_abs)
  lower = jnp.floor(flat)
  frac = flat - lower
  idx = (lower + max_abs).astype(jnp.int32)
  n_bins = 2 * max_abs + 2
  mass = (jnp.zeros(n_bins, jnp.float32).at[idx].add(1.0 - frac).at[idx + 1].add(frac))
  p = mass / flat.size
  log_p = jnp.log2(jnp.where(p > 0, p, 1.0))
  return -jnp.sum((1.0 - frac) * log_p[idx] + frac * log_p[idx + 1])


def ste_round(y: jax.Array) -> jax.Array:
  """Rounds in the forward pass, identity gradient in the backward pass (straight-through estimator)."""
  return y + jax.lax.stop_gradient(jnp.round(y) - y)


def uniform_noise(y: jax.Array, key: jax.Array) -> jax.Array:
  """``y + u`` with ``u ~ U(−½, ½)``: the additive-noise relaxation of rounding used while training."""
  return y + jax.random.uniform(key, y.shape, y.dtype, -0.5, 0.5)
