"""Randomized Hadamard rotation (QuaRot-style) for the dimensions of real models, applied as a Kronecker product.

The rotation of a ``d``-dimensional side is ``Q = diag(s) · K / √d`` with random signs ``s ∈ {±1}^d`` drawn from a
seed and ``K = F_1 ⊗ F_2 ⊗ … ⊗ F_r`` a Kronecker product of small generated factors. ``Q`` is orthogonal, so it
preserves the Frobenius norm; ``K`` spreads every coordinate evenly over all others (each entry of a Hadamard matrix
has magnitude ``1/√d``), which is what flattens outliers. It is never formed: ``X @ K`` is computed by reshaping
``X`` to ``(…, n_1, …, n_r)`` and contracting each axis with its factor, ``O(d · Σ n_i)`` per row instead of
``O(d²)``.

How a dimension is covered (:func:`hadamard_plan`): write ``d = 2^v · o`` with ``o`` odd.

1. ``o = 1``: Sylvester ``H_{2^v}`` (split into factors of order ≤ 128, each a dense small matmul).
2. otherwise, the smallest ``j ≤ v`` for which ``m = 2^j · o`` has a Paley construction gives
   ``K = H_{2^{v-j}} ⊗ H_m``: Paley I when ``m - 1 = q`` is a prime power with ``q ≡ 3 (mod 4)``, Paley II when
   ``m/2 - 1 = q`` is a prime power with ``q ≡ 1 (mod 4)``. Both are generated here from the quadratic character of
   the finite field ``GF(q)`` (prime-power fields built from an irreducible polynomial found by search); no table is
   stored. Examples: 384 = 32·12 (Paley I, q = 11), 576 = 16·36 (Paley II, q = 17), 1536 = 128·12,
   5632 = 128·44 (q = 43), 11008 = 32·344 (Paley I over GF(7³)), 14336 = 512·28 (GF(3³)), 18944 = 128·148
   (Paley II, q = 73).
3. otherwise (no construction here for any ``2^j·o``; e.g. odd ``d``, or ``d = 2·o``): the *fallback*
   ``K = H_{2^v} ⊗ R_o`` with ``R_o`` a Haar-random orthogonal matrix of order ``o`` drawn from the same seed. It is
   exactly orthogonal and invertible and costs no bits, but it is a Hadamard only on the power-of-two part;
   ``R_o`` is a dense ``o×o`` factor (for odd ``d``, a dense random rotation).

Example:
  >>> import jax, jax.numpy as jnp
  >>> [f.kind for f in hadamard_plan(576).factors]
  ['sylvester', 'paley2']
  >>> t = randomized_hadamard(side="input")
  >>> W = jax.random.normal(jax.random.key(0), (8, 384))
  >>> s = t.init(W, key=jax.random.key(1))
  >>> bool(jnp.allclose(t.inverse(t.apply(W, s), s), W, atol=1e-5))
  True
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError
from macjax.transforms import base
from macjax.transforms.orthogonal import random_orthogonal_matrix

_HIGHEST = jax.lax.Precision.HIGHEST
_MAX_SYLVESTER_FACTOR = 128

# ---------------------------------------------------------------------------------------------------------------------
# generated Hadamard matrices


def sylvester(n: int) -> np.ndarray:
  """Sylvester's Hadamard matrix of order ``n = 2^k``: ``H_1 = [1]``, ``H_{2n} = [[H, H], [H, -H]]``.

  Example:
    >>> sylvester(2).tolist()
    [[1, 1], [1, -1]]
  """
  if n < 1 or n & (n - 1):
    raise ConfigError(f"sylvester: order {n}; expected a power of two")
  H = np.ones((1, 1), np.int64)
  while H.shape[0] < n:
    H = np.block([[H, H], [H, -H]])
  return H


def _prime_power(q: int) -> tuple[int, int] | None:
  """``(p, k)`` with ``q = p^k``, ``p`` prime, or None."""
  if q < 2:
    return None
  p = next(f for f in range(2, q + 1) if q % f == 0)
  k = 0
  while q % p == 0:
    q //= p
    k += 1
  return (p, k) if q == 1 else None


def _poly_mod_has_root_factor(f: np.ndarray, p: int, degree: int) -> bool:
  """Whether the monic ``f`` (coefficients low→high) has a monic factor of the given degree over GF(p)."""
  for idx in range(p**degree):
    g = np.array([(idx // p**i) % p for i in range(degree)] + [1], np.int64)
    r = f.copy()
    for top in range(len(r) - 1, degree - 1, -1):
      c = r[top] % p
      if c:
        r[top - degree:top + 1] = (r[top - degree:top + 1] - c * g) % p
    if not np.any(r[:degree] % p):
      return True
  return False


def _irreducible_poly(p: int, k: int) -> np.ndarray:
  """The first monic irreducible polynomial of degree ``k`` over GF(p) in lexicographic order (low→high coeffs)."""
  for idx in range(p**k):
    f = np.array([(idx // p**i) % p for i in range(k)] + [1], np.int64)
    if f[0] == 0:
      continue
    if not any(_poly_mod_has_root_factor(f, p, deg) for deg in range(1, k // 2 + 1)):
      return f
  raise AssertionError(f"no irreducible polynomial of degree {k} over GF({p})")  # impossible: one always exists


def quadratic_character(q: int) -> np.ndarray:
  """``χ`` on ``GF(q)``, ``q = p^k`` odd: ``χ(0) = 0``, ``χ(x) = 1`` if ``x`` is a nonzero square, else ``-1``.

  Elements are integers ``0 … q-1``: the base-``p`` digits of ``x`` are the coefficients of a polynomial modulo a
  monic irreducible ``f`` of degree ``k`` (the first one found by search). Returns ``chi`` with ``chi[x] = χ(x)``.

  Example:
    >>> quadratic_character(7).tolist()  # squares mod 7: 1, 2, 4
    [0, 1, 1, -1, 1, -1, -1]
  """
  p, k = _prime_power(q)
  digits = np.array([[(x // p**i) % p for i in range(k)] for x in range(q)], np.int64)
  prod = np.zeros((q, 2 * k - 1), np.int64)
  for i in range(k):
    for j in range(k):
      prod[:, i + j] += digits[:, i] * digits[:, j]
  if k > 1:
    f = _irreducible_poly(p, k)
    for top in range(2 * k - 2, k - 1, -1):
      c = prod[:, top] % p
      prod[:, top - k:top + 1] -= c[:, None] * f[None, :]
  sq = (prod[:, :k] % p) @ (p ** np.arange(k))
  chi = -np.ones(q, np.int64)
  chi[sq] = 1
  chi[0] = 0
  return chi


def _jacobsthal(q: int) -> np.ndarray:
  """``Q[a, b] = χ(a - b)`` over GF(q) (subtraction digit-wise mod ``p``)."""
  p, k = _prime_power(q)
  digits = np.array([[(x // p**i) % p for i in range(k)] for x in range(q)], np.int64)
  diff = (digits[:, None, :] - digits[None, :, :]) % p
  return quadratic_character(q)[diff @ (p ** np.arange(k))]


def paley_kind(n: int) -> str | None:
  """``"paley1"``, ``"paley2"`` or None: which Paley construction gives a Hadamard matrix of order ``n``.

  Example:
    >>> paley_kind(12), paley_kind(36), paley_kind(344), paley_kind(172)
    ('paley1', 'paley2', 'paley1', None)
  """
  pp = _prime_power(n - 1)
  if pp is not None and pp[0] != 2 and (n - 1) % 4 == 3:
    return "paley1"
  if n % 2 == 0:
    pp = _prime_power(n // 2 - 1)
    if pp is not None and pp[0] != 2 and (n // 2 - 1) % 4 == 1:
      return "paley2"
  return None


def paley(n: int) -> np.ndarray:
  """A Hadamard matrix of order ``n`` from Paley's constructions (``H H^T = n I``, entries ±1).

  Paley I (``q = n - 1 ≡ 3 mod 4``): with the Jacobsthal matrix ``Q`` (skew), ``S = [[0, 1ᵀ], [-1, Q]]`` and
  ``H = I + S``. Paley II (``q = n/2 - 1 ≡ 1 mod 4``): ``C = [[0, 1ᵀ], [1, Q]]`` (symmetric); replace each ``0`` by
  ``[[1, -1], [-1, -1]]`` and each ``±1`` by ``±[[1, 1], [1, -1]]``.

  Example:
    >>> H = paley(12)
    >>> bool((H @ H.T == 12 * np.eye(12)).all())
    True
  """
  kind = paley_kind(n)
  if kind is None:
    raise ConfigError(f"paley: order {n}; expected n-1 a prime power ≡ 3 mod 4 or n/2-1 a prime power ≡ 1 mod 4")
  if kind == "paley1":
    q = n - 1
    Q = _jacobsthal(q)
    S = np.zeros((n, n), np.int64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = Q
    return np.eye(n, dtype=np.int64) + S
  q = n // 2 - 1
  C = np.zeros((q + 1, q + 1), np.int64)
  C[0, 1:] = 1
  C[1:, 0] = 1
  C[1:, 1:] = _jacobsthal(q)
  zero_block = np.array([[1, -1], [-1, -1]], np.int64)
  one_block = np.array([[1, 1], [1, -1]], np.int64)
  return np.kron(C, one_block) + np.kron((C == 0).astype(np.int64), zero_block)


# ---------------------------------------------------------------------------------------------------------------------
# plans


@dataclasses.dataclass(frozen=True)
class Factor:
  """One Kronecker factor: ``kind`` in ``{"sylvester", "paley1", "paley2", "orthogonal"}`` and its order."""

  kind: str
  order: int


@dataclasses.dataclass(frozen=True)
class HadamardPlan:
  """How :func:`randomized_hadamard` covers a dimension ``d = Π order``.

  Attributes:
    dim: ``d``.
    factors: the Kronecker factors, outermost first.
    path: ``"sylvester"`` (``d = 2^v``), ``"paley"`` (``2^{v-j} ⊗`` a Paley order) or ``"fallback"``
      (``H_{2^v} ⊗`` a random orthogonal factor on the odd part: orthogonal, not a full Hadamard).
  """

  dim: int
  factors: tuple[Factor, ...]
  path: str


def _sylvester_factors(n: int) -> list[Factor]:
  out = []
  while n > 1:
    f = min(n, _MAX_SYLVESTER_FACTOR)
    out.append(Factor("sylvester", f))
    n //= f
  return out


def hadamard_plan(d: int) -> HadamardPlan:
  """The factorization :func:`randomized_hadamard` uses for dimension ``d`` (see the module docstring).

  Example:
    >>> hadamard_plan(11008).path, [(f.kind, f.order) for f in hadamard_plan(11008).factors]
    ('paley', [('sylvester', 32), ('paley1', 344)])
    >>> hadamard_plan(385).path
    'fallback'
  """
  if not isinstance(d, (int, np.integer)) or d < 1:
    raise ConfigError(f"hadamard_plan: dimension {d!r}; expected a positive integer")
  d = int(d)
  v = (d & -d).bit_length() - 1
  odd = d >> v
  if odd == 1:
    return HadamardPlan(d, tuple(_sylvester_factors(d)) or (Factor("sylvester", 1),), "sylvester")
  for j in range(v + 1):
    m = odd << j
    kind = paley_kind(m)
    if kind is not None:
      return HadamardPlan(d, tuple(_sylvester_factors(1 << (v - j)) + [Factor(kind, m)]), "paley")
  return HadamardPlan(d, tuple(_sylvester_factors(1 << v) + [Factor("orthogonal", odd)]), "fallback")


def hadamard_matrix(n: int) -> np.ndarray:
  """An integer ±1 Hadamard matrix of order ``n`` (``H Hᵀ = n I``) when :func:`hadamard_plan` finds one.

  Raises:
    ConfigError: when ``n``'s plan is the fallback (no Hadamard construction here).

  Example:
    >>> hadamard_matrix(24).shape
    (24, 24)
  """
  plan = hadamard_plan(n)
  if plan.path == "fallback":
    raise ConfigError(f"hadamard_matrix: no Hadamard construction here for order {n} (odd part {plan.factors[-1]})")
  H = np.ones((1, 1), np.int64)
  for f in plan.factors:
    H = np.kron(H, sylvester(f.order) if f.kind == "sylvester" else paley(f.order))
  return H


def _factor_matrices(plan: HadamardPlan, key: jax.Array, dtype) -> list[jax.Array]:
  """Orthonormal factor matrices ``F_i`` (Hadamard factors divided by ``√n_i``)."""
  mats = []
  for f in plan.factors:
    if f.kind == "orthogonal":
      mats.append(random_orthogonal_matrix(key, f.order, dtype))
    else:
      H = sylvester(f.order) if f.kind == "sylvester" else paley(f.order)
      mats.append(jnp.asarray(H / np.sqrt(f.order), dtype))
  return mats


def kron_matmul(X: jax.Array, factors: list[jax.Array]) -> jax.Array:
  """``X @ (F_1 ⊗ … ⊗ F_r)`` on the last axis of ``X`` without forming the Kronecker product.

  With ``X`` reshaped to ``(…, n_1, …, n_r)``: ``Y[…, j_1, …, j_r] = Σ X[…, i_1, …, i_r] Π F_k[i_k, j_k]``,
  one contraction per axis (``np.kron``'s row-major index order).

  Example:
    >>> A, B = jnp.arange(4.).reshape(2, 2), jnp.arange(9.).reshape(3, 3)
    >>> X = jnp.ones((1, 6))
    >>> bool(jnp.allclose(kron_matmul(X, [A, B]), X @ jnp.kron(A, B)))
    True
  """
  lead = X.shape[:-1]
  ns = tuple(int(F.shape[0]) for F in factors)
  Y = X.reshape(lead + ns)
  for i, F in enumerate(factors):
    ax = len(lead) + i
    Y = jnp.moveaxis(jnp.tensordot(Y, F, axes=[[ax], [0]], precision=_HIGHEST), -1, ax)
  return Y.reshape(X.shape)


# Module-level and jitted on (shape, sides): every factory shares the compiled rotation of a shape.
@functools.partial(jax.jit, static_argnames=("sides", "inverse"))
def _rotated(W, key, *, sides, inverse):
  """``W Q`` / ``Qᵀ W`` per side (``inverse``: the transposes, sides in reverse order)."""
  for s in (tuple(reversed(sides)) if inverse else sides):
    d = base.side_dim(W, s)
    k_signs, k_ortho = jax.random.split(jax.random.fold_in(key, 0 if s == "input" else 1))
    signs = jax.random.rademacher(k_signs, (d,), W.dtype)
    mats = _factor_matrices(hadamard_plan(d), k_ortho, W.dtype)
    if inverse:
      mats_t = [F.T for F in mats]
      W = base.apply_on_side(W, s, lambda X: kron_matmul(X, mats_t) * signs)
    else:
      W = base.apply_on_side(W, s, lambda X: kron_matmul(X * signs, mats))
  return W


def randomized_hadamard(*, side: str = "input") -> base.WeightTransform:
  """Randomized Hadamard rotation ``Q = diag(s) K / √d`` on one or both sides of ``W`` (QuaRot).

  ``side="input"``: ``W2 = W Q``; ``"output"``: ``W2 = Qᵀ W``; ``"both"``: ``W2 = Q_outᵀ W Q_in`` with independent
  signs (``fold_in(key, 0)`` for the input side, ``fold_in(key, 1)`` for the output side). ``inverse`` multiplies by
  the transposes. The signs (and a fallback's orthogonal factor) are regenerated from the key: the state is
  :class:`base.SeedState`, 0 bits. Works for every ``d`` (see :func:`hadamard_plan` for which path each takes).

  Args:
    side: ``"input"``, ``"output"`` or ``"both"``.

  Returns:
    A :class:`base.WeightTransform`.

  Example:
    >>> t = randomized_hadamard(side="output")
    >>> W = jnp.eye(12)
    >>> Q = t.apply(W, t.init(W, key=jax.random.key(0))).T  # Qᵀ I = Qᵀ
    >>> bool(jnp.allclose(jnp.abs(Q), 1 / jnp.sqrt(12.), atol=1e-6))
    True
  """
  return base.seeded_rotation("randomized_hadamard", side, _rotated)
