"""Generated Hadamard matrices and the paths each model dimension takes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax import transforms as T
from macjax.errors import ConfigError
from macjax.transforms import hadamard as H

ORDERS = [2, 4, 12, 20, 28, 36, 44, 52, 60, 100, 108, 148, 344]


@pytest.mark.parametrize("n", ORDERS, ids=[f"n{n}" for n in ORDERS])
def test_generated_matrices_are_hadamard(n):
  M = H.hadamard_matrix(n)
  assert set(np.unique(M)) <= {-1, 1}
  np.testing.assert_array_equal(M @ M.T, n * np.eye(n, dtype=np.int64))


@pytest.mark.parametrize("q,expected", [(7, [0, 1, 1, -1, 1, -1, -1]), (9, None), (27, None), (343, None)],
                         ids=["q7", "q9", "q27", "q343"])
def test_quadratic_character_of_finite_fields(q, expected):
  chi = H.quadratic_character(q)
  if expected is not None:
    assert chi.tolist() == expected
  assert chi[0] == 0 and int((chi == 1).sum()) == (q - 1) // 2 == int((chi == -1).sum())


# dimension -> (path, factors): the table the module docstring promises.
PLANS = {
    384: ("paley", [("sylvester", 32), ("paley1", 12)]),
    576: ("paley", [("sylvester", 16), ("paley2", 36)]),
    1536: ("paley", [("sylvester", 128), ("paley1", 12)]),
    2048: ("sylvester", [("sylvester", 128), ("sylvester", 16)]),
    5632: ("paley", [("sylvester", 128), ("paley1", 44)]),
    11008: ("paley", [("sylvester", 32), ("paley1", 344)]),
    14336: ("paley", [("sylvester", 128), ("sylvester", 4), ("paley1", 28)]),
    18944: ("paley", [("sylvester", 128), ("paley2", 148)]),
    385: ("fallback", [("orthogonal", 385)]),
    30: ("fallback", [("sylvester", 2), ("orthogonal", 15)]),
}


@pytest.mark.parametrize("d", list(PLANS), ids=[f"d{d}" for d in PLANS])
def test_plan_of_real_dimensions(d):
  plan = H.hadamard_plan(d)
  path, factors = PLANS[d]
  assert plan.path == path
  assert [(f.kind, f.order) for f in plan.factors] == factors
  assert int(np.prod([f.order for f in plan.factors])) == d


def test_172_has_no_paley_construction_and_is_not_needed_for_11008():
  assert H.paley_kind(172) is None
  with pytest.raises(ConfigError, match="no Hadamard construction"):
    H.hadamard_matrix(30)


def test_kron_matmul_equals_dense_kron():
  key = jax.random.key(0)
  A, B, C = (jax.random.normal(k, (n, n)) for k, n in zip(jax.random.split(key, 3), (2, 3, 4)))
  X = jax.random.normal(key, (5, 24))
  np.testing.assert_allclose(H.kron_matmul(X, [A, B, C]), X @ jnp.kron(jnp.kron(A, B), C), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [384, 576, 100, 30], ids=["d384", "d576", "d100", "d30-fallback"])
def test_rotation_is_orthogonal_and_flat(d):
  t = T.randomized_hadamard(side="input")
  eye = jnp.eye(d)
  Q = t.apply(eye, t.init(eye, key=jax.random.key(0)))
  np.testing.assert_allclose(Q.T @ Q, np.eye(d), atol=1e-5)
  if H.hadamard_plan(d).path != "fallback":  # every entry ±1/√d: the flattest possible rotation
    np.testing.assert_allclose(jnp.abs(Q), 1 / np.sqrt(d), rtol=1e-5)
    dense = np.asarray(H.hadamard_matrix(d)) / np.sqrt(d)
    np.testing.assert_allclose(jnp.abs(Q), np.abs(dense), rtol=1e-5)  # the factored product is that matrix


def test_hadamard_flattens_an_outlier():
  W = jnp.zeros((1, 576)).at[0, 7].set(1.0)
  t = T.randomized_hadamard(side="input")
  W2 = t.apply(W, t.init(W, key=jax.random.key(0)))
  assert float(jnp.max(jnp.abs(W2))) == pytest.approx(1 / 24, rel=1e-5)
