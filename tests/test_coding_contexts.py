"""Row × column context classes (``classed`` model): bit-exact, counted, chosen by bits, robust to damage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from macjax.coding import CodedTensor, coded_bits, contexts, decode, encode, information_bits, model_weights
from macjax.errors import ArtifactError, ConfigError, ShapeError


def _two_way(seed: int = 0, shape=(96, 160)) -> np.ndarray:
  """Laplace codes whose spread varies by row and by column (as codes of a matrix with one step do)."""
  rng = np.random.default_rng(seed)
  rows = np.exp(rng.normal(scale=0.8, size=(shape[0], 1)))
  cols = np.exp(rng.normal(scale=0.6, size=(1, shape[1])))
  return np.round(rng.laplace(size=shape) * rows * cols * 3.0).astype(np.int32)


def _iid(seed: int = 0, shape=(64, 64)) -> np.ndarray:
  return np.round(np.random.default_rng(seed).laplace(scale=2.0, size=shape)).astype(np.int32)


CASES = {
    "two_way": _two_way,
    "iid": _iid,
    "three_d": lambda: np.round(np.random.default_rng(1).laplace(scale=2.0, size=(6, 10, 17))).astype(np.int32),
    "vector": lambda: np.round(np.random.default_rng(2).laplace(scale=2.0, size=(300,))).astype(np.int32),
    "constant": lambda: np.full((9, 7), -4, np.int32),
    "one_row": lambda: np.arange(-20, 20, dtype=np.int32)[None, :],
    "empty_rows": lambda: np.zeros((0, 5), np.int32),
    "empty_cols": lambda: np.zeros((5, 0), np.int32),
}


@pytest.mark.parametrize("classes", [(1, 1), (2, 3), (4, 4), (16, 2), "auto"], ids=str)
@pytest.mark.parametrize("model", ["histogram", "laplace", "auto"])
@pytest.mark.parametrize("case", list(CASES))
def test_decode_is_bit_exact_and_coded_bounds_information(case, model, classes):
  x = CASES[case]()
  coded = encode(x, model=model, classes=classes)
  coded = CodedTensor(coded.words, coded.table, json.loads(json.dumps(coded.header)))  # as stored
  np.testing.assert_array_equal(decode(coded), x)
  info = information_bits(x, coded)
  assert 32 * coded.words.size >= info
  if x.size >= 10_000:
    assert 32 * coded.words.size <= 1.01 * info + 96  # the coder adds a few words (sentinel, flush)
  w = model_weights(coded)
  assert w.shape[1] == coded.header["alphabet"] and np.all(w.sum(axis=1) == 2 ** 24)


def test_context_classes_save_bits_when_rows_and_columns_differ():
  x = _two_way(shape=(192, 256))
  one = coded_bits(encode(x, model="auto"))["total"]
  rows_only = coded_bits(encode(x, model="auto", classes=(4, 1)))["total"]
  grid = coded_bits(encode(x, model="auto", classes=(4, 4)))["total"]
  assert grid < rows_only < 0.97 * one  # everything counted: words, tables, class maps, header


@pytest.mark.parametrize("case", ["two_way", "iid", "constant"])
def test_auto_is_never_worse_than_one_model(case):
  x = CASES[case]()
  one = coded_bits(encode(x, model="auto"))
  auto = encode(x, model="auto", classes="auto")
  # auto compares estimates (information + tables + maps), which the coder meets to within a few words
  assert coded_bits(auto)["words"] + coded_bits(auto)["table"] <= one["words"] + one["table"] + 96
  if case == "iid":  # nothing to gain: one model is kept
    assert auto.header["model"] != "classed"


def test_classes_follow_the_spread():
  x = _two_way(shape=(128, 128))
  rows, cols = contexts.assign(x - x.min(), int(x.max() - x.min() + 1), 4, 4)
  spread_r, spread_c = np.abs(x).mean(axis=1), np.abs(x).mean(axis=0)
  # class means of the spread increase with the class index (classes are ordered from the quantile start)
  for classes, spread in ((rows, spread_r), (cols, spread_c)):
    means = [spread[classes == k].mean() for k in range(4) if np.any(classes == k)]
    assert len(means) >= 3 and np.all(np.diff(means) > 0)


@pytest.mark.parametrize("n_classes", [1, 2, 3, 5, 8, 200, 256])
def test_class_maps_pack_round_trip(n_classes):
  rng = np.random.default_rng(n_classes)
  c = rng.integers(0, n_classes, size=37)
  packed = contexts.pack(c, n_classes)
  assert packed.size == contexts.map_bytes(37, n_classes) == -(-37 * contexts.index_bits(n_classes) // 8)
  np.testing.assert_array_equal(contexts.unpack(packed, 37, n_classes), c)


def test_damaged_class_maps_raise():
  x = _two_way()
  coded = encode(x, model="laplace", classes=(3, 3))  # 2 bits a class: index 3 is invalid
  n_map = contexts.map_bytes(x.shape[0], 3) + contexts.map_bytes(x.shape[1], 3)
  for cut in (1, coded.table.size - n_map, coded.table.size - 2):
    with pytest.raises(ArtifactError, match="table|class"):
      decode(coded._replace(table=coded.table[:-cut]))
  bad = coded.table.copy()
  bad[0] = 0xFF  # row classes 3, 3, 3, 3
  with pytest.raises(ArtifactError, match="class"):
    decode(coded._replace(table=bad))
  odd = encode(np.zeros((3, 3), np.int32) + np.eye(3, dtype=np.int32), classes=(2, 2))
  bad = odd.table.copy()
  bad[0] |= 0x80  # a padding bit of the 3-row map
  with pytest.raises(ArtifactError, match="padding"):
    decode(odd._replace(table=bad))


@pytest.mark.parametrize("key,value", [("row_classes", None), ("col_classes", 0), ("row_classes", 257),
                                       ("col_classes", "4")])
def test_classed_header_needs_class_counts(key, value):
  coded = encode(_two_way(), model="laplace", classes=(4, 4))
  header = dict(coded.header)
  if value is None:
    del header[key]
  else:
    header[key] = value
  with pytest.raises(ArtifactError, match="classes"):
    decode(coded._replace(header=header))


def test_bad_classes_arguments_raise():
  x = _two_way()
  for bad in ((0, 2), (2,), (2, 300), "4x4", 4, (2.0, 2)):
    with pytest.raises(ConfigError, match="classes"):
      encode(x, classes=bad)
  with pytest.raises(ConfigError, match="classes"):
    encode(x, model="raw", classes=(2, 2))
  with pytest.raises(ConfigError, match="classes"):
    encode(x, group_rows=4, classes=(2, 2))
  with pytest.raises(ShapeError, match="scalar"):
    encode(np.array(3, np.int32), classes=(2, 2))
  with pytest.raises(ConfigError, match="histogram cells"):  # the class search's memory is bounded
    encode(np.array([[0, 1 << 19]] * 40, np.int32), classes=(8, 8))


def test_assign_grids_shares_work_but_matches_assign():
  x = _two_way(shape=(300, 700))  # more rows and columns than the search samples
  s = x - x.min()
  grids = [(2, 2), (4, 4), (8, 3)]
  for (R, C), (rows, cols) in zip(grids, contexts.assign_grids(s, int(s.max() + 1), grids)):
    r1, c1 = contexts.assign(s, int(s.max() + 1), R, C)
    np.testing.assert_array_equal(rows, r1)
    np.testing.assert_array_equal(cols, c1)
    assert rows.max() < R and cols.max() < C


@pytest.mark.parametrize("case, expect_classes", [("two_way", True), ("iid", False)])
def test_choose_grid_ranks_by_estimated_bits_and_matches_assign(case, expect_classes):
  x = _two_way(shape=(256, 600)) if case == "two_way" else _iid(shape=(256, 600))
  s = x - x.min()
  grid, rows, cols = contexts.choose_grid(s, int(s.max() + 1), [(1, 1), (4, 4), (8, 8)])
  assert (grid != (1, 1)) == expect_classes  # maps and tables only pay where spreads differ
  r1, c1 = contexts.assign(s, int(s.max() + 1), *grid)  # the same rounds from the same start
  np.testing.assert_array_equal(rows, r1)
  np.testing.assert_array_equal(cols, c1)
  with pytest.raises(ConfigError):
    contexts.choose_grid(np.zeros((0, 4), np.int32), 2, [(2, 2)])
