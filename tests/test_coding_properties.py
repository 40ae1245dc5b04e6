"""Entropy coding properties searched by hypothesis (shapes, value ranges, models, row groups and context classes
that fixed seeds do not reach: empty and one-symbol tensors, int32 extremes, alphabets near the table limit):
decode(encode(x)) == x bit for bit, the stream is at least the Shannon information of the codes under the stored
model (and exceeds it only by the coder's few words), and a JSON round trip of the header changes nothing."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from macjax.coding import codec

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
I32 = np.iinfo(np.int32)


@st.composite
def code_tensors(draw):
  """int32 tensors of rank 1–2 whose values span a narrow, a wide or an extreme range."""
  shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=24))
  span = draw(st.sampled_from([1, 2, 17, 300, 1 << 12]))
  base = draw(st.integers(I32.min, I32.max - span))
  return draw(hnp.arrays(np.int32, shape, elements=st.integers(base, base + span - 1)))


@SETTINGS
@given(x=code_tensors(), model=st.sampled_from(["histogram", "laplace", "gaussian", "logistic", "auto", "raw"]))
def test_round_trip_and_header_json(x, model):
  coded = codec.encode(x, model=model)
  assert np.array_equal(codec.decode(coded), x)
  again = coded._replace(header=json.loads(json.dumps(coded.header)))
  assert np.array_equal(codec.decode(again), x)


@SETTINGS
@given(x=code_tensors(), group_rows=st.integers(1, 8), model=st.sampled_from(["histogram", "auto"]))
def test_row_groups_round_trip(x, group_rows, model):
  coded = codec.encode(x, model=model, group_rows=group_rows)
  assert np.array_equal(codec.decode(coded), x)


@SETTINGS
@given(x=code_tensors().filter(lambda a: a.ndim == 2 and a.size), grid=st.sampled_from([(1, 2), (2, 2), (4, 1)]))
def test_context_classes_round_trip(x, grid):
  coded = codec.encode(x, classes=grid)
  assert np.array_equal(codec.decode(coded), x)


@SETTINGS
@given(x=code_tensors().filter(lambda a: a.size > 0), model=st.sampled_from(["histogram", "laplace", "auto"]))
def test_coded_bits_cover_the_information(x, model):
  """32·len(words) ≥ −Σ log2 p(x) under the stored model, with at most the coder's overhead on top."""
  coded = codec.encode(x, model=model)
  info = codec.information_bits(x, coded)
  words = 32 * coded.words.size
  assert words >= info - 1e-6 * max(info, 1.0)
  assert words <= info + 96 + 1e-6 * info  # the sentinel and the last partly filled words
