"""Does ``f_θ`` pay for its bits? Residual-only vs ``f_θ + residual`` at matched TOTAL bits, through the pipeline.

For each model, transform in front (none / per-matrix input-side PCA / randomized Hadamard), ``f_θ`` capacity and
quantizer step, this runs :func:`macjax.pipeline.job.run_compress` (the artifact is written, restored from disk and
decoded bit-exactly; every byte is counted, θ included) and scores the decoded model once per point with one
:class:`macjax.evaluate.Evaluator` built on the reference. Per point it records

* ``block_bpw``: bits/weight of the transformer-block matrices, all parts (codes + tables + scales + transform
  state + θ), and the parts themselves; ``rate_bpw`` = ``block_bpw`` minus the transform state (see below);
* ``theta_bpw``: θ's stored bits over the block weights; ``explained``: energy explained per family (and per layer);
* ``rel_err``: block relative weight error ``sqrt(Σ‖W−Ŵ‖²)/sqrt(Σ‖W‖²)``;
* quality: MiniLM ``cosine_mean`` of sentence embeddings (distortion ``1 − cosine``); SmolLM2 ``kl`` and
  ``perplexity_rel_change`` on held-out text.

Rate axis. A per-matrix PCA basis is a d×d float16 matrix: on MiniLM's 384-wide inputs it costs ~16 bits per weight
of q/k/v/o/up (4 of down) — more than the weights themselves. That cost is *identical* with and without ``f_θ``,
so the f_θ-vs-residual comparison inside one transform is unaffected by it; curves are compared on ``rate_bpw``
(block bits without the transform state), and ``block_bpw`` (with it) is reported alongside. Hadamard's state is a
seed (0 bits).

Matched bits. The pipeline quantizes the residual with the steps ``W`` itself would get, so at one step both
variants have nearly the same distortion and ``f_θ`` shows up as rate. To compare properly anyway, for each
``f_θ`` point the residual-only curve of the same transform is interpolated (linear in bits vs ``log`` distortion)
at the ``f_θ`` point's distortion: ``Δbits = rate(f_θ) − rate_residual_only(same distortion)``; negative means
``f_θ`` saves bits. Done for weight error and for model quality (``1 − cosine`` or ``kl``). Points outside the
residual-only curve's range are extrapolated from its two nearest points and marked.

Run (2 shared cores; MiniLM ~1 min/point, SmolLM2 ~3-4 min/point):

    .venv/bin/python benchmarks/fit_rd.py --model minilm-l6              # full MiniLM grid
    .venv/bin/python benchmarks/fit_rd.py --model smollm2-135m           # reduced grid
    .venv/bin/python benchmarks/fit_rd.py --model minilm-l6 --quick      # smoke run (2 points, 100 fit steps)
    .venv/bin/python benchmarks/fit_rd.py --model minilm-l6 --render [--structure]  # re-render from the JSON
                                                                     # (--structure: add the mean-structure stats)
"""

from __future__ import annotations

import argparse
import math
import pathlib
import platform
import tempfile
import time

import jax
import numpy as np

from macjax import artifact
from macjax.evaluate import Evaluator
from macjax.load import load_model
from macjax.pipeline import compression
from macjax.pipeline.config import from_dict
from macjax.pipeline.job import run_compress
from macjax.pipeline import rd

import _harness

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

TRANSFORMS = {
    "none": [],
    "pca-in": [{"name": "pca", "side": "input", "scope": "matrix"}],
    "hadamard-in": [{"name": "hadamard", "side": "input"}],
}


