"""Properties of the dead-zone quantizer, and its rate gain at equal distortion on a Laplacian source."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax.coding import encode
from macjax.errors import ConfigError
from macjax.quantize import dead_zone, uniform


def _laplace(rows=64, cols=256, seed=0):
  return np.random.default_rng(seed).laplace(size=(rows, cols)).astype(np.float32)


@pytest.mark.parametrize("width,recon", [(1.0, 0.5), (1.5, 0.4), (2.0, 0.3), (3.0, 0.5)],
                         ids=["plain", "z1.5", "z2", "z3"])
@pytest.mark.parametrize("group_size", [None, 64], ids=["row", "g64"])
def test_error_bound(width, recon, group_size):
  W = _laplace()
  q = dead_zone(1 / 4, group_size, width=width, recon=recon)
  codes, meta = q.quantize(jnp.asarray(W))
  err = np.abs(W - np.asarray(q.dequantize(codes, meta)))
  step = np.repeat(np.asarray(meta.step), W.shape[1] // meta.step.shape[1], axis=1)
  bound = max(width / 2, recon, 1 - recon) * step * (1 + 1e-5) + 4 * np.finfo(np.float32).eps * np.abs(W)
  assert np.all(err <= bound)
  # The dead zone: everything below z·Δ/2 in magnitude is zero, nothing above it is.
  a = np.abs(W) / step
  assert np.all(np.asarray(codes)[a < width / 2 * (1 - 1e-6)] == 0)
  assert np.all(np.asarray(codes)[a > width / 2 * (1 + 1e-6)] != 0)


def test_plain_setting_equals_uniform_up_to_ties():
  W = jnp.asarray(_laplace())
  cu, mu = uniform(1 / 4).quantize(W)
  cd, md = dead_zone(1 / 4, width=1.0, recon=0.5).quantize(W)
  np.testing.assert_array_equal(mu.step, md.step)
  assert np.mean(np.asarray(cu) == np.asarray(cd)) > 0.999  # they differ only on exact .5 ties


def test_jit_and_vmap():
  q = dead_zone(1 / 4, 32, width=1.6, recon=0.4)
  stack = jnp.asarray(np.stack([_laplace(seed=s) for s in range(3)]))
  cv, mv = jax.vmap(q.quantize)(stack)
  for i in range(3):
    c, m = jax.jit(q.quantize)(stack[i])
    np.testing.assert_array_equal(cv[i], c)
    np.testing.assert_array_equal(jax.vmap(q.dequantize)(cv, mv)[i], q.dequantize(c, m))


def test_quantize_column_matches_full_quantize():
  W = jnp.asarray(_laplace())
  q = dead_zone(1 / 4, 64, width=1.8, recon=0.4)
  codes, meta = q.quantize(W)
  W_hat = q.dequantize(codes, meta)
  for j in (0, 63, 64, 255):
    c, w = q.quantize_column(W[:, j], meta, j, W.shape[1])
    np.testing.assert_array_equal(c, codes[:, j])
    np.testing.assert_array_equal(w, W_hat[:, j])


def _rate_distortion(q, W):
  codes, meta = q.quantize(jnp.asarray(W))
  coded = encode(np.asarray(codes))
  bits = 32 * coded.words.size + 8 * coded.table.size
  mse = float(np.mean((W - np.asarray(q.dequantize(codes, meta))) ** 2))
  return bits / W.size, mse


@pytest.mark.parametrize("step,width,recon,min_gain", [(1.4, 2.0, 0.4, 0.08), (0.7, 1.2, 0.4, 0.02)],
                         ids=["1bit", "2.5bit"])
def test_dead_zone_lowers_rate_at_equal_distortion_on_laplacian(step, width, recon, min_gain):
  W = _laplace(rows=256, cols=1024, seed=1)  # 262k samples
  rate, mse = _rate_distortion(dead_zone(step, width=width, recon=recon), W)
  # The uniform quantizer's operational R(D) curve (real coded bits), interpolated at the dead-zone's distortion.
  curve = [_rate_distortion(uniform(s), W) for s in np.geomspace(step / 2, step * 2, 15)]
  rates, mses = np.array(curve).T
  order = np.argsort(mses)
  uniform_rate = float(np.interp(np.log(mse), np.log(mses[order]), rates[order]))
  assert rate <= uniform_rate - min_gain


@pytest.mark.parametrize("kw", [dict(width=0.5), dict(recon=1.5), dict(step=-1.0), dict(group_size=0)],
                         ids=["width", "recon", "step", "group"])
def test_bad_knobs_raise(kw):
  with pytest.raises(ConfigError):
    dead_zone(**kw)
