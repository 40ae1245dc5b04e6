"""Properties of the entropy coder: bit-exact decode, coded bits vs information, errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from macjax.coding import CodedTensor, coded_bits, decode, encode, information_bits, model_weights
from macjax.coding import tables
from macjax.errors import ArtifactError, ConfigError, ShapeError


def _codes(kind: str, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "uniform_small":
    return rng.integers(-3, 4, size=(37, 11)).astype(np.int32)
  if kind == "laplace":
    return np.round(rng.laplace(scale=6.0, size=(64, 96))).astype(np.int32)
  if kind == "student_t_heavy":
    return np.round(rng.standard_t(df=2, size=(48, 80)) * 8).clip(-50_000, 50_000).astype(np.int32)
  if kind == "all_zero":
    return np.zeros((17, 23), np.int32)
  if kind == "single_symbol":
    return np.full((5, 7, 3), -42, np.int32)
  if kind == "two_outliers":
    x = np.zeros((1000,), np.int32)
    x[10], x[500] = -300_000, 400_000
    return x
  if kind == "huge_range_raw":
    return rng.integers(np.iinfo(np.int32).min, np.iinfo(np.int32).max, size=(100, 3), dtype=np.int64).astype(np.int32)
  if kind == "int32_extremes_single":
    return np.full((3, 4), np.iinfo(np.int32).max, np.int32)
  if kind == "int32_min_single":
    return np.full((3, 4), np.iinfo(np.int32).min, np.int32)
  if kind == "scalar":
    return np.array(7, np.int32)
  if kind == "empty":
    return np.zeros((0, 5), np.int32)
  if kind == "rdo_like_sparse":
    x = np.round(rng.laplace(scale=0.4, size=(200, 50))).astype(np.int32)
    return x
  raise ValueError(kind)


KINDS = ["uniform_small", "laplace", "student_t_heavy", "all_zero", "single_symbol", "two_outliers",
         "huge_range_raw", "scalar", "empty", "rdo_like_sparse", "int32_extremes_single", "int32_min_single"]


def _model(kind: str) -> str:
  return "raw" if kind == "huge_range_raw" else "histogram"


@pytest.mark.parametrize("kind", KINDS)
def test_decode_encode_is_bit_exact(kind):
  x = _codes(kind)
  coded = encode(x, model=_model(kind))
  y = decode(coded)
  assert y.dtype == np.int32 and y.shape == x.shape
  assert y.tobytes() == x.tobytes()


@pytest.mark.parametrize("kind", KINDS)
def test_decode_after_json_header_round_trip(kind):
  x = _codes(kind)
  coded = encode(x, model=_model(kind))
  header = json.loads(json.dumps(coded.header))
  words = np.frombuffer(coded.words.tobytes(), dtype=np.uint32)
  table = np.frombuffer(coded.table.tobytes(), dtype=np.uint8)
  np.testing.assert_array_equal(decode(CodedTensor(words, table, header)), x)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "empty"])
def test_coded_bits_at_least_information(kind):
  x = _codes(kind)
  coded = encode(x, model=_model(kind))
  # Holds for every sequence up to a 2**-k chance of being k bits short (Barron); the coder's final state adds ≥ 32.
  assert 32 * coded.words.size >= information_bits(x, coded)


@pytest.mark.parametrize("scale", [0.3, 2.0, 30.0], ids=["sparse", "medium", "wide"])
def test_coded_bits_within_one_percent_of_information_on_large_tensors(scale):
  rng = np.random.default_rng(1)
  x = np.round(rng.laplace(scale=scale, size=(400, 500))).astype(np.int32)  # 2e5 symbols
  coded = encode(x)
  info = information_bits(x, coded)
  bits = 32 * coded.words.size
  assert info <= bits <= 1.01 * info


def test_stored_model_is_close_to_empirical_entropy():
  rng = np.random.default_rng(2)
  x = np.round(rng.laplace(scale=5.0, size=(500, 400))).astype(np.int32)
  _, counts = np.unique(x, return_counts=True)
  p = counts / x.size
  empirical = -x.size * np.sum(p * np.log2(p))
  info = information_bits(x, encode(x))
  assert empirical <= info <= 1.005 * empirical


def test_unseen_symbols_in_range_are_codable():
  # Zero counts in the table still get weight ≥ 1: information of an unseen symbol is finite (≤ 24 bits).
  x = np.array([0, 0, 0, 10], np.int32)
  coded = encode(x)
  w = model_weights(coded)
  assert w.sum() == 2 ** tables.PRECISION and np.all(w >= 1)
  assert w.shape == (1, 11) and w[0, 5] == 1
  unseen = np.array([0, 5, 5, 10], np.int32)
  assert np.isfinite(information_bits(unseen, coded))


def test_weights_from_counts_sum_exactly():
  rng = np.random.default_rng(3)
  for n in (2, 3, 100, 4097):
    counts = rng.integers(0, 1000, size=n)
    w = tables.weights_from_counts(counts)
    assert w.sum() == 2 ** tables.PRECISION and w.min() >= 1
  w = tables.weights_from_counts(np.zeros(5, np.int64))
  assert w.sum() == 2 ** tables.PRECISION


def test_table_is_compact():
  rng = np.random.default_rng(4)
  x = np.round(rng.laplace(scale=8.0, size=(384, 384))).astype(np.int32)
  coded = encode(x)
  bits = coded_bits(coded)
  assert bits["table"] <= 3 * 8 * coded.header["alphabet"]
  assert bits["table"] + bits["header"] < 0.01 * bits["words"]
  assert bits["total"] == bits["words"] + bits["table"] + bits["header"]


@pytest.mark.parametrize("values", [[0], [1, 127, 128, 300, 16383, 16384, 2 ** 21, 2 ** 32 - 1]], ids=["zero", "edges"])
def test_varint_round_trip(values):
  v = np.array(values, np.int64)
  np.testing.assert_array_equal(tables.varint_decode(tables.varint_encode(v), v.size), v)
  # the byte counts and the scalar encoder agree with the vectorized encoder, value by value
  lengths = [tables.varint_encode(v[i:i + 1]).size for i in range(v.size)]
  np.testing.assert_array_equal(tables.varint_lengths(v), lengths)
  assert b"".join(tables.varint_bytes(int(x)) for x in v) == tables.varint_encode(v).tobytes()


def test_quantize_histogram_scales_rows_as_alone():
  rng = np.random.default_rng(0)
  hists = np.stack([rng.integers(0, 50, 30) * (rng.random(30) < 0.7) for _ in range(4)])
  hists[1] *= 1000  # one row above 2**table_bits, the others below
  q = tables.quantize_histogram(hists, 12)
  for h, row in zip(hists, q):
    np.testing.assert_array_equal(tables.quantize_histogram(h, 12), row)
    assert np.all((row > 0) == (h > 0))
  assert q[1].sum() <= 2 ** 12 + 30 and np.array_equal(q[0], hists[0])


def _coded(kind="laplace"):
  return encode(_codes(kind))


def test_truncated_words_raise():
  c = _coded()
  with pytest.raises(ArtifactError, match="words"):
    decode(c._replace(words=c.words[:-1]))


def test_truncated_words_with_matching_header_raise():
  c = _coded()
  h = dict(c.header, n_words=c.words.size - 3)
  with pytest.raises(ArtifactError, match="words"):
    decode(CodedTensor(c.words[3:], c.table, h))


def test_extra_words_raise():
  c = _coded()
  words = np.concatenate([c.words, np.array([12345], np.uint32)])
  with pytest.raises(ArtifactError, match="words"):
    decode(CodedTensor(words, c.table, dict(c.header, n_words=words.size)))


@pytest.mark.parametrize("cut", [1, 5], ids=["last-byte", "five-bytes"])
def test_truncated_table_raises(cut):
  c = _coded()
  with pytest.raises(ArtifactError, match="table"):
    decode(c._replace(table=c.table[:-cut]))


def test_altered_table_length_raises():
  c = _coded()
  with pytest.raises(ArtifactError, match="table"):
    decode(c._replace(table=np.concatenate([c.table, np.array([0], np.uint8)])))


@pytest.mark.parametrize("key", ["shape", "offset", "alphabet", "model", "n_words", "format"])
def test_missing_header_key_raises(key):
  c = _coded()
  h = {k: v for k, v in c.header.items() if k != key}
  with pytest.raises(ArtifactError, match=key):
    decode(c._replace(header=h))


@pytest.mark.parametrize("key,value", [("alphabet", 10 ** 9), ("alphabet", 1), ("model", "gzip"), ("shape", [2, -1]),
                                       ("precision", 16), ("offset", 1.5), ("format", "other")],
                         ids=["alphabet-huge", "alphabet-1", "model", "shape", "precision", "offset-float", "format"])
def test_bad_header_value_raises(key, value):
  c = _coded()
  with pytest.raises(ArtifactError):
    decode(c._replace(header=dict(c.header, **{key: value})))


@pytest.mark.parametrize("model,extra", [("grouped", {"group_rows": 1}), ("classed", {"row_classes": 256,
                                                                                     "col_classes": 256})])
def test_header_asking_for_huge_tables_is_refused_before_allocating(model, extra):
  """Every table is expanded to ``alphabet`` cells: 2^16 tables × 2^20 symbols would be 512 GiB (an allocation
  bomb a hostile header could ask for within the tensor's size)."""
  c = _coded()  # shape (64, 96)
  h = dict(c.header, model=model, shape=[4096, 1], alphabet=1 << 20, **extra)
  with pytest.raises(ArtifactError, match="table cells"):
    decode(c._replace(header=h))
  with pytest.raises(ConfigError, match="table cells"):
    encode(np.array([[0], [1 << 19]] * 40, np.int32), group_rows=1)


@pytest.mark.parametrize("shape", [[64, 97], [64, 95], [64]], ids=["more", "fewer", "far-fewer"])
def test_header_shape_mismatch_raises(shape):
  c = _coded()  # shape (64, 96)
  with pytest.raises(ArtifactError, match="does not end"):
    decode(c._replace(header=dict(c.header, shape=shape)))


def test_altered_words_do_not_crash():
  # An altered stream of the right length may decode wrongly (the artifact's checksum catches that) or raise
  # ArtifactError, but never anything else.
  c = _coded()
  rng = np.random.default_rng(5)
  for _ in range(20):
    words = c.words.copy()
    words[rng.integers(words.size)] ^= np.uint32(1 << int(rng.integers(32)))
    try:
      y = decode(c._replace(words=words))
      assert y.shape == tuple(c.header["shape"])
    except ArtifactError:
      pass


def test_wrong_dtypes_raise():
  c = _coded()
  with pytest.raises(ArtifactError, match="uint32"):
    decode(c._replace(words=c.words.astype(np.int64)))
  with pytest.raises(ArtifactError, match="uint8"):
    decode(c._replace(table=c.table.astype(np.int32)))
  with pytest.raises(ArtifactError, match="CodedTensor"):
    decode("not coded")


def test_encode_rejects_bad_input():
  with pytest.raises(ShapeError, match="integer"):
    encode(np.zeros(4, np.float32))
  with pytest.raises(ShapeError, match="raw"):
    encode(np.array([-2 ** 30, 2 ** 30], np.int32))
  with pytest.raises(ConfigError, match="model"):
    encode(np.zeros(4, np.int32), model="huffman")


def test_information_bits_checks_codes_against_coded():
  x = _codes("laplace")
  c = encode(x)
  with pytest.raises(ShapeError, match="shape"):
    information_bits(x[:-1], c)
  with pytest.raises(ShapeError, match="alphabet"):
    information_bits(x + 10_000, c)
