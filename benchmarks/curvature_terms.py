"""Curvature alignment, first measurement: what each high-rate term could win, per role (the curvature issue's step 1).

For every block matrix ``W (out, in)`` and the Hessian of its layer's output error, ``H = XᵀX`` of its calibration
inputs with 1 % dampening (``H + 0.01·mean(diag H)·I``, as GPTQ uses it), three Gaussian high-rate estimates, in
bits per weight (``½·log2`` of an arithmetic-over-geometric mean ratio; weighted by size over a role's matrices):

* ``gptq_channel_steps``: per-input-channel steps on top of act-order GPTQ — GPTQ weights column ``j``'s error by
  ``1/U_jj²`` (``H⁻¹ = UᵀU``, columns in act order); steps proportional to ``U_jj`` win ``½·log2(AM/GM)`` of those
  weights over one step.
* ``eigen_steps``: one step per eigen-direction of ``H`` against one step for all, ``½·log2(AM/GM)`` of H's
  eigenvalues (what quantizing in H's eigenbasis with curvature-set steps wins over plain rounding there; GPTQ's
  error feedback already captures it: GM(1/U_jj²) = GM(eigenvalues)).
* ``column_correlation``: the coding gain of decorrelating W's input columns (a KLT of ``WᵀW``):
  ``½·(mean_j log2 σ_j² − log2 det(Σ)/in)``, ``Σ = WᵀW/out`` — only for matrices with more rows than columns
  (else Σ is singular or nearly so); this is what a free (absorbed or shared) basis could harvest. A sample
  covariance of ``out`` rows in ``in`` dimensions has a spread of eigenvalues even for uncorrelated columns
  (Marchenko–Pastur), which this estimate counts as gain: ``column_correlation_mp`` subtracts that white-noise
  expectation, ``½·(1 + ((1−c)/c)·ln(1−c))/ln 2`` bits with ``c = in/out``.

A second table compares input-side bases at a finite rate by reverse water-filling: a matrix whose columns have
variances ``σ_j²`` in some basis needs ``mean_j max(0, ½·log2(σ_j²/D))`` bits per weight at distortion ``D`` per
weight (Gaussian columns, a step per coordinate), with ``D = e²·mean(W²)`` at the relative error ``e`` of the
operating point (0.05). Bases: identity; one basis per role shared across layers (the eigenvectors of the role's
pooled ``Σ_l W_lᵀW_l``: free when absorbed, else stored once: its float16 cost per weight is listed); and each
matrix's own KLT (in-sample, so optimistic). Rank-deficient directions cost 0 bits here, as they should.

    .venv/bin/python benchmarks/curvature_terms.py [--models minilm-l6,smollm2-135m]
        # writes benchmarks/results/curvature_terms.{json,md}
    .venv/bin/python benchmarks/curvature_terms.py --render   # re-renders the .md from the JSON
"""

from __future__ import annotations

import argparse

import numpy as np

import _harness

from macjax import calibrate
from macjax.load import load_model

TERMS = ("gptq_channel_steps", "eigen_steps", "column_correlation", "column_correlation_mp")


def _am_gm_bits(x: np.ndarray) -> float:
  """``½·log2(AM/GM)`` of positive values."""
  x = np.asarray(x, np.float64)
  return 0.5 * float(np.log2(np.mean(x)) - np.mean(np.log2(x)))


def terms(W: np.ndarray, xtx: np.ndarray, damp: float = 0.01) -> dict[str, float | None]:
  """The three estimates of the module docstring for one matrix and its inputs' ``XᵀX``."""
  H = np.asarray(xtx, np.float64)
  H = H + damp * float(np.mean(np.diag(H))) * np.eye(H.shape[0])
  order = np.argsort(-np.diag(H))  # act-order: loudest input channels first
  Hp = H[np.ix_(order, order)]
  U = np.linalg.cholesky(np.linalg.inv(Hp)).T  # upper: H⁻¹ = UᵀU
  out = {"gptq_channel_steps": _am_gm_bits(1.0 / np.diag(U) ** 2),
         "eigen_steps": _am_gm_bits(np.clip(np.linalg.eigvalsh(H), 1e-30, None))}
  rows, cols = W.shape
  out["column_correlation"] = out["column_correlation_mp"] = None
  if rows > cols:
    S = np.asarray(W, np.float64).T @ np.asarray(W, np.float64) / rows
    sign, logdet = np.linalg.slogdet(S)
    if sign > 0:
      c = cols / rows
      out["column_correlation"] = 0.5 * float(np.mean(np.log2(np.diag(S))) - logdet / np.log(2) / cols)
      out["column_correlation_mp"] = out["column_correlation"] - float(0.5 * (1 + (1 - c) / c * np.log1p(-c)) / np.log(2))
  return out


