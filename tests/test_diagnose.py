"""Diagnostics on distributions whose answers are known."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax import diagnose as D
from macjax import transforms as T
from macjax.errors import ConfigError, ShapeError
from macjax.transforms.orthogonal import random_orthogonal_matrix


@pytest.mark.parametrize("sampler,expected,tol", [
    (jax.random.normal, 3.0, 0.1),
    (jax.random.laplace, 6.0, 0.6),  # sd of the estimate ≈ sqrt((8!/16 − 36)/N) ≈ 0.11 at N = 2e5
    (lambda k, s: jax.random.uniform(k, s, minval=-1, maxval=1), 1.8, 0.05),
], ids=["gaussian", "laplace", "uniform"])
def test_kurtosis_of_known_distributions(sampler, expected, tol):
  W = sampler(jax.random.key(0), (400, 500))
  assert float(D.kurtosis(W)) == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("r", [1, 5, 20])
def test_effective_rank_of_rank_r_matrices(r):
  k1, k2 = jax.random.split(jax.random.key(r))
  U = random_orthogonal_matrix(k1, 64)[:, :r]
  V = random_orthogonal_matrix(k2, 48)[:, :r]
  flat = 3.0 * U @ V.T  # r equal singular values: both measures are exactly r
  assert float(D.effective_rank(flat)) == pytest.approx(r, rel=1e-3)
  assert float(D.participation_ratio(flat)) == pytest.approx(r, rel=1e-3)
  gauss = jax.random.normal(k1, (64, r)) @ jax.random.normal(k2, (r, 48))  # spread spectrum: at most r
  assert 0.6 * r <= float(D.effective_rank(gauss)) <= r * 1.001
  assert 0.4 * r <= float(D.participation_ratio(gauss)) <= r * 1.001


def test_max_to_rms_and_top_energy():
  x = jnp.zeros((10, 10)).at[3, 4].set(5.0)
  assert float(D.max_to_rms(x)) == pytest.approx(10.0)  # one-hot of N entries: sqrt(N)
  assert float(D.top_energy_ratio(x)) == pytest.approx(1.0)
  flat = jnp.ones((100, 100))
  assert float(D.top_energy_ratio(flat)) == pytest.approx(0.01)
  assert float(D.max_to_rms(flat)) == pytest.approx(1.0)


def test_code_entropy_of_known_sources():
  key = jax.random.key(0)
  W = jax.random.normal(key, (400, 500))
  # high-rate Gaussian: h(N(0,1)) − log2(1/4) = 0.5·log2(2πe) + 2
  assert float(D.code_entropy(W, step_rel=0.25)) == pytest.approx(0.5 * math.log2(2 * math.pi * math.e) + 2, abs=0.02)
  codes = jax.random.randint(key, (64, 64), 0, 8).astype(jnp.float32)  # uniform on 8 values: 3 bits
  assert float(D.code_entropy(codes - 3.0, step_rel=1.0 / float(jnp.std(codes)))) == pytest.approx(3.0, abs=0.01)


def test_jit_and_vmap_agree_with_eager_and_loop():
  Ws = jax.random.laplace(jax.random.key(0), (3, 32, 24))
  stacked = jax.vmap(D.matrix_stats)(Ws)
  jitted = jax.jit(D.matrix_stats)(Ws[1])
  for i in range(3):
    one = D.matrix_stats(Ws[i])
    for a, b in zip(one, jax.tree.map(lambda x: x[i], stacked)):
      np.testing.assert_allclose(a, b, rtol=1e-5)
  for a, b in zip(jitted, D.matrix_stats(Ws[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_rotation_flattens_alignment_concentrates():
  key = jax.random.key(0)
  k1, k2, k3 = jax.random.split(key, 3)
  W = (jax.random.normal(k1, (128, 6)) @ jax.random.normal(k2, (6, 96)) + 0.05 * jax.random.normal(k3, (128, 96)))
  W = W * (1.0 + 8.0 * (jnp.arange(96) % 31 == 0))  # outlier channels
  table = D.stats_by_coordinates(W, {"identity": T.identity(), "hadamard": T.randomized_hadamard(),
                                     "pca": T.pca(side="input")}, key=jax.random.key(1))
  ident, had, pca = (table[n][0] for n in ("identity", "hadamard", "pca"))
  assert float(had.kurtosis) < float(ident.kurtosis)
  assert float(pca.top_energy_ratio) > float(had.top_energy_ratio)
  assert float(pca.code_entropy) < float(had.code_entropy)
  assert table["hadamard"][1] == 0 and table["pca"][1] == 96 * 96 * 16


def test_diagnose_errors():
  with pytest.raises(ShapeError, match=r"shape \(2, 3, 4\); expected one matrix"):
    D.effective_rank(jnp.ones((2, 3, 4)))
  with pytest.raises(ConfigError, match="fraction=0"):
    D.top_energy_ratio(jnp.ones((3, 3)), fraction=0)
  with pytest.raises(ConfigError, match="step_rel=-1"):
    D.code_entropy(jnp.ones((3, 3)), step_rel=-1)
