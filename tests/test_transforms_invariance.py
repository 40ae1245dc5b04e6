"""The LLaMA invariance rewrite keeps the model's function: same logits to float tolerance."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from macjax.errors import ConfigError, ShapeError
from macjax.evaluate.decoder import logits as llama_logits
from macjax.transforms.invariance import residual_pca_basis, rotate_llama

# hidden 48 = 4·12 (Paley I), head_dim 12, GQA 4 query / 2 KV heads
CONFIG = dict(model_type="llama", hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=12, vocab_size=64, rms_norm_eps=1e-6, rope_theta=10000.0,
              hidden_act="silu", tie_word_embeddings=True)


def _params(tied: bool, seed: int = 0):
  rng = np.random.default_rng(seed)
  c = CONFIG
  h, f, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
  shapes = {"self_attn.q_proj.weight": (c["num_attention_heads"] * hd, h),
            "self_attn.k_proj.weight": (c["num_key_value_heads"] * hd, h),
            "self_attn.v_proj.weight": (c["num_key_value_heads"] * hd, h),
            "self_attn.o_proj.weight": (h, c["num_attention_heads"] * hd),
            "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f)}
  p = {}
  for layer in range(c["num_hidden_layers"]):
    for name, shape in shapes.items():
      p[f"model.layers.{layer}.{name}"] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    for norm in ("input_layernorm", "post_attention_layernorm"):  # gains far from 1: folding must matter
      p[f"model.layers.{layer}.{norm}.weight"] = rng.uniform(0.3, 2.0, h).astype(np.float32)
  p["model.embed_tokens.weight"] = rng.standard_normal((c["vocab_size"], h)).astype(np.float32)
  p["model.norm.weight"] = rng.uniform(0.3, 2.0, h).astype(np.float32)
  if not tied:
    p["lm_head.weight"] = rng.standard_normal((c["vocab_size"], h)).astype(np.float32)
  return p, dict(CONFIG, tie_word_embeddings=tied)


TOKENS = np.array([[1, 5, 9, 33, 2, 63, 17, 4], [0, 8, 8, 8, 40, 41, 42, 3]], np.int32)


def _assert_same_logits(a, b):
  scale = float(np.max(np.abs(b)))
  assert float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) <= 1e-4 * scale


@pytest.mark.parametrize("tied,residual", [(False, "hadamard"), (True, "hadamard"), (True, "identity"),
                                           (False, "pca")], ids=["untied-had", "tied-untie-had", "tied-stays",
                                                                 "untied-pca"])
def test_rewrite_preserves_logits(tied, residual):
  params, config = _params(tied)
  if residual == "pca":
    E = params["model.embed_tokens.weight"]
    residual = residual_pca_basis(E.T @ E / E.shape[0])
  rw = rotate_llama(params, config, key=jax.random.key(0), residual=residual, untie=True)
  _assert_same_logits(llama_logits(rw.params, rw.config, TOKENS), llama_logits(params, config, TOKENS))
  rotated = rw.residual != "identity"
  assert rw.untied == (tied and rotated)
  assert rw.extra_params == (CONFIG["vocab_size"] * CONFIG["hidden_size"] if rw.untied else 0)
  assert rw.config["tie_word_embeddings"] == (tied and not rotated)
  assert ("lm_head.weight" in rw.params) == (not tied or rotated)
  np.testing.assert_array_equal(rw.params["model.layers.0.input_layernorm.weight"], 1.0)  # gains folded
  assert not np.allclose(rw.params["model.layers.1.self_attn.v_proj.weight"],
                         params["model.layers.1.self_attn.v_proj.weight"])  # heads rotated
  assert sorted(set(rw.params) - {"lm_head.weight"}) == sorted(set(params) - {"lm_head.weight"})


def test_rewrite_does_not_mutate_its_input():
  params, config = _params(False)
  before = {k: v.copy() for k, v in params.items()}
  rotate_llama(params, config, key=jax.random.key(0))
  for k in params:
    np.testing.assert_array_equal(params[k], before[k])


def test_tied_model_needs_explicit_untie():
  params, config = _params(True)
  with pytest.raises(ConfigError, match="pass untie=True"):
    rotate_llama(params, config, key=jax.random.key(0))


def test_bad_residual_basis():
  params, config = _params(False)
  with pytest.raises(ShapeError, match="expected an orthogonal"):
    rotate_llama(params, config, key=jax.random.key(0), residual=np.ones((48, 48)))
  with pytest.raises(ConfigError, match="residual='dct'"):
    rotate_llama(params, config, key=jax.random.key(0), residual="dct")
  with pytest.raises(ConfigError, match="key is None"):
    rotate_llama(params, config)


@pytest.mark.slow
def test_rewrite_of_smollm2_preserves_logits():
  """The real SmolLM2-135M (tied embeddings, GQA 9/3, hidden 576 = 16·36): untied, rotated, same logits."""
  from macjax.load import load_model
  model = load_model("smollm2-135m")
  config = dict(model.layout.config)
  tokens = np.array([[1, 504, 3458, 314, 260, 1345, 30, 2]], np.int32)
  rw = rotate_llama(model.params, config, key=jax.random.key(0), untie=True)
  assert rw.untied and rw.extra_params == config["vocab_size"] * config["hidden_size"]
  _assert_same_logits(llama_logits(rw.params, rw.config, tokens), llama_logits(model.params, config, tokens))
