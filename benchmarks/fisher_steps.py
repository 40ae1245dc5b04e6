"""Curvature from the model's output: per-column steps from the empirical Fisher against GPTQ's layer curvature.

The curvature issue's third step. ``curvature_bases.py`` found that steps ∝ ``U_jj`` (GPTQ's layer-output
curvature) save 0.16 b/w at equal *layer*-output error but little at equal *model*-output KL. Here the column
steps come from the model's own sensitivity instead: the diagonal empirical Fisher of the next-token loss on
calibration windows, ``F_ij = E[(∂L/∂W_ij)²]`` (one gradient per window, squared), summed over each input column,
``f_j = Σ_i F_ij``. A column's loss increase from rounding with step ``Δ_j`` is ``≈ ½·f_j·Δ_j²/12``, so equal
slopes give ``Δ_j ∝ f_j^{-1/2}`` — the same reverse water-filling as the curvature steps, in the model-output
metric (SqueezeLLM's sensitivity, applied to steps).

Every block matrix of SmolLM2 goes through act-order GPTQ (whole-model calibration Hessians) + the uniform
quantizer at ``step`` × row RMS with column exponents ``none`` / ``curvature`` / ``fisher`` (int8 at 1/8 octave,
counted); no allocation, embeddings left in float32 (the same for every variant). Bits: each matrix's zeroth-order
code entropy plus the exponents; quality: KL and perplexity on the held-out plays and on prose of another domain.

    .venv/bin/python benchmarks/fisher_steps.py [--steps 0.125,0.25] [--windows 16]
    .venv/bin/python benchmarks/fisher_steps.py --render
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import _harness
import curvature_bases
from macjax import calibrate
from macjax.evaluate import Evaluator, decoder, metrics, text
from macjax.load import families, load_model
from macjax.pipeline import rd
from macjax.quantize import gptq, uniform

VARIANTS = ("none", "curvature", "fisher")


def column_fisher(model, n_windows: int, seq_len: int = 256) -> dict[str, np.ndarray]:
  """``{block matrix name: f32[in]}``: ``Σ_i E[(∂L/∂W_ij)²]`` over calibration windows (one gradient each)."""
  config = dict(model.layout.config)
  weights = decoder.prepare(model.params, config)
  tokens = text.token_windows(text.tokenizer_for(model), "calibration", n_seq=n_windows, seq_len=seq_len)

  def loss(blocks, window):
    z = decoder.logits(weights._replace(blocks=blocks), config, window[None])
    return jnp.mean(metrics.token_nll(z[:, :-1], window[None, 1:]))

  grad = jax.jit(jax.grad(loss))
  acc = jax.tree_util.tree_map(jnp.zeros_like, weights.blocks)
  for w in tokens:
    acc = jax.tree_util.tree_map(lambda a, g: a + jnp.square(g), acc, grad(weights.blocks, jnp.asarray(w)))
  spec = families.family_spec(config, "fisher", names=frozenset(model.params))
  out = {}
  for m in model.layout.matrices:
    field, layer, _ = spec.fields[m.name]
    out[m.name] = np.asarray(acc[field][layer], np.float64).sum(axis=0) / n_windows
  return out


def exponents(f: np.ndarray) -> np.ndarray:
  """int8 exponents of steps ∝ ``f^{-1/2}`` at 1/8 octave, geometric mean 1, within ±64."""
  e = -0.5 * np.log2(np.maximum(f, 1e-30))
  return np.clip(np.round(8 * (e - np.mean(e))), -64, 64).astype(np.int8)


def quantize_model(model, stats, fisher, variant: str, step: float) -> tuple[dict, float]:
  """All block matrices quantized with one variant's column steps: (params, block bits/weight)."""
  q = gptq(uniform(step), order="descending", column_steps={"none": "none", "curvature": "curvature",
                                                             "fisher": "given"}[variant])
  fn = jax.jit(q.quantize)
  params, bits, n = dict(model.params), 0.0, 0
  for m in model.layout.matrices:
    W = jnp.asarray(model.params[m.name], jnp.float32)
    H = jnp.asarray(calibrate.hessian(stats[m.name]), jnp.float32)
    e = jnp.asarray(exponents(fisher[m.name])) if variant == "fisher" else None
    codes, meta = fn(W, H, 1.0, e) if e is not None else fn(W, H)
    params[m.name] = np.asarray(q.dequantize(codes, meta))
    bits += curvature_bases.code_entropy_bits(np.asarray(codes)) * W.size + (8 * W.shape[1] if variant != "none" else 0)
    n += W.size
  return params, bits / n


