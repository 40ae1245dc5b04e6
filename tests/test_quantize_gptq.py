"""GPTQ error feedback: exact no-op on uncorrelated inputs, lower output error on correlated ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax.errors import ConfigError, ShapeError
from macjax.quantize import Quantizer, dead_zone, gptq, rdoq, uniform


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
  with pytest.raises(ShapeError, match="H must be"):
    gptq(uniform()).quantize(jnp.zeros((4, 8)), jnp.eye(4))
