"""Diagnostics on distributions whose answers are known."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax import diagnose as D
from macjax import transforms as T
from macjax.errors import ConfigError, NonFiniteError, ShapeError
from macjax.transforms.orthogonal import random_orthogonal_matrix


@pytest.mark.parametrize("sampler,expected,tol", [
    (jax.random.normal, 3.0, 0.1),
    (jax.random.laplace, 6.0, 0.6),  # sd of the estimate ≈ sqrt((8!/16 − 36)/N) ≈ 0.11 at N = 2e5
    (lambda k, s: jax.random.uniform(k, s, minval=-1, maxval=1), 1.8, 0.05),
], ids=["gaussian", "laplace", "uniform"])
def test_kurtosis_of_known_distributions(sampler, expected, tol):
  W = sampler(jax.random.key(0), (400, 500))
  assert float(D.kurtosis(W)) == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("r", [1, 5, 20])
def test_effective_rank_of_rank_r_matrices(r):
  k1, k2 = jax.random.split(jax.random.key(r))
  U = random_orthogonal_matrix(k1, 64)[:, :r]
  V = random_orthogonal_matrix(k2, 48)[:, :r]
  flat = 3.0 * U @ V.T  # r equal singular values: both measures are exactly r
  assert float(D.effective_rank(flat)) == pytest.approx(r, rel=1e-3)
  assert float(D.participation_ratio(flat)) == pytest.approx(r, rel=1e-3)
  gauss = jax.random.normal(k1, (64, r)) @ jax.random.normal(k2, (r, 48))  # spread spectrum: at most r
  assert 0.6 * r <= float(D.effective_rank(gauss)) <= r * 1.001
  assert 0.4 * r <= float(D.participation_ratio(gauss)) <= r * 1.001


def test_max_to_rms_and_top_energy():
  x = jnp.zeros((10, 10)).at[3, 4].set(5.0)
  assert float(D.max_to_rms(x)) == pytest.approx(10.0)  # one-hot of N entries: sqrt(N)
  assert float(D.top_energy_ratio(x)) == pytest.approx(1.0)
  flat = jnp.ones((100, 100))
  assert float(D.top_energy_ratio(flat)) == pytest.approx(0.01)
  assert float(D.max_to_rms(flat)) == pytest.approx(1.0)


def test_code_entropy_of_known_sources():
  key = jax.random.key(0)
  W = jax.random.normal(key, (400, 500))
  # high-rate Gaussian: h(N(0,1)) − log2(1/4) = 0.5·log2(2πe) + 2
  assert float(D.code_entropy(W, step_rel=0.25)) == pytest.approx(0.5 * math.log2(2 * math.pi * math.e) + 2, abs=0.02)
  codes = jax.random.randint(key, (64, 64), 0, 8).astype(jnp.float32)  # uniform on 8 values: 3 bits
  assert float(D.code_entropy(codes - 3.0, step_rel=1.0 / float(jnp.std(codes)))) == pytest.approx(3.0, abs=0.01)


def test_jit_and_vmap_agree_with_eager_and_loop():
  Ws = jax.random.laplace(jax.random.key(0), (3, 32, 24))
  stacked = jax.vmap(D.matrix_stats)(Ws)
  jitted = jax.jit(D.matrix_stats)(Ws[1])
  for i in range(3):
    one = D.matrix_stats(Ws[i])
    for a, b in zip(one, jax.tree.map(lambda x: x[i], stacked)):
      np.testing.assert_allclose(a, b, rtol=1e-5)
  for a, b in zip(jitted, D.matrix_stats(Ws[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_rotation_flattens_alignment_concentrates():
  key = jax.random.key(0)
  k1, k2, k3 = jax.random.split(key, 3)
  W = (jax.random.normal(k1, (128, 6)) @ jax.random.normal(k2, (6, 96)) + 0.05 * jax.random.normal(k3, (128, 96)))
  W = W * (1.0 + 8.0 * (jnp.arange(96) % 31 == 0))  # outlier channels
  table = D.stats_by_coordinates(W, {"identity": T.identity(), "hadamard": T.randomized_hadamard(),
                                     "pca": T.pca(side="input")}, key=jax.random.key(1))
  ident, had, pca = (table[n][0] for n in ("identity", "hadamard", "pca"))
  assert float(had.kurtosis) < float(ident.kurtosis)
  assert float(pca.top_energy_ratio) > float(had.top_energy_ratio)
  assert float(pca.code_entropy) < float(had.code_entropy)
  assert table["hadamard"][1] == 0 and table["pca"][1] == 96 * 96 * 16


def test_diagnose_errors():
  with pytest.raises(ShapeError, match=r"shape \(2, 3, 4\); expected one matrix"):
    D.effective_rank(jnp.ones((2, 3, 4)))
  with pytest.raises(ConfigError, match="fraction=0"):
    D.top_energy_ratio(jnp.ones((3, 3)), fraction=0)
  with pytest.raises(ConfigError, match="step_rel=-1"):
    D.code_entropy(jnp.ones((3, 3)), step_rel=-1)


@pytest.mark.parametrize("source, h_expected", [
    ("gaussian", 0.5 * np.log2(2 * np.pi * np.e)),  # unit variance
    ("laplace", np.log2(2 * np.e / np.sqrt(2))),     # unit variance: b = 1/√2
])
def test_differential_entropy_of_known_sources(source, h_expected):
  from macjax.diagnose import bound  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  W = rng.normal(size=(400, 500)) if source == "gaussian" else rng.laplace(scale=1 / np.sqrt(2), size=(400, 500))
  assert abs(bound.differential_entropy([W], "none") - h_expected) < 0.01
  # scaling by a: h grows by log2 a, whatever is conditioned on
  for scales in bound.SCALES:
    assert abs(bound.differential_entropy([4.0 * W], scales) - bound.differential_entropy([W], scales) - 2) < 1e-6


def test_conditioning_on_spreads_lowers_the_bound_only_when_they_differ():
  from macjax.diagnose import bound  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  iid = rng.laplace(size=(256, 256))
  spread = iid * np.exp(rng.normal(scale=0.7, size=(256, 1))) * np.exp(rng.normal(scale=0.5, size=(1, 256)))
  errs = [0.3, 0.1, 0.03]
  b = {s: bound.shannon_lower_bound([spread], errs, s) for s in ("none", "row", "row_col")}
  assert np.all(b["row_col"] < b["row"] - 0.05) and np.all(b["row"] < b["none"] - 0.1)
  flat = {s: bound.shannon_lower_bound([iid], errs, s) for s in ("none", "row_col")}
  np.testing.assert_allclose(flat["row_col"], flat["none"], atol=0.02)
  assert np.all(np.diff(b["none"]) > 0)  # fewer bits at a larger error
  # half the error costs one more bit (the bound's slope), where it is not clipped at 0
  np.testing.assert_allclose(bound.shannon_lower_bound([iid], [0.05], "none") -
                             bound.shannon_lower_bound([iid], [0.1], "none"), 1.0, atol=1e-9)


@pytest.mark.parametrize("step", [0.5, 0.25, 0.1])
def test_real_coders_stay_above_the_bound(step):
  """Uniform rounding with one step (MSE-optimal across rows) + the entropy coder with context classes, everything
  counted, sits above the bound, by ≈ 0.25 bit (high-rate scalar quantization) plus what the contexts miss."""
  from macjax import coding  # pylint: disable=g-import-not-at-top
  from macjax.diagnose import bound  # pylint: disable=g-import-not-at-top
  from macjax.quantize import uniform  # pylint: disable=g-import-not-at-top  (the factory)
  rng = np.random.default_rng(2)
  W = (rng.laplace(size=(256, 512)) * np.exp(rng.normal(scale=0.5, size=(256, 1)))).astype(np.float32)
  q = uniform(step=step, scope="matrix")
  codes, meta = q.quantize(jnp.asarray(W))
  W_hat = np.asarray(q.dequantize(codes, meta))
  err = float(np.linalg.norm(W - W_hat) / np.linalg.norm(W))
  coded = coding.encode(np.asarray(codes), model="auto", classes="auto")
  bits = (coding.coded_bits(coded)["total"] + 16) / W.size  # codes, tables, class maps, header, the step
  floor = float(bound.shannon_lower_bound([W], [err], "row_col")[0])
  assert floor + 0.2 < bits < floor + 0.45  # measured 0.32–0.34 here


def test_bound_errors():
  from macjax.diagnose import bound  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="scales"):
    bound.differential_entropy([np.ones((2, 2))], "column")
  with pytest.raises(ConfigError, match="no weights"):
    bound.differential_entropy([])
  with pytest.raises(ShapeError, match="2-D"):
    bound.differential_entropy([np.ones(4)])
  with pytest.raises(NonFiniteError, match="NaN"):
    bound.differential_entropy([np.array([[1.0, np.nan]])])
  with pytest.raises(ConfigError, match="rel_errors"):
    bound.shannon_lower_bound([np.ones((2, 2))], [0.0])


def test_analyze_a_model_table_json_and_figures(tiny_llama_dir, tmp_path, capsys):
  """`macjax analyze`: rotations keep singular values (effective rank unchanged) and flatten heavy tails, PCA's
  basis costs bits and seeded rotations none; the JSON and the PNG figures are written; bad scopes are one error."""
  import json  # pylint: disable=g-import-not-at-top
  from macjax import cli  # pylint: disable=g-import-not-at-top
  out = tmp_path / "an"
  code = cli.main(["analyze", str(tiny_llama_dir), "--out", str(out), "--scopes", "identity,hadamard,pca"])
  text = capsys.readouterr().out
  assert code == 0 and "top-1%" in text and "bound@0.05" in text
  result = json.loads((out / "analysis.json").read_text())
  assert len(result["matrices"]) == 14 and set(result["roles"]) == {"q", "k", "v", "o", "gate", "up", "down"}
  for row in result["matrices"]:
    assert row["hadamard"]["effective_rank_fraction"] == pytest.approx(row["identity"]["effective_rank_fraction"],
                                                                       rel=1e-4)
    assert row["hadamard"]["state_bits_per_weight"] == 0 and row["pca"]["state_bits_per_weight"] > 0
  rows_lt_cols = {r["role"] for r in result["matrices"] if r["shape"][0] < r["shape"][1]}
  assert rows_lt_cols and all(result["bound"][role]["pca"] is None for role in rows_lt_cols)  # degenerate: n/a
  assert all(b["identity"] > 0 and b["hadamard"] > 0 for b in result["bound"].values())
  kurt = {s: np.mean([r[s]["kurtosis"] for r in result["matrices"]]) for s in ("identity", "hadamard")}
  assert abs(kurt["hadamard"] - 3) < abs(kurt["identity"] - 3)  # the tiny weights are heavy-tailed
  figures = sorted(out.glob("*.png"))
  assert len(figures) == 8 and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
  assert cli.main(["analyze", str(tiny_llama_dir), "--out", str(out), "--scopes", "identity,wavelet"]) == 2
  assert "macjax: error: analyze: scopes ['identity', 'wavelet']" in capsys.readouterr().err