def water_filling_bits(variances: np.ndarray, D: float) -> float:
  """Bits per weight of Gaussian columns with these variances at distortion ``D`` per weight (reverse
  water-filling at high rate: coordinates below ``D`` cost nothing)."""
  v = np.asarray(variances, np.float64)
  return float(np.mean(np.maximum(0.0, 0.5 * np.log2(np.maximum(v, 1e-300) / D))))


def basis_rates(Ws: list[np.ndarray], rel_error: float = 0.05) -> dict[str, float]:
  """Mean bits/weight of a role's matrices in the identity basis, a role-shared basis and each matrix's own KLT
  (see the module docstring), and the shared basis' float16 storage per weight."""
  covs = [np.asarray(W, np.float64).T @ np.asarray(W, np.float64) / W.shape[0] for W in Ws]
  _, Q = np.linalg.eigh(sum(covs) / len(covs))
  out = {"identity": 0.0, "shared": 0.0, "own": 0.0}
  for S in covs:
    D = rel_error**2 * float(np.mean(np.diag(S)))
    out["identity"] += water_filling_bits(np.diag(S), D) / len(covs)
    out["shared"] += water_filling_bits(np.einsum("ij,ik,kj->j", Q, S, Q), D) / len(covs)
    out["own"] += water_filling_bits(np.linalg.eigvalsh(S), D) / len(covs)
  n_in = Ws[0].shape[1]
  out["shared_basis_fp16_bits_per_weight"] = 16 * n_in * n_in / sum(W.size for W in Ws)
  return out


def measure(model_name: str) -> dict:
  """Per-role size-weighted means of the three terms (and over all block matrices)."""
  model = load_model(model_name)
  stats = calibrate.input_statistics(model)
  rows = []
  for m in model.layout.matrices:
    W = np.asarray(model.params[m.name], np.float32)
    s = stats[m.name]
    rows.append({"name": m.name, "role": m.role, "layer": m.layer, "size": int(W.size),
                 **terms(W, np.asarray(s.second_moment, np.float64) * s.count)})
  bases = {}
  for role in dict.fromkeys(m.role for m in model.layout.matrices):
    Ws = [np.asarray(model.params[m.name], np.float32) for m in model.layout.matrices if m.role == role]
    bases[role] = basis_rates(Ws)
  summary = {}
  for role in [*dict.fromkeys(r["role"] for r in rows), "all"]:
    group = [r for r in rows if role in ("all", r["role"])]
    summary[role] = {}
    for t in TERMS:
      have = [r for r in group if r[t] is not None]
      summary[role][t] = (sum(r[t] * r["size"] for r in have) / sum(r["size"] for r in have)) if have else None
      summary[role][t + "_share"] = sum(r["size"] for r in have) / sum(r["size"] for r in group)
  return {"model": model_name, "matrices": rows, "by_role": summary, "bases": bases}


def render(data: dict) -> str:
  results = data["results"]
  lines = ["# Curvature alignment: what each high-rate term could win (bits/weight, Gaussian estimates)", "",
           "Generated by `benchmarks/curvature_terms.py` (see its docstring for the three estimates). Calibration: "
           "the pipeline's default whole-model statistics on calibration text; 1 % dampening. "
           "The column-correlation terms cover only matrices with more rows than columns (their share of the role's "
           "weights in brackets); `MP-corrected` subtracts what uncorrelated columns would show (Marchenko–Pastur).",
           "", "| model | role | per-channel steps on GPTQ | eigen-direction steps | column correlation (KLT) | "
           "… MP-corrected |", "|---|---|---|---|---|---|"]
  fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
  for r in results:
    for role, t in r["by_role"].items():
      lines.append(f"| {r['model']} | {role} | {fmt(t['gptq_channel_steps'])} | {fmt(t['eigen_steps'])} | "
                   f"{fmt(t['column_correlation'])} ({t['column_correlation_share']:.0%}) | "
                   f"{fmt(t['column_correlation_mp'])} |")
  lines += ["", "## Input-side bases at relative error 0.05 (reverse water-filling, bits/weight)", "",
            "| model | role | identity | role-shared basis | saves | its float16 cost | each matrix's own KLT "
            "(in-sample) |", "|---|---|---|---|---|---|---|"]
  for r in results:
    for role, b in r["bases"].items():
      lines.append(f"| {r['model']} | {role} | {b['identity']:.3f} | {b['shared']:.3f} | "
                   f"{b['identity'] - b['shared']:.3f} | {b['shared_basis_fp16_bits_per_weight']:.3f} | "
                   f"{b['own']:.3f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="minilm-l6,smollm2-135m")
  p.add_argument("--render", action="store_true", help="only re-render curvature_terms.md from its JSON")
  args = p.parse_args(argv)
  if args.render:
    _harness.render_results("curvature_terms", render)
    return
  results = [measure(m) for m in args.models.split(",")]
  _harness.write_results("curvature_terms", {"results": results}, render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
