"""Token ids that ``transformers`` gives for GGUF tokenizers with the ``qwen2`` and ``llama-bpe`` pre-tokenizers.

A tiny byte-level BPE vocabulary (:func:`tokenizer_metadata`) is written into a GGUF file per pre-tokenizer and
converted by ``transformers.AutoTokenizer.from_pretrained(folder, gguf_file=...)``; its ids on a few awkward texts
are stored in ``tests/fixtures/gguf_tokenizers.json``, which ``tests/test_load.py`` compares with the tokenizer
:func:`macjax.load.gguf_tokenizer.tokenizer_files_from_gguf` rebuilds (no torch needed there).

Run from the parity venv (see ``make_parity_fixtures.py``)::

  .venv-parity/bin/python scripts/make_gguf_tokenizer_fixture.py
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "gguf_tokenizers.json"
PRES = ("qwen2", "llama-bpe")
TEXTS = ("Hello world's 12345  ok\n",
         "  Leading spaces,\ttabs\n\nand\r\nnewlines… «quotes» 日本語 ß 😀 0.5e-3",
         "I'M here, you'LL see 2024-12-02!")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "Ġ w", "o r", "l d", "Ġw or", "Ġwor ld", "1 2", "12 3"]


def tokenizer_metadata(pre: str) -> dict:
  """GGUF ``tokenizer.ggml.*`` metadata of a tiny byte-level BPE (specials, the 256 byte symbols, merged tokens)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  tokens = SPECIALS + sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet()) + [m.replace(" ", "") for m in MERGES]
  return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)),
          "tokenizer.ggml.merges": MERGES, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}


def _write(path: pathlib.Path, meta: dict) -> None:
  import gguf  # pylint: disable=g-import-not-at-top
  w = gguf.GGUFWriter(str(path), "qwen2")
  w.add_tokenizer_model(meta["tokenizer.ggml.model"])
  w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
  w.add_token_list(meta["tokenizer.ggml.tokens"])
  w.add_token_types(meta["tokenizer.ggml.token_type"])
  w.add_token_merges(meta["tokenizer.ggml.merges"])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_tensor("token_embd.weight", np.zeros((len(meta["tokenizer.ggml.tokens"]), 8), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def main() -> int:
  import transformers  # pylint: disable=g-import-not-at-top
  out = {"transformers": transformers.__version__, "texts": list(TEXTS), "ids": {}}
  for pre in PRES:
    folder = pathlib.Path(tempfile.mkdtemp())
    _write(folder / "t.gguf", tokenizer_metadata(pre))
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file="t.gguf")
    out["ids"][pre] = [tok(t, add_special_tokens=False).input_ids for t in TEXTS]
  OUT.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
  print(f"wrote {OUT}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
