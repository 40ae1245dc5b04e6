"""Sensitivity-driven bit allocation: equal-slope step multipliers, a global step for a target rate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax.errors import ConfigError, ShapeError
from macjax.quantize import allocation, trellis, uniform


def _matrices(seed=0):
  rng = np.random.default_rng(seed)
  return {"a": rng.laplace(scale=0.02, size=(64, 128)).astype(np.float32),
          "b": rng.normal(scale=0.05, size=(128, 64)).astype(np.float32)}


def test_equal_slope_scales_follow_inverse_sqrt_sensitivity():
  c = allocation.equal_slope_scales({"a": 9.0, "b": 1.0, "c": 1.0}, {"a": 10, "b": 10, "c": 20})
  assert c["a"] / c["b"] == pytest.approx(1 / 3)
  assert c["b"] == pytest.approx(c["c"])
  assert np.exp((10 * np.log(c["a"]) + 10 * np.log(c["b"]) + 20 * np.log(c["c"])) / 40) == pytest.approx(1.0)


def test_equal_slope_lowers_weighted_distortion_at_equal_rate():
  # Two matrices, one 16x more sensitive: equal-slope steps beat equal steps on Σ s_i·MSE_i at the same entropy.
  mats = _matrices()
  sens = {"a": 16.0, "b": 1.0}
  sizes = {k: W.size for k, W in mats.items()}
  q = uniform(1.0, scope="absolute")
  scales = allocation.equal_slope_scales(sens, sizes)
  results = {}
  for name, sc in (("equal", {k: 1.0 for k in mats}), ("slope", scales)):
    base = allocation.base_step_for_rate(q, mats, 3.0, sc)
    weighted = 0.0
    for k, W in mats.items():
      codes, meta = q.quantize(jnp.asarray(W), step_scale=base * sc[k])
      weighted += sens[k] * float(np.sum((W - np.asarray(q.dequantize(codes, meta))) ** 2))
    results[name] = weighted
  assert results["slope"] < 0.9 * results["equal"]


@pytest.mark.parametrize("target", [1.5, 3.0, 5.0])
def test_base_step_for_rate_hits_the_target(target):
  mats = _matrices()
  q = uniform(1.0, scope="absolute")
  base = allocation.base_step_for_rate(q, mats, target)
  n = sum(W.size for W in mats.values())
  bits = sum(allocation.empirical_bits(q.quantize(jnp.asarray(W), step_scale=base)[0]) for W in mats.values())
  assert bits / n == pytest.approx(target, rel=0.01)


def test_step_scale_is_traced_and_equals_a_scaled_step():
  W = jnp.asarray(_matrices()["a"])
  q = jax.jit(trellis(0.25, lam=0.1).quantize)
  c1, m1 = q(W, step_scale=2.0)
  c2, m2 = trellis(0.5, lam=0.1).quantize(W)
  np.testing.assert_array_equal(m1.step, m2.step)
  np.testing.assert_array_equal(c1, c2)


def test_bad_inputs_raise():
  with pytest.raises(ConfigError, match="sensitivities"):
    allocation.equal_slope_scales({"a": 0.0}, {"a": 1})
  with pytest.raises(ConfigError, match="different"):
    allocation.equal_slope_scales({"a": 1.0}, {"b": 1})
  with pytest.raises(ShapeError, match="square"):
    allocation.input_sensitivity(np.zeros((2, 3)))
  with pytest.raises(ConfigError, match="outside"):
    allocation.base_step_for_rate(uniform(1.0, scope="absolute"), _matrices(), 40.0)
  assert allocation.input_sensitivity(np.diag([1.0, 3.0])) == 2.0
