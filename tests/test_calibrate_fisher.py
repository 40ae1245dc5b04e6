"""Output-weighted (Fisher) Hessians: the taps see each matrix's output gradient, the Hessian is what it claims."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_LLAMA_CONFIG, tiny_llama_params
from macjax.calibrate import fisher, statistics
from macjax.errors import ConfigError
from macjax.evaluate import bert, decoder, metrics, text
from macjax.load import families, load_model

CONFIG = dict(TINY_LLAMA_CONFIG, attention_bias=True)


def _params():
  params = tiny_llama_params(config=CONFIG)
  rng = np.random.default_rng(1)  # attention biases (q, k, v, o): the tap must add to them, not replace them
  for i in range(CONFIG["num_hidden_layers"]):
    for r in "qkvo":
      name = f"model.layers.{i}.self_attn.{r}_proj"
      params[name + ".bias"] = rng.normal(size=params[name + ".weight"].shape[0]).astype(np.float32) * 0.1
  return params


FAMILIES = pathlib.Path(__file__).parent / "fixtures" / "families"


@pytest.mark.parametrize("name", ["llama-with-biases", "gpt2", "qwen2_moe", "gemma2"])
def test_tap_gradients_times_inputs_are_the_weight_gradient(name):
  """``Σ_t g_t x_tᵀ`` (taps × kept inputs) == autodiff's ``∂ log p(ŷ) / ∂W`` for every tapped field: the taps sit at
  each matrix's output (added to its bias where it has one) and the inputs are that matrix's — for LLaMA with
  attention biases, GPT-2's fused qkv and learned positions, Qwen2-MoE's dense attention (experts, router and
  shared expert are not tapped), Gemma 2's soft-capped logits and extra norms."""
  if name == "llama-with-biases":
    params, config = _params(), CONFIG
  else:
    model = load_model(str(FAMILIES / name))
    params, config = model.params, dict(model.layout.config)
  weights = decoder.prepare(params, config)
  fields = tuple(f for f in fisher.TAPPED if f in weights.blocks and weights.blocks[f].ndim == 3)
  assert fields and (name != "qwen2_moe" or "down" not in fields)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, config["vocab_size"], size=(2, 9)), jnp.int32)
  key = jax.random.PRNGKey(3)
  grads, inputs = jax.jit(lambda w, t, k: fisher.output_gradients(w, t, k, config, fields))(weights, tokens, key)

  def log_likelihood(blocks):  # the same sampled labels: drawn from the unperturbed logits with the same key
    z = decoder.logits(weights._replace(blocks=blocks), config, tokens)
    labels = jax.random.categorical(key, decoder.logits(weights, config, tokens))
    return -jnp.sum(metrics.token_nll(z, labels))

  direct = jax.grad(log_likelihood)(weights.blocks)
  for f in fields:
    via_taps = jnp.einsum("lbto,lbti->loi", grads[f], inputs[fisher.TAPPED[f]])
    np.testing.assert_allclose(via_taps, direct[f], rtol=2e-4, atol=2e-6 * float(jnp.max(jnp.abs(direct[f]))),
                               err_msg=f)


def test_fisher_hessians_are_token_weighted_input_moments(tiny_llama_dir):
  """Each matrix's ``H^F`` is symmetric PSD and equals ``Σ_t ‖g_t‖² x_t x_tᵀ / n``, and its row weights
  ``Σ_t g_tk² ‖x_t‖² / n``, computed from the gradients of the same windows and labels (so the row weights sum to
  ``tr H^F``); q, k and v (one input) get different Hessians (different output gradients)."""
  model = load_model(str(tiny_llama_dir))
  H = fisher.fisher_hessians(model, n_seq=2, seq_len=16, batch_size=2)  # one batch: key fold_in(PRNGKey(0), 0)
  assert set(H) == {m.name for m in model.layout.matrices}
  config = dict(model.layout.config)
  weights = decoder.prepare(model.params, config)
  windows = text.token_windows(text.tokenizer_for(model), "calibration", n_seq=2, seq_len=16)
  grads, inputs = fisher.output_gradients(weights, jnp.asarray(windows), jax.random.fold_in(jax.random.PRNGKey(0), 0),
                                          config, tuple(fisher.TAPPED.keys() & weights.blocks.keys()))
  spec = families.family_spec(config, "test", names=frozenset(model.params))
  for m in model.layout.matrices:
    field, layer, _ = spec.fields[m.name]
    g = np.asarray(grads[field][layer], np.float64).reshape(-1, m.shape[0])
    x = np.asarray(inputs[fisher.TAPPED[field]][layer], np.float64).reshape(-1, m.shape[1])
    want = (x * np.sum(g * g, axis=1, keepdims=True)).T @ x / len(x)
    h, r = H[m.name]
    assert h.shape == (m.shape[1], m.shape[1]) and np.array_equal(h, h.T)
    np.testing.assert_allclose(h, want, rtol=1e-3, atol=1e-5 * np.abs(want).max(), err_msg=m.name)
    np.testing.assert_allclose(r, (g * g).T @ np.sum(x * x, axis=1) / len(x), rtol=1e-3, err_msg=m.name)
    np.testing.assert_allclose(np.sum(r), np.trace(h), rtol=1e-4, err_msg=m.name)
    assert np.linalg.eigvalsh(h.astype(np.float64)).min() > -1e-5 * np.trace(h)
  q, k = (H[f"model.layers.0.self_attn.{r}_proj.weight"].hessian for r in "qk")
  assert not np.allclose(q / np.trace(q), k / np.trace(k), rtol=1e-2)


