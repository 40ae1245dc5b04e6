"""Tiny random-weight checkpoints of every supported decoder family, with ``transformers``' logits on them.

For each family (:data:`FAMILIES`): a small config of the real architecture (its ``model_type``, every option the
family's real checkpoints use: biases, sandwich norms, soft-capping, QK-norm, sliding windows, fused projections,
experts ...), a model built by ``transformers`` from it with seeded random weights (norm gains and biases drawn too,
so that they matter), saved with ``save_pretrained`` (float32 safetensors, the Hub's naming) plus the word-level
tokenizer of :mod:`synthetic_checkpoint`, and ``parity.npz``: token ids (held-out text) and the float32 logits
``transformers`` computes on them. Each saved folder is then loaded by :func:`macjax.load.load_model`, exported by
:func:`macjax.export.export_hf` and loaded back by ``transformers`` strictly (no missing, unexpected or mismatched
keys) with the same logits: the "exported folders load in transformers" check, done here where torch is.

torch is not a dependency of macjax; run this from the parity venv (see ``make_parity_fixtures.py``)::

  .venv-parity/bin/python scripts/make_family_fixtures.py            # writes tests/fixtures/families/<family>/

``tests/test_families.py`` reads the fixtures (no torch needed).
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

OUT = ROOT / "tests" / "fixtures" / "families"
VOCAB = 160
SEQ = 40
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
              max_position_embeddings=128)

#: family -> (model_type, config overrides). Options are set to what real checkpoints of the family use, at sizes
#: that keep each fixture below ~150 KB.
FAMILIES = {
    "llama": ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 16}}),
    "mistral": ("mistral", {"sliding_window": 16}),
    "qwen2": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", {}),
    "gemma2": ("gemma2", {"query_pre_attn_scalar": 8, "sliding_window": 16, "attn_logit_softcapping": 50.0,
                          "final_logit_softcapping": 30.0}),
    "gemma3": ("gemma3_text", {"query_pre_attn_scalar": 8, "sliding_window": 16,
                               "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("phi3", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                          "partial_rotary_factor": 0.5}}),
    "gpt2": ("gpt2", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "n_inner": None}),
    "mixtral": ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": ("qwen2_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
                                "shared_expert_intermediate_size": 40, "norm_topk_prob": True}),
}


def _config(model_type: str, overrides: dict):
  from transformers import AutoConfig
  base = dict(COMMON)
  if model_type == "gpt2":
    base = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2}
  return AutoConfig.for_model(model_type, **{**base, **overrides})


def _randomize(model, seed: int) -> None:
  """Every parameter drawn (norm gains around 1, or around 0 for Gemma's (1 + g), biases and weights small)."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in sorted(model.named_parameters()):
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name or name.split(".")[-2].startswith("ln_"):
        gemma = type(model).__name__.startswith("Gemma")
        p.copy_((0.0 if gemma else 1.0) + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      else:
        p.copy_(noise * (0.5 / max(p.shape[-1], 1) ** 0.5) * (2.0 if "embed" in name or "wte" in name else 1.0))


def _tokens(folder: pathlib.Path) -> np.ndarray:
  from macjax.evaluate import text
  from macjax.load import load_model
  return text.token_windows(text.tokenizer_for(load_model(str(folder))), "heldout", n_seq=3, seq_len=SEQ)


def _logits(model, tokens: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()


def make(family: str, seed: int) -> None:
  import torch
  from transformers import AutoModelForCausalLM

  import synthetic_checkpoint
  from macjax.export import export_hf
  from macjax.load import load_model

  model_type, overrides = FAMILIES[family]
  config = _config(model_type, overrides)
  torch.manual_seed(seed)
  model = AutoModelForCausalLM.from_config(config).float().eval()
  _randomize(model, seed)
  folder = OUT / family
  shutil.rmtree(folder, ignore_errors=True)
  model.save_pretrained(str(folder))
  (folder / "generation_config.json").unlink(missing_ok=True)
  (folder / "tokenizer.json").write_text(synthetic_checkpoint.word_tokenizer(VOCAB), encoding="utf-8")
  tokens = _tokens(folder)
  logits = _logits(model, tokens)
  np.savez_compressed(folder / "parity.npz", tokens=tokens.astype(np.int32), logits=logits.astype(np.float32))
  ours = load_model(str(folder))
  with tempfile.TemporaryDirectory() as tmp:
    exported = export_hf(ours.params, ours.layout, ours.tokenizer_files, pathlib.Path(tmp) / "x")
    again, info = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
      raise SystemExit(f"{family}: the exported folder does not load cleanly in transformers: {problems}")
    diff = float(np.abs(_logits(again.eval(), tokens) - logits).max())
    if diff > 1e-5:
      raise SystemExit(f"{family}: the exported folder's logits differ from the original's by {diff}")
  size = sum(f.stat().st_size for f in folder.iterdir())
  print(f"{family:10s} {type(model).__name__:24s} {size / 1024:6.1f} KB  exported folder loads strictly, "
        f"logits equal (max diff {diff:.1e})", flush=True)


def main() -> int:
  import transformers
  OUT.mkdir(parents=True, exist_ok=True)
  print(f"transformers {transformers.__version__}", flush=True)
  for k, family in enumerate(sorted(FAMILIES)):
    make(family, seed=k)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
