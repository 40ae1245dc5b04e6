"""Trellis-coded (dependent) quantization: the state machine, Viterbi optimality, and its rate gain."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax.coding import encode
from macjax.errors import ConfigError
from macjax.quantize import QUANTIZERS, trellis, uniform
from macjax.quantize.trellis import STATES, TRANSITIONS, machine, trellis_values, viterbi


def test_state_machine_replay_by_hand():
  # s=0 (Q0): k=1 → 2, parity 1 → s=2 (Q1): k=1 → 1 → s=3 (Q1): k=0 → 0, parity 0 → s=3: k=−1 → −1.
  codes = jnp.array([[1, 1, 0, -1], [0, 0, 0, 2]], jnp.int32)
  np.testing.assert_array_equal(trellis_values(codes), [[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 4.0]])


def test_machines_are_valid_trellises():
  t4, q4 = machine(4)
  np.testing.assert_array_equal(t4, TRANSITIONS)
  np.testing.assert_array_equal(q4, [0, 0, 1, 1])
  for n in STATES:
    trans, quant = machine(n)
    assert trans.shape == (n, 2) and sorted(np.unique(quant)) == [0, 1]
    assert np.all(trans[:, 0] != trans[:, 1])  # the parity always matters
    assert sorted(np.bincount(trans.ravel(), minlength=n)) == [2] * n  # every state has two ways in
  with pytest.raises(ConfigError, match="states"):
    trellis(states=6)


def test_larger_machines_lower_tcq_distortion():
  # Pure TCQ (λ = 0) at a fine step on a high-rate uniform source: the granular gain grows with the states.
  y = jnp.asarray(np.random.default_rng(0).uniform(-100, 100, size=(32, 512)).astype(np.float32))
  mse = {}
  for n in STATES:
    codes = viterbi(y, jnp.zeros(17, jnp.float32), 0.0, 8, n)
    mse[n] = float(jnp.mean(jnp.square(y - trellis_values(codes, n))))
  assert mse[4] < 4 / 12 * 0.82  # ≈ 1 dB below rounding with one quantizer's step 2
  assert mse[32] < mse[8] < mse[4]


def _path_cost(y_row, ks, table, lam, max_abs, states=4):
  trans, quant = machine(states)
  s, cost = 0, 0.0
  for y, k in zip(y_row, ks):
    q = quant[s]
    yhat = 2 * k if q == 0 else 2 * k - np.sign(k)
    cost += (y - yhat) ** 2 + lam * table[int(np.clip(k, -max_abs, max_abs)) + max_abs]
    s = trans[s][k & 1]
  return cost


def _candidates(y, s, states=4):
  if machine(states)[1][s] == 0:
    k0 = int(np.floor(y / 2))
    return {k0, k0 + 1, 0}
  kk = int(np.floor((abs(y) + 1) / 2))
  sgn = 1 if y >= 0 else -1
  return {sgn * kk, sgn * (kk + 1), 0}


@pytest.mark.parametrize("states", [4, 8, 32])
@pytest.mark.parametrize("lam", [0.0, 0.5, 3.0], ids=["tcq", "rd", "heavy"])
def test_viterbi_finds_the_cheapest_path(lam, states):
  rng = np.random.default_rng(0)
  max_abs = 8
  y = (rng.laplace(size=(4, 6)) * 3).astype(np.float32)
  table = rng.uniform(0.5, 6.0, size=2 * max_abs + 1).astype(np.float32)
  trans, quant = machine(states)
  codes = np.asarray(viterbi(jnp.asarray(y), jnp.asarray(table), lam, max_abs, states))
  for r in range(y.shape[0]):
    best = np.inf

    def search(j, s, cost):
      nonlocal best
      if cost >= best:
        return
      if j == y.shape[1]:
        best = cost
        return
      for k in _candidates(y[r, j], s, states):
        yhat = 2 * k if quant[s] == 0 else 2 * k - np.sign(k)
        c = (y[r, j] - yhat) ** 2 + lam * table[int(np.clip(k, -max_abs, max_abs)) + max_abs]
        search(j + 1, trans[s][k & 1], cost + c)

    search(0, 0, 0.0)
    assert _path_cost(y[r], codes[r], table, lam, max_abs, states) == pytest.approx(best, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("states", [4, 8])
def test_jit_eager_vmap(states):
  q = trellis(1 / 4, lam=0.2, states=states)
  stack = jnp.asarray(np.random.default_rng(1).laplace(size=(2, 16, 64)).astype(np.float32))
  cv, mv = jax.vmap(q.quantize)(stack)
  dv = jax.vmap(q.dequantize)(cv, mv)
  for i in range(2):
    c, m = jax.jit(q.quantize)(stack[i])
    np.testing.assert_array_equal(cv[i], c)
    np.testing.assert_array_equal(dv[i], jax.jit(q.dequantize)(c, m))


def _rate_distortion(q, W, jit=False):
  codes, meta = (jax.jit(q.quantize) if jit else q.quantize)(jnp.asarray(W))
  coded = encode(np.asarray(codes))
  bits = 32 * coded.words.size + 8 * coded.table.size
  return bits / W.size, float(np.mean((W - np.asarray(q.dequantize(codes, meta))) ** 2))


@pytest.mark.parametrize("step,lam,min_gain", [(0.1, 0.3, 0.1), (0.3, 0.3, 0.08)], ids=["4.3bit", "3bit"])
def test_trellis_lowers_rate_at_equal_distortion_on_laplacian(step, lam, min_gain):
  W = np.random.default_rng(1).laplace(size=(128, 1024)).astype(np.float32)
  rate, mse = _rate_distortion(trellis(step, lam=lam), W, jit=True)
  curve = [_rate_distortion(uniform(s), W) for s in np.geomspace(step, step * 3, 15)]
  rates, mses = np.array(curve).T
  order = np.argsort(mses)
  assert mses.min() <= mse <= mses.max()
  uniform_rate = float(np.interp(np.log(mse), np.log(mses[order]), rates[order]))
  assert rate <= uniform_rate - min_gain


@pytest.mark.parametrize("kw", [dict(lam=-1.0), dict(iters=0), dict(max_abs=0), dict(scope="x")],
                         ids=["lam", "iters", "max_abs", "scope"])
def test_bad_knobs_raise(kw):
  with pytest.raises(ConfigError):
    trellis(**kw)


def test_registered_for_configs():
  assert QUANTIZERS["trellis"] is trellis


def test_column_axis_runs_down_columns_and_feeds_gptq():
  from macjax.quantize import gptq
  rng = np.random.default_rng(3)
  W = rng.normal(size=(48, 64)).astype(np.float32)
  q_col = trellis(0.3, lam=0.1, scope="matrix", axis="column")
  q_row = trellis(0.3, lam=0.1, scope="matrix")  # same step for W and Wᵀ
  c_col, m = jax.jit(q_col.quantize)(jnp.asarray(W))
  c_row, _ = jax.jit(q_row.quantize)(jnp.asarray(W.T.copy()))
  np.testing.assert_array_equal(c_col, np.asarray(c_row).T)  # the same trellis, transposed
  # One column on its own decodes to what the full dequantize gives for it.
  codes, w_hat = q_col.quantize_column(jnp.asarray(W[:, 7]), m, 7, 64)
  full = np.asarray(q_col.dequantize(jnp.asarray(c_col).at[:, 7].set(codes), m))
  np.testing.assert_allclose(full[:, 7], w_hat, rtol=1e-6)
  # GPTQ in front of the column trellis lowers the layer-output error on correlated inputs.
  Q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
  X = (rng.normal(size=(1024, 64)) @ (Q * np.geomspace(10, 0.05, 64)) @ Q.T).astype(np.float32)
  gq = gptq(q_col, block_size=16)
  cg, mg = jax.jit(gq.quantize)(jnp.asarray(W), jnp.asarray(X.T @ X))
  err = lambda W_hat: float(np.linalg.norm(X @ (W - np.asarray(W_hat)).T))
  assert err(gq.dequantize(cg, mg)) < 0.7 * err(q_col.dequantize(c_col, m))


def test_row_axis_has_no_column_quantizer():
  assert trellis().quantize_column is None
  with pytest.raises(ConfigError, match="axis"):
    trellis(axis="diagonal")
