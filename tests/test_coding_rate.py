"""The differentiable JAX rate estimates against the real coder's bits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax.coding import coded_bits, encode, rate
from macjax.errors import ConfigError

DRAWS = {"laplace": "laplace", "gaussian": "normal", "logistic": "logistic"}


def _integers(family: str, scale: float, n: int = 200_000, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.round(getattr(rng, DRAWS[family])(scale=scale, size=n)).astype(np.int32)


@pytest.mark.parametrize("scale", [0.3, 2.0, 25.0], ids=["sparse", "medium", "wide"])
def test_soft_histogram_bits_is_empirical_entropy_at_integers_and_below_coded(scale):
  x = _integers("laplace", scale)
  _, counts = np.unique(x, return_counts=True)
  p = counts / x.size
  empirical = -x.size * float(np.sum(p * np.log2(p)))
  est = float(jax.jit(rate.soft_histogram_bits)(jnp.asarray(x, jnp.float32)))
  assert est == pytest.approx(empirical, rel=1e-4)
  coded = coded_bits(encode(x, model="histogram"))["words"]
  assert est <= coded <= 1.002 * est


@pytest.mark.parametrize("family", ["laplace", "gaussian", "logistic"])
@pytest.mark.parametrize("scale", [1.0, 4.0, 20.0], ids=["s1", "s4", "s20"])
def test_parametric_estimate_within_one_percent_of_coded_bits(family, scale):
  x = _integers(family, scale)
  est = float(jax.jit(rate.parametric_bits, static_argnums=1)(jnp.asarray(x, jnp.float32), family))
  coded = coded_bits(encode(x, model=family))["words"]
  assert coded == pytest.approx(est, rel=0.01)


@pytest.mark.parametrize("family", rate.FAMILIES)
def test_family_bits_symmetric_monotone_and_floored(family):
  bits = jax.jit(lambda v: rate.family_bits(v, 2.0, family))
  y = jnp.arange(0.0, 400.0)
  b = bits(y)
  np.testing.assert_allclose(b, bits(-y))
  assert np.all(np.diff(np.asarray(b)) >= -1e-5)
  assert float(b[-1]) <= rate.MAX_BITS and float(b[0]) >= 0
  # Probabilities of all integer bins of a wide range sum to ≈ 1.
  ys = jnp.arange(-300.0, 301.0)
  assert float(jnp.sum(2.0 ** -bits(ys))) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("family", rate.FAMILIES)
def test_gradients_are_finite_and_point_the_right_way(family):
  y = jnp.asarray(np.random.default_rng(1).laplace(scale=3.0, size=5000), jnp.float32)
  y = y.at[:10].set(0.0).at[10].set(500.0)
  g_scale = jax.jit(jax.grad(lambda a: rate.parametric_bits(a * y, family)))(1.0)
  assert np.isfinite(g_scale) and g_scale > 0  # spreading the values out costs bits
  g_y = jax.jit(jax.grad(lambda v: jnp.sum(rate.family_bits(v, 3.0, family))))(y)
  assert np.all(np.isfinite(g_y))
  g_hist = jax.jit(jax.grad(lambda a: rate.soft_histogram_bits(a * y)))(1.0)
  assert np.isfinite(g_hist) and g_hist > 0


def test_jit_equals_eager():
  y = jnp.asarray(_integers("gaussian", 3.0, n=10_000), jnp.float32)
  for family in ("laplace",):
    eager = rate.parametric_bits(y, family)
    jitted = jax.jit(rate.parametric_bits, static_argnums=1)(y, family)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5)
  np.testing.assert_allclose(rate.soft_histogram_bits(y), jax.jit(rate.soft_histogram_bits)(y), rtol=1e-5)


def test_relaxations():
  y = jnp.array([0.2, 1.7, -2.5])
  np.testing.assert_array_equal(jax.jit(rate.ste_round)(y), jnp.round(y))
  np.testing.assert_array_equal(jax.jit(jax.grad(lambda v: jnp.sum(rate.ste_round(v))))(y), jnp.ones(3))
  noisy = jax.jit(rate.uniform_noise)(jnp.zeros(1000), jax.random.key(0))
  assert float(jnp.max(jnp.abs(noisy))) <= 0.5


def test_unknown_family_raises():
  with pytest.raises(ConfigError, match="family"):
    rate.family_bits(jnp.zeros(3), 1.0, "cauchy")
