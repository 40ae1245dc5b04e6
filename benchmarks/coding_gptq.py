"""GPTQ in front of the quantizers on MiniLM: sentence-embedding cosine vs bits/weight, with vs without feedback.

Run: ``.venv/bin/python benchmarks/coding_gptq.py [--out benchmarks/results/coding_gptq.json] [--render]``
(``--render``: re-render the markdown from the JSON, measuring nothing).

Calibration: ``--n-calib`` passages of the *calibration* split (disjoint from the held-out text the cosine is
measured on); each block matrix's Hessian ``H = XᵀX`` sums its input rows over the real (unpadded) tokens, with
the inputs of the fp32 model (non-sequential GPTQ), measured by the library's calibration
(:func:`macjax.calibrate.input_statistics`, the same forward as the scored :class:`macjax.evaluate.Evaluator`).
Bits/weight count coded words, tables, headers and float16 steps of the 36 block matrices, as in
``coding_quality.py``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from macjax.coding import coded_bits, decode, encode
from macjax import calibrate
from macjax.evaluate import Evaluator
from macjax.load import load_model
from macjax.quantize import gptq, trellis, uniform

import _harness

def layer_hessians(model, n_calib: int) -> dict[str, np.ndarray]:
  """``{HF name: XᵀX}`` of every block matrix's inputs over ``n_calib`` calibration passages (the fp32 model's
  inputs), from the library's calibration (:func:`macjax.calibrate.input_statistics`)."""
  stats = calibrate.input_statistics(model, n_sentences=n_calib)
  return {name: np.asarray(s.second_moment, np.float64) * s.count for name, s in stats.items()}


def compress(matrices, hessians, q, use_gptq: bool):
  g = gptq(q, block_size=128)
  quantize = jax.jit(g.quantize if use_gptq else q.quantize)
  dequantize = jax.jit(q.dequantize)
  out, bits, n = {}, 0, 0
  for name, W in matrices.items():
    codes, meta = quantize(jnp.asarray(W), jnp.asarray(hessians[name])) if use_gptq else quantize(jnp.asarray(W))
    coded = encode(np.asarray(codes), model="auto")
    out[name] = np.asarray(dequantize(jnp.asarray(decode(coded)), meta))
    bits += coded_bits(coded)["total"] + 16 * int(np.asarray(meta.step).size)
    n += W.size
  return out, bits / n


# Written after reading the committed results (the figures it quotes are the table's).
READING = """\
Bits/weight at NNCodec's cosines (interpolated in the table above; NNCodec from DESIGN.md):

| cosine | NNCodec | GPTQ + uniform | GPTQ + trellis |
|---|---|---|---|
| 0.978 | 4.01 | ≈ 3.41 (−15 %) | ≈ 3.33 (−17 %) |
| 0.994 | 4.98 | ≈ 4.36 (−12 %) | ≈ 4.20 (−16 %) |
| 0.926 | 3.10 | < 2.85 | < 2.73 (≥ −12 %) |

Reading (honest): Hessian-aware error feedback is where the model-quality gain is (0.928 → 0.974 at 3.25
bits/weight with the same quantizer and coder); the trellis adds ≈ 0.1–0.2 bit on top. This is 12–17 % fewer bits
than NNCodec at equal embedding cosine, not yet the issue's 25 % (e.g. 0.978 needs ≈ 3.33, the goal is ≤ 3.0).
Caveats: non-sequential GPTQ (fp32 inputs for every layer), 128 calibration passages from works disjoint from
the 128 held-out passages scored; NNCodec's figures were measured elsewhere, not re-run here.
"""


def render(data: dict) -> str:
  """The markdown of a result: the measured table, then :data:`READING`."""
  lines = ["# MiniLM: GPTQ in front of the quantizers (embedding cosine vs bits/weight)", "",
           f"Produced by `benchmarks/coding_gptq.py` ({data['n_calib']} calibration passages, {data['n_sentences']} "
           "held-out passages scored). Peers (DESIGN.md): NNCodec 0.994 @ 4.98, 0.978 @ 4.01, 0.926 @ 3.10; GPTQ int "
           "g64 0.982 @ 4.25, 0.900 @ 3.25.", ""]
  lines += _harness.markdown_table(
      ["method", "step/RMS", "bits/weight", "embedding cosine"],
      [[r["method"], r["step"], f"{r['bits_per_weight']:.3f}", f"{r['embedding_cosine']:.4f}"] for r in data["rows"]])
  return "\n".join(lines + ["", READING])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "coding_gptq.json"))
  parser.add_argument("--n-calib", type=int, default=128)
  parser.add_argument("--n-sentences", type=int, default=128)
  parser.add_argument("--steps", default="0.6,0.45,0.3,0.2")
  parser.add_argument("--render", action="store_true", help="only re-render the markdown from the --out JSON")
  args = parser.parse_args(argv)
  if args.render:
    _harness.render_results(args.out, render)
    return
  model = load_model("minilm-l6")
  matrices = {m.name: np.asarray(model.params[m.name], np.float32) for m in model.layout.matrices}
  t0 = time.perf_counter()
  hessians = layer_hessians(model, args.n_calib)
  print(f"calibration Hessians: {time.perf_counter() - t0:.1f} s", flush=True)
  evaluator = Evaluator(model, n_sentences=args.n_sentences)
  methods = {
      "uniform, per-row step": (lambda s: uniform(s), False),
      "GPTQ + uniform, per-row step": (lambda s: uniform(s), True),
      "GPTQ + trellis λ.3 (column axis), per-row step": (lambda s: trellis(0.6 * s, lam=0.3, axis="column"), True),
  }
  rows = []
  for name, (factory, use_gptq) in methods.items():
    for s in [float(v) for v in args.steps.split(",")]:
      t0 = time.perf_counter()
      decoded, bpw = compress(matrices, hessians, factory(s), use_gptq)
      params = dict(model.params)
      params.update(decoded)
      cos = float(evaluator(params)["cosine_mean"])
      rows.append({"method": name, "step": s, "bits_per_weight": bpw, "embedding_cosine": cos,
                   "seconds": time.perf_counter() - t0})
      print(f"{name:48s} step {s:<5} {bpw:6.3f} bits/weight  cosine {cos:.4f}  ({rows[-1]['seconds']:.0f} s)",
            flush=True)
  _harness.write_results(args.out, {"benchmark": "coding_gptq", "model": "minilm-l6", "n_calib": args.n_calib,
                                    "n_sentences": args.n_sentences, "rows": rows}, render, argv=argv,
                         script=__file__)


if __name__ == "__main__":
  main()
