"""Learned orthogonal rotation (SpinQuant-style), fitted with optax inside ``jax.jit`` + ``lax.scan``.

Parametrization (Cayley): ``Q = Q_0 · cay(A)``, ``cay(A) = (I − A)^{-1} (I + A)`` with ``A = P − Pᵀ`` skew-symmetric,
so ``Q`` is orthogonal for every ``P`` and ``P = 0`` gives the starting rotation ``Q_0`` (the identity, a randomized
Hadamard or a random orthogonal matrix drawn from ``key``). ``P`` is optimized by Adam for ``steps`` full-batch
steps; everything is deterministic given ``key`` (and the data).

Objectives (``W2 = W Q`` for ``side="input"``, ``Qᵀ W`` for ``"output"``; ``z`` its entries, ``N`` their number,
``Δ = step_rel · rms(W)``, rotation-invariant):

* ``"kurtosis"`` (KurTail-style flattening): ``κ = mean(z⁴) / mean(z²)²`` (3 for a Gaussian).
* ``"rate"``: a differentiable entropy of the codes ``round(z/Δ)``: each ``u = clip(z/Δ, −K, K)`` spreads unit
  mass linearly over the two nearest integers (``⌊u⌋`` gets ``1 − (u − ⌊u⌋)``), ``p_k`` = mass at ``k`` / ``N``,
  ``R = −Σ_k p_k log2 p_k`` bits/weight. It equals the empirical entropy of the codes when every ``z/Δ`` is an
  integer, and its gradient moves coefficients towards more populated codes (concentration).
* ``"rate_distortion"`` (seed note §6.3, ``min_T R(TW) + λ D(f(x; TW))``): ``R + λ · D`` with the layer-output
  distortion of round-to-nearest quantization in the rotated coordinates, measured with the input covariance
  ``C = Xᵀ X / n`` of calibration inputs (``init``'s ``stats``):
  ``Ŵ = Q q(W2)`` (or ``q(W2) Qᵀ``), ``D = tr((W − Ŵ) C (W − Ŵ)ᵀ) / tr(W C Wᵀ)`` (relative output MSE);
  ``q`` rounds with a straight-through gradient. ``λ`` is in bits per unit of relative output MSE.

State and cost: the key (0 bits) and the strictly upper triangle of ``A`` in ``storage_dtype``,
``d(d−1)/2 · bits`` — half of a stored ``d×d`` matrix — or 0 if ``absorbed`` (folded into the model). ``apply``
rebuilds ``Q`` from the *stored* ``A`` (exactly skew, so ``Q`` is orthogonal whatever the rounding).

Example:
  >>> import jax, jax.numpy as jnp
  >>> W = jax.random.laplace(jax.random.key(0), (32, 16))
  >>> t = learned_rotation(objective="kurtosis", steps=20, init="identity")
  >>> s = t.init(W)
  >>> kurt = rotation_objective("kurtosis")
  >>> bool(kurt(W, t.apply(jnp.eye(16), s)) < kurt(W, jnp.eye(16))), t.state_bits(s)
  (True, 1920)
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from macjax.errors import ConfigError, ShapeError
from macjax.transforms import base
from macjax.transforms.hadamard import randomized_hadamard
from macjax.transforms.orthogonal import random_orthogonal_matrix

_HIGHEST = jax.lax.Precision.HIGHEST
OBJECTIVES = ("kurtosis", "rate", "rate_distortion")
INITS = ("identity", "hadamard", "orthogonal")


class LearnedRotationState(NamedTuple):
  """A learned rotation.

  Attributes:
    key: ``uint32[2]`` key data of the starting rotation ``Q_0`` (0 bits; zeros for ``init="identity"``).
    skew: ``(d(d−1)/2,)`` the strictly upper triangle of ``A`` (row-major), in the storage dtype.
  """

  key: jax.Array
  skew: jax.Array


def cayley(A: jax.Array) -> jax.Array:
  """``(I − A)^{-1}(I + A)``: orthogonal for skew-symmetric ``A`` (``I − A`` is then always invertible).

  Example:
    >>> Q = cayley(jnp.array([[0.0, 0.3], [-0.3, 0.0]]))
    >>> bool(jnp.allclose(Q.T @ Q, jnp.eye(2), atol=1e-6))
    True
  """
  eye = jnp.eye(A.shape[-1], dtype=A.dtype)
  return jnp.linalg.solve(eye - A, eye + A)


def soft_code_entropy(z: jax.Array, step: jax.Array, max_code: int = 64) -> jax.Array:
  """Differentiable entropy (bits per entry) of ``round(z / step)`` by linear binning (see the module docstring).

  Example:
    >>> float(soft_code_entropy(jnp.array([0.0, 1.0, 0.0, 1.0]), 1.0))
    1.0
  """
  u = jnp.clip(z.reshape(-1) / step, -max_code, max_code) + max_code
  lo = jnp.clip(jnp.floor(jax.lax.stop_gradient(u)), 0, 2 * max_code - 1)
  frac = u - lo
  idx = lo.astype(jnp.int32)
  hist = jnp.zeros(2 * max_code + 1, z.dtype).at[idx].add(1.0 - frac).at[idx + 1].add(frac)
  p = hist / u.shape[0]
  return -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0))


def _ste_round(x: jax.Array) -> jax.Array:
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def rotation_objective(objective: str, *, side: str = "input", step_rel: float = 0.25, max_code: int = 64,
                       lam: float = 1.0) -> Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]:
  """The scalar objective ``f(W, Q, C)`` that :func:`learned_rotation` minimizes (maths in the module docstring).

  Args:
    objective: one of ``"kurtosis"``, ``"rate"``, ``"rate_distortion"``.
    side: ``"input"`` (``W2 = W Q``) or ``"output"`` (``W2 = Qᵀ W``).
    step_rel: quantization step relative to ``rms(W)``.
    max_code: codes are clipped to ``[−max_code, max_code]`` in the rate proxy.
    lam: weight of the distortion in ``"rate_distortion"``.

  Returns:
    ``f(W, Q, C) -> scalar``; ``C`` (the ``(in, in)`` input covariance) is used by ``"rate_distortion"`` only.

  Example:
    >>> f = rotation_objective("kurtosis")
    >>> round(float(f(jnp.array([[1.0, -1.0]]), jnp.eye(2), None)), 3)
    1.0
  """
  if objective not in OBJECTIVES:
    raise ConfigError(f"rotation_objective: objective={objective!r}; expected one of {OBJECTIVES}")

  def rotate(W, Q):
    if side == "input":
      return jnp.matmul(W, Q, precision=_HIGHEST)
    return jnp.matmul(Q.T, W, precision=_HIGHEST)

  def fn(W, Q, C=None):
    W2 = rotate(W, Q)
    if objective == "kurtosis":
      m2 = jnp.mean(W2**2)
      return jnp.mean(W2**4) / (m2 * m2)
    step = step_rel * jnp.sqrt(jnp.mean(W**2))
    rate = soft_code_entropy(W2, step, max_code)
    if objective == "rate":
      return rate
    W2q = step * _ste_round(W2 / step)
    W_hat = jnp.matmul(W2q, Q.T, precision=_HIGHEST) if side == "input" else jnp.matmul(Q, W2q, precision=_HIGHEST)
    E = W - W_hat
    distortion = jnp.trace(E @ C @ E.T) / jnp.trace(W @ C @ W.T)
    return rate + lam * distortion

  return fn


def _start(init: str, key: jax.Array, d: int, dtype) -> jax.Array:
  """The starting rotation ``Q_0``."""
  if init == "identity":
    return jnp.eye(d, dtype=dtype)
  if init == "orthogonal":
    return random_orthogonal_matrix(jax.random.fold_in(key, 0), d, dtype)
  eye = jnp.eye(d, dtype=dtype)
  return randomized_hadamard(side="input").apply(eye, base.SeedState(key))


def _skew_from(upper: jax.Array, d: int, dtype) -> jax.Array:
  iu = jnp.triu_indices(d, 1)
  A = jnp.zeros((d, d), dtype).at[iu].set(upper.astype(dtype))
  return A - A.T


@functools.partial(jax.jit, static_argnames=("side", "init", "transpose"))
def _rotated(W, key, skew, *, side, init, transpose):
  """``W Q`` / ``Qᵀ W`` with ``Q = Q_0 cay(A)`` rebuilt from the stored skew triangle; jitted per shape."""
  d = base.side_dim(W, side)
  Q = jnp.matmul(_start(init, key, d, W.dtype), cayley(_skew_from(skew, d, W.dtype)), precision=_HIGHEST)
  Q = Q.T if transpose else Q
  return base.apply_on_side(W, side, lambda X: jnp.matmul(X, Q, precision=_HIGHEST))


# Module-level and keyed on the hyper-parameters, so factories with equal settings share one compiled fit.
@functools.partial(jax.jit, static_argnames=("side", "objective", "steps", "learning_rate", "init", "step_rel",
                                             "max_code", "lam"))
def _fit(W, key, C, *, side, objective, steps, learning_rate, init, step_rel, max_code, lam):
  """Adam on ``P`` (``Q = Q_0 cay(P − Pᵀ)``) for ``steps`` steps in a ``lax.scan``; returns ``triu(A, 1)``."""
  loss_fn = rotation_objective(objective, side=side, step_rel=step_rel, max_code=max_code, lam=lam)
  optimizer = optax.adam(learning_rate)
  d = base.side_dim(W, side)
  Q0 = _start(init, key, d, W.dtype)

  def loss(P):
    return loss_fn(W, jnp.matmul(Q0, cayley(P - P.T), precision=_HIGHEST), C)

  def step(carry, _):
    P, opt_state = carry
    value, grad = jax.value_and_grad(loss)(P)
    updates, opt_state = optimizer.update(grad, opt_state, P)
    return (optax.apply_updates(P, updates), opt_state), value

  P0 = jnp.zeros((d, d), W.dtype)
  (P, _), _ = jax.lax.scan(step, (P0, optimizer.init(P0)), None, length=steps)
  return (P - P.T)[jnp.triu_indices(d, 1)]


def learned_rotation(*, side: str = "input", objective: str = "kurtosis", steps: int = 200,
                     learning_rate: float = 1e-2, init: str = "hadamard", step_rel: float = 0.25,
                     max_code: int = 64, lam: float = 1.0, storage_dtype=jnp.float16,
                     absorbed: bool = False) -> base.WeightTransform:
  """A rotation ``Q = Q_0 cay(A)`` learned to minimize an objective (see the module docstring).

  ``init(W, *, key, stats)``: ``key`` draws ``Q_0`` (needed unless ``init="identity"``); ``stats`` is the
  ``(in, in)`` input covariance, required by ``objective="rate_distortion"``. ``init`` runs the optax loop in a
  ``lax.scan`` under ``jax.jit``; it can itself be jitted or vmapped over a stack of layers.

  Args:
    side: ``"input"`` or ``"output"``.
    objective: ``"kurtosis"``, ``"rate"`` or ``"rate_distortion"``.
    steps: Adam steps.
    learning_rate: Adam learning rate.
    init: starting rotation ``Q_0``: ``"identity"``, ``"hadamard"`` (randomized Hadamard) or ``"orthogonal"``.
    step_rel: quantization step relative to ``rms(W)`` for the rate objectives.
    max_code: code range of the rate proxy.
    lam: distortion weight for ``"rate_distortion"``.
    storage_dtype: dtype of the stored skew parameters.
    absorbed: the rotation is folded into the model elsewhere: 0 bits.

  Returns:
    A :class:`base.WeightTransform` with state :class:`LearnedRotationState`.

  Example:
    >>> t = learned_rotation(objective="rate", steps=10)
    >>> W = jax.random.normal(jax.random.key(0), (8, 12))
    >>> s = t.init(W, key=jax.random.key(1))
    >>> bool(jnp.allclose(t.inverse(t.apply(W, s), s), W, atol=1e-5)), t.state_bits(s)
    (True, 1056)
  """
  base.check_side(side, "learned_rotation")
  if objective not in OBJECTIVES:
    raise ConfigError(f"learned_rotation: objective={objective!r}; expected one of {OBJECTIVES}")
  if init not in INITS:
    raise ConfigError(f"learned_rotation: init={init!r}; expected one of {INITS}")
  if not isinstance(steps, int) or steps < 0:
    raise ConfigError(f"learned_rotation: steps={steps!r}; expected a non-negative int")
  if not learning_rate > 0:
    raise ConfigError(f"learned_rotation: learning_rate={learning_rate!r}; expected > 0")
  if not step_rel > 0:
    raise ConfigError(f"learned_rotation: step_rel={step_rel!r}; expected > 0")
  hyper = dict(side=side, objective=objective, steps=steps, learning_rate=float(learning_rate), init=init,
               step_rel=float(step_rel), max_code=int(max_code), lam=float(lam))

  def init_fn(W, *, key=None, stats=None):
    base.check_matrix(W, "learned_rotation.init")
    if W.ndim != 2:
      raise ShapeError(f"learned_rotation.init: weight W has shape {W.shape}; expected one matrix (out, in) "
                       "(vmap init over a stack)")
    if init == "identity" and key is None:
      kd = jnp.zeros((2,), jnp.uint32)
    else:
      kd = base.key_data(key, "learned_rotation.init")
    C = None
    if objective == "rate_distortion":
      if stats is None:
        raise ConfigError("learned_rotation.init: objective='rate_distortion' needs stats, the (in, in) covariance "
                          "of calibration inputs; got None")
      if getattr(stats, "shape", None) != (W.shape[-1], W.shape[-1]):
        raise ShapeError(f"learned_rotation.init: stats has shape {getattr(stats, 'shape', None)}; expected "
                         f"({W.shape[-1]}, {W.shape[-1]}), the input covariance of W {W.shape}")
      C = jnp.asarray(stats, W.dtype)
    upper = _fit(W, kd, C, **hyper)
    return LearnedRotationState(kd, upper.astype(storage_dtype))

  def _rotate(W, state, transpose):
    d = base.side_dim(W, side)
    if state.skew.shape[-1] != d * (d - 1) // 2:
      raise ShapeError(f"learned_rotation.apply: weight W of shape {W.shape}; the state's skew parameters "
                       f"({state.skew.shape[-1]}) are not those of a {d}×{d} rotation")
    return _rotated(W, state.key, state.skew, side=side, init=init, transpose=transpose)

  def state_bits_fn(state):
    return 0 if absorbed else base.array_bits(state.skew)

  return base.WeightTransform(init_fn, lambda W, s: _rotate(W, s, False), lambda W2, s: _rotate(W2, s, True),
                              state_bits_fn)