def fit_variants(model: str, steps: int) -> dict[str, dict | None]:
  """``{name: fit section or None}``: the ``f_θ`` capacities compared with residual-only (``None``).

  * ``elem-w16``: element-wise MLP over Fourier features of (layer, row, col), width 16 — small θ, all families.
  * ``row-emb-w16``: a tile of a whole row (a common divisor of all families' widths) predicted from a learned
    per-layer and per-row embedding — the low-rank-like model, all families.
  * ``up-colmean``: only the ``up`` family (whose per-(layer, column) means hold ~2.6% of its energy on MiniLM),
    element-wise with learned layer and column embeddings and no row information — a column-mean-like model.
  * ``up-colmean-tiny``: the same with a 2-wide column embedding, width 8, one hidden layer: θ sized to what a
    shared column-mean vector is worth (~0.004 bits per block weight on MiniLM at the Gaussian estimate).
  * ``gate-colmean-tiny`` (LLaMA only): the same on ``gate`` — on SmolLM2 the family with column-mean structure is
    ``gate`` (the SiLU branch's input), not ``up``.
  """
  tile = 384 if model == "minilm-l6" else 192  # divides every family's cols (MiniLM 384/1536, SmolLM2 576/1536)
  common = dict(depth=2, theta_dtype="float16", steps=steps, lr=1e-2, chunk=min(250, steps))
  return {
      "residual-only": None,
      "elem-w16": {"roles": [], "options": dict(common, width=16, n_fourier=8, tile=1, batch=4096)},
      "row-emb-w16": {"roles": [], "options": dict(common, width=16, n_fourier=8, tile=tile, layer_embed=4,
                                                     row_embed=16, batch=256)},
      "up-colmean": {"roles": ["up"], "options": dict(common, width=16, n_fourier=4, tile=1, layer_embed=4,
                                                       col_embed=8, batch=4096)},
      "up-colmean-tiny": {"roles": ["up"], "options": dict(common, width=8, depth=1, n_fourier=2, tile=1,
                                                            layer_embed=2, col_embed=2, batch=4096)},
      "gate-colmean-tiny": {"roles": ["gate"], "options": dict(common, width=8, depth=1, n_fourier=2, tile=1,
                                                              layer_embed=2, col_embed=2, batch=4096)},
  }


def grid(model: str, quick: bool) -> tuple[list[float], list[str], list[str], int]:
  """(steps/RMS, transforms, fit variants, fit steps) for a model; the SmolLM2 grid is reduced (cost)."""
  if quick:
    return [0.5, 0.3], ["none"], ["residual-only", "up-colmean"], 100
  if model == "minilm-l6":
    return [0.5, 0.3, 0.18, 0.1], ["none", "pca-in"], ["residual-only", "elem-w16", "row-emb-w16", "up-colmean"], 1500
  return [0.3, 0.18], ["none"], ["residual-only", "up-colmean"], 1000


def config_for(step: float, transform: str, fit: dict | None):
  """The pipeline config of one point: block matrices quantized (uniform, per-row step), everything else fp32."""
  d = {"quantize": {"method": "uniform", "step": step, "group_size": 0},
       "embeddings": {"treatment": "float32"},
       "coding": {"model": "histogram"},
       "evaluate": {"enabled": False},
       "transform": [dict(t) for t in TRANSFORMS[transform]]}
  if fit is not None:
    d["fit"] = {"enabled": True, "roles": list(fit["roles"]), "options": dict(fit["options"])}
  return from_dict(d)


def run_point(source: str, reference, evaluator: Evaluator, step: float, transform: str, variant: str,
              fit: dict | None, work: pathlib.Path) -> dict:
  """Compresses, decodes from disk and scores one point; returns its record."""
  t0 = time.perf_counter()
  out = work / f"{transform}_{variant}_{step}"
  report = run_compress(source, config_for(step, transform, fit), out, overwrite=True)
  t_compress = time.perf_counter() - t0
  decoded = compression.decompress(*artifact.load(out))
  quality = evaluator(decoded)
  a = report["artifact"]
  parts = a["block_bits_per_weight_parts"]
  rec = {
      "transform": transform, "variant": variant, "step": step,
      "fit_roles": (fit["roles"] or "all") if fit else None,
      "fit_options": fit["options"] if fit else None,
      "block_bpw": a["block_bits_per_weight"],
      "rate_bpw": a["block_bits_per_weight"] - parts.get("transform", 0.0),
      "parts_bpw": parts,
      "theta_bpw": parts.get("theta", 0.0),
      "bits_per_param": a["bits_per_param"],
      "rel_err": report["weight_error"]["block"],
      "fit": {role: {"explained": f["explained_energy"], "per_layer": f["explained_energy_per_layer"],
                     "theta_bpw_family": f["theta_bits_per_weight"],
                     "residual_bpw_family": f["residual_bits_per_weight"]}
              for role, f in a.get("fit", {}).items()},
      "quality": {k: v for k, v in quality.items() if isinstance(v, (int, float))},
      "seconds": {"compress": t_compress, "total": time.perf_counter() - t0,
                  **{k: round(v, 2) for k, v in report["timings"].items()}},
  }
  return rec


