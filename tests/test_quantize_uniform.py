"""Properties of the per-group uniform quantizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax.errors import ConfigError, ShapeError
from macjax.quantize import Quantizer, UniformMeta, uniform


def _matrix(kind: str, rows: int = 16, cols: int = 128, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "gaussian":
    return rng.normal(size=(rows, cols)).astype(np.float32)
  if kind == "laplace_outliers":
    w = rng.laplace(scale=0.02, size=(rows, cols)).astype(np.float32)
    w[3, 5] = 1.5
    return w
  if kind == "zero_rows":
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    w[0] = 0.0
    w[2, :64] = 0.0
    return w
  if kind == "tiny_and_huge":
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    w[1] *= 1e-9
    w[4] *= 1e6
    return w
  raise ValueError(kind)


KINDS = ["gaussian", "laplace_outliers", "zero_rows", "tiny_and_huge"]
CONFIGS = [(1 / 8, None), (1 / 8, 64), (1 / 2, 32), (1 / 64, 128)]
CONFIG_IDS = ["row-1/8", "g64-1/8", "g32-1/2", "g128-1/64"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step,group_size", CONFIGS, ids=CONFIG_IDS)
def test_round_trip_error_within_half_step(kind, step, group_size):
  W = _matrix(kind)
  q = uniform(step, group_size)
  codes, meta = q.quantize(jnp.asarray(W))
  assert codes.dtype == jnp.int32 and codes.shape == W.shape
  assert isinstance(meta, UniformMeta)
  W_hat = np.asarray(q.dequantize(codes, meta))
  step_full = np.repeat(np.asarray(meta.step), W.shape[1] // meta.step.shape[1], axis=1)
  # ≤ Δ/2 up to the float32 rounding of W/Δ and of code·Δ (a few ulps of |W|).
  slack = 4 * np.finfo(np.float32).eps * np.abs(W)
  assert np.all(np.abs(W - W_hat) <= 0.5 * step_full * (1 + 1e-6) + slack)


@pytest.mark.parametrize("step,group_size", CONFIGS, ids=CONFIG_IDS)
def test_steps_are_float16_exact_and_relative_to_group_rms(step, group_size):
  W = _matrix("gaussian")
  codes, meta = uniform(step, group_size).quantize(jnp.asarray(W))
  s = np.asarray(meta.step)
  assert s.dtype == np.float32
  np.testing.assert_array_equal(s.astype(np.float16).astype(np.float32), s)
  g = W.shape[1] if group_size is None else group_size
  rms = np.sqrt(np.mean(W.reshape(W.shape[0], -1, g) ** 2, axis=-1))
  np.testing.assert_allclose(s, step * rms, rtol=2 ** -10)


def test_zero_group_gives_zero_codes_and_finite_positive_step():
  W = _matrix("zero_rows")
  codes, meta = uniform(1 / 8, 64).quantize(jnp.asarray(W))
  assert np.all(np.isfinite(meta.step)) and np.all(np.asarray(meta.step) > 0)
  assert np.all(np.asarray(codes)[0] == 0) and np.all(np.asarray(codes)[2, :64] == 0)


@pytest.mark.parametrize("group_size", [None, 64], ids=["row", "g64"])
def test_jit_equals_eager(group_size):
  W = jnp.asarray(_matrix("laplace_outliers"))
  q = uniform(1 / 8, group_size)
  codes, meta = q.quantize(W)
  codes_j, meta_j = jax.jit(q.quantize)(W)
  np.testing.assert_array_equal(codes, codes_j)
  np.testing.assert_array_equal(meta.step, meta_j.step)
  np.testing.assert_array_equal(q.dequantize(codes, meta), jax.jit(q.dequantize)(codes, meta))


def test_dequantize_is_bit_identical_on_repeat():
  W = jnp.asarray(_matrix("gaussian"))
  q = uniform(1 / 8, 32)
  codes, meta = q.quantize(W)
  a = np.asarray(q.dequantize(codes, meta))
  b = np.asarray(jax.jit(q.dequantize)(jnp.asarray(np.asarray(codes)), UniformMeta(jnp.asarray(np.asarray(meta.step)))))
  assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("group_size", [None, 32], ids=["row", "g32"])
def test_vmap_over_stack_equals_loop(group_size):
  stack = jnp.asarray(np.stack([_matrix("gaussian", seed=s) for s in range(3)]))
  q = uniform(1 / 4, group_size)
  codes_v, meta_v = jax.vmap(q.quantize)(stack)
  deq_v = jax.vmap(q.dequantize)(codes_v, meta_v)
  for i in range(stack.shape[0]):
    codes, meta = q.quantize(stack[i])
    np.testing.assert_array_equal(codes_v[i], codes)
    np.testing.assert_array_equal(meta_v.step[i], meta.step)
    np.testing.assert_array_equal(deq_v[i], q.dequantize(codes, meta))


def test_finer_step_lowers_error():
  W = jnp.asarray(_matrix("gaussian"))
  errs = []
  for step in (1 / 2, 1 / 8, 1 / 32):
    q = uniform(step)
    errs.append(float(jnp.linalg.norm(W - q.dequantize(*q.quantize(W)))))
  assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "x"], ids=["zero", "negative", "nan", "str"])
def test_bad_step_raises_config_error(bad):
  with pytest.raises(ConfigError, match="step"):
    uniform(bad)


def test_bad_group_size_raises():
  with pytest.raises(ConfigError, match="group_size"):
    uniform(1 / 8, 0)
  with pytest.raises(ShapeError, match="group_size=48"):
    uniform(1 / 8, 48).quantize(jnp.zeros((4, 128)))
  with pytest.raises(ShapeError, match="matrix"):
    uniform().quantize(jnp.zeros((4, 4, 4)))


def test_quantizer_is_a_namedtuple_pair():
  q = uniform()
  assert isinstance(q, Quantizer) and q._fields[:2] == ("quantize", "dequantize")
  assert Quantizer(quantize=q.quantize, dequantize=q.dequantize).quantize_column is None


@pytest.mark.parametrize("group_size", [None, 32], ids=["row", "g32"])
def test_quantize_column_matches_full_quantize(group_size):
  W = jnp.asarray(_matrix("laplace_outliers"))
  q = uniform(1 / 4, group_size)
  codes, meta = q.quantize(W)
  W_hat = q.dequantize(codes, meta)
  col = jax.jit(q.quantize_column, static_argnums=3)
  for j in (0, 31, 32, 127):
    c, w = col(W[:, j], meta, j, W.shape[1])
    np.testing.assert_array_equal(c, codes[:, j])
    np.testing.assert_array_equal(w, W_hat[:, j])


@pytest.mark.parametrize("scope", ["matrix", "absolute"])
def test_matrix_and_absolute_scopes_store_one_step(scope):
  W = jnp.asarray(_matrix("laplace_outliers"))
  q = uniform(0.25 if scope == "matrix" else 0.003, scope=scope)
  codes, meta = jax.jit(q.quantize)(W)
  assert meta.step.shape == (1, 1)
  expected = 0.25 * float(jnp.sqrt(jnp.mean(W ** 2))) if scope == "matrix" else 0.003
  assert float(meta.step[0, 0]) == pytest.approx(expected, rel=2 ** -10)
  err = np.abs(np.asarray(W) - np.asarray(q.dequantize(codes, meta)))
  assert np.all(err <= 0.5 * float(meta.step[0, 0]) * (1 + 1e-6) + 1e-7)
  c, w = q.quantize_column(W[:, 3], meta, 3, W.shape[1])
  np.testing.assert_array_equal(c, codes[:, 3])


def test_scope_knob_is_validated():
  with pytest.raises(ConfigError, match="scope"):
    uniform(scope="column")
  with pytest.raises(ConfigError, match="scope='row'"):
    uniform(group_size=64, scope="matrix")


@pytest.mark.parametrize("method", ["uniform", "dead_zone", "rdoq", "trellis"])
def test_make_builds_every_registered_quantizer(method):
  from macjax.quantize import make
  q = make(method, step=0.25, scope="matrix")
  codes, meta = q.quantize(jnp.asarray(_matrix("gaussian", rows=4, cols=32)))
  assert codes.shape == (4, 32) and meta.step.shape == (1, 1)


def test_make_names_bad_methods_and_keys():
  from macjax.quantize import make
  with pytest.raises(ConfigError, match="unknown method 'nf4'"):
    make("nf4")
  with pytest.raises(ConfigError, match=r"takes no \['lam'\]"):
    make("uniform", lam=0.1)
