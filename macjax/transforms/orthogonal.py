"""Random orthogonal rotation drawn from a seed (Haar measure), 0 bits of state.

``Q = qr_orthogonal(G)`` for a standard Gaussian ``G ∈ R^{d×d}``: with ``G = Q R`` and the signs fixed so that
``diag(R) > 0`` (``Q ← Q · diag(sign(diag R))``), ``Q`` is Haar-distributed on ``O(d)`` (Mezzadri 2007); without the
sign fix it is not. The state is the key; the decoder regenerates ``Q``. Applying it is a dense ``d×d`` matmul,
``O(out·in·d)``; :func:`macjax.transforms.hadamard.randomized_hadamard` is the fast structured alternative.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from macjax.transforms import base

_HIGHEST = jax.lax.Precision.HIGHEST


def random_orthogonal_matrix(key: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
  """A Haar-random orthogonal ``n×n`` matrix: QR of a Gaussian with the sign fix ``diag(R) > 0``.

  Args:
    key: a ``jax.random`` key (typed, or raw ``uint32[2]``).
    n: the order.
    dtype: a floating dtype.

  Returns:
    ``Q`` with ``Q^T Q = I`` to float precision.

  Example:
    >>> Q = random_orthogonal_matrix(jax.random.key(0), 4)
    >>> bool(jnp.allclose(Q.T @ Q, jnp.eye(4), atol=1e-5))
    True
  """
  G = jax.random.normal(key, (n, n), dtype)
  Q, R = jnp.linalg.qr(G)
  signs = jnp.where(jnp.diagonal(R) < 0, -1.0, 1.0).astype(dtype)
  return Q * signs[None, :]


@functools.partial(jax.jit, static_argnames=("sides", "inverse"))
def _rotated(W, key, *, sides, inverse):
  """``W Q`` / ``Qᵀ W`` per side (``inverse``: the transposes, sides in reverse order); jitted per shape."""
  for s in (tuple(reversed(sides)) if inverse else sides):
    Q = random_orthogonal_matrix(jax.random.fold_in(key, 0 if s == "input" else 1), base.side_dim(W, s), W.dtype)
    Q = Q.T if inverse else Q
    W = base.apply_on_side(W, s, lambda X: jnp.matmul(X, Q, precision=_HIGHEST))
  return W


def random_orthogonal(*, side: str = "input") -> base.WeightTransform:
  """A random orthogonal change of coordinates from a seed: ``W2 = W Q`` (input), ``Q^T W`` (output) or both.

  ``side="both"`` draws independent ``Q_out`` (from ``fold_in(key, 1)``) and ``Q_in`` (``fold_in(key, 0)``) and
  gives ``W2 = Q_out^T W Q_in``. Orthogonal, so ``‖W2‖_F = ‖W‖_F``; ``inverse`` multiplies by the transposes.
  State: :class:`base.SeedState` (the key) — 0 bits.

  Args:
    side: ``"input"`` (mix columns: the in_features axis), ``"output"`` (mix rows) or ``"both"``.

  Returns:
    A :class:`base.WeightTransform`.

  Example:
    >>> t = random_orthogonal(side="both")
    >>> W = jnp.ones((3, 5))
    >>> s = t.init(W, key=jax.random.key(0))
    >>> bool(jnp.allclose(t.inverse(t.apply(W, s), s), W, atol=1e-5)), t.state_bits(s)
    (True, 0)
  """
  return base.seeded_rotation("random_orthogonal", side, _rotated)