def distortion(rec: dict, metric: str) -> float:
  """The distortion a curve is interpolated on: weight error, ``1 − cosine`` or ``kl``."""
  if metric == "rel_err":
    return rec["rel_err"]
  if metric == "1-cos":
    return 1.0 - rec["quality"]["cosine_mean"]
  return rec["quality"]["kl"]


def rate_at(curve: list[dict], metric: str, d: float) -> tuple[float, bool]:
  """Rate of a curve at distortion ``d`` (linear in ``log d``, extended beyond the measured range); (rate,
  extrapolated?), ``(nan, True)`` when it cannot be said."""
  bits, extra = rd.bits_at_distortion([(max(distortion(r, metric), 1e-12), r["rate_bpw"]) for r in curve],
                                      max(d, 1e-12), extrapolate=True)
  return (float("nan"), True) if bits is None else (bits, extra)


def compare(rows: list[dict], metrics: list[str]) -> list[dict]:
  """Δbits of every f_θ point against the residual-only curve of the same transform, per distortion metric."""
  out = []
  for r in rows:
    if r["variant"] == "residual-only":
      continue
    base = [b for b in rows if b["transform"] == r["transform"] and b["variant"] == "residual-only"]
    if len(base) < 2:
      continue
    c = {"transform": r["transform"], "variant": r["variant"], "step": r["step"], "rate_bpw": r["rate_bpw"],
         "theta_bpw": r["theta_bpw"]}
    same_step = [b for b in base if b["step"] == r["step"]]
    if same_step:
      c["delta_same_step"] = r["rate_bpw"] - same_step[0]["rate_bpw"]
    for m in metrics:
      rate, extra = rate_at(base, m, distortion(r, m))
      c[f"delta_{m}"] = r["rate_bpw"] - rate
      c[f"extrapolated_{m}"] = extra
    out.append(c)
  return out


def summarize(comparisons: list[dict], metrics: list[str]) -> list[dict]:
  """Mean Δbits per (transform, variant) over its interpolated (not extrapolated) points."""
  keys = sorted({(c["transform"], c["variant"]) for c in comparisons})
  out = []
  for t, v in keys:
    cs = [c for c in comparisons if c["transform"] == t and c["variant"] == v]
    s = {"transform": t, "variant": v, "theta_bpw": float(np.mean([c["theta_bpw"] for c in cs]))}
    for m in metrics:
      vals = [c[f"delta_{m}"] for c in cs if not c[f"extrapolated_{m}"]]
      s[f"mean_delta_{m}"] = float(np.mean(vals)) if vals else float("nan")
      s[f"n_{m}"] = len(vals)
    out.append(s)
  return out


def _pca_basis(W: np.ndarray) -> np.ndarray:
  """Eigenvectors of ``WᵀW``, eigenvalues descending, each signed so that its largest-magnitude entry is positive."""
  V = np.linalg.eigh(W.T @ W)[1][:, ::-1]
  return V * np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])])[None, :]


