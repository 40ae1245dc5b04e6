"""Rate–distortion of the quantizers + coders on real weights: MiniLM's 36 transformer-block matrices.

Run: ``.venv/bin/python benchmarks/coding_rd.py [--model minilm-l6] [--out benchmarks/results/coding_rd.json]``
(writes the tables as markdown next to the JSON, ``coding_rd.md``; ``--render`` re-renders it from the JSON).

For each quantizer and step: every block matrix is quantized, its codes entropy coded for real
(:func:`macjax.coding.encode`), and bits/weight counts everything the decoder needs for those matrices: coded words,
probability tables, coder headers (compact JSON), and the quantizer's float16 steps. Distortion is the relative
weight error over all the matrices, ``sqrt(Σ‖W − Ŵ‖² / Σ‖W‖²)``. The table ends with the bits/weight each
method needs to reach NNCodec's measured errors (DESIGN.md: 0.120 @ 3.10, 0.062 @ 4.01, 0.032 @ 4.98 bits/weight)
and the i.i.d.-Gaussian bound ``−log2(error)`` at the same error, for reference.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from macjax.coding import coded_bits, encode
from macjax.load import load_model
from macjax.quantize import dead_zone, rdoq, trellis, uniform
from macjax.pipeline import rd

import _harness

NNCODEC = [(3.10, 0.120), (4.01, 0.062), (4.98, 0.032)]  # (bits/weight, relative weight error), MiniLM, DESIGN.md


def methods(rms: float):
  """name -> (factory(step) -> Quantizer, encode kwargs); ``rms`` (of all the matrices) makes absolute steps."""
  return {
      "uniform, per-row step": (lambda s: uniform(s), dict(model="auto")),
      "uniform, absolute step": (lambda s: uniform(s * rms, scope="absolute"), dict(model="auto")),
      "uniform, absolute, per 32 rows ctx": (lambda s: uniform(s * rms, scope="absolute"),
                                             dict(model="auto", group_rows=32)),
      "dead_zone z1.2 ρ.45, absolute": (lambda s: dead_zone(s * rms, width=1.2, recon=0.45, scope="absolute"),
                                        dict(model="auto")),
      "rdoq λ.1, absolute": (lambda s: rdoq(s * rms, lam=0.1, scope="absolute"), dict(model="auto")),
      # The trellis's fine step is ≈ 0.6 × the plain step at equal distortion.
      "trellis λ.3, absolute": (lambda s: trellis(0.6 * s * rms, lam=0.3, scope="absolute"), dict(model="auto")),
  }


def run(matrices: dict[str, np.ndarray], factory, enc_kwargs, step: float) -> dict:
  q = factory(step)
  quantize, dequantize = jax.jit(q.quantize), jax.jit(q.dequantize)
  bits = {"words": 0, "table": 0, "header": 0, "steps": 0}
  err2 = ref2 = 0.0
  n = 0
  for W in matrices.values():
    codes, meta = quantize(jnp.asarray(W))
    W_hat = np.asarray(dequantize(codes, meta))
    part = coded_bits(encode(np.asarray(codes), **enc_kwargs))
    for k in ("words", "table", "header"):
      bits[k] += part[k]
    bits["steps"] += 16 * int(np.asarray(meta.step).size)
    err2 += float(np.sum((W.astype(np.float64) - W_hat) ** 2))
    ref2 += float(np.sum(W.astype(np.float64) ** 2))
    n += W.size
  total = sum(bits.values())
  return {"step": step, "bits_per_weight": total / n, "rel_weight_error": float(np.sqrt(err2 / ref2)),
          "breakdown_bits_per_weight": {k: v / n for k, v in bits.items()}}


DISPLAY = {"minilm-l6": "MiniLM", "smollm2-135m": "SmolLM2-135M"}
# Written after reading the committed results (the figures it quotes are the tables').
READING = {"minilm-l6": """\
Reading (honest):
- Plain per-row uniform quantization + histogram coding sits 0.25 bit above NNCodec, as theory says (entropy-coded
  scalar quantization is 0.254 bit above the Gaussian R(D) at high rate, and NNCodec sits on that bound here).
- One absolute step for every matrix (the MSE-optimal equal-slope allocation) buys 0.13 bit; dead zone and greedy
  RDOQ add ≤ 0.01 bit on these weights; per-channel-group context models add ≈ 0 (the weights are close to i.i.d.
  once scaled: measured conditional entropies given neighbours or column RMS are ≤ 0.012 bit lower).
