"""GPTQ under the model's output metric: input Hessians weighted by the Fisher of the next-token predictions.

The curvature issue's fourth step. ``fisher_steps.py`` found that *column steps* from the model's output
sensitivity are no better than GPTQ's own layer curvature. Here the model's metric enters GPTQ itself: every block
matrix's Hessian ``XᵀX`` is replaced by ``H^F = Σ_t ‖g_t‖² x_t x_tᵀ`` (:mod:`macjax.calibrate.fisher`; ``g_t`` the
gradient of the log-likelihood of labels sampled from the model at the matrix's output), so error feedback, the
act-order and (with ``+curvature``) the column steps follow the KL's curvature instead of the layer output's.

Every block matrix of SmolLM2 goes through act-order GPTQ + the uniform quantizer at ``step`` × row RMS, no
allocation, embeddings left in float32 (the same for every variant). Variants: ``inputs`` (``XᵀX``, the default's
Hessian), ``curvature`` (``XᵀX`` and column steps ∝ its ``U_jj``, 8 bits per column counted: ``fisher_steps.py``'s
winner), ``fisher`` (``H^F``), ``fisher+curvature`` (``H^F`` and column steps ∝ its ``U_jj``), and either with
``+rows``: each row's step ∝ ``c_k^{-1/2}`` (``c_k = Σ_t g_tk² ‖x_t‖²``, the row's weight at the model's output)
instead of ∝ its RMS, at the same geometric mean — the output side's reverse water-filling, at no side cost (the
row steps are stored either way). Both Hessians come from the same 48 calibration windows. Bits: each matrix's zeroth-order code entropy (plus exponents); quality: KL
and perplexity on the held-out plays and on prose of another domain.

    .venv/bin/python benchmarks/output_hessians.py [--steps 0.125,0.177,0.25]
    .venv/bin/python benchmarks/output_hessians.py --render
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import _harness
import curvature_bases
import fisher_steps
from macjax import calibrate
from macjax.calibrate import fisher
from macjax.evaluate import Evaluator
from macjax.load import load_model
from macjax.pipeline import rd
from macjax.quantize import gptq, uniform

VARIANTS = ("inputs", "curvature", "fisher", "fisher+curvature", "fisher+rows", "fisher+curvature+rows")


def row_multipliers(W: np.ndarray, row_weight: np.ndarray) -> np.ndarray:
  """f32[rows, 1] step multipliers turning the default's ``Δ_k ∝ RMS_k`` into ``Δ_k ∝ c_k^{-1/2}`` (``c_k``: the row's
  output weight; equal slopes at high rate), with the same geometric mean of steps."""
  rms = np.sqrt(np.mean(np.square(W, dtype=np.float64), axis=1))
  c = np.maximum(row_weight.astype(np.float64), 1e-30 * max(float(row_weight.max()), 1e-30))
  log_m = -np.log(rms * np.sqrt(c))
  return np.exp(log_m - np.mean(log_m)).astype(np.float32)[:, None]


def quantize_model(model, hessians, row_weights, variant: str, step: float) -> tuple[dict, float]:
  """All block matrices quantized with one variant: (params, block bits/weight)."""
  steps = "curvature" if "curvature" in variant else "none"
  q = gptq(uniform(step), order="descending", column_steps=steps)
  fn = jax.jit(q.quantize)
  params, bits, n = dict(model.params), 0.0, 0
  for m in model.layout.matrices:
    W = np.asarray(model.params[m.name], np.float32)
    scale = row_multipliers(W, row_weights[m.name]) if variant.endswith("+rows") else np.ones((W.shape[0], 1),
                                                                                              np.float32)
    codes, meta = fn(jnp.asarray(W), jnp.asarray(hessians[m.name], jnp.float32), jnp.asarray(scale))
    params[m.name] = np.asarray(q.dequantize(codes, meta))
    bits += curvature_bases.code_entropy_bits(np.asarray(codes)) * W.size + (8 * W.shape[1] if steps != "none" else 0)
    n += W.size
  return params, bits / n


def measure(steps: list[float], variants: tuple[str, ...]) -> dict:
  """Every variant at every step, scored on the held-out plays and on prose."""
  model = load_model("smollm2-135m")
  t0 = time.perf_counter()
  plain = {k: calibrate.hessian(s) for k, s in calibrate.input_statistics(model).items()}
  t1 = time.perf_counter()
  out = fisher.fisher_hessians(model)
  weighted = {k: o.hessian for k, o in out.items()}
  row_weights = {k: o.row_weight for k, o in out.items()}
  t2 = time.perf_counter()
  print(f"XᵀX {t1 - t0:.0f} s, H^F {t2 - t1:.0f} s", flush=True)
  evaluators = {"": Evaluator(model), rd.OTHER: Evaluator(model, split="prose")}
  names = [m.name for m in model.layout.matrices]
  points = []
  for step in steps:
    for variant in variants:
      params, bpw = quantize_model(model, weighted if variant.startswith("fisher") else plain, row_weights,
                                   variant, step)
      row = rd.measure_point(model, evaluators, names, params,
                             {"series": variant, "step": step, "block_bits_per_weight": bpw})
      points.append(row)
      print(variant, step, f"{bpw:.3f}", row.get("kl"), row.get(rd.OTHER + "kl"), flush=True)
  return {"model": "smollm2-135m", "seconds": {"inputs_hessians": round(t1 - t0, 1),
                                               "fisher_hessians": round(t2 - t1, 1)}, "points": points}


def render(data: dict) -> str:
  """The points, then each variant against ``inputs`` at equal KL on both texts."""
  sec = data["seconds"]
  lines = ["# GPTQ with Fisher-weighted Hessians (the model's output metric) vs the layer-output XᵀX", "",
           f"Generated by `benchmarks/output_hessians.py` (its docstring says how). {data['model']}; no allocation; "
           f"block bits = code entropy (+ column exponents). Hessians from the same 48 calibration windows: "
           f"XᵀX in {sec['inputs_hessians']:.0f} s, H^F (one forward + backward per 4 windows) in "
           f"{sec['fisher_hessians']:.0f} s.", "",
           *_harness.markdown_table(fisher_steps.POINT_COLUMNS, fisher_steps.point_rows(data["points"])), ""]
  return "\n".join(lines + fisher_steps.savings_sections(data, "inputs"))


def main(argv=None) -> None:
  """Measures (or, with ``--render``, re-renders) ``benchmarks/results/output_hessians.{json,md}``."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", default="0.125,0.177,0.25")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--render", action="store_true", help="only re-render the .md from its JSON")
  args = p.parse_args(argv)
  if args.render:
    _harness.render_results("output_hessians", render)
    return
  data = measure([float(s) for s in args.steps.split(",")], tuple(args.variants.split(",")))
  _harness.write_results("output_hessians", data, render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
