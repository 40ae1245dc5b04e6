"""Parametric, automatically chosen, and context-adaptive (per channel group) coding models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from macjax.coding import CodedTensor, coded_bits, decode, encode, information_bits, model_weights
from macjax.coding import models, tables
from macjax.errors import ArtifactError, ConfigError, ShapeError

MODELS = ["histogram", "laplace", "gaussian", "logistic", "auto"]


def _source(kind: str, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "laplace":
    return np.round(rng.laplace(scale=3.0, size=(128, 256))).astype(np.int32)
  if kind == "gaussian":
    return np.round(rng.normal(scale=5.0, size=(128, 256))).astype(np.int32)
  if kind == "logistic":
    return np.round(rng.logistic(scale=2.0, size=(128, 256))).astype(np.int32)
  if kind == "shifted_sparse":
    return (np.round(rng.laplace(scale=0.3, size=(64, 64))) + 7).astype(np.int32)
  if kind == "heteroscedastic_rows":
    scales = np.geomspace(0.2, 40, 96)[:, None]
    return np.round(rng.normal(size=(96, 512)) * scales).astype(np.int32)
  if kind == "constant":
    return np.full((10, 10), 3, np.int32)
  if kind == "three_d":
    return np.round(rng.laplace(scale=2.0, size=(6, 10, 17))).astype(np.int32)
  raise ValueError(kind)


SOURCES = ["laplace", "gaussian", "logistic", "shifted_sparse", "heteroscedastic_rows", "constant", "three_d"]


@pytest.mark.parametrize("group_rows", [None, 5], ids=["single", "g5"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("source", SOURCES)
def test_decode_is_bit_exact(source, model, group_rows):
  _check_round_trip(source, model, group_rows)


@pytest.mark.parametrize("source,model,group_rows", [("heteroscedastic_rows", "auto", 1), ("three_d", "laplace", 1),
                                                      ("laplace", "histogram", 64), ("constant", "auto", 64)],
                         ids=["rows-auto-g1", "3d-laplace-g1", "laplace-hist-g64", "constant-auto-g64"])
def test_decode_is_bit_exact_per_row_and_oversized_groups(source, model, group_rows):
  _check_round_trip(source, model, group_rows)


def _check_round_trip(source, model, group_rows):
  x = _source(source)
  coded = encode(x, model=model, group_rows=group_rows)
  coded = CodedTensor(coded.words, coded.table, json.loads(json.dumps(coded.header)))
  np.testing.assert_array_equal(decode(coded), x)
  assert 32 * coded.words.size >= information_bits(x, coded)


@pytest.mark.parametrize("source", ["laplace", "gaussian", "logistic"])
def test_matching_parametric_model_is_near_histogram_and_within_one_percent(source):
  rng = np.random.default_rng(1)
  draw = {"laplace": rng.laplace, "gaussian": rng.normal, "logistic": rng.logistic}[source]
  x = np.round(draw(scale=4.0, size=(400, 300))).astype(np.int32)
  hist_bits = coded_bits(encode(x, model="histogram"))["words"]
  coded = encode(x, model=source)
  info = information_bits(x, coded)
  assert info <= 32 * coded.words.size <= 1.01 * info
  # The right parametric family costs < 0.5% over the empirical histogram and stores a 5-8 byte table.
  assert 32 * coded.words.size <= 1.005 * hist_bits
  assert coded.table.size <= 8


@pytest.mark.parametrize("source", ["laplace", "gaussian", "shifted_sparse", "heteroscedastic_rows"])
def test_auto_picks_the_fewest_bits(source):
  x = _source(source)
  totals = {m: coded_bits(encode(x, model=m))["words"] + coded_bits(encode(x, model=m))["table"]
            for m in models.KINDS}
  auto = encode(x, model="auto")
  auto_total = coded_bits(auto)["words"] + coded_bits(auto)["table"]
  assert auto.header["model"] in models.KINDS
  # The choice is by information + table bits; the coder's word granularity adds ≤ 64 bits of noise.
  assert auto_total <= min(totals.values()) + 64


def test_wrong_parametric_family_costs_more():
  x = _source("laplace")
  assert coded_bits(encode(x, model="gaussian"))["words"] > 1.01 * coded_bits(encode(x, model="laplace"))["words"]


def test_grouped_models_save_bits_on_channels_with_unequal_statistics():
  x = _source("heteroscedastic_rows")
  single = coded_bits(encode(x, model="auto"))
  grouped = coded_bits(encode(x, model="auto", group_rows=8))
  assert grouped["total"] < 0.9 * single["total"]  # tables included


def test_grouped_model_weights_have_one_row_per_group():
  x = _source("heteroscedastic_rows")
  coded = encode(x, model="laplace", group_rows=10)
  w = model_weights(coded)
  assert w.shape == (10, coded.header["alphabet"])
  assert np.all(w.sum(axis=1) == 2 ** tables.PRECISION)


def test_fx_pow_is_exact_integer_arithmetic():
  base = 3_000_000_000
  e = np.arange(0, 50, dtype=np.uint64)
  got = models.fx_pow(base, e)
  # Reference with Python ints, same truncation order (binary exponentiation).
  for k in (0, 1, 2, 7, 49):
    res, p, kk = 1 << 32, base, k
    while kk:
      if kk & 1:
        res = (res * p) >> 32
      p = (p * p) >> 32
      kk >>= 1
    assert int(got[k]) == res


@pytest.mark.parametrize("kind", models.PARAMETRIC)
def test_parametric_counts_are_unimodal_at_mu(kind):
  counts = models.parametric_counts(kind, 3_500_000_000, mu=2, offset=-10, alphabet=25)
  peak = int(np.argmax(counts)) - 10
  assert peak == 2
  assert np.all(np.diff(counts[:12]) >= 0) and np.all(np.diff(counts[12:]) <= 0)


def test_truncated_grouped_table_raises():
  coded = encode(_source("heteroscedastic_rows"), model="auto", group_rows=16)
  for cut in (1, 3, coded.table.size // 2):
    with pytest.raises(ArtifactError, match="table"):
      decode(coded._replace(table=coded.table[:-cut]))
  with pytest.raises(ArtifactError, match="table"):
    decode(coded._replace(table=np.concatenate([coded.table, np.zeros(2, np.uint8)])))


def test_altered_parametric_table_raises_or_decodes_consistently():
  coded = encode(_source("laplace"), model="laplace")
  bad = coded.table.copy()
  bad[:4] = 0  # θ = 0: outside (0, 1)
  with pytest.raises(ArtifactError, match="parameter"):
    decode(coded._replace(table=bad))
  with pytest.raises(ArtifactError, match="table"):
    decode(coded._replace(table=coded.table[:3]))


def test_grouped_header_needs_group_rows():
  coded = encode(_source("laplace"), model="laplace", group_rows=16)
  header = {k: v for k, v in coded.header.items() if k != "group_rows"}
  with pytest.raises(ArtifactError, match="group_rows"):
    decode(coded._replace(header=header))
  with pytest.raises(ArtifactError):
    decode(coded._replace(header=dict(coded.header, group_rows=17)))


def test_bad_encode_arguments_raise():
  x = _source("laplace")
  with pytest.raises(ConfigError, match="group_rows"):
    encode(x, group_rows=0)
  with pytest.raises(ConfigError, match="group_rows"):
    encode(x, model="raw", group_rows=4)
  with pytest.raises(ShapeError, match="scalar"):
    encode(np.array(3, np.int32), group_rows=1)


@pytest.mark.parametrize("kind", models.KINDS)
def test_fit_tables_matches_fit_table_and_estimates_the_exact_bits(kind):
  rng = np.random.default_rng(3)
  scales = [0.3, 1.0, 4.0, 20.0]
  x = np.stack([np.round(rng.laplace(scale=s, size=5000)) for s in scales]).astype(np.int64)
  offset = int(x.min())
  hists = np.stack([np.bincount(row - offset, minlength=int(x.max()) - offset + 1) for row in x])
  hists = np.concatenate([hists, np.zeros((1, hists.shape[1]), np.int64)])  # an empty row fits too
  fitted, estimate = models.fit_tables(kind, hists, offset, 16)
  for h, t, est in zip(hists, fitted, estimate):
    np.testing.assert_array_equal(t, models.fit_table(kind, h, offset, 16))
    exact = models.bits_under(h, models.table_counts(kind, t, offset, h.size)) + 8 * t.size
    # floating point vs the coder's integer weights: close, so it can rank kinds
    assert abs(est - exact) <= 0.002 * exact + 8


@pytest.mark.parametrize("kind", models.PARAMETRIC)
def test_parametric_fit_is_the_best_scaling_by_exact_bits(kind):
  x = _source("laplace" if kind != "gaussian" else "gaussian").ravel()
  offset = int(x.min())
  h = np.bincount(x - offset)
  fitted = models.fit_table(kind, h, offset, 16)
  chosen = models.bits_under(h, models.table_counts(kind, fitted, offset, h.size))
  _, mu = models.parse_parametric_table(fitted)
  exact = []
  for param in np.linspace(0.05, 0.995, 200):  # a scan over the parameter, same location
    table = models.parametric_table(int(param * models.ONE_FX), mu)
    exact.append(models.bits_under(h, models.table_counts(kind, table, offset, h.size)))
  assert chosen <= 1.001 * min(exact)