- Trellis-coded (dependent) quantization is what closes the gap: it **ties NNCodec** (3.09 vs 3.10, 4.02 vs 4.01,
  4.97 vs 4.98 bits/weight). It does not beat it on weight MSE; the issue's ≥ 25 % target has to come from what the
  weight-MSE view ignores (curvature-weighted distortion: GPTQ, sensitivity-driven allocation, transforms).
"""}


def render(data: dict) -> str:
  """The markdown of a result: the points, the bits each method needs at NNCodec's errors, then the reading."""
  # The committed run predates the harness's "meta"; it ran on the 2-core development CPU.
  cpus = data.get("meta", {}).get("cpu_count", 2)
  lines = [f"# Rate–distortion of quantizers + coders on {DISPLAY.get(data['model'], data['model'])} "
           f"({data['n_matrices']} block matrices, {data['n_weights'] / 1e6:.2f} M weights)", "",
           "Produced by `benchmarks/coding_rd.py` (data: `coding_rd.json`). Bits/weight count coded words, probability "
           "tables, coder headers (compact JSON) and float16 steps; error is sqrt(Σ‖W − Ŵ‖² / Σ‖W‖²) over all the "
           "matrices. Absolute steps are fractions of the RMS of all the matrices; the trellis's fine step is 0.6 × "
           f"the listed step. Measured on a shared {cpus}-core CPU.", ""]
  lines += _harness.markdown_table(
      ["method", "step/RMS", "bits/weight", "rel. weight error"],
      [[name, f"{p['step']:.3g}", f"{p['bits_per_weight']:.3f}", f"{p['rel_weight_error']:.4f}"]
       for name, points in data["results"].items() for p in points])
  nncodec = data["nncodec"]
  rows = [["NNCodec (measured, DESIGN.md)", *(f"{b:.2f}" for b, _ in nncodec)],
          ["i.i.d. Gaussian R(D)", *(f"{-np.log2(e):.2f}" for _, e in nncodec)]]
  for name, bits in data["bits_at_nncodec_errors"].items():
    rows.append([name, *("—" if b is None else f"{b:.2f} ({100 * (b_ref - b) / b_ref:+.1f}%)"
                         for b, (b_ref, _) in zip(bits, nncodec))])
  lines += ["", "Bits/weight needed to reach NNCodec's measured errors (lower is better; saving vs NNCodec in "
            "brackets, negative = worse):", ""]
  lines += _harness.markdown_table(["method", *(f"@ err {e:.3f}" for _, e in nncodec)], rows)
  reading = READING.get(data["model"])
  return "\n".join(lines + (["", reading] if reading else [""]))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="minilm-l6")
  parser.add_argument("--steps", default="0.6,0.45,0.33,0.25,0.18,0.13",
                      help="steps as fractions of the RMS (of each row, or of all the matrices for absolute steps)")
  parser.add_argument("--only", default="", help="comma-separated method names to run (default: all)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "coding_rd.json"))
  parser.add_argument("--render", action="store_true", help="only re-render the markdown from the --out JSON")
  args = parser.parse_args(argv)
  if args.render:
    _harness.render_results(args.out, render)
    return
  model = load_model(args.model)
  matrices = {m.name: np.asarray(model.params[m.name], np.float32) for m in model.layout.matrices}
  steps = [float(s) for s in args.steps.split(",")]
  n_weights = sum(W.size for W in matrices.values())
  rms = float(np.sqrt(sum(float(np.sum(W.astype(np.float64) ** 2)) for W in matrices.values()) / n_weights))
  print(f"{args.model}: {len(matrices)} block matrices, {n_weights / 1e6:.2f} M weights")

  results = {}
  only = [m for m in args.only.split(",") if m]
  for name, (factory, enc_kwargs) in methods(rms).items():
    if only and name not in only:
      continue
    t0 = time.perf_counter()
    results[name] = [run(matrices, factory, enc_kwargs, s) for s in steps]
    print(f"  {name}: {time.perf_counter() - t0:.1f} s")
  comparison = {name: [rd.bits_at_distortion([(p["rel_weight_error"], p["bits_per_weight"]) for p in points], e)[0]
                       for _, e in NNCODEC] for name, points in results.items()}
  _harness.write_results(args.out, {"benchmark": "coding_rd", "model": args.model, "n_matrices": len(matrices),
                                    "n_weights": n_weights, "nncodec": NNCODEC, "results": results,
                                    "bits_at_nncodec_errors": comparison}, render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