def structure(model_name: str, transforms: list[str]) -> dict:
  """Mean structure of each family in the coordinates ``f_θ`` sees (no fit): what a mean model could explain.

  Per family and coordinates (``none``; ``pca-in``: each matrix times the eigenvectors of its own ``WᵀW`` with
  the sign convention of the pipeline's ``pca(side="input", source="weight")``): its share of the block weights, and the energy fractions in
  per-(layer, row) means, per-(layer, column) means and column means shared by all layers, with the net bits/weight
  of explicit float16 column-mean models (``−½ log2(1 − e)`` minus their cost; > 0 pays). ``f_θ`` predicts a
  conditional mean from (layer, row, column): these bound what its simplest structure can find.
  """
  from macjax.fit import gaussian_rate_gain  # pylint: disable=g-import-not-at-top
  model = load_model(model_name)
  roles = sorted({m.role for m in model.layout.matrices}, key=["q", "k", "v", "o", "gate", "up", "down"].index)
  total = sum(int(np.prod(model.params[m.name].shape)) for m in model.layout.matrices)
  out = {}
  for t in [t for t in transforms if t in ("none", "pca-in")]:
    for role in roles:
      mats = [np.asarray(model.params[m.name], np.float64) for m in model.layout.by_role(role)]
      if t == "pca-in":
        mats = [W @ _pca_basis(W) for W in mats]
      W = np.stack(mats)
      energy = np.sum(W ** 2)
      col = float(np.sum(W.mean(axis=1) ** 2) * W.shape[1] / energy)
      shared = float(np.sum(W.mean(axis=(0, 1)) ** 2) * W[..., 0].size / energy)
      out.setdefault(t, {})[role] = {
          "share_of_block_weights": W.size / total,
          "row_mean_energy": float(np.sum(W.mean(axis=2) ** 2) * W.shape[2] / energy),
          "col_mean_energy": col,
          "col_mean_shared_energy": shared,
          "col_mean_net_bpw": float(gaussian_rate_gain(col)) - 16 * W.shape[0] * W.shape[2] / W.size,
          "col_mean_shared_net_bpw": float(gaussian_rate_gain(shared)) - 16 * W.shape[2] / W.size,
      }
  return out


def predicted_gain(rec: dict, struct: dict) -> float | None:
  """High-rate Gaussian prediction of the codes saved by a point's fits, bits per block weight:
  ``Σ_f share_f · (−½ log2(1 − explained_f))``."""
  shares = struct.get(rec["transform"]) or struct.get("none")
  if not shares or not rec["fit"]:
    return None
  return float(sum(shares[r]["share_of_block_weights"] * -0.5 * math.log2(max(1.0 - f["explained"], 1e-12))
                   for r, f in rec["fit"].items()))


def quality_columns(model: str) -> tuple[list[str], list[str]]:
  if model == "minilm-l6":
    return ["rel_err", "1-cos"], ["cosine_mean"]
  return ["rel_err", "kl"], ["kl", "perplexity_rel_change"]


