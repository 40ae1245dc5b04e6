"""Entropy-coding speed: symbols/s of macjax.coding.encode and decode (constriction ANS), per model and source.

Run: ``.venv/bin/python benchmarks/coding_speed.py [--symbols 4000000] [--repeats 3] [--out benchmarks/results/coding_speed.json]``

Prints a markdown table and writes JSON (and the table as markdown next to it; ``--render`` re-renders it from the
JSON, measuring nothing). Times are wall-clock, best of ``--repeats``, and include everything the library call does
(histogram, model fit/choice, table serialization, model construction, coding, checks). Baseline, run in the same
process on the same symbols: bare constriction (one ``AnsCoder``, the stored model built once, no checks), so that a
shared machine's load shows up in both columns and the ratio ``macjax / constriction`` is what the wrapper costs
(grouped and classed models have no single-model baseline). Target (issue 5): ≥ 20 M symbols/s both ways.
``classes auto`` encode times include the search for context classes (:mod:`macjax.coding.contexts`), which only the
encoder pays. The last rows code real codes (MiniLM's 36 block matrices, 147k–590k symbols each, one call per
matrix), where per-call and per-context costs weigh more than on the synthetic 4M-symbol tensors.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import constriction

from macjax.coding import codec, coded_bits, decode, encode

import _harness


def sources(n: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Integer code tensors shaped like quantized weight matrices (rows of 1024)."""
  rng = np.random.default_rng(seed)
  shape = (n // 1024, 1024)
  return {
      "laplace ~4.4 bit": np.round(rng.laplace(scale=4.0, size=shape)).astype(np.int32),
      "gaussian ~6 bit": np.round(rng.normal(scale=16.0, size=shape)).astype(np.int32),
      "sparse ~1 bit": np.round(rng.laplace(scale=0.35, size=shape)).astype(np.int32),
      # spreads that vary by row and by column, as codes of a matrix with one step per matrix do
      "two-way laplace ~4 bit": np.round(rng.laplace(size=shape) * np.exp(rng.normal(scale=0.6, size=(shape[0], 1)))
                                         * np.exp(rng.normal(scale=0.4, size=(1, shape[1]))) * 3.0).astype(np.int32),
  }


def minilm_codes(step: float = 0.15) -> list[np.ndarray]:
  """Real codes: MiniLM's 36 block matrices (147k–590k weights each) through an 8-state trellis, one step per
  matrix (what ``classes = "auto"`` is for: rows and columns keep unequal spreads)."""
  import jax  # pylint: disable=import-outside-toplevel
  from macjax.load import load_model  # pylint: disable=import-outside-toplevel
  from macjax.quantize import trellis  # pylint: disable=import-outside-toplevel
  model = load_model("minilm-l6")
  quantize = jax.jit(trellis(step=step, scope="matrix", states=8).quantize)
  return [np.asarray(quantize(np.asarray(model.params[m.name], np.float32))[0]) for m in model.layout.matrices]


def best_time(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def bare_constriction(coded) -> tuple:
  """(encode, decode) closures of bare constriction on the same symbols with the same single stored model."""
  weights = codec.model_weights(coded)
  model = codec._constriction_model(weights[0])  # pylint: disable=protected-access
  symbols = codec._symbols(decode(coded), coded.header)  # pylint: disable=protected-access
  words = None

  def enc():
    nonlocal words
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, model)
    words = coder.get_compressed()

  enc()
  return enc, lambda: constriction.stream.stack.AnsCoder(words).decode(model, symbols.size)


def measure(source: str, arrays: list[np.ndarray], model: str, group_rows, classes, repeats: int) -> dict:
  """One table row: ``arrays`` coded one call each (checked bit-exact), timed together, best of ``repeats``."""
  n = sum(x.size for x in arrays)
  kwargs = {"model": model, "group_rows": group_rows, "classes": classes}
  coded = [encode(x, **kwargs) for x in arrays]
  assert all(np.array_equal(decode(k), x) for k, x in zip(coded, arrays))
  t_enc = best_time(lambda: [encode(x, **kwargs) for x in arrays], repeats)
  t_dec = best_time(lambda: [decode(k) for k in coded], repeats)
  bits = [coded_bits(k) for k in coded]
  row = {}
  if all(k.header["model"] not in ("grouped", "classed") for k in coded):  # one stored model each: a baseline
    bare = [bare_constriction(k) for k in coded]
    row = {"constriction_encode_msym_s": n / best_time(lambda: [e() for e, _ in bare], repeats) / 1e6,
           "constriction_decode_msym_s": n / best_time(lambda: [d() for _, d in bare], repeats) / 1e6}
  stored = sorted({k.header["model"] + (f" {k.header['row_classes']}x{k.header['col_classes']}"
                                        if k.header["model"] == "classed" else "") for k in coded})
  return row | {
      "source": source, "model": model, "group_rows": group_rows, "classes": classes,
      "stored_model": " / ".join(stored), "symbols": int(n),
      "bits_per_symbol": sum(b["total"] for b in bits) / n, "table_bits_per_symbol": sum(b["table"] for b in bits) / n,
      "encode_msym_s": n / t_enc / 1e6, "decode_msym_s": n / t_dec / 1e6,
  }


def render(data: dict) -> str:
  """The markdown of a result: one row per source × model, with the bare-constriction baseline in brackets."""
  rows = []
  for r in data["rows"]:
    groups = (f"{r['group_rows']} rows" if r["group_rows"] is not None else
              f"classes {r['classes']}" if r.get("classes") else "-")
    b_enc = f" ({r['constriction_encode_msym_s']:.1f})" if "constriction_encode_msym_s" in r else ""
    b_dec = f" ({r['constriction_decode_msym_s']:.1f})" if "constriction_decode_msym_s" in r else ""
    rows.append([r["source"], f"{r['model']} → {r['stored_model']}", groups,
                 f"{r['bits_per_symbol']:.3f} ({r['table_bits_per_symbol']:.4f})", f"{r['encode_msym_s']:.1f}{b_enc}",
                 f"{r['decode_msym_s']:.1f}{b_dec}"])
  cpus = (data.get("machine") or data["meta"])["cpu_count"]
  return (f"# Entropy-coding speed\n\nProduced by `benchmarks/coding_speed.py` ({data['symbols']:,} symbols, best of "
          f"{data['repeats']}, {cpus} CPUs; data: `coding_speed.json`). Wall-clock on a shared machine: compare a row "
          "with its bare-constriction baseline (same process, same symbols and model), not with another run.\n\n" +
          "\n".join(_harness.markdown_table(
              ["source", "model", "groups / classes", "bits/symbol (table)", "encode M sym/s (bare constriction)",
               "decode M sym/s (bare constriction)"], rows)) + "\n")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--symbols", type=int, default=4_000_000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "coding_speed.json"))
  parser.add_argument("--render", action="store_true", help="only re-render the markdown from the --out JSON")
  args = parser.parse_args(argv)
  if args.render:
    _harness.render_results(args.out, render)
    return

  configs = [("histogram", None, None), ("laplace", None, None), ("auto", None, None), ("auto", 64, None),
             ("auto", None, "auto")]
  rows = [measure(name, [x], model, group_rows, classes, args.repeats)
          for name, x in sources(args.symbols).items() for model, group_rows, classes in configs]
  codes = minilm_codes()
  rows += [measure(f"MiniLM trellis codes ({len(codes)} matrices)", codes, "auto", None, classes, args.repeats)
           for classes in (None, "auto")]
  # The machine (CPUs, platform, load) is in the result's "meta", written by the harness.
  _harness.write_results(args.out, {"benchmark": "coding_speed", "symbols": args.symbols, "repeats": args.repeats,
                                    "rows": rows}, render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
