"""GPTQ error feedback: exact no-op on uncorrelated inputs, lower output error on correlated ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax.errors import ConfigError, ShapeError
from macjax.quantize import Quantizer, dead_zone, gptq, rdoq, trellis, uniform
from macjax.quantize.gptq import ColumnStepsMeta, column_multipliers, damped_hessian, inverse_cholesky_upper


def _calibration(n=2048, cols=128, seed=0):
  """Correlated activations: a random mixing with a decaying spectrum, plus a few outlier features."""
  rng = np.random.default_rng(seed)
  Q, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
  spectrum = np.geomspace(10.0, 0.05, cols)
  X = rng.normal(size=(n, cols)) @ (Q * spectrum) @ Q.T
  X[:, :3] *= 8.0
  return X.astype(np.float32)


def _weights(rows=64, cols=128, seed=1):
  return np.random.default_rng(seed).normal(size=(rows, cols)).astype(np.float32)


def _output_error(X, W, W_hat):
  return float(np.linalg.norm(X @ (W - np.asarray(W_hat)).T) / np.linalg.norm(X @ W.T))


BASES = {
    "uniform": lambda: uniform(1 / 2),
    "uniform_g32": lambda: uniform(1 / 2, 32),
    "dead_zone": lambda: dead_zone(1 / 2, width=1.4, recon=0.45),
    "rdoq": lambda: rdoq(1 / 2, lam=0.05),
}


@pytest.mark.parametrize("name", list(BASES))
def test_gptq_lowers_output_error_on_correlated_inputs(name):
  base = BASES[name]()
  X, W = _calibration(), _weights()
  H = jnp.asarray(X.T @ X)
  q = gptq(base, block_size=32)
  codes, meta = jax.jit(q.quantize)(jnp.asarray(W), H)
  gptq_err = _output_error(X, W, q.dequantize(codes, meta))
  plain_err = _output_error(X, W, base.dequantize(*base.quantize(jnp.asarray(W))))
  assert gptq_err < 0.7 * plain_err


@pytest.mark.parametrize("order", ["natural", "descending"])
@pytest.mark.parametrize("name", ["uniform", "uniform_g32", "dead_zone"])
def test_diagonal_hessian_is_plain_quantization(name, order):
  # Also: act-order hands the codes back in the original column order, each on its own column's grid.
  base = BASES[name]()
  W = jnp.asarray(_weights())
  H = jnp.diag(jnp.asarray(np.random.default_rng(2).uniform(0.5, 2.0, 128), jnp.float32))
  codes, meta = gptq(base, block_size=16, order=order).quantize(W, H)
  plain_codes, plain_meta = base.quantize(W)
  np.testing.assert_array_equal(meta.step, plain_meta.step)
  assert np.mean(np.asarray(codes) == np.asarray(plain_codes)) > 0.999  # float ties aside


@pytest.mark.parametrize("name", ["uniform", "uniform_g32"])
def test_descending_order_is_no_worse_with_outlier_inputs(name):
  # The calibration has three loud inputs (x8) at the START; put them at the end so the natural order quantizes
  # them last, when no column is left to absorb their error; act-order visits them first.
  X, W = _calibration()[:, ::-1].copy(), _weights()
  H = jnp.asarray(X.T @ X)
  base = BASES[name]()
  err = {}
  for order in ("natural", "descending"):
    codes, meta = jax.jit(gptq(base, block_size=32, order=order).quantize)(jnp.asarray(W), H)
    err[order] = _output_error(X, W, base.dequantize(codes, meta))
  assert err["descending"] < err["natural"]


def test_block_size_does_not_change_the_result():
  X, W = _calibration(), _weights()
  H = jnp.asarray(X.T @ X)
  errs, codes = [], []
  for block in (1, 24, 128, 1000):  # 24 → 16, the largest divisor of 128 below it
    c, m = jax.jit(gptq(uniform(1 / 2), block_size=block).quantize)(jnp.asarray(W), H)
    codes.append(np.asarray(c))
    errs.append(_output_error(X, W, uniform(1 / 2).dequantize(c, m)))
  assert max(errs) - min(errs) < 0.01 * min(errs)
  assert all(np.mean(c == codes[0]) > 0.98 for c in codes)


def test_jit_equals_eager_and_vmap_equals_loop():
  X = _calibration()
  H = jnp.asarray(X.T @ X)
  Ws = jnp.asarray(np.stack([_weights(seed=s) for s in range(2)]))
  Hs = jnp.stack([H, H * 2.0])
  q = gptq(uniform(1 / 2), block_size=32)
  cv, mv = jax.vmap(q.quantize)(Ws, Hs)
  for i in range(2):
    c_eager, m_eager = q.quantize(Ws[i], Hs[i])
    c_jit, _ = jax.jit(q.quantize)(Ws[i], Hs[i])
    np.testing.assert_array_equal(c_eager, c_jit)
    assert np.mean(np.asarray(cv[i]) == np.asarray(c_jit)) > 0.999
    np.testing.assert_array_equal(mv.step[i], m_eager.step)


def test_dead_inputs_get_zero_codes():
  X, W = _calibration(), _weights()
  X[:, 10] = 0.0
  codes, _ = gptq(uniform(1 / 2), block_size=32).quantize(jnp.asarray(W), jnp.asarray(X.T @ X))
  assert np.all(np.asarray(codes)[:, 10] == 0)


def test_bad_arguments_raise():
  no_column = Quantizer(quantize=uniform().quantize, dequantize=uniform().dequantize)
  with pytest.raises(ConfigError, match="quantize_column"):
    gptq(no_column)
  with pytest.raises(ConfigError, match="block_size"):
    gptq(uniform(), block_size=0)
  with pytest.raises(ConfigError, match="damp"):
    gptq(uniform(), damp=0.0)
  with pytest.raises(ConfigError, match="order"):
    gptq(uniform(), order="act")
  with pytest.raises(ConfigError, match="column_steps"):
    gptq(uniform(), column_steps="hessian")
  with pytest.raises(ShapeError, match="H must be"):
    gptq(uniform()).quantize(jnp.zeros((4, 8)), jnp.eye(4))


def _entropy_per_column(codes) -> float:
  """Mean zeroth-order entropy of each column's codes (each column with its own table), bits per weight."""
  codes = np.asarray(codes)
  out = 0.0
  for j in range(codes.shape[1]):
    _, n = np.unique(codes[:, j], return_counts=True)
    p = n / n.sum()
    out -= float(np.sum(p * np.log2(p)))
  return out / codes.shape[1]