READING = {
    # Written after reading the results; the numbers it cites are the generated tables' above.
    "minilm-l6": """\
**Where f_θ pays.** Only one configuration pays for its bits: `up-colmean-tiny`, a column-mean-like model of the
`up` family alone with θ sized to what that structure is worth (a 2-wide column embedding, width 8). It saves about
0.002 bits/weight at every rate at equal weight error — real (same sign and size at all four steps) but ~0.05% of
the rate. Every other f_θ costs more than it saves, at every rate: the small element-wise MLP (`elem-w16`) by
~0.006, the same column model with a larger embedding (`up-colmean`) by ~0.002, the row-wise model with embeddings
(`row-emb-w16`) by ~0.13 bits/weight.

**Why: there is almost nothing smooth to explain.** f_θ predicts a conditional *mean* from (layer, row, column).
The mean-structure table shows how little of each family's energy sits in any mean over those coordinates: 0.1–0.6%
for q/k/v/o/down, 2.6% in the per-layer column means of `up` (1.9% shared by all layers — the GELU input's per
input-channel offset). The Gaussian gain of explaining a fraction e of the energy is −½·log2(1 − e) ≈ 0.72·e bits
per family weight, so the best any mean model can buy on MiniLM is ~0.006 bits per block weight, and only on `up`.
A θ larger than that loses whatever it fits. Beyond the means, channel indices are arbitrary labels (any
permutation of hidden units is an equivalent network), so Fourier features of an index carry no information and
the only way to fit more is a lookup: per-row/per-column embeddings — i.e. a low-rank factorization of the stacked
layers. `row-emb-w16` is exactly that: it explains 4–9% of q/k/v/o and ~5% of `up`, which is what a truncated SVD
with the same bits explains (`fit_explained.md`), and the codes it saves (table "codes saved") are a fraction of
its θ. Trained weights are not low-rank enough for a factor to pay when every factor entry is stored in float16.

**Measured savings vs the Gaussian estimate.** The "codes saved" table compares the measured drop in codes+tables+
scales with Σ share·(−½ log2(1 − explained)). The measured saving is consistently ~70–75% of the Gaussian figure, the
same at every rate. The likely reason (not isolated here): the weights are heavy-tailed (kurtosis ~69 on MiniLM's
block matrices, DESIGN.md), and removing a small mean lowers the entropy of a peaked, heavy-tailed distribution less
than that of a Gaussian of the same variance. So the
high-rate formula *over-promises* by ~30%; a budget rule for θ should use the measured figure. Even with the
formula, no f_θ but the tiny column model has a predicted gain above its θ.

**The transform in front.** Per-matrix input-side PCA lowers the residual-only curve itself (fewer code bits and
lower weight error at the same step: energy concentrates in the leading input directions), but its d×d float16
basis costs far more than the weights (`block` column); that trade is the transforms report's subject, not this
one's. For f_θ it changes little: the per-layer column-mean energy is invariant to a rotation of the inputs (by
construction), and for `up` — whose input is the LayerNorm'd residual stream, with similar leading directions in
every layer — the part shared across layers even grows (structure table). The tiny column model explains a little
more of `up` in PCA coordinates, yet saves fewer code bits there and only about breaks even. A plausible reason,
not isolated here: after PCA each `up` row's energy sits in a few leading coefficients, so the per-row step is set
by those, and the mean removed from the many small trailing coefficients (already coded near zero) buys fewer bits. PCA concentrates *variance*, and f_θ is a *mean* model: what alignment
exposes is a scale structure (unequal variances per coefficient) that belongs to the quantizer's step allocation and
the coder's context, not to an additive predictor.

**Model quality.** At equal weight error, f_θ and residual-only points differ in embedding cosine, so the Δ at
equal 1 − cosine scatters widely (from about −0.03 to +0.19 bits, with no trend in rate) and is mostly positive —
f_θ points came out slightly *worse* in quality than their weight error predicts. With one seed this cannot be
separated from the realization of quantization noise at the same distortion (the f_θ residual is rounded on a
different grid than W), so the resolved comparison is the weight-error column; nothing in the quality column
suggests that f_θ buys quality at equal bits.""",
    "smollm2-135m": """\
**f_θ explains nothing on SmolLM2.** Both capacities tried on every family (`elem-w16`, and the column-mean-like
model on `up`) explain ≈0 of the energy; θ is cheap per weight here (30 layers share it: ~0.001 bits/weight) and
still loses exactly its own size at equal weight error. The mean-structure table says why: no family holds more than
~1% of its energy in per-layer column means, and only `gate` (the SiLU branch's input — the counterpart of MiniLM's
GELU-input `up`) has a little that is shared across layers; `up` has none. `gate-colmean-tiny`, sized for that
structure, explains a fraction of it and breaks even at best. The source weights are also the dequantized Q4_1 grid
(blocks of 32 with a scale and a minimum), which already removes per-block offsets.

Quality (KL) at equal weight error scatters by a few hundredths of a bit in either direction, like MiniLM's cosine:
the realization of quantization noise, not f_θ (one seed, 16×256 held-out tokens). The grid is reduced (two rates,
no transform in front) because a SmolLM2 point costs 3–10 minutes on the shared 2-core machine.""",
}


