"""Statistics of one weight matrix in some coordinates: flatness (rotation) vs concentration (alignment).

Every function takes one matrix ``W`` (any shape; the entries ``x_1 … x_N`` are pooled, the singular-value
statistics use the last two axes), is jit-compatible, and ``jax.vmap``s over a stack of layers.

* :func:`kurtosis` — ``κ = E[(x−μ)⁴] / E[(x−μ)²]²`` (Pearson, not excess): 3 for a Gaussian, 6 for a Laplace,
  1.8 for a uniform. Rotations drive it towards 3 (*flattening*).
* :func:`max_to_rms` — ``max|x| / sqrt(E[x²])``: the outlier ratio that sets the range of a uniform quantizer.
* :func:`effective_rank` — Roy & Vetterli (2007): with singular values ``σ_i`` and ``p_i = σ_i / Σ_j σ_j``,
  ``erank = exp(−Σ p_i ln p_i)`` ∈ [1, min(out, in)]; equal to ``r`` for ``r`` equal nonzero singular values.
* :func:`participation_ratio` — ``PR = (Σ σ_i²)² / Σ σ_i⁴``, the effective number of eigen-directions of
  ``Wᵀ W`` weighted by energy; also ``r`` for ``r`` equal singular values, at most the rank, and (weighting by
  ``σ²``) smaller than ``erank`` when a few directions dominate the energy.
* :func:`top_energy_ratio` — share of ``Σ x²`` held by the ``k = ⌈f·N⌉`` largest-magnitude entries (``f = 0.01``:
  the *top-1% energy*); ``f`` for perfectly flat weights, → 1 for concentrated ones (*alignment*).
* :func:`code_entropy` — empirical (zeroth-order) entropy of the codes ``c = round(x / Δ)``,
  ``Δ = step_rel · std(x)``: ``H = −Σ_k p_k log2 p_k`` bits/weight with ``p_k`` the frequency of code ``k``. For a
  Gaussian at high rate ``H ≈ h(N(0,1)) − log2(step_rel) = 2.047 − log2(step_rel)`` (4.05 bits at ``step_rel =
  1/4``). It is what an ideal order-0 entropy coder with a free table would spend; it is biased low when ``N`` is
  not much larger than the number of distinct codes (the table's cost is not counted here).

Example:
  >>> import jax
  >>> W = jax.random.normal(jax.random.key(0), (256, 256))
  >>> s = matrix_stats(W)
  >>> round(float(s.kurtosis)), round(float(s.code_entropy), 1)
  (3, 4.1)
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from macjax.errors import ConfigError, ShapeError


def _flat(W: jax.Array) -> jax.Array:
  return jnp.asarray(W, jnp.float32).reshape(-1)


def kurtosis(W: jax.Array) -> jax.Array:
  """Pearson kurtosis ``E[(x−μ)⁴] / E[(x−μ)²]²`` of the entries (Gaussian 3, Laplace 6).

  Example:
    >>> float(kurtosis(jnp.array([1.0, -1.0, 1.0, -1.0])))
    1.0
  """
  x = _flat(W)
  c = x - jnp.mean(x)
  m2 = jnp.mean(c**2)
  return jnp.mean(c**4) / (m2 * m2)


def max_to_rms(W: jax.Array) -> jax.Array:
  """``max|x| / sqrt(mean(x²))``.

  Example:
    >>> float(max_to_rms(jnp.array([0.0, 0.0, 0.0, 2.0])))
    2.0
  """
  x = _flat(W)
  return jnp.max(jnp.abs(x)) / jnp.sqrt(jnp.mean(x**2))


def _singular_values(W: jax.Array) -> jax.Array:
  if W.ndim != 2:
    raise ShapeError(f"diagnose: weight W has shape {W.shape}; expected one matrix (out, in) (vmap over a stack)")
  return jnp.linalg.svd(jnp.asarray(W, jnp.float32), compute_uv=False)


def effective_rank(W: jax.Array) -> jax.Array:
  """``exp(−Σ p_i ln p_i)`` with ``p_i = σ_i / Σ σ_j`` (Roy & Vetterli 2007).

  Example:
    >>> round(float(effective_rank(jnp.diag(jnp.array([2.0, 2.0, 0.0])))), 4)
    2.0
  """
  s = _singular_values(W)
  p = s / jnp.sum(s)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def participation_ratio(W: jax.Array) -> jax.Array:
  """``(Σ σ_i²)² / Σ σ_i⁴``: the participation ratio of the spectrum of ``Wᵀ W``.

  Example:
    >>> round(float(participation_ratio(jnp.diag(jnp.array([1.0, 1.0, 1.0])))), 4)
    3.0
  """
  s2 = _singular_values(W) ** 2
  return jnp.sum(s2) ** 2 / jnp.sum(s2**2)


def top_energy_ratio(W: jax.Array, fraction: float = 0.01) -> jax.Array:
  """Share of ``Σ x²`` in the ``⌈fraction·N⌉`` largest-magnitude entries (at least one).

  Example:
    >>> float(top_energy_ratio(jnp.array([3.0, 1.0, 1.0, 1.0]), fraction=0.25))
    0.75
  """
  if not 0.0 < fraction <= 1.0:
    raise ConfigError(f"top_energy_ratio: fraction={fraction}; expected a value in (0, 1]")
  e = _flat(W) ** 2
  k = max(1, math.ceil(fraction * e.shape[0]))
  return jnp.sum(jax.lax.top_k(e, k)[0]) / jnp.sum(e)


def code_entropy(W: jax.Array, step_rel: float = 0.25) -> jax.Array:
  """Empirical entropy (bits/weight) of ``round(x / (step_rel · std(x)))``.

  Counted by sorting the codes and measuring runs, so it is exact, jit-able and vmappable (no histogram range).

  Example:
    >>> float(code_entropy(jnp.array([-1.0, -1.0, 1.0, 1.0]), step_rel=1.0))
    1.0
  """
  if not step_rel > 0:
    raise ConfigError(f"code_entropy: step_rel={step_rel}; expected > 0")
  x = _flat(W)
  step = step_rel * jnp.std(x)
  codes = jnp.sort(jnp.round(x / step))
  n = codes.shape[0]
  starts = jnp.concatenate([jnp.ones((1,), bool), codes[1:] != codes[:-1]])
  run = jnp.cumsum(starts) - 1
  counts = jax.ops.segment_sum(jnp.ones((n,), jnp.float32), run, num_segments=n)
  p = counts / n
  return -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0))


class MatrixStats(NamedTuple):
  """All statistics of one matrix (each a scalar array; a leading axis under ``vmap``)."""

  kurtosis: jax.Array
  max_to_rms: jax.Array
  effective_rank: jax.Array
  participation_ratio: jax.Array
  top_energy_ratio: jax.Array
  code_entropy: jax.Array


def matrix_stats(W: jax.Array, *, step_rel: float = 0.25, top_fraction: float = 0.01) -> MatrixStats:
  """Every statistic of this module for one matrix ``(out, in)``.

  Args:
    W: the matrix.
    step_rel: quantization step of :func:`code_entropy`, relative to ``std(W)``.
    top_fraction: the fraction of :func:`top_energy_ratio`.

  Returns:
    A :class:`MatrixStats`.

  Example:
    >>> Ws = jax.random.normal(jax.random.key(0), (3, 32, 16))
    >>> jax.vmap(matrix_stats)(Ws).kurtosis.shape
    (3,)
  """
  s = _singular_values(W)
  p = s / jnp.sum(s)
  erank = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))
  s2 = s**2
  return MatrixStats(kurtosis=kurtosis(W), max_to_rms=max_to_rms(W), effective_rank=erank,
                     participation_ratio=jnp.sum(s2)**2 / jnp.sum(s2**2),
                     top_energy_ratio=top_energy_ratio(W, top_fraction), code_entropy=code_entropy(W, step_rel))


def stats_by_coordinates(W: jax.Array, transforms: Mapping[str, Any], *, key: jax.Array | None = None,
                         stats: Mapping[str, Any] | None = None, step_rel: float = 0.25,
                         top_fraction: float = 0.01) -> dict[str, tuple[MatrixStats, int]]:
  """The rotation-vs-alignment table for one matrix: its statistics under each named change of coordinates.

  Args:
    W: the matrix ``(out, in)``.
    transforms: ``{name: WeightTransform}`` (e.g. identity, Hadamard, PCA, learned).
    key: split over the transforms (each gets ``fold_in(key, i)``); needed by seeded ones.
    stats: ``{name: init stats}`` for transforms that take calibration statistics.
    step_rel: see :func:`matrix_stats`.
    top_fraction: see :func:`matrix_stats`.

  Returns:
    ``{name: (MatrixStats of apply(W), state_bits)}``.

  Example:
    >>> from macjax import transforms as T
    >>> W = jax.random.laplace(jax.random.key(0), (64, 64))
    >>> table = stats_by_coordinates(W, {"id": T.identity(), "had": T.randomized_hadamard()}, key=jax.random.key(1))
    >>> bool(table["had"][0].kurtosis < table["id"][0].kurtosis), table["had"][1]
    (True, 0)
  """
  out = {}
  for i, (name, t) in enumerate(transforms.items()):
    k = None if key is None else jax.random.fold_in(key, i)
    state = t.init(W, key=k, stats=None if stats is None else stats.get(name))
    out[name] = (matrix_stats(t.apply(W, state), step_rel=step_rel, top_fraction=top_fraction), t.state_bits(state))
  return out