def measure(steps: list[float], windows: int) -> dict:
  """Every variant at every step, scored on the held-out plays and on prose."""
  model = load_model("smollm2-135m")
  stats = calibrate.input_statistics(model)
  fisher = column_fisher(model, windows)
  evaluators = {"": Evaluator(model), rd.OTHER: Evaluator(model, split="prose")}
  names = [m.name for m in model.layout.matrices]
  points = []
  for step in steps:
    for variant in VARIANTS:
      params, bpw = quantize_model(model, stats, fisher, variant, step)
      row = rd.measure_point(model, evaluators, names, params,
                             {"series": variant, "step": step, "block_bits_per_weight": bpw})
      points.append(row)
      print(variant, step, f"{bpw:.3f}", row.get("kl"), row.get(rd.OTHER + "kl"), flush=True)
  return {"model": "smollm2-135m", "windows": windows, "points": points}


POINT_COLUMNS = ["variant", "step", "block b/w", "ppl Δ plays", "KL plays", "ppl Δ prose", "KL prose"]


def point_rows(points: list[dict]) -> list[list]:
  """One table row per point: bits, then perplexity change and KL on the plays and on the prose."""
  return [[p["series"], p["step"], f"{p['block_bits_per_weight']:.3f}", f"{100 * p['perplexity_rel_change']:+.2f}%",
           f"{p['kl']:.4f}", f"{100 * p[rd.OTHER + 'perplexity_rel_change']:+.2f}%", f"{p[rd.OTHER + 'kl']:.4f}"]
          for p in points]


def savings_sections(data: dict, reference: str) -> list[str]:
  """Each variant against ``reference`` at equal KL, on the held-out plays and on the prose (markdown lines)."""
  lines = []
  for prefix, where in (("", "held-out plays"), (rd.OTHER, "prose")):
    s = rd.savings(data, reference, prefix)
    lines += [f"Against `{reference}` at equal KL on the {where} (b/w saved; – where `{reference}`'s points do not "
              "bracket it):", "", *_harness.markdown_table(["variant", "step", "KL", "saving"],
                                                          [[r["series"], r["step"], f"{r['distortion']:.4f}",
                                                            None if r["saving"] is None else f"{r['saving']:+.3f}"]
                                                           for r in s]), ""]
  return lines


def render(data: dict) -> str:
  """The points, then each variant against ``none`` at equal KL on both texts."""
  lines = ["# Column steps from the model's output (empirical Fisher) vs GPTQ's layer curvature", "",
           f"Generated by `benchmarks/fisher_steps.py` (its docstring says how). {data['model']}, Fisher from "
           f"{data['windows']} calibration windows; no allocation; block bits = code entropy + exponents.", "",
           *_harness.markdown_table(POINT_COLUMNS, point_rows(data["points"])), ""]
  return "\n".join(lines + savings_sections(data, "none"))


def main(argv=None) -> None:
  """Measures (or, with ``--render``, re-renders) ``benchmarks/results/fisher_steps.{json,md}``."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", default="0.125,0.25")
  p.add_argument("--windows", type=int, default=16)
  p.add_argument("--render", action="store_true", help="only re-render the .md from its JSON")
  args = p.parse_args(argv)
  if args.render:
    _harness.render_results("fisher_steps", render)
    return
  data = measure([float(s) for s in args.steps.split(",")], args.windows)
  _harness.write_results("fisher_steps", data, render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