NAMES = {"rel_err": "weight error", "1-cos": "1 − embedding cosine", "kl": "KL"}


def _points(data: dict, qcols: list[str]) -> list[str]:
  """The points table."""
  rows = [[r["transform"], r["variant"], r["step"], f"{r['rate_bpw']:.4f}", f"{r['block_bpw']:.3f}",
           f"{r['theta_bpw']:.4f}", f"{r['parts_bpw'].get('codes', 0):.4f}", f"{r['rel_err']:.5f}",
           *(f"{r['quality'][c]:.5f}" for c in qcols),
           ", ".join(f"{k} {v['explained']:.4f}" for k, v in r["fit"].items()) or "—", f"{r['seconds']['total']:.0f}"]
          for r in data["rows"]]
  return _harness.markdown_table(["transform", "f_θ", "step", "rate", "block", "θ", "codes", "rel. err", *qcols,
                                  "explained energy per family", "s"], rows)


def _deltas(data: dict, metrics: list[str]) -> list[str]:
  """Δbits of every f_θ point, and their means per (transform, f_θ)."""
  L = _harness.markdown_table(
      ["transform", "f_θ", "step", "rate", "θ", "Δ same step", *(f"Δ at equal {NAMES[m]}" for m in metrics)],
      [[c["transform"], c["variant"], c["step"], f"{c['rate_bpw']:.4f}", f"{c['theta_bpw']:.4f}",
        f"{c.get('delta_same_step', float('nan')):+.4f}",
        *(f"{c[f'delta_{m}']:+.4f}{'*' if c[f'extrapolated_{m}'] else ''}" for m in metrics)]
       for c in data["comparisons"]])
  L += ["", "Mean over interpolated points (bits/weight; negative = f_θ pays for itself):", ""]
  return L + _harness.markdown_table(
      ["transform", "f_θ", "θ", *(f"mean Δ at equal {NAMES[m]} (n)" for m in metrics)],
      [[s["transform"], s["variant"], f"{s['theta_bpw']:.4f}",
        *(f"{s[f'mean_delta_{m}']:+.4f} ({s[f'n_{m}']})" for m in metrics)] for s in data["summary"]])


def _explained(rows: list[dict]) -> list[str]:
  """What each f_θ explains per family (mean over its points), or nothing without fits."""
  fams = {}
  for r in rows:
    for role, f in r["fit"].items():
      fams.setdefault((r["transform"], r["variant"]), {}).setdefault(role, []).append(f)
  if not fams:
    return []
  cells = []
  for (t, v), by_role in fams.items():
    for role, fs in by_role.items():
      per = np.array([f["per_layer"] for f in fs])
      cells.append([t, v, role, f"{np.mean([f['explained'] for f in fs]):.4f}",
                    f"{per.min():+.4f}…{per.max():+.4f}", f"{np.mean([f['theta_bpw_family'] for f in fs]):.4f}"])
  return ["", "## What f_θ explains (mean over the points' fits; the fit does not depend on the step)", "",
          *_harness.markdown_table(["transform", "f_θ", "family", "explained", "per layer (min…max)",
                                    "θ bits / family weight"], cells)]


