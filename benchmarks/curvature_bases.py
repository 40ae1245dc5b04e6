"""Curvature alignment, measured on real quantization: absorbed residual-stream bases × per-column steps, per role.

The curvature issue's second step. For a LLaMA model with its RMSNorm gains folded into the linears (the
computational-invariance rewrite), every block matrix is quantized as the default recipe does (act-order GPTQ in
front of the uniform quantizer, one step per row at ``--step`` × the row's RMS), in the coordinates of a residual-
stream basis ``Q`` that the rewrite absorbs at zero bits (readers q/k/v/gate/up: ``W Q`` with Hessian ``Qᵀ H Q``;
writers o/down: ``Qᵀ W``), with three kinds of input-column steps:

* ``one``: the row's step for every column (today's recipe);
* ``curvature``: GPTQ's own curvature steps (``column_steps="curvature"`` of :func:`macjax.quantize.gptq`:
  steps ∝ ``U_jj``, equal layer-output distortion per column, int8 exponents counted);
* ``diag_h``: steps ∝ ``1/√H_jj`` (curvature read off the Hessian's diagonal, AWQ-like, ignoring correlations).

Bases: ``identity``; ``hadamard`` (randomized, QuaRot); ``act_pca`` (eigenvectors of the normalized residual
stream's calibration second moment pooled over layers: SliceGPT's basis with one Q for all layers, which is what an
absorbed rotation can be); ``weight_pca`` (eigenvectors of the readers' pooled ``Σ WᵀW``).

Rate: the zeroth-order entropy of each matrix's codes (what a per-tensor table pays) and the entropy given 8
column classes by step (what column contexts could reach), plus the exponents' 8 bits per column for
``curvature``. Distortion: the relative layer-output error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` on calibration inputs.
Every variant is compared with ``identity``/``one`` at equal output error (high-rate correction
``½·log2(err/err_ref)`` per matrix), averaged over the sampled layers by weight count. The tied LM head would have
to be untied by any residual rotation (its cost is not in this table; see ``macjax/transforms/invariance.py``).

    .venv/bin/python benchmarks/curvature_bases.py [--model smollm2-135m] [--step 0.125] [--every 3]
    .venv/bin/python benchmarks/curvature_bases.py --render   # re-renders the .md from the JSON
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import _harness
from macjax import calibrate, transforms
from macjax.load import load_model
from macjax.pipeline.plan import pooled_stats
from macjax.quantize import gptq, uniform
from macjax.transforms.hadamard import randomized_hadamard

STEPS = ("one", "curvature", "diag_h")
READERS = ("q", "k", "v", "gate", "up")
CLASSES = 8


def bases(params: dict, stats: dict, matrices, seed: int = 0) -> dict[str, np.ndarray]:
  """The residual-stream bases (orthogonal ``(hidden, hidden)``, columns by decreasing variance for the PCAs)."""
  readers = [m for m in matrices if m.role in READERS]
  C = np.asarray(pooled_stats([stats[m.name] for m in readers if m.role in ("q", "gate")]).second_moment,
                 np.float64)
  G = sum(np.asarray(params[m.name], np.float64).T @ np.asarray(params[m.name], np.float64) for m in readers)
  hidden = C.shape[0]
  had = randomized_hadamard(side="input")
  Qh = np.asarray(had.apply(jnp.eye(hidden), had.init(jnp.eye(hidden), key=jax.random.key(seed))), np.float64)
  return {"identity": np.eye(hidden), "hadamard": Qh, "act_pca": np.linalg.eigh(C)[1][:, ::-1],
          "weight_pca": np.linalg.eigh(G)[1][:, ::-1]}


def code_entropy_bits(codes: np.ndarray) -> float:
  """Zeroth-order entropy (bits per code) of integer codes: what one code table per matrix pays."""
  _, n = np.unique(codes, return_counts=True)
  p = n / n.sum()
  return float(-np.sum(p * np.log2(p)))


def _class_entropy(codes: np.ndarray, col_steps: np.ndarray) -> float:
  """Entropy of the codes given one of :data:`CLASSES` column classes by step size."""
  rank = np.argsort(np.argsort(col_steps, kind="stable"), kind="stable")
  cls = (rank * CLASSES) // len(col_steps)
  return sum(code_entropy_bits(codes[:, cls == k]) * np.sum(cls == k) for k in np.unique(cls)) / len(col_steps)


def quantize_one(W: np.ndarray, H: np.ndarray, steps: str, step: float) -> dict:
  """Bits (zeroth order, by column class, side bits) and relative output error of one matrix."""
  Wj, Hj = jnp.asarray(W, jnp.float32), jnp.asarray(H, jnp.float32)
  scale = np.ones(W.shape[1])
  if steps == "diag_h":  # W diag(s) quantized with one step: column steps ∝ 1/s
    d = np.sqrt(np.maximum(np.diag(H), 1e-12 * np.mean(np.diag(H))))
    scale = d / np.exp(np.mean(np.log(d)))
  s = jnp.asarray(scale, jnp.float32)
  q = gptq(uniform(step), order="descending", column_steps="curvature" if steps == "curvature" else "none")
  codes, meta = _quantizer(q, steps, step)(Wj * s[None, :], Hj / s[:, None] / s[None, :])
  D = np.asarray(q.dequantize(codes, meta), np.float64) / scale[None, :] - W
  err = float(np.trace(D @ H @ D.T) / np.trace(W @ H @ W.T))
  col = 1.0 / scale if steps != "curvature" else np.exp2(np.asarray(meta.exponent, np.float64) / 8)
  codes = np.asarray(codes)
  return {"bits": code_entropy_bits(codes), "bits_classes": _class_entropy(codes, col),
          "side_bits": 8.0 * W.shape[1] / W.size if steps == "curvature" else 0.0, "rel_output_error": err}


_JITTED: dict = {}


def _quantizer(q, steps: str, step: float):
  """The jitted ``q.quantize``, compiled once per (column-steps kind, step)."""
  return _JITTED.setdefault((steps, step), jax.jit(q.quantize))


def measure(model_name: str, step: float, every: int) -> dict:
  """Every sampled block matrix in every basis × column-steps kind (gains folded, as the rewrite does)."""
  model = load_model(model_name)
  rw = transforms.rotate_llama(dict(model.params), model.layout.config, residual="identity", head_rotation=False)
  stats = calibrate.input_statistics(model, params=rw.params)
  Qs = bases(rw.params, stats, model.layout.matrices)
  rows = []
  for m in model.layout.matrices:
    if m.layer % every:
      continue
    W0 = np.asarray(rw.params[m.name], np.float64)
    H0 = np.asarray(stats[m.name].second_moment, np.float64)
    for basis, Q in Qs.items():
      W, H = (Q.T @ W0, H0) if m.role not in READERS else (W0 @ Q, Q.T @ H0 @ Q)
      for steps in STEPS:
        rows.append({"name": m.name, "role": m.role, "layer": m.layer, "size": int(W0.size), "basis": basis,
                     "steps": steps, **quantize_one(W, H, steps, step)})
    print(m.name, flush=True)
  return {"model": model_name, "step": step, "every": every, "rows": rows}


def summarize(data: dict) -> dict:
  """Per (basis, steps) and role: size-weighted bits at the identity/one reference's output error."""
  ref = {r["name"]: r["rel_output_error"] for r in data["rows"] if (r["basis"], r["steps"]) == ("identity", "one")}
  out: dict = {}
  for r in data["rows"]:
    adjust = 0.5 * np.log2(r["rel_output_error"] / ref[r["name"]])
    for role in (r["role"], "all"):
      acc = out.setdefault(f"{r['basis']}/{r['steps']}", {}).setdefault(role, np.zeros(4))
      acc += r["size"] * np.array([r["bits"] + r["side_bits"] + adjust, r["bits_classes"] + r["side_bits"] + adjust,
                                   np.log10(r["rel_output_error"]), 1.0])
  return {k: {role: {"bits": a[0] / a[3], "bits_classes": a[1] / a[3], "log10_error": a[2] / a[3]}
              for role, a in v.items()} for k, v in out.items()}


