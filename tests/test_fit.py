"""Properties of macjax.fit: convergence on a smooth family, jit == eager, vmap == loop, exact decode from
stored θ, exact θ accounting, determinism, budgets, and errors that name what is wrong."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax.errors import ArtifactError, ConfigError, NonFiniteError, ShapeError
from macjax.fit import (FitProgress, explained_energy, from_numpy, functional_fit, gaussian_rate_gain, theta_bits,
                        to_numpy, width_for_budget)
from macjax.fit.theta import dequantize, quantize

SHAPE = (4, 32, 32)
SMALL = dict(width=32, depth=2, n_fourier=4, batch=512, chunk=100)


def smooth_family(shape=SHAPE, phase=0.0) -> np.ndarray:
  """W[l, i, j]: a smooth function of (l, i, j), with a scale like trained weights'."""
  l, i, j = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
  u = lambda a, n: 2 * a / (n - 1) - 1
  w = (np.sin(2.0 * u(i, shape[1]) + 0.8 * u(l, shape[0]) + phase) * np.cos(1.5 * u(j, shape[2]))
       + 0.5 * u(l, shape[0]) * u(j, shape[2]) ** 2)
  return (0.05 * w).astype(np.float32)


# Fits shared by the tests (a factory compiles once; a fit is reused by every property that needs one).
CONFIGS = {
    "float16": dict(steps=600, **SMALL),
    "int8-tile8": dict(steps=600, tile=8, theta_dtype="int8", **SMALL),
    "bfloat16-rowwise-embeddings": dict(steps=600, tile=32, layer_embed=2, row_embed=4, col_embed=2,
                                        theta_dtype="bfloat16", **SMALL),
    "float32-embeddings": dict(steps=150, theta_dtype="float32", **{**SMALL, "depth": 1},
                                      row_embed=3, col_embed=5),
}
_FITS: dict[str, tuple] = {}


def fitted(name: str):
  """(ff, Ws, stored θ, encoder's prediction) for ``CONFIGS[name]``, fitted once per test session."""
  if name not in _FITS:
    ff = functional_fit(**CONFIGS[name])
    Ws = smooth_family()
    theta = ff.fit(Ws, key=jax.random.key(0))
    _FITS[name] = ff, Ws, theta, ff.predict(theta, SHAPE)
  return _FITS[name]


@pytest.mark.parametrize("name", ["float16", "int8-tile8", "bfloat16-rowwise-embeddings"])
def test_fit_explains_smooth_family(name):
  _, Ws, _, pred = fitted(name)
  energy = explained_energy(Ws, pred)
  assert float(energy.total) > 0.99, energy
  assert np.all(energy.per_layer > 0.98), energy.per_layer


def test_predict_jit_equals_eager():
  ff, _, theta, pred = fitted("float16")
  with jax.disable_jit():
    eager = ff.predict(theta, SHAPE)
  np.testing.assert_allclose(np.asarray(eager), np.asarray(pred), rtol=1e-5, atol=1e-7)


def test_fit_many_equals_loop():
  ff = fitted("float32-embeddings")[0]
  Ws = np.stack([smooth_family(), smooth_family(phase=1.0), 2 * smooth_family(phase=2.0)])
  key = jax.random.key(3)
  stacked = ff.fit_many(Ws, key=key)
  preds = ff.predict_many(stacked, SHAPE)
  assert preds.shape == (3,) + SHAPE
  for f, k in enumerate(jax.random.split(key, 3)):
    single = ff.fit(Ws[f], key=k)
    for name, value in single.items():
      np.testing.assert_allclose(np.asarray(stacked[name][f]), np.asarray(value), rtol=1e-4, atol=1e-5,
                                 err_msg=name)
    np.testing.assert_allclose(np.asarray(preds[f]), np.asarray(ff.predict(single, SHAPE)), rtol=1e-4,
                               atol=1e-6)


def _save_restore(theta) -> dict[str, np.ndarray]:
  """Through numpy's own file format, pickle forbidden: θ is a flat dict of plain arrays."""
  buffer = io.BytesIO()
  np.savez(buffer, **to_numpy(theta))
  buffer.seek(0)
  with np.load(buffer, allow_pickle=False) as z:
    return {name: z[name] for name in z.files}


STORED_DTYPE = {"float16": np.float16, "int8-tile8": np.int8, "bfloat16-rowwise-embeddings": np.uint16,
                "float32-embeddings": np.float32}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_is_bit_exact_from_stored_theta(name):
  ff, _, theta, encoder = fitted(name)
  restored = from_numpy(_save_restore(theta), ff.config, SHAPE)
  decoder_ff = functional_fit(**vars(ff.config))  # the decoder rebuilds f_θ from the JSON-able config
  decoder = np.asarray(decoder_ff.predict(restored, SHAPE))
  encoder = np.asarray(encoder)
  assert decoder.dtype == np.float32 and np.array_equal(encoder.view(np.uint32), decoder.view(np.uint32))
  assert to_numpy(theta)["dense_0.w"].dtype == STORED_DTYPE[name]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_theta_bits_counts_every_stored_byte(name):
  ff, _, theta, _ = fitted(name)
  arrays = to_numpy(theta)
  stored = sum(a.nbytes for a in arrays.values()) * 8
  assert theta_bits(theta) == stored == ff.bits(SHAPE)
  assert {k: (v.shape, np.dtype(v.dtype)) for k, v in ff.spec(SHAPE).items()} == {
      k: (a.shape, a.dtype) for k, a in arrays.items()}


