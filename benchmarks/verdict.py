"""The seed notes' claims, each marked confirmed / refuted / inconclusive with the numbers the benchmarks measured.

Reads the committed results (nothing is measured here; each row names the file its numbers come from and the
command that regenerates that file is in ``benchmarks/RESULTS.md``) and renders one table for both default models:

* **rotation flattens** — kurtosis and max/RMS of the block matrices under a randomized Hadamard against the
  identity (``macjax analyze``; size-weighted over the block matrices);
* **rotation lowers the rate** — entropy of the codes at the same relative step (orthogonal: the same weight error);
* **alignment concentrates energy** — top-1 % energy of per-matrix PCA coordinates against the identity;
* **alignment lowers the rate** — code entropy under PCA against the identity, and the same net of the PCA basis'
  stored bits (float16);
* **curvature alignment lowers the rate at equal model-output distortion** — GPTQ curvature column steps against
  the default recipe (``macjax rd``; KL for SmolLM2, 1 − cosine for MiniLM; interpolated points only), and, for
  SmolLM2, at equal layer-output error (``curvature_bases.py``);
* **the model's output curvature steers GPTQ better than the layer's** — GPTQ on Fisher-weighted Hessians
  (``configs/fisher.toml``) against ``XᵀX``: on SmolLM2 without allocation (``output_hessians.py``: alone, and with
  curvature column steps against curvature steps alone), on MiniLM through the pipeline (``macjax rd``);
* **f_θ predicts what it is asked to** — the best ``f_θ`` variant's mean Δbits at equal model quality
  (``fit_rd.py``; negative = it pays for its θ), confirmed only with at least two interpolated points.

Every Δ is "variant − reference" in bits per block weight: negative means fewer bits.

    .venv/bin/python benchmarks/verdict.py            # writes benchmarks/results/verdict.{json,md}
    .venv/bin/python benchmarks/verdict.py --render   # re-renders the .md from the JSON
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import _harness
import curvature_bases
from macjax.pipeline import rd

MODELS = ("minilm-l6", "smollm2-135m")


def _read(rel: str) -> dict | None:
  path = _harness.RESULTS / rel
  return json.loads(path.read_text()) if path.exists() else None


def _mean(analysis: dict, scope: str, key: str) -> float:
  """Size-weighted mean of a per-matrix statistic over the block matrices."""
  rows = [(np.prod(m["shape"]), m[scope][key]) for m in analysis["matrices"] if m.get(scope)]
  return float(sum(n * v for n, v in rows) / sum(n for n, _ in rows))


def _row(model, claim, measure, numbers, verdict, source, delta=None) -> dict:
  """One claim on one model; ``delta``: its headline Δbits/weight (None where the claim is not about a rate)."""
  return {"model": model, "claim": claim, "measure": measure, "numbers": numbers, "verdict": verdict,
          "source": source, "delta_bits": delta}


def analyze_rows(model: str) -> list[dict]:
  """Rotation and alignment claims from ``macjax analyze``'s per-matrix statistics."""
  src = f"analyze/{model}/analysis.json"
  a = _read(src)
  if a is None:
    return [_row(model, "rotation / alignment", "—", "no analysis committed", "not measured", src)]
  m = {(s, k): _mean(a, s, k) for s in ("identity", "hadamard", "pca")
       for k in ("kurtosis", "max_to_rms", "top_energy_ratio", "code_entropy", "state_bits_per_weight")}
  flat = m["hadamard", "kurtosis"] < m["identity", "kurtosis"] and m["hadamard", "max_to_rms"] < m[
      "identity", "max_to_rms"]
  d_rot = m["hadamard", "code_entropy"] - m["identity", "code_entropy"]
  d_pca = m["pca", "code_entropy"] - m["identity", "code_entropy"]
  net = d_pca + m["pca", "state_bits_per_weight"]
  step = f"step {a['step_rel']} × RMS"
  return [
      _row(model, "rotation flattens", "kurtosis, max/RMS: identity → Hadamard",
           f"{m['identity', 'kurtosis']:.2f} → {m['hadamard', 'kurtosis']:.2f}, "
           f"{m['identity', 'max_to_rms']:.1f} → {m['hadamard', 'max_to_rms']:.1f}",
           "confirmed" if flat else "refuted", src),
      _row(model, "rotation lowers the rate", f"code entropy Hadamard − identity ({step})", f"{d_rot:+.3f} b/w",
           "confirmed" if d_rot < 0 else "refuted", src, d_rot),
      _row(model, "alignment concentrates energy", "top-1 % energy: identity → PCA",
           f"{m['identity', 'top_energy_ratio']:.3f} → {m['pca', 'top_energy_ratio']:.3f}",
           "confirmed" if m["pca", "top_energy_ratio"] > m["identity", "top_energy_ratio"] else "refuted", src),
      _row(model, "alignment lowers the rate", f"code entropy PCA − identity ({step}); net of each matrix's float16 basis",
           f"{d_pca:+.3f} b/w; net {net:+.3f} b/w",
           "confirmed" if net < 0 else ("refuted (entropy drops, the basis costs more)" if d_pca < 0 else "refuted"),
           src, d_pca),
  ]