def render(data: dict) -> str:
  """The markdown tables of a measurement (:func:`summarize`'s means per basis/steps and role)."""
  s = summarize(data)
  roles = list(dict.fromkeys(r["role"] for r in data["rows"])) + ["all"]
  base = s["identity/one"]["all"]
  lines = ["# Curvature alignment on real quantization: absorbed bases × column steps", "",
           f"Generated by `benchmarks/curvature_bases.py` (its docstring says how). {data['model']}, GPTQ act-order "
           f"+ uniform at step {data['step']} × row RMS, layers 0, {data['every']}, {2 * data['every']}, …; "
           "bits/weight at the layer-output error of `identity/one` (per matrix, high-rate correction), side bits "
           "included. First table: one code table per matrix (what the default coder pays); second: codes given 8 "
           "column classes by step.", ""]
  for key, title in (("bits", "one table per matrix"), ("bits_classes", "8 column classes")):
    rows = [[k, *(f"{v[r][key]:.3f}" for r in roles), f"{v['all'][key] - base[key]:+.3f}"] for k, v in s.items()]
    lines += [f"## Bits/weight, {title}", "", *_harness.markdown_table(["basis/steps", *roles, "Δ all"], rows), ""]
  lines += ["Relative layer-output error (log10, size-weighted mean) at the same step:", "",
            *_harness.markdown_table(["basis/steps", *roles],
                                     [[k, *(f"{v[r]['log10_error']:.2f}" for r in roles)] for k, v in s.items()]), ""]
  return "\n".join(lines)


def main(argv=None) -> None:
  """Measures (or, with ``--render``, only re-renders) and writes the result."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="smollm2-135m")
  p.add_argument("--step", type=float, default=0.125)
  p.add_argument("--every", type=int, default=3, help="measure layers 0, every, 2·every, …")
  p.add_argument("--render", action="store_true", help="only re-render the .md from its JSON")
  args = p.parse_args(argv)
  stem = f"curvature_bases_{args.model}"
  if args.render:
    _harness.render_results(stem, render)
    return
  _harness.write_results(stem, measure(args.model, args.step, args.every), render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
