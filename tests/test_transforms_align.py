"""What PCA alignment and channel scaling do, beyond the generic properties of tests/test_transforms.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax import transforms as T
from macjax.errors import ConfigError, ShapeError


def _lowrank(key, out, d, r=4):
  k1, k2, k3 = jax.random.split(key, 3)
  return jax.random.normal(k1, (out, r)) @ jax.random.normal(k2, (r, d)) + 0.01 * jax.random.normal(k3, (out, d))


def test_pca_concentrates_energy_in_the_leading_coordinates():
  W = _lowrank(jax.random.key(0), 64, 48)
  t = T.pca(side="input")
  W2 = t.apply(W, t.init(W))
  energy = jnp.sum(W2**2, axis=0) / jnp.sum(W2**2)
  assert float(jnp.sum(energy[:4])) > 0.99  # rank 4 + noise: four coordinates hold the energy
  assert bool(jnp.all(jnp.diff(energy) <= 1e-6))  # ordered by decreasing energy


def test_pca_from_activations_uses_the_given_covariance():
  d = 16
  C = jnp.diag(jnp.arange(1.0, d + 1))  # input channel d-1 has the largest variance
  t = T.pca(side="input", source="activations", storage_dtype=jnp.float32)
  s = t.init(jnp.ones((4, d)), stats=C)
  np.testing.assert_allclose(s.basis[0][:, 0], jnp.eye(d)[:, d - 1], atol=1e-6)


def test_pca_head_scope_is_block_diagonal():
  W = jax.random.normal(jax.random.key(0), (32, 12))
  t = T.pca(side="output", scope="head", block_size=8)
  s = t.init(W)
  assert s.basis.shape == (4, 8, 8)
  W2 = t.apply(W, s)
  # rows of head 1 mix only among themselves
  Wp = W.at[8:16].set(0.0)
  np.testing.assert_allclose(t.apply(Wp, s)[8:16], 0.0, atol=1e-6)
  np.testing.assert_allclose(t.apply(Wp, s)[:8], W2[:8], atol=1e-5)


def test_shared_basis_fit_on_a_stack_is_counted_once():
  Ws = jax.random.normal(jax.random.key(0), (5, 16, 24))
  t = T.pca(side="input")
  shared = t.init(Ws)
  per_layer = jax.vmap(t.init)(Ws)
  assert t.state_bits(shared) == 24 * 24 * 16
  assert t.state_bits(per_layer) == 5 * 24 * 24 * 16
  back = t.inverse(t.apply(Ws, shared), shared)
  np.testing.assert_allclose(back, Ws, atol=1e-5)
  # the shared basis is the PCA of all rows of all layers
  expected = T.pca(side="input").init(Ws.reshape(-1, 24))
  np.testing.assert_allclose(shared.basis.astype(jnp.float32), expected.basis.astype(jnp.float32), atol=1e-3)


def test_stored_float16_basis_still_inverts_exactly():
  W = jax.random.normal(jax.random.key(0), (8, 96))
  t = T.pca(side="input")
  s = t.init(W)
  assert s.basis.dtype == jnp.float16
  np.testing.assert_allclose(t.inverse(t.apply(W, s), s), W, atol=2e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(scope="head"), "needs block_size"),
    (dict(scope="matrix", block_size=8), "block_size=8 with scope='matrix'"),
    (dict(scope="rows"), "scope='rows'"),
    (dict(source="hessian"), "source='hessian'"),
    (dict(side="both"), "side='both'"),
], ids=["head-no-size", "matrix-with-size", "bad-scope", "bad-source", "bad-side"])
def test_pca_config_errors(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    T.pca(**kwargs)


def test_pca_shape_errors_name_the_tensor():
  with pytest.raises(ShapeError, match=r"weight W of shape \(4, 10\) has input dimension 10, not a multiple"):
    T.pca(scope="group", block_size=4).init(jnp.ones((4, 10)))
  with pytest.raises(ShapeError, match=r"stats has shape \(3, 3\); expected the \(10, 10\)"):
    T.pca(source="activations").init(jnp.ones((4, 10)), stats=jnp.eye(3))
  with pytest.raises(ConfigError, match="needs stats"):
    T.pca(source="activations").init(jnp.ones((4, 10)))


def test_smoothquant_balances_column_maxima():
  key = jax.random.key(0)
  W = jax.random.normal(key, (32, 16))
  a = jnp.linspace(0.5, 50.0, 16)
  t = T.channel_scaling(alpha=0.5, storage_dtype=jnp.float32)
  W2 = t.apply(W, t.init(W, stats=a))
  w = jnp.max(jnp.abs(W), axis=0)
  np.testing.assert_allclose(jnp.max(jnp.abs(W2), axis=0), jnp.sqrt(a * w), rtol=1e-5)
  # the layer's function is unchanged when the inputs are divided by s
  s = t.init(W, stats=a).scale
  x = jax.random.normal(key, (16,)) * a
  np.testing.assert_allclose(W2 @ (x / s), W @ x, rtol=1e-4, atol=1e-4)


def test_power_of_two_scaling_is_bit_exact():
  W = jax.random.normal(jax.random.key(0), (32, 16)) * 1e-3
  t = T.channel_scaling(alpha=0.7, power_of_two=True)
  s = t.init(W, stats=jnp.logspace(-2, 3, 16))
  assert s.scale.dtype == jnp.int8
  np.testing.assert_array_equal(t.inverse(t.apply(W, s), s), W)
  np.testing.assert_array_equal(jax.jit(t.inverse)(jax.jit(t.apply)(W, s), s), W)


def test_scaling_errors():
  with pytest.raises(ConfigError, match="alpha=1.5"):
    T.channel_scaling(alpha=1.5)
  with pytest.raises(ConfigError, match="stats is None"):
    T.channel_scaling().init(jnp.ones((3, 4)))
  with pytest.raises(ShapeError, match=r"stats has shape \(3,\); expected \(4,\)"):
    T.channel_scaling().init(jnp.ones((3, 4)), stats=jnp.ones(3))