def curvature_rows(model: str) -> list[dict]:
  """Curvature claims: model-output distortion (``macjax rd``) and, where measured, layer-output error."""
  src = f"rd/curvature_{model}/rd.json"
  r = _read(src)
  rows = []
  if r is not None:
    s = [x for x in rd.savings(r, "default") if x["saving"] is not None and x["series"] == "curvature"]
    ppl = [x["saving"] for x in rd.savings(r, "default", metric="perplexity_rel_change")  # the cross-check
           if x["saving"] is not None and x["series"] == "curvature"]
    nums = ", ".join(f"{-x['saving']:+.3f} b/w at {x['metric']} {x['distortion']:.4f}" for x in s) or "no point"
    if ppl:
      nums += "; at equal perplexity " + ", ".join(f"{-v:+.3f}" for v in ppl)
    verdict = ("inconclusive" if not s else "mixed" if not (all(x["saving"] > 0 for x in s)
                                                            or all(x["saving"] <= 0 for x in s))
               else "refuted" if s[0]["saving"] <= 0 else
               "inconclusive (perplexity disagrees)" if any(v <= 0 for v in ppl) else "confirmed (small)")
    rows.append(_row(model, "curvature alignment lowers the rate at equal model-output distortion",
                     "Δbits of curvature column steps vs default (side bits counted)", nums, verdict, src,
                     -float(np.mean([x["saving"] for x in s])) if s else None))
  layer = _read(f"curvature_bases_{model}.json")
  if layer is not None:
    summ = curvature_bases.summarize(layer)
    d = summ["identity/curvature"]["all"]["bits"] - summ["identity/one"]["all"]["bits"]
    best = min((v["all"]["bits"], k) for k, v in summ.items())
    rows.append(_row(model, "curvature alignment lowers the rate at equal layer-output error",
                     "curvature column steps vs one step; best absorbed basis × steps",
                     f"{d:+.3f} b/w; best {best[1]} {best[0] - summ['identity/one']['all']['bits']:+.3f} b/w "
                     "(RMSNorm gains folded, every 3rd layer, one step per matrix)",
                     "confirmed" if d < 0 else "refuted", f"curvature_bases_{model}.json", d))
  return rows


def _savings_text(result: dict, reference: str, series: str, prefix: str = "") -> tuple[str, list[float]]:
  """``series`` against ``reference`` at equal model-output distortion: the text and the savings (b/w)."""
  s = [x for x in rd.savings(result, reference, prefix) if x["saving"] is not None and x["series"] == series]
  return (", ".join(f"{-x['saving']:+.3f} b/w at {x['metric']} {x['distortion']:.4f}" for x in s) or "no point",
          [x["saving"] for x in s])


def _small_verdict(savings: list[float]) -> str:
  if not savings:
    return "inconclusive"
  if all(v > 0 for v in savings):
    return "confirmed" if min(savings) >= 0.1 else "confirmed (small)"
  return "refuted" if all(v <= 0 for v in savings) else "mixed"