def test_encoder_tap_gradients_times_inputs_are_the_weight_gradient(tiny_bert_dir):
  """The same identity for a BERT encoder's ``v · e`` (unit mean-pooled embeddings), padding included: padded
  positions get no gradient."""
  model = load_model(str(tiny_bert_dir))
  config = dict(model.layout.config)
  weights = bert.prepare_bert(model.params, config)
  fields = tuple(f for f in fisher.TAPPED if f in weights.layers)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, config["vocab_size"], size=(3, 7)), jnp.int32)
  mask = jnp.asarray(np.arange(7)[None, :] < np.array([[7], [4], [2]]))
  key = jax.random.PRNGKey(5)
  grads, inputs = jax.jit(lambda w, t, m, k: fisher.embedding_gradients(w, t, m, k, config, fields))(
      weights, tokens, mask, key)

  def projection(layers):
    e = bert.bert_embeddings(weights._replace(layers=layers), config, tokens, mask)
    e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    return jnp.sum(jax.random.normal(key, e.shape) * e)

  direct = jax.grad(projection)(weights.layers)
  assert set(fields) == {"q", "k", "v", "o", "up", "down"}
  for f in fields:
    via_taps = jnp.einsum("lbto,lbti->loi", grads[f], inputs[fisher.TAPPED[f]])
    np.testing.assert_allclose(via_taps, direct[f], rtol=2e-4, atol=2e-6 * float(jnp.max(jnp.abs(direct[f]))),
                               err_msg=f)
    assert not np.any(np.asarray(grads[f])[:, ~np.asarray(mask)])  # padding: zero gradient


def test_encoder_fisher_hessians_are_their_definition(tiny_bert_dir):
  """An encoder's ``H^F`` and row weights equal ``Σ_t ‖g_t‖² x_t x_tᵀ / n`` and ``Σ_t g_tk² ‖x_t‖² / n`` from the
  projections' gradients of the same passages (one length bucket, key ``fold_in(PRNGKey(0), 0)``), ``n`` the
  unpadded tokens."""
  model = load_model(str(tiny_bert_dir))
  H = fisher.fisher_hessians(model, n_sentences=6, sentence_chunk=8)
  assert set(H) == {m.name for m in model.layout.matrices}
  config = dict(model.layout.config)
  weights = bert.prepare_bert(model.params, config)
  tokens, mask = text.sentence_batch(text.tokenizer_for(model), text.sentences("calibration", 6))
  (t, m), = list(statistics.length_buckets(tokens, mask, 8))
  fields = tuple(f for f in fisher.TAPPED if f in weights.layers)
  grads, inputs = fisher.embedding_gradients(weights, jnp.asarray(t), jnp.asarray(m),
                                             jax.random.fold_in(jax.random.PRNGKey(0), 0), config, fields)
  spec = families.family_spec(config, "test", names=frozenset(model.params))
  n = np.count_nonzero(m)
  for info in model.layout.matrices:
    field, layer, _ = spec.fields[info.name]
    g = np.asarray(grads[field][layer], np.float64).reshape(-1, info.shape[0])
    x = np.asarray(inputs[fisher.TAPPED[field]][layer], np.float64).reshape(-1, info.shape[1])
    h, r = H[info.name]
    want = (x * np.sum(g * g, axis=1, keepdims=True)).T @ x / n
    np.testing.assert_allclose(h, want, rtol=1e-3, atol=1e-5 * np.abs(want).max(), err_msg=info.name)
    np.testing.assert_allclose(r, (g * g).T @ np.sum(x * x, axis=1) / n, rtol=1e-3, err_msg=info.name)
    assert np.trace(h) > 0, info.name


def test_fisher_hessians_refuse_bad_sizes(tiny_llama_dir):
  with pytest.raises(ConfigError, match="expected all >= 1"):
    fisher.fisher_hessians(load_model(str(tiny_llama_dir)), n_seq=0)
