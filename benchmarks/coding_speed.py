"""Entropy-coding speed: symbols/s of macjax.coding.encode and decode (constriction ANS), per model and source.

Run: ``.venv/bin/python benchmarks/coding_speed.py [--symbols 4000000] [--repeats 3] [--out benchmarks/results/coding_speed.json]``

Prints a markdown table and writes JSON. Times are wall-clock, best of ``--repeats``, and include everything the
library call does (histogram, model fit/choice, table serialization, model construction, coding, checks).
Target (issue 5): ≥ 20 M symbols/s for both directions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from macjax.coding import coded_bits, decode, encode


def sources(n: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Integer code tensors shaped like quantized weight matrices (rows of 1024)."""
  rng = np.random.default_rng(seed)
  shape = (n // 1024, 1024)
  return {
      "laplace ~4.4 bit": np.round(rng.laplace(scale=4.0, size=shape)).astype(np.int32),
      "gaussian ~6 bit": np.round(rng.normal(scale=16.0, size=shape)).astype(np.int32),
      "sparse ~1 bit": np.round(rng.laplace(scale=0.35, size=shape)).astype(np.int32),
  }


def best_time(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--symbols", type=int, default=4_000_000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "coding_speed.json"))
  args = parser.parse_args(argv)

  configs = [("histogram", None), ("laplace", None), ("auto", None), ("auto", 64)]
  rows = []
  for name, x in sources(args.symbols).items():
    for model, group_rows in configs:
      coded = encode(x, model=model, group_rows=group_rows)
      assert np.array_equal(decode(coded), x)
      t_enc = best_time(lambda: encode(x, model=model, group_rows=group_rows), args.repeats)
      t_dec = best_time(lambda: decode(coded), args.repeats)
      bits = coded_bits(coded)
      rows.append({
          "source": name, "model": model, "group_rows": group_rows, "stored_model": coded.header["model"],
          "symbols": int(x.size), "bits_per_symbol": bits["total"] / x.size,
          "table_bits_per_symbol": bits["table"] / x.size,
          "encode_msym_s": x.size / t_enc / 1e6, "decode_msym_s": x.size / t_dec / 1e6,
      })
  print(f"| source | model | groups | bits/symbol (table) | encode M sym/s | decode M sym/s |")
  print(f"|---|---|---|---|---|---|")
  for r in rows:
    groups = "-" if r["group_rows"] is None else f"{r['group_rows']} rows"
    print(f"| {r['source']} | {r['model']} → {r['stored_model']} | {groups} | {r['bits_per_symbol']:.3f} "
          f"({r['table_bits_per_symbol']:.4f}) | {r['encode_msym_s']:.1f} | {r['decode_msym_s']:.1f} |")
  result = {"benchmark": "coding_speed", "symbols": args.symbols, "repeats": args.repeats,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "processor": platform.processor()},
            "rows": rows}
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
