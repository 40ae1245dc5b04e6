"""Refitting a layer's vectors to its reference output: the loss is what it says, the refit recovers vectors that
were moved, never returns worse than it started, and runs inside the sequential calibration."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_BERT, TINY_LLAMA_CONFIG, tiny_bert_params, tiny_llama_params
from macjax.calibrate import SequentialCalibration, tuning
from macjax.errors import ConfigError
from macjax.evaluate import bert, decoder
from macjax.load import load_model


def test_relative_error_is_the_per_token_ratio():
  rng = np.random.default_rng(0)
  y, y_hat = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 4))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  total, count = tuning.relative_error(jnp.asarray(y_hat), jnp.asarray(y), jnp.asarray(mask))
  per_token = np.sum((y_hat - y) ** 2, -1) / np.sum(y ** 2, -1)
  np.testing.assert_allclose(float(total), np.sum(per_token * mask), rtol=1e-5)
  assert float(count) == mask.sum()


FORWARDS = {
    "llama": (decoder, lambda: tiny_llama_params(), TINY_LLAMA_CONFIG, lambda p, c, x, m: decoder.block_step(
        p, c, x, layer=0)[0]),
    "bert": (bert, lambda: tiny_bert_params(), TINY_BERT, lambda p, c, x, m: bert.block_step(p, c, x, mask=m)[0]),
}


def _layer(family):
  forward, params, config, step = FORWARDS[family]
  p = forward.layer_params(params(), config, 0)
  return p, config, (lambda q, x, m: step(q, config, x, m))


@pytest.mark.parametrize("family", sorted(FORWARDS))
def test_refit_recovers_moved_vectors(family):
  """Targets from the layer with its own vectors; start from vectors moved away: the refit brings the output back
  (the loss falls by more than half) — and with a learning rate that diverges it returns the start, bit for bit."""
  p, config, block = _layer(family)
  rng = np.random.default_rng(1)
  free = [f for f, a in p.items() if a.ndim == 1]
  x = jnp.asarray(rng.normal(size=(2, 8, p[free[0]].shape[0])), jnp.float32)
  mask = None if family == "llama" else jnp.ones((2, 8), jnp.int32)
  batches = [(x, mask, block(p, x, mask))]
  moved = {k: (v * (1 + 0.3 * rng.normal(size=v.shape)) + 0.05 * rng.normal(size=v.shape) if k in free else v)
           for k, v in p.items()}
  refit = tuning.Refit(block)
  tuned, (before, after) = refit(moved, free, batches, steps=150, lr=0.02)
  assert before > 1e-3 and after < 0.5 * before
  total, count = tuning.relative_error(block({**moved, **tuned}, x, mask), batches[0][2], mask)
  np.testing.assert_allclose(float(total / count), after, rtol=1e-4)
  start, (b2, a2) = refit(moved, free, batches, steps=3, lr=1e3)  # steps of ~1e3 per entry: far worse
  assert a2 == b2 == pytest.approx(before)
  assert all(np.array_equal(start[k], np.asarray(moved[k], np.float32)) for k in free)


def test_refit_refuses_what_it_cannot_do():
  p, _, block = _layer("llama")
  x = jnp.ones((1, 4, 32), jnp.float32)
  refit = tuning.Refit(block)
  with pytest.raises(ConfigError, match="free fields"):
    refit(p, [], [(x, None, x)], steps=1, lr=0.1)
  with pytest.raises(ConfigError, match="not among the layer's fields"):
    refit(p, ["no_such_norm"], [(x, None, x)], steps=1, lr=0.1)
  with pytest.raises(ConfigError, match="steps >= 1"):
    refit(p, [f for f, a in p.items() if a.ndim == 1], [(x, None, x)], steps=0, lr=0.1)


def test_tune_needs_the_reference_stream(tiny_llama_dir):
  model = load_model(str(tiny_llama_dir))
  seq = SequentialCalibration(model, n_seq=2, seq_len=16)
  seq.start(model.params)
  with pytest.raises(ConfigError, match="reference=True"):
    seq.tune(0, model.params, model.params, steps=1, lr=0.1)


def test_tune_on_exact_weights_changes_nothing(tiny_bert_dir):
  """With the reference's own matrices on the reference's own inputs, the layer already matches its targets: the
  loss is 0 up to float noise, and the refit returns the vectors it started from (Adam's first steps on noise move
  them by about the learning rate, which can only raise the loss: the best seen is the start)."""
  model = load_model(str(tiny_bert_dir))
  seq = SequentialCalibration(model, n_sentences=8, reference=True)
  seq.start(model.params)
  tuned, (before, after) = seq.tune(0, model.params, model.params, steps=4, lr=1e-3)
  assert before < 1e-10 and after <= before
  assert tuned and all(np.allclose(v, model.params[n], atol=4e-3) for n, v in tuned.items())


def test_streams_stay_in_step(tiny_llama_dir):
  """With the reference stream carried, every advance must move it too: an advance without the reference weights
  is refused (else the next refit would aim at an older layer's targets)."""
  model = load_model(str(tiny_llama_dir))
  seq = SequentialCalibration(model, n_seq=2, seq_len=16, reference=True)
  seq.start(model.params)
  with pytest.raises(ConfigError, match="reference="):
    seq.advance(0, model.params)
  seq.advance(0, model.params, reference=model.params)
  np.testing.assert_array_equal(seq.hidden.get(0), seq.reference.get(0))
