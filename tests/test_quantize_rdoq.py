"""RDOQ: plain rounding at λ = 0, only the allowed moves, and a rate gain at equal distortion on a Laplacian."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax.coding import encode
from macjax.errors import ConfigError
from macjax.quantize import QUANTIZERS, UniformMeta, rdoq, uniform


def _laplace(rows=64, cols=256, seed=0):
  return np.random.default_rng(seed).laplace(size=(rows, cols)).astype(np.float32)


@pytest.mark.parametrize("group_size", [None, 64], ids=["row", "g64"])
def test_lambda_zero_is_plain_rounding(group_size):
  W = jnp.asarray(_laplace())
  c, m = rdoq(1 / 4, group_size, lam=0.0).quantize(W)
  cu, mu = uniform(1 / 4, group_size).quantize(W)
  np.testing.assert_array_equal(c, cu)
  np.testing.assert_array_equal(m.step, mu.step)


@pytest.mark.parametrize("lam", [0.05, 0.3, 2.0], ids=["small", "medium", "huge"])
def test_codes_only_move_towards_zero(lam):
  W = jnp.asarray(_laplace())
  c, m = rdoq(1 / 2, lam=lam).quantize(W)
  cu, _ = uniform(1 / 2).quantize(W)
  c, cu = np.asarray(c), np.asarray(cu)
  moved = c != cu
  assert isinstance(m, UniformMeta)
  assert np.all((c[moved] == 0) | (c[moved] == cu[moved] - np.sign(cu[moved])))
  assert np.all(np.abs(c) <= np.abs(cu))


def test_larger_lambda_fewer_nonzeros():
  W = jnp.asarray(_laplace())
  nz = [float(jnp.mean(rdoq(1 / 2, lam=lam).quantize(W)[0] != 0)) for lam in (0.0, 0.1, 0.3)]
  assert nz[0] > nz[1] > nz[2]


def test_jit_vmap_and_column():
  q = rdoq(1 / 2, 32, lam=0.1)
  stack = jnp.asarray(np.stack([_laplace(seed=s) for s in range(3)]))
  cv, mv = jax.vmap(q.quantize)(stack)
  for i in range(3):
    c, m = jax.jit(q.quantize)(stack[i])
    np.testing.assert_array_equal(cv[i], c)
    np.testing.assert_array_equal(mv.step[i], m.step)
  codes, w_hat = jax.jit(q.quantize_column, static_argnums=3)(stack[2][:, 5], m, 5, 256)
  assert codes.shape == (64,) and w_hat.shape == (64,)
  np.testing.assert_array_equal(w_hat, codes * m.step[:, 0])


def _rate_distortion(q, W, jit=False):
  codes, meta = (jax.jit(q.quantize) if jit else q.quantize)(jnp.asarray(W))
  coded = encode(np.asarray(codes))
  bits = 32 * coded.words.size + 8 * coded.table.size
  return bits / W.size, float(np.mean((W - np.asarray(q.dequantize(codes, meta))) ** 2))


@pytest.mark.parametrize("step,lam,min_gain", [(1.0, 0.1, 0.04), (1.4, 0.1, 0.07)], ids=["2bit", "1.4bit"])
def test_rdoq_lowers_rate_at_equal_distortion_on_laplacian(step, lam, min_gain):
  W = _laplace(rows=256, cols=1024, seed=1)
  rate, mse = _rate_distortion(rdoq(step, lam=lam), W, jit=True)
  curve = [_rate_distortion(uniform(s), W) for s in np.geomspace(step / 2, step * 2, 15)]
  rates, mses = np.array(curve).T
  order = np.argsort(mses)
  uniform_rate = float(np.interp(np.log(mse), np.log(mses[order]), rates[order]))
  assert rate <= uniform_rate - min_gain


@pytest.mark.parametrize("kw", [dict(lam=-1.0), dict(iters=0), dict(max_abs=0), dict(step=0.0)],
                         ids=["lam", "iters", "max_abs", "step"])
def test_bad_knobs_raise(kw):
  with pytest.raises(ConfigError):
    rdoq(**kw)


def test_registered_for_configs():
  assert QUANTIZERS["rdoq"] is rdoq
