"""The learned rotation: it lowers its objective, deterministically, and its pieces are what they claim."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax import transforms as T
from macjax.errors import ConfigError, ShapeError


def _weight(key=0, shape=(96, 24)):
  W = jax.random.normal(jax.random.key(key), shape)
  return W * (1.0 + 6.0 * (jnp.arange(shape[1]) % 7 == 0))  # outlier input channels


def _cov(d, key=2):
  X = jax.random.normal(jax.random.key(key), (256, d)) * jnp.linspace(0.1, 3.0, d)
  return X.T @ X / X.shape[0]


def _rotation(t, state, side, d):
  eye = jnp.eye(d)
  Q = t.apply(eye, state)
  return Q if side == "input" else Q.T


def _code_entropy(z, step):
  _, counts = np.unique(np.round(np.asarray(z) / step).astype(np.int64), return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("objective,side,init", [
    ("kurtosis", "input", "identity"),
    ("rate", "output", "orthogonal"),
    ("rate_distortion", "input", "hadamard"),
], ids=["kurtosis-in", "rate-out", "rd-in"])
def test_learned_rotation_lowers_its_objective(objective, side, init):
  W = _weight()
  d = W.shape[-1] if side == "input" else W.shape[-2]
  C = _cov(W.shape[-1])
  t = T.learned_rotation(objective=objective, side=side, init=init, steps=60, learning_rate=2e-2)
  state = t.init(W, key=jax.random.key(1), stats=C)
  start = state._replace(skew=jnp.zeros_like(state.skew))
  f = T.rotation_objective(objective, side=side)
  before = float(f(W, _rotation(t, start, side, d), C))
  after = float(f(W, _rotation(t, state, side, d), C))
  assert after < before - 0.05 * abs(before), (before, after)
  np.testing.assert_allclose(t.inverse(t.apply(W, state), state), W, atol=1e-5 * float(jnp.max(jnp.abs(W))))


def test_rate_proxy_tracks_the_real_code_entropy():
  W = _weight()
  t = T.learned_rotation(objective="rate", init="hadamard", steps=60, learning_rate=2e-2)
  state = t.init(W, key=jax.random.key(1))
  step = 0.25 * float(jnp.sqrt(jnp.mean(W**2)))
  W0 = t.apply(W, state._replace(skew=jnp.zeros_like(state.skew)))
  W1 = t.apply(W, state)
  assert _code_entropy(W1, step) < _code_entropy(W0, step) - 0.05


def test_learned_rotation_is_deterministic_from_the_key():
  W = _weight(shape=(32, 16))
  t = T.learned_rotation(objective="rate", steps=10)
  a = t.init(W, key=jax.random.key(3))
  b = t.init(W, key=jax.random.key(3))
  c = t.init(W, key=jax.random.key(4))
  np.testing.assert_array_equal(a.skew, b.skew)
  assert not np.array_equal(a.skew, c.skew)


def test_cayley_is_orthogonal():
  P = jax.random.normal(jax.random.key(0), (10, 10))
  Q = T.cayley(P - P.T)
  np.testing.assert_allclose(Q.T @ Q, np.eye(10), atol=1e-5)


def test_soft_entropy_equals_code_entropy_on_integer_coefficients():
  z = jnp.array([0.0, 0.0, 1.0, -1.0, 2.0, 0.0, 1.0, 0.0])
  assert float(T.soft_code_entropy(z, 1.0)) == pytest.approx(_code_entropy(z, 1.0), abs=1e-6)
  assert float(T.soft_code_entropy(z * 0.5, 0.5)) == pytest.approx(_code_entropy(z, 1.0), abs=1e-6)


def test_learned_rotation_errors():
  with pytest.raises(ConfigError, match="objective='l1'"):
    T.learned_rotation(objective="l1")
  with pytest.raises(ConfigError, match="init='dct'"):
    T.learned_rotation(init="dct")
  with pytest.raises(ConfigError, match="needs stats"):
    T.learned_rotation(objective="rate_distortion").init(jnp.ones((4, 4)), key=jax.random.key(0))
  with pytest.raises(ShapeError, match="expected one matrix"):
    T.learned_rotation().init(jnp.ones((2, 4, 4)), key=jax.random.key(0))
  with pytest.raises(ConfigError, match="key is None"):
    T.learned_rotation(init="hadamard").init(jnp.ones((4, 4)))