def _structure(rows: list[dict], struct: dict) -> list[str]:
  """Codes saved vs the Gaussian prediction per point, and the families' mean structure."""
  saved = []
  for r in rows:
    base = [b for b in rows if b["transform"] == r["transform"] and b["variant"] == "residual-only"
            and b["step"] == r["step"]]
    pred = predicted_gain(r, struct)
    if base and pred is not None:
      codes = (base[0]["rate_bpw"] - base[0]["theta_bpw"]) - (r["rate_bpw"] - r["theta_bpw"])
      saved.append([r["transform"], r["variant"], r["step"], f"{codes:+.4f}", f"{pred:+.4f}", f"{r['theta_bpw']:.4f}"])
  L = ["", "## Why: codes saved vs what the explained energy predicts", "",
       "`codes saved` = residual-only codes+tables+scales minus this point's, same transform and step (θ not "
       "included); `predicted` = Σ_family share · (−½ log2(1 − explained)), the high-rate Gaussian figure; "
       "`θ` = what the fit costs. f_θ pays only where codes saved > θ.", "",
       *_harness.markdown_table(["transform", "f_θ", "step", "codes saved", "predicted", "θ"], saved),
       "", "Mean structure of each family in the coordinates f_θ sees (no fit; energy fractions; `net` = "
       "Gaussian gain − float16 cost of an explicit column-mean model, bits per family weight):", ""]
  return L + _harness.markdown_table(
      ["coordinates", "family", "share of block weights", "row means", "column means",
       "column means shared by layers", "net: column means / shared"],
      [[t, role, f"{x['share_of_block_weights']:.3f}", f"{x['row_mean_energy']:.4f}", f"{x['col_mean_energy']:.4f}",
        f"{x['col_mean_shared_energy']:.4f}", f"{x['col_mean_net_bpw']:+.4f} / {x['col_mean_shared_net_bpw']:+.4f}"]
       for t, by_role in struct.items() for role, x in by_role.items()])


def render(data: dict) -> str:
  """The markdown report of one model's JSON."""
  model = data["model"]
  metrics, qcols = quality_columns(model)
  L = [f"# f_θ rate–distortion on {model}: residual-only vs f_θ + residual at matched total bits", "",
       f"Produced by `benchmarks/fit_rd.py` ({'quick smoke run, ' if data['quick'] else ''}fit steps "
       f"{data['fit_steps']}, lr 0.01, θ float16, seed 0, {data['backend']}, jax {data['jax']}; "
       f"{data['evaluator']}). Block matrices quantized uniform, one step per row (step × row RMS), histogram "
       "entropy coder; the f_θ residual gets the steps W itself would get. Embeddings/LM head and vectors kept in "
       "fp32 (not counted in block bits).", "",
       "`rate` = block bits/weight with θ, codes, tables, scales — without the transform's stored basis; `block` = "
       "with it (a per-matrix PCA basis is d×d float16, the same cost with or without f_θ). `θ` = θ's bits over all "
       "block weights.", "", "## Points", "", *_points(data, qcols),
       "", "## Bits saved (−) or lost (+) by f_θ at equal distortion", "",
       "Each f_θ point against the residual-only curve of the same transform, interpolated at the f_θ point's "
       "distortion (linear in bits vs log distortion; `*` = extrapolated beyond that curve's range). "
       "`same step` = plain rate difference at the same quantizer step.", "", *_deltas(data, metrics)]
  L += _explained(data["rows"])
  if data.get("structure"):
    L += _structure(data["rows"], data["structure"])
  if data.get("missing"):
    L += ["", "## Not run", "", data["missing"]]
  reading = READING.get(model, "")
  if reading:
    L += ["", "## Reading", "", reading]
  return "\n".join(L) + "\n"


