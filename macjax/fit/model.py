"""The function ``f_θ(α)``: features of the coordinates ``α = (l, i, t)``, then a small MLP.

For one coordinate (layer ``l``, row ``i``, tile ``t`` of a :class:`~macjax.fit.config.Grid`):

.. math::

   u_a = 2 a / (N_a - 1) - 1 \\in [-1, 1] \\quad (u_a = 0 \\text{ if } N_a = 1), \\qquad a \\in \\{l, i, t\\}

   φ(α) = [u_l, u_i, u_t,\\ \\sin(π ω_{a,k} u_a), \\cos(π ω_{a,k} u_a)_{a,k},\\ E_l[l], E_i[i], E_t[t]]

   ω_{a,k} = \\max(N_a / 2, 1)^{k / (K - 1)}, \\quad k = 0 … K-1 \\quad (\\text{geometric, from 1 to Nyquist})

   h_0 = φ(α), \\quad h_{k+1} = \\mathrm{gelu}(h_k W_k + b_k), \\quad
   f_θ(α) = σ · (h_D W_D + b_D) \\in ℝ^{tile}

The frequencies are derived from the grid (never stored); the embeddings ``E`` (optional) and the dense layers
are θ. ``σ`` (``out_scale``) is the family's RMS, so the MLP works on weights of unit scale. Matrix products use
``Precision.HIGHEST`` so that an accelerator does not silently drop to TF32.

Functions are written for one family; ``jax.vmap`` them over a stack of families.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from macjax.fit.config import FitConfig, Grid

_HIGHEST = jax.lax.Precision.HIGHEST


def frequencies(n_axis: int, n_fourier: int) -> np.ndarray:
  """Fourier frequencies ``ω_k`` of one axis of ``n_axis`` points: geometric from 1 to ``max(n_axis/2, 1)``.

  Example:
    >>> frequencies(16, 4).tolist()
    [1.0, 2.0, 4.0, 8.0]
  """
  if n_fourier == 0:
    return np.zeros((0,), np.float32)
  top = max(n_axis / 2.0, 1.0)
  return (top ** (np.arange(n_fourier) / max(n_fourier - 1, 1))).astype(np.float32)


def _normalized(index: jax.Array, n: int) -> jax.Array:
  if n == 1:
    return jnp.zeros(index.shape, jnp.float32)
  return index.astype(jnp.float32) * np.float32(2.0 / (n - 1)) - np.float32(1.0)


def features(params: dict[str, jax.Array], layer: jax.Array, row: jax.Array, tile: jax.Array,
             cfg: FitConfig, grid: Grid) -> jax.Array:
  """The encoding ``φ(α)`` of integer coordinates (any batch shape ``B``) -> ``f32[B, cfg.in_features]``.

  Example:
    >>> cfg = FitConfig(n_fourier=2)
    >>> grid = cfg.grid((4, 8, 8))
    >>> features({}, jnp.array([0, 3]), jnp.array([0, 7]), jnp.array([0, 7]), cfg, grid).shape
    (2, 15)
  """
  parts = []
  coords = [(layer, grid.layers), (row, grid.rows), (tile, grid.n_tiles)]
  units = [_normalized(index, n) for index, n in coords]
  parts.append(jnp.stack(units, axis=-1))
  for u, (_, n) in zip(units, coords):
    if cfg.n_fourier:
      angle = np.float32(np.pi) * u[..., None] * jnp.asarray(frequencies(n, cfg.n_fourier))
      parts += [jnp.sin(angle), jnp.cos(angle)]
  for name, index in (("layer", layer), ("row", row), ("col", tile)):
    if f"embed.{name}" in params:
      parts.append(jnp.take(params[f"embed.{name}"], index, axis=0))
  return jnp.concatenate(parts, axis=-1)


def apply(params: dict[str, jax.Array], layer: jax.Array, row: jax.Array, tile: jax.Array,
          cfg: FitConfig, grid: Grid) -> jax.Array:
  """``f_θ(α) / σ`` at integer coordinates of batch shape ``B`` -> ``f32[B, tile]`` (unit-scale prediction).

  Example:
    >>> from macjax.fit.theta import init_params
    >>> cfg = FitConfig(width=8, depth=1, n_fourier=2, tile=4)
    >>> grid = cfg.grid((2, 4, 8))
    >>> p = init_params(cfg, grid, key=jax.random.key(0))
    >>> apply(p, jnp.zeros(5, int), jnp.zeros(5, int), jnp.zeros(5, int), cfg, grid).shape
    (5, 4)
  """
  h = features(params, layer, row, tile, cfg, grid)
  for k in range(cfg.depth + 1):
    h = jnp.matmul(h, params[f"dense_{k}.w"], precision=_HIGHEST) + params[f"dense_{k}.b"]
    if k < cfg.depth:
      h = jax.nn.gelu(h)
  return h


def predict_grid(params: dict[str, jax.Array], cfg: FitConfig, grid: Grid) -> jax.Array:
  """``f_θ`` on the whole grid -> ``f32[L, rows, cols]``, evaluated in chunks of ``cfg.predict_chunk`` coordinates.

  The chunking (a ``lax.map`` over padded blocks of the flat coordinate index) bounds memory; it is fixed by
  ``cfg`` and ``grid``, so encoder and decoder run the very same computation.

  Example:
    >>> from macjax.fit.theta import init_params
    >>> cfg = FitConfig(width=8, depth=1, n_fourier=2, tile=2, predict_chunk=5)
    >>> grid = cfg.grid((2, 3, 4))
    >>> predict_grid(init_params(cfg, grid, key=jax.random.key(0)), cfg, grid).shape
    (2, 3, 4)
  """
  n = grid.n_coords
  chunk = min(cfg.predict_chunk, n)
  n_chunks = -(-n // chunk)
  flat = jnp.arange(n_chunks * chunk, dtype=jnp.int32).reshape(n_chunks, chunk)

  def block(index):
    index = jnp.minimum(index, n - 1)  # padding repeats the last coordinate; it is cut off below
    layer, rest = jnp.divmod(index, grid.rows * grid.n_tiles)
    row, tile = jnp.divmod(rest, grid.n_tiles)
    return apply(params, layer, row, tile, cfg, grid)

  out = jax.lax.map(block, flat).reshape(n_chunks * chunk, grid.tile)[:n]
  return out.reshape(grid.layers, grid.rows, grid.cols) * params["out_scale"]