def fisher_rows(model: str) -> list[dict]:
  """The model-output metric inside GPTQ (Fisher-weighted Hessians): against the layer's ``XᵀX`` with no
  allocation and against GPTQ's own curvature steps (``output_hessians.py``, SmolLM2), and through the pipeline
  against the default (``macjax rd``)."""
  claim = "the model's output curvature steers GPTQ better than the layer's (Fisher-weighted Hessians)"
  if model == "smollm2-135m":
    src = "output_hessians.json"
    r = _read(src)
    if r is None:
      return []
    vs_inputs, a = _savings_text(r, "inputs", "fisher")
    vs_curv, b = _savings_text(r, "curvature", "fisher+curvature")
    pipeline = _read("rd/domains_smollm2-135m/rd.json")
    tail = ""
    if pipeline is not None:
      ref = _same_calibration_reference(pipeline)
      tail = (f"; through the pipeline vs {ref}: " + _savings_text(pipeline, ref, "fisher")[0] + " (prose: "
              + _savings_text(pipeline, ref, "fisher", rd.OTHER)[0] + ")")
    verdict = _small_verdict(b)
    if a and all(v > 0 for v in a) and verdict != "confirmed":
      verdict = f"{verdict} (beats XᵀX alone, not GPTQ's curvature steps)"
    return [_row(model, claim, "no allocation: fisher vs XᵀX; fisher+curvature steps vs XᵀX+curvature steps",
                 f"{vs_inputs}; {vs_curv}{tail}", verdict, src, -float(np.mean(b)) if b else None)]
  src = f"rd/curvature_{model}/rd.json"
  r = _read(src)
  if r is None or not any(p["series"] == "fisher" for p in r["points"]):
    return []
  ref = _same_calibration_reference(r)
  text, s = _savings_text(r, ref, "fisher")
  return [_row(model, claim, f"Δbits of configs/fisher.toml vs {ref}", text, _small_verdict(s), src,
               -float(np.mean(s)) if s else None)]


def tuning_rows(model: str) -> list[dict]:
  """The learned transform under the layer's output objective, in its absorbed diagonal form: each layer's vectors
  (norms, biases) refit after its matrices are quantized (``benchmarks/configs/aligned_tuned.toml`` against
  ``configs/aligned.toml`` in the aligned sweep)."""
  src = f"rd/aligned_{model}/rd.json"
  r = _read(src)
  if r is None or not any(p["series"] == "aligned_tuned" for p in r["points"]):
    return []
  text, s = _savings_text(r, "aligned", "aligned_tuned")
  return [_row(model, "a transform learned under the output objective pays (diagonal, absorbed: vectors refit)",
               "Δbits of aligned + vector refit vs aligned", text, _small_verdict(s), src,
               -float(np.mean(s)) if s else None)]


def _same_calibration_reference(result: dict) -> str:
  """The default calibrated on the whole model, as the Fisher pass is, where the sweep has it (else the default,
  which calibrates layer by layer: then the comparison changes two things)."""
  return ("default_whole_model" if any(p["series"] == "default_whole_model" for p in result["points"])
          else "default")


def fit_rows(model: str) -> list[dict]:
  """The f_θ claim from ``fit_rd.py``'s mean Δbits at equal model quality."""
  src = f"fit_rd_{model}.json"
  f = _read(src)
  if f is None:
    return []
  metric = "kl" if any("mean_delta_kl" in s for s in f["summary"]) else "1-cos"
  have = [s for s in f["summary"] if s.get(f"mean_delta_{metric}") is not None]
  if not have:
    return [_row(model, "f_θ predicts what it is asked to (and pays)", "—", "no interpolated point", "not measured",
                 src)]
  best = min(have, key=lambda s: s[f"mean_delta_{metric}"])
  n, d = best[f"n_{metric}"], best[f"mean_delta_{metric}"]
  verdict = "inconclusive (one point)" if n < 2 and d < 0 else "confirmed" if d < 0 else "refuted"
  return [_row(model, "f_θ predicts what it is asked to (and pays)",
               f"best f_θ variant's mean Δbits at equal {metric} (negative: pays)",
               f"{best['transform']}/{best['variant']}: {d:+.3f} b/w over {n} point(s), θ {best['theta_bpw']:.4f} b/w",
               verdict, src, d)]


def measure() -> dict:
  """Every claim's row on both default models, from the committed results."""
  rows = []
  for model in MODELS:
    rows += (analyze_rows(model) + curvature_rows(model) + fisher_rows(model) + tuning_rows(model)
             + fit_rows(model))
  return {"rows": rows}


def render(data: dict) -> str:
  """The verdict table."""
  lines = ["# The seed notes' claims on the default models", "",
           "Generated by `benchmarks/verdict.py` from the committed results named in the last column (each "
           "regenerated by the command `benchmarks/RESULTS.md` gives for it). b/w = bits per block weight.", "",
           *_harness.markdown_table(["model", "claim", "measure", "numbers", "verdict", "source"],
                                    [[r[k] for k in ("model", "claim", "measure", "numbers", "verdict", "source")]
                                     for r in data["rows"]], align="llllll"), ""]
  return "\n".join(lines)


def main(argv=None) -> None:
  """Writes (or, with ``--render``, re-renders) ``benchmarks/results/verdict.{json,md}``."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--render", action="store_true", help="only re-render verdict.md from its JSON")
  args = p.parse_args(argv)
  if args.render:
    _harness.render_results("verdict", render)
    return
  _harness.write_results("verdict", measure(), render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