def test_curvature_column_steps_win_what_high_rate_theory_predicts():
  """At equal output error, steps ∝ U_jj save ½·log2(AM/GM) of GPTQ's column error weights 1/U_jj² (high rate,
  Gaussian weights, each column coded on its own)."""
  X = _calibration(n=4096, cols=64)
  X *= np.geomspace(0.1, 3.0, 64)[None, :].astype(np.float32)  # a wide curvature spread
  W = _weights(rows=2048, cols=64)
  H = jnp.asarray(X.T @ X)
  merit = {}
  for steps in ("none", "curvature"):
    q = gptq(uniform(1 / 16), column_steps=steps, order="descending")
    codes, meta = jax.jit(q.quantize)(jnp.asarray(W), H)
    err = _output_error(X, W, q.dequantize(codes, meta))
    merit[steps] = _entropy_per_column(codes) + np.log2(err)  # bits at equal error: ½·log2(err²)
  Hd, _ = damped_hessian(H[np.argsort(-np.diag(H))][:, np.argsort(-np.diag(H))], 0.01)
  weights = 1.0 / np.diag(np.asarray(inverse_cholesky_upper(Hd), np.float64)) ** 2
  predicted = 0.5 * (np.log2(weights.mean()) - np.mean(np.log2(weights)))
  assert predicted > 0.2
  assert merit["none"] - merit["curvature"] == pytest.approx(predicted, rel=0.15)


@pytest.mark.parametrize("base", ["uniform", "trellis"])
def test_curvature_column_steps_meta_and_exact_decode(base):
  X, W = _calibration(), _weights()
  X[:, 7] = 0.0  # a dead input
  H = jnp.asarray(X.T @ X)
  make = {"uniform": lambda: uniform(1 / 2), "trellis": lambda: trellis(1 / 2, axis="column")}[base]
  q = gptq(make(), block_size=32, column_steps="curvature", order="descending")
  codes, meta = jax.jit(q.quantize)(jnp.asarray(W), H)
  assert isinstance(meta, ColumnStepsMeta) and meta.exponent.dtype == jnp.int8 and meta.exponent.shape == (128,)
  e = np.asarray(meta.exponent, np.int32)
  assert e[7] == 0 and np.all(np.abs(e) <= 64) and abs(np.mean(np.delete(e, 7))) <= 0.5  # geometric mean ≈ 1
  assert np.std(e) > 2  # the calibration's spread reaches the steps
  expected = make().dequantize(codes, meta.base) * np.exp2(e / 8).astype(np.float32)[None, :]
  np.testing.assert_allclose(q.dequantize(codes, meta), expected, rtol=1e-6)
  np.testing.assert_array_equal(jax.jit(q.dequantize)(codes, meta), q.dequantize(codes, meta))
  c_eager, m_eager = q.quantize(jnp.asarray(W), H)
  assert np.mean(np.asarray(c_eager) == np.asarray(codes)) > 0.999
  np.testing.assert_array_equal(m_eager.exponent, meta.exponent)
  with pytest.raises(ShapeError, match="column exponents"):
    q.dequantize(codes, ColumnStepsMeta(meta.base, meta.exponent[:-1]))


def test_given_exponents_reproduce_curvature_steps_and_are_required():
  X, W = _calibration(), _weights()
  H = jnp.asarray(X.T @ X)
  c1, m1 = gptq(uniform(1 / 2), block_size=32, column_steps="curvature", order="descending").quantize(W, H)
  given = gptq(uniform(1 / 2), block_size=32, column_steps="given", order="descending")
  c2, m2 = given.quantize(W, H, 1.0, m1.exponent)
  np.testing.assert_array_equal(c1, c2)
  np.testing.assert_array_equal(m1.exponent, m2.exponent)
  with pytest.raises(ShapeError, match="given"):
    given.quantize(W, H)


def test_column_multipliers_cover_every_int8_exponent():
  e = jnp.arange(-128, 128, dtype=jnp.int32).astype(jnp.int8)
  m = np.asarray(column_multipliers(e))
  assert np.all(np.isfinite(m)) and np.all(np.diff(m) > 0)
  np.testing.assert_allclose(m, 2.0 ** (np.arange(-128, 128) / 8), rtol=1e-6)
