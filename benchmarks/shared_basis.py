"""Does one PCA basis per role pay? Per-matrix vs role-shared input-side PCA (weight source) on MiniLM, by rate.

For each quantizer step, three configs go through :func:`macjax.pipeline.compression.compress` (decode checked
bit-exact in memory with :func:`~macjax.pipeline.compression.decompress`):

* ``none``: no transform (the reference rate);
* ``pca-matrix``: ``[[transform]] pca side = "input"``, one float16 ``in×in`` basis per block matrix;
* ``pca-role``: the same with ``[transform_state] share = "role"``: one basis per role, fitted on the role's layers
  stacked by rows (``Σ_l W_lᵀ W_l``), stored once.

Per point: block bits/weight (codes + tables + scales + transform, the report's formula), the code bits alone
(codes + tables + scales: what the coordinates do to the entropy) and the block relative weight error
``sqrt(Σ‖W−Ŵ‖²)/sqrt(Σ‖W‖²)``. No model evaluation.

Run (2 shared cores, ~1 min per point):

    nice -n 5 .venv/bin/python benchmarks/shared_basis.py            # writes benchmarks/results/shared_basis.json
"""

from __future__ import annotations

import argparse
import os
import time

from macjax.load import load_model
from macjax.pipeline import compression, config as config_lib, job, report

import _harness

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VARIANTS = {
    "none": {},
    "pca-matrix": {"transform": [{"name": "pca", "side": "input"}]},
    "pca-role": {"transform": [{"name": "pca", "side": "input"}], "transform_state": {"share": "role"}},
}


def run(model_name: str, steps: list[float]) -> list[dict]:
  model = load_model(model_name)
  rows = []
  for step in steps:
    for variant, extra in VARIANTS.items():
      cfg = config_lib.from_dict({**extra, "quantize": {"step": step}, "evaluate": {"enabled": False}})
      t0 = time.perf_counter()
      compressed = compression.compress(model, cfg)
      decoded = compression.decompress(compressed.units, compressed.manifest)  # verifies every tensor's SHA-256
      parts = report.counted_bits(compressed.manifest)["block_bits_parts"]  # the report's own accounting
      err = job.weight_errors(compressed.reference, decoded, compressed.manifest)["block"]
      row = {"model": model_name, "step": step, "variant": variant, "block_bpw": sum(parts.values()),
             "code_bpw": parts["codes"] + parts["tables"] + parts["scales"], "transform_bpw": parts["transform"],
             "parts": parts, "rel_err": err, "seconds": time.perf_counter() - t0}
      rows.append(row)
      print(f"step {step:<7} {variant:<11} block {row['block_bpw']:8.4f} bits/weight = codes+tables+scales "
            f"{row['code_bpw']:.4f} + transform {row['transform_bpw']:.4f}; rel. weight error {err:.5f} "
            f"({row['seconds']:.0f} s)", flush=True)
  return rows


def table(data: dict) -> str:
  """The points as a markdown table (printed; ``shared_basis.md`` itself is written by hand around these figures)."""
  return "\n".join(_harness.markdown_table(
      ["step", "variant", "block bits/weight", "codes+tables+scales", "transform", "rel. weight error"],
      [[r["step"], r["variant"], f"{r['block_bpw']:.4f}", f"{r['code_bpw']:.4f}", f"{r['transform_bpw']:.4f}",
        f"{r['rel_err']:.5f}"] for r in data["rows"]]))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="minilm-l6")
  p.add_argument("--steps", type=float, nargs="+", default=[0.0625, 0.25])
  p.add_argument("--out", default=os.path.join(RESULTS, "shared_basis.json"))
  args = p.parse_args(argv)
  data = _harness.write_results(args.out, {"rows": run(args.model, args.steps)}, argv=argv, script=__file__)
  print("\n" + table(data))


if __name__ == "__main__":
  main()
