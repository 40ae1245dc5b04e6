"""Shared fixtures: tiny synthetic Hugging Face folders, so the error paths and property tests run in seconds."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from safetensors.numpy import save_file

TINY_LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "vocab_size": 64, "max_position_embeddings": 128, "tie_word_embeddings": True,
    "hidden_act": "silu", "head_dim": 8, "bos_token_id": 1, "eos_token_id": 2,
}


def tiny_llama_params(seed: int = 0, config: dict = TINY_LLAMA_CONFIG) -> dict[str, np.ndarray]:
  """Random weights of a tiny LLaMA, HF names and layout, float32, heavy-tailed like trained weights."""
  rng = np.random.default_rng(seed)
  h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  hd = config["head_dim"]
  q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd

  def w(*shape):
    return (rng.standard_t(5, size=shape) * 0.05).astype(np.float32)

  p = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": np.ones(h, np.float32)}
  for i in range(config["num_hidden_layers"]):
    pre = f"model.layers.{i}."
    p.update({
        pre + "self_attn.q_proj.weight": w(q, h), pre + "self_attn.k_proj.weight": w(kv, h),
        pre + "self_attn.v_proj.weight": w(kv, h), pre + "self_attn.o_proj.weight": w(h, q),
        pre + "mlp.gate_proj.weight": w(f, h), pre + "mlp.up_proj.weight": w(f, h),
        pre + "mlp.down_proj.weight": w(h, f),
        pre + "input_layernorm.weight": (1 + 0.1 * rng.standard_normal(h)).astype(np.float32),
        pre + "post_attention_layernorm.weight": (1 + 0.1 * rng.standard_normal(h)).astype(np.float32),
    })
  return p


TINY_BERT = {"hidden_size": 24, "intermediate_size": 40, "num_attention_heads": 3, "num_hidden_layers": 2,
             "vocab_size": 40, "max_position_embeddings": 32, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
             "hidden_act": "gelu", "model_type": "bert"}


def tiny_bert_params(config=TINY_BERT, seed=0, prefix=""):
  rng = np.random.default_rng(seed)
  h, f = config["hidden_size"], config["intermediate_size"]
  w = lambda *s: (rng.normal(size=s) * 0.3).astype(np.float32)
  p = {"embeddings.word_embeddings.weight": w(config["vocab_size"], h),
       "embeddings.position_embeddings.weight": w(config["max_position_embeddings"], h),
       "embeddings.token_type_embeddings.weight": w(config["type_vocab_size"], h),
       "embeddings.LayerNorm.weight": 1 + w(h), "embeddings.LayerNorm.bias": w(h)}
  for i in range(config["num_hidden_layers"]):
    pre = f"encoder.layer.{i}."
    for name, shape in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                        ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                        ("intermediate.dense", (f, h)), ("output.dense", (h, f))):
      p[pre + name + ".weight"] = w(*shape)
      p[pre + name + ".bias"] = w(shape[0])
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      p[pre + name + ".weight"] = 1 + w(h)
      p[pre + name + ".bias"] = w(h)
  return {prefix + k: v for k, v in p.items()}


def tiny_tokenizer_json(vocab_size: int) -> str:
  """A word-level tokenizer over the commonest Shakespeare words (ids < vocab_size), so calibration text runs."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  words = ["[UNK]", "the", "and", "to", "of", "I", "you", "a", "my", "in", "that", "is", "not", "with", "me", "it",
           "be", "his", "your", "this", "for", "he", "but", "have", "as", "thou", "so", "him", "will", "what", "her",
           "thy", "all", "no", "by", "do", "shall", "if", "are", "we", "thee", "our", "on", "lord", "now", "good",
           "from", "sir", "at", "they", "O", "or", "come", "more", "here", "would", "was", "well", "then", "let",
           "there", "how", "love", "which"]
  vocab = {w: i for i, w in enumerate(words[:vocab_size])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return tok.to_str()


def write_hf_folder(folder: pathlib.Path, params: dict[str, np.ndarray], config: dict) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config))
  save_file(params, str(folder / "model.safetensors"))
  (folder / "tokenizer.json").write_text(tiny_tokenizer_json(int(config["vocab_size"])))
  return folder


@pytest.fixture
def tiny_llama_dir(tmp_path) -> pathlib.Path:
  """A tiny LLaMA Hugging Face folder (config.json + model.safetensors)."""
  return write_hf_folder(tmp_path / "tiny-llama", tiny_llama_params(), TINY_LLAMA_CONFIG)


@pytest.fixture
def tiny_bert_dir(tmp_path) -> pathlib.Path:
  """A tiny BERT Hugging Face folder (positions for 256 tokens, so calibration passages fit)."""
  config = dict(TINY_BERT, max_position_embeddings=256)
  return write_hf_folder(tmp_path / "tiny-bert", tiny_bert_params(config), config)