def test_fit_is_deterministic_from_seed():
  ff, Ws, a, _ = fitted("float16")
  b, c = ff.fit(Ws, key=jax.random.key(0)), ff.fit(Ws, key=jax.random.key(7))
  for name in a:
    assert np.array_equal(to_numpy(a)[name], to_numpy(b)[name]), name
  assert not np.array_equal(to_numpy(a)["dense_0.w"], to_numpy(c)["dense_0.w"])


TARGET = dict(steps=2000, loss_target=0.05, **SMALL)


def test_loss_target_stops_early_and_progress_is_reported():
  seen: list[FitProgress] = []
  ff = functional_fit(**TARGET)
  ff.fit(smooth_family(), key=jax.random.key(8), callback=seen.append)
  assert seen and seen[-1].done and seen[-1].loss <= 0.05
  assert seen[-1].step < 2000 and [p.step for p in seen] == list(range(100, seen[-1].step + 1, 100))


def test_loss_target_freezes_each_family_of_a_stack():
  seen: list[FitProgress] = []
  ff = functional_fit(**TARGET)
  rng = np.random.default_rng(0)
  Ws = np.stack([smooth_family(), rng.normal(size=SHAPE).astype(np.float32)])  # the noise never gets there
  ff.fit_many(Ws, key=jax.random.key(9), callback=seen.append)
  assert seen[-1].step == 2000 and seen[-1].done.tolist() == [True, False]
  assert seen[-1].loss[0] <= 0.05 < seen[-1].loss[1]


def test_width_for_budget_is_the_largest_that_fits():
  shape = (6, 384, 1536)
  hyper = dict(depth=2, n_fourier=8, tile=4, row_embed=4, theta_dtype="int8")
  budget = int(0.02 * np.prod(shape))
  width = width_for_budget(budget, shape, **hyper)
  assert functional_fit(width=width, **hyper).bits(shape) <= budget
  assert functional_fit(width=width + 1, **hyper).bits(shape) > budget
  with pytest.raises(ConfigError, match="needs"):
    width_for_budget(100, shape, **hyper)


def test_int8_theta_error_is_within_half_a_step():
  ff = functional_fit(theta_dtype="int8", **SMALL)
  params = {"dense_0.w": jax.random.normal(jax.random.key(0), (7, 5)), "out_scale": jnp.float32(0.1)}
  theta = quantize(params, ff.config)
  back = dequantize(theta, ff.config)
  step = float(theta["dense_0.w.scale"])
  assert np.max(np.abs(np.asarray(back["dense_0.w"] - params["dense_0.w"]))) <= step / 2 + 1e-7
  assert float(back["out_scale"]) == np.float32(0.1)


def test_explained_energy_and_rate_gain():
  Ws = smooth_family()
  assert float(explained_energy(Ws, Ws).total) == 1.0
  assert float(explained_energy(Ws, np.zeros_like(Ws)).total) == 0.0
  half = explained_energy(Ws, Ws * (1 - np.sqrt(0.5)))
  np.testing.assert_allclose(half.per_layer, 0.5, rtol=1e-6)
  assert float(explained_energy(Ws, 3 * Ws).total) < 0  # a bad prediction is reported as such
  np.testing.assert_allclose(gaussian_rate_gain(np.array([0.0, 0.75])), [0.0, 1.0])


@pytest.mark.parametrize("bad, error, match", [
    (np.zeros((32, 32), np.float32), ShapeError, r"\(layers, rows, cols\)"),
    (np.full(SHAPE, np.nan, np.float32), NonFiniteError, "NaN"),
    (np.zeros((4, 32, 30), np.float32), ShapeError, "tile=8"),
], ids=["2d", "nan", "tile-does-not-divide"])
def test_fit_rejects_bad_weights(bad, error, match):
  ff = functional_fit(steps=1, tile=8 if bad.shape[-1] == 30 else 1)
  with pytest.raises(error, match=match):
    ff.fit(bad, key=jax.random.key(0))


def test_bad_config_and_bad_restore_are_named():
  with pytest.raises(ConfigError, match="widht"):
    functional_fit(widht=3)
  with pytest.raises(ConfigError, match="theta_dtype"):
    functional_fit(theta_dtype="int3")
  with pytest.raises(ConfigError, match="depth"):
    functional_fit(depth=-1)
  ff, _, theta, _ = fitted("float16")
  arrays = to_numpy(theta)
  with pytest.raises(ArtifactError, match="missing.*dense_1.b"):
    from_numpy({k: v for k, v in arrays.items() if k != "dense_1.b"}, ff.config, SHAPE)
  with pytest.raises(ShapeError, match=r"dense_0.w.*float32.*expected float16"):
    from_numpy({**arrays, "dense_0.w": arrays["dense_0.w"].astype(np.float32)}, ff.config, SHAPE)
  with pytest.raises(ShapeError, match="dense_0.w"):
    from_numpy({**arrays, "dense_0.w": arrays["dense_0.w"][:-1]}, ff.config, SHAPE)
  with pytest.raises(NonFiniteError, match="out_scale"):
    from_numpy({**arrays, "out_scale": np.float32(np.inf)}, ff.config, SHAPE)


def test_max_seconds_stops_between_chunks():
  seen: list[FitProgress] = []
  ff, Ws, _, _ = fitted("float16")
  ff.fit(Ws, key=jax.random.key(0), callback=seen.append, max_seconds=1e-9)
  assert [p.step for p in seen] == [100]
  with pytest.raises(ConfigError, match="max_seconds"):
    ff.fit(Ws, key=jax.random.key(0), max_seconds=0)