def rerender(args, stem: pathlib.Path) -> None:
  """``--render``: the markdown from the JSON; with ``--missing`` / ``--structure`` those are added to the JSON
  first (the measuring run's meta kept)."""
  if not (args.missing or args.structure):
    _harness.render_results(stem, render)
    return
  data = _harness.read_results(stem)
  used = {r["variant"] for r in data["rows"]}  # --append runs each record only their own variants
  data["fit_variants"] = {k: v for k, v in fit_variants(args.model, data["fit_steps"]).items() if k in used}
  if args.missing:
    data["missing"] = args.missing
  if args.structure:
    data["structure"] = structure(args.model, sorted({r["transform"] for r in data["rows"]}))
  _harness.write_results(stem, data, render, meta=False)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="minilm-l6", choices=["minilm-l6", "smollm2-135m"])
  parser.add_argument("--quick", action="store_true", help="smoke run: two steps, residual-only vs up-colmean")
  parser.add_argument("--render", action="store_true", help="only re-render the markdown from the JSON")
  parser.add_argument("--structure", action="store_true", help="with --render: add the families' mean structure")
  parser.add_argument("--steps", default="", help="override the quantizer steps, e.g. 0.5,0.3")
  parser.add_argument("--transforms", default="", help="override the transforms, e.g. none,hadamard-in")
  parser.add_argument("--variants", default="", help="override the f_θ variants")
  parser.add_argument("--fit-steps", type=int, default=0)
  parser.add_argument("--n-seq", type=int, default=16, help="held-out windows for SmolLM2's evaluator")
  parser.add_argument("--append", action="store_true", help="add points to the existing JSON (same model)")
  parser.add_argument("--missing", default="", help="a note of what was not run, shown in the markdown")
  args = parser.parse_args(argv)
  stem = RESULTS / f"fit_rd_{args.model}{'_quick' if args.quick else ''}"
  if args.render:
    rerender(args, stem)
    return
  steps, transforms, variants, fit_steps = grid(args.model, args.quick)
  steps = [float(s) for s in args.steps.split(",")] if args.steps else steps
  transforms = args.transforms.split(",") if args.transforms else transforms
  variants = args.variants.split(",") if args.variants else variants
  fit_steps = args.fit_steps or fit_steps
  fits = fit_variants(args.model, fit_steps)
  reference = load_model(args.model)
  if args.model == "minilm-l6":
    evaluator, ev_note = Evaluator(reference), "embedding cosine on 256 held-out passages"
  else:
    evaluator, ev_note = Evaluator(reference, n_seq=args.n_seq), f"KL/perplexity on {args.n_seq}×256 held-out tokens"
  old = _harness.read_results(stem) if args.append and _harness.paths(stem)[0].exists() else None
  rows = list(old["rows"]) if old else []
  done = {(r["transform"], r["variant"], r["step"]) for r in rows}
  metrics, _ = quality_columns(args.model)
  data = {"benchmark": "fit_rd", "model": args.model, "quick": args.quick, "fit_steps": fit_steps,
          "backend": jax.default_backend(), "jax": jax.__version__, "python": platform.python_version(),
          "evaluator": ev_note, "fit_variants": {k: v for k, v in fits.items() if k in variants},
          "missing": args.missing or (old or {}).get("missing", ""), "rows": rows}
  if old and old.get("structure"):
    data["structure"] = old["structure"]
  with tempfile.TemporaryDirectory(prefix="fit_rd_") as tmp:
    for transform in transforms:
      for variant in variants:
        for step in steps:
          if (transform, variant, step) in done:
            continue
          rec = run_point(args.model, reference, evaluator, step, transform, variant, fits[variant],
                          pathlib.Path(tmp))
          rows.append(rec)
          q = ", ".join(f"{k} {rec['quality'][k]:.5f}" for k in quality_columns(args.model)[1])
          ex = ", ".join(f"{k} {v['explained']:.4f}" for k, v in rec["fit"].items())
          print(f"{transform:11s} {variant:13s} step {step:<5} rate {rec['rate_bpw']:.4f} (θ {rec['theta_bpw']:.4f})"
                f"  err {rec['rel_err']:.5f}  {q}  [{ex}]  {rec['seconds']['total']:.0f} s", flush=True)
          data["comparisons"] = compare(rows, metrics)
          data["summary"] = summarize(data["comparisons"], metrics)
          # after every point: partial results
          _harness.write_results(stem, data, render, argv=argv, script=__file__, quiet=True)
  data["comparisons"] = compare(rows, metrics)
  data["summary"] = summarize(data["comparisons"], metrics)
  _harness.write_results(stem, data, render, argv=argv, script=__file__)

if __name__ == "__main__":
  main()
