"""The factory :func:`functional_fit`: fit ``f_θ`` to a family of matrices, store θ, predict from the stored θ.

The fit minimises, over θ, the mean squared error on unit-scale weights,

.. math::

   \\mathcal{L}(θ) = \\frac{1}{|B|\\,T} \\sum_{α ∈ B} \\big\\| f_θ(α)/σ - W[α]/σ \\big\\|^2,
   \\qquad σ^2 = \\overline{W^2},

over minibatches ``B`` of coordinates drawn uniformly (with replacement) from the grid, so that ``𝓛`` estimates
the fraction of the family's energy left unexplained, ``‖W − f_θ‖² / ‖W‖²``. Adam with a warm-up + cosine
schedule; the whole loop runs under ``jax.jit`` as a ``jax.lax.scan`` over steps, in chunks of ``chunk`` steps
between which progress is reported and a ``loss_target`` may stop the fit. The minibatch of step ``s`` is drawn
from ``fold_in(key_data, s)``, so the result depends on the seed and the config only.

After the fit θ is cast to its stored form (:mod:`macjax.fit.theta`); ``predict`` always computes from the
stored form, so the encoder's prediction (from which the residual ``r = W − f_θ`` is formed) and the decoder's
(from the restored θ) are the same computation on the same inputs: equal bit for bit on the same backend and
jax version. Across backends (CPU vs GPU) they agree to float32 rounding (~1e-6 relative), not bit for bit:
XLA fuses and implements ``sin``/``cos``/``gelu``/matmul differently per backend.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from macjax.errors import ConfigError, NonFiniteError, ShapeError
from macjax.fit import model
from macjax.fit.config import FitConfig
from macjax.fit.theta import (Theta, check_theta, dequantize, init_params, quantize, spec_bits, theta_spec)


class FitProgress(NamedTuple):
  """What a progress callback receives after each chunk of scanned steps.

  Attributes:
    step: steps done so far (``≤ steps``).
    steps: the step budget.
    loss: mean minibatch loss over the last chunk — the estimated unexplained energy fraction; a scalar for
      ``fit``, ``[F]`` for ``fit_many``.
    done: whether each family has reached ``loss_target`` (and stopped updating); same shape as ``loss``.
  """

  step: int
  steps: int
  loss: np.ndarray
  done: np.ndarray


class FunctionalFit(NamedTuple):
  """``f_θ`` for families of matrices, as pure functions (hyper-parameters in the closure, θ a flat dict).

  Attributes:
    fit: ``fit(Ws: f32[L, rows, cols], *, key, callback=None, max_seconds=None) -> Theta`` — fits one family,
      returns stored θ; stops after ``steps``, or earlier at ``loss_target`` or ``max_seconds`` (between chunks).
    fit_many: ``fit_many(Ws: f32[F, L, rows, cols], *, key, callback=None, max_seconds=None) -> Theta`` —
      ``vmap`` of ``fit``
      over ``F`` families of equal shape; family ``f`` uses ``jax.random.split(key, F)[f]`` (so it equals
      ``fit(Ws[f], key=split(key, F)[f])`` up to float rounding); every array of θ gains a leading axis ``F``.
    predict: ``predict(theta, shape) -> f32[L, rows, cols]`` — ``f_θ`` on the grid, from stored θ (jitted).
    predict_many: ``predict_many(theta, shape) -> f32[F, L, rows, cols]`` for a stack from ``fit_many``.
    spec: ``spec(shape) -> {name: ShapeDtypeStruct}`` — abstract stored θ of one family (restore against it).
    bits: ``bits(shape) -> int`` — exact storage bits of θ for a family of this shape.
    config: the :class:`~macjax.fit.config.FitConfig` (JSON-able with ``dataclasses.asdict``).
  """

  fit: Callable[..., Theta]
  fit_many: Callable[..., Theta]
  predict: Callable[[Theta, tuple[int, int, int]], jax.Array]
  predict_many: Callable[[Theta, tuple[int, int, int]], jax.Array]
  spec: Callable[[tuple[int, int, int]], dict[str, jax.ShapeDtypeStruct]]
  bits: Callable[[tuple[int, int, int]], int]
  config: FitConfig


def functional_fit(**hyper) -> FunctionalFit:
  """Builds ``f_θ`` and its fit for families of matrices; hyper-parameters are those of :class:`FitConfig`.

  Args:
    **hyper: keyword hyper-parameters, e.g. ``width``, ``depth``, ``n_fourier``, ``tile``, ``row_embed``,
      ``theta_dtype``, ``steps``, ``lr``, ``loss_target`` (see :class:`FitConfig` for all and their defaults).

  Returns:
    A :class:`FunctionalFit` of pure functions.

  Raises:
    ConfigError: a hyper-parameter is unknown, of the wrong type or out of range.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from macjax.fit import functional_fit, explained_energy, theta_bits
    >>> l, i, j = jnp.meshgrid(jnp.arange(4.), jnp.arange(16.), jnp.arange(16.), indexing="ij")
    >>> Ws = jnp.sin(0.3 * l + 0.2 * i) * jnp.cos(0.25 * j)          # f32[4, 16, 16], smooth
    >>> ff = functional_fit(width=32, depth=2, n_fourier=4, steps=300, batch=256)
    >>> theta = ff.fit(Ws, key=jax.random.key(0))                      # stored form, float16
    >>> pred = ff.predict(theta, Ws.shape)
    >>> float(explained_energy(Ws, pred).total) > 0.9
    True
    >>> theta_bits(theta) == ff.bits(Ws.shape)
    True
  """
  try:
    cfg = FitConfig(**hyper)
  except TypeError as err:  # unknown keyword
    known = [f.name for f in dataclasses.fields(FitConfig)]
    raise ConfigError(f"functional_fit: {err}; expected keywords among {known}") from None

  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=int(cfg.warmup * cfg.steps), decay_steps=cfg.steps,
      end_value=cfg.lr * cfg.final_lr_ratio)
  optimizer = optax.adam(schedule)

  def setup(Ws, key, grid):
    """One family: unit-scale targets ``[L, rows, n_tiles, tile]``, σ, initial θ and optimizer state."""
    sigma = jnp.sqrt(jnp.mean(jnp.square(Ws)))
    sigma = jnp.where(sigma > 0, sigma, 1.0).astype(jnp.float32)
    targets = (Ws / sigma).reshape(grid.layers, grid.rows, grid.n_tiles, grid.tile)
    key_init, key_data = jax.random.split(key)
    params = init_params(cfg, grid, key=key_init)
    del params["out_scale"]
    return targets, sigma, params, optimizer.init(params), key_data

  def chunk_fn(params, opt_state, done, targets, key_data, start, grid):
    """One family: ``cfg.chunk`` scanned adam steps from step ``start``; frozen where ``done`` or past ``steps``."""

    def loss_fn(p, layer, row, tile, target):
      return jnp.mean(jnp.square(model.apply(p, layer, row, tile, cfg, grid) - target))

    def step(carry, s):
      params, opt_state = carry
      upper = jnp.array([grid.layers, grid.rows, grid.n_tiles], jnp.int32)
      layer, row, tile = jax.random.randint(jax.random.fold_in(key_data, s), (3, cfg.batch), 0, upper[:, None])
      loss, grads = jax.value_and_grad(loss_fn)(params, layer, row, tile, targets[layer, row, tile])
      updates, new_opt_state = optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      active = (s < cfg.steps) & jnp.logical_not(done)
      keep = lambda new, old: jnp.where(active, new, old)
      params = jax.tree.map(keep, new_params, params)
      opt_state = jax.tree.map(keep, new_opt_state, opt_state)
      return (params, opt_state), (loss, s < cfg.steps)

    (params, opt_state), (losses, counted) = jax.lax.scan(
        step, (params, opt_state), start + jnp.arange(cfg.chunk, dtype=jnp.int32))
    chunk_loss = jnp.sum(losses * counted) / jnp.maximum(jnp.sum(counted), 1)
    if cfg.loss_target is not None:
      done = done | (chunk_loss <= cfg.loss_target)
    return params, opt_state, done, chunk_loss

  def finish(params, sigma):
    return quantize({**params, "out_scale": sigma}, cfg)

  def predict_core(theta, grid):
    return model.predict_grid(dequantize(theta, cfg), cfg, grid)

  def setup_stack(Ws, keys, grid):
    return jax.vmap(lambda W, k: setup(W, k, grid))(Ws, keys)

  def chunk_stack(params, opt_state, done, targets, key_data, start, grid):
    return jax.vmap(lambda *a: chunk_fn(*a, start, grid))(params, opt_state, done, targets, key_data)

  def predict_stack_fn(theta, grid):
    return jax.vmap(lambda t: predict_core(t, grid))(theta)

  static = dict(static_argnames="grid")
  setup_one, setup_many = jax.jit(setup, **static), jax.jit(setup_stack, **static)
  chunk_one, chunk_many = jax.jit(chunk_fn, **static), jax.jit(chunk_stack, **static)
  finish_one, finish_many = jax.jit(finish), jax.jit(jax.vmap(finish))
  predict_one, predict_stack = jax.jit(predict_core, **static), jax.jit(predict_stack_fn, **static)

  def run(Ws, keys, grid, batch, setup_fn, chunk_fn_jit, finish_fn, callback, max_seconds):
    if max_seconds is not None and not max_seconds > 0:
      raise ConfigError(f"fit: max_seconds={max_seconds!r}; expected None or a number > 0")
    started = time.monotonic()
    targets, sigma, params, opt_state, key_data = setup_fn(Ws, keys, grid=grid)
    done = jnp.zeros(batch, bool)
    step = 0
    while step < cfg.steps:
      params, opt_state, done, loss = chunk_fn_jit(params, opt_state, done, targets, key_data,
                                                   jnp.int32(step), grid=grid)
      step = min(step + cfg.chunk, cfg.steps)
      if callback is not None:
        callback(FitProgress(step, cfg.steps, np.asarray(loss), np.asarray(done)))
      if cfg.loss_target is not None and bool(np.all(np.asarray(done))):
        break
      if max_seconds is not None and time.monotonic() - started > max_seconds:
        break
    return finish_fn(params, sigma)

  def check_weights(Ws, name, ndim):
    Ws = jnp.asarray(Ws, jnp.float32)
    if Ws.ndim != ndim:
      axes = "(families, layers, rows, cols)" if ndim == 4 else "(layers, rows, cols)"
      raise ShapeError(f"{name}: shape {tuple(Ws.shape)}; expected {axes}")
    if not bool(jnp.all(jnp.isfinite(Ws))):
      raise NonFiniteError(f"{name}: shape {tuple(Ws.shape)} holds NaN or infinity; expected finite weights")
    return Ws

  def fit(Ws, *, key, callback=None, max_seconds=None):
    """Fits ``f_θ`` to one family ``f32[L, rows, cols]``; returns θ in stored form (see the module docstring).

    A host loop over jitted chunks of ``cfg.chunk`` scanned steps (not itself traceable). ``callback`` gets a
    :class:`FitProgress` after each chunk. ``max_seconds`` (optional) also stops between chunks once that much
    wall time has passed — the result then depends on the machine's speed, not only on the seed.
    """
    Ws = check_weights(Ws, "Ws", 3)
    grid = cfg.grid(Ws.shape)
    return run(Ws, key, grid, (), setup_one, chunk_one, finish_one, callback, max_seconds)

  def fit_many(Ws, *, key, callback=None, max_seconds=None):
    """``vmap`` of :func:`fit` over ``F`` families ``f32[F, L, rows, cols]``, keys ``jax.random.split(key, F)``."""
    Ws = check_weights(Ws, "Ws", 4)
    grid = cfg.grid(Ws.shape[1:])
    keys = jax.random.split(key, Ws.shape[0])
    return run(Ws, keys, grid, (Ws.shape[0],), setup_many, chunk_many, finish_many, callback, max_seconds)

  def predict(theta, shape):
    """``f_θ`` on the grid of ``shape = (L, rows, cols)`` from stored θ -> ``f32[L, rows, cols]``."""
    grid = cfg.grid(shape, name="predict shape")
    check_theta(theta, theta_spec(cfg, grid), finite=False)
    return predict_one(theta, grid=grid)

  def predict_many(theta, shape):
    """``f_θ`` for a stack of stored θ (leading axis ``F``) -> ``f32[F, L, rows, cols]``."""
    grid = cfg.grid(shape, name="predict shape")
    leading = np.shape(theta.get("out_scale", np.zeros(0)))[:1]
    check_theta(theta, theta_spec(cfg, grid), batch=tuple(leading), finite=False)
    return predict_stack(theta, grid=grid)

  def spec(shape):
    return theta_spec(cfg, cfg.grid(shape))

  def bits(shape):
    return spec_bits(spec(shape))

  return FunctionalFit(fit, fit_many, predict, predict_many, spec, bits, cfg)

