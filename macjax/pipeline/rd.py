"""Rate–distortion sweeps: configs over a range of steps and baselines, on one model, measured alike.

Every point runs :func:`macjax.pipeline.compression.compress` (what ``macjax compress`` runs) at a base step
``quantize.step`` and reads its bits off the manifest with the report's own accounting
(:func:`macjax.pipeline.report.counted_bits`: codes + tables + scales + stored states of the block matrices per
block weight, and every counted bit per parameter); the weight error is pooled over the block matrices; the model
metric comes from one :class:`~macjax.evaluate.Evaluator` (perplexity change and KL for causal LMs, embedding
cosine for encoders) on held-out text. Baselines (:mod:`macjax.evaluate.peers`: GGUF formats, round-to-nearest)
quantize the same block matrices and count their nominal bits. The Shannon lower bound of the block matrices
(:func:`macjax.diagnose.shannon_lower_bound`) is drawn on the weight-error axes.

The result is written after every point to ``<out>/rd.json`` (and ``rd.csv``); a sweep started again with the same
arguments skips the points it finds there (same config, step and evaluation sizes), so an interrupted sweep resumes.

Example:
  >>> result = sweep(load_model("minilm-l6"), {"plain": preset("plain")}, [0.0625, 0.125], ["Q4_0"],
  ...                out="rd/minilm-l6")                                                   # doctest: +SKIP
  >>> plot(result, "rd/minilm-l6")                                                      # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import json
import pathlib
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from macjax.errors import ConfigError
from macjax.pipeline import compression
from macjax.pipeline.config import PipelineConfig, identity_dict, with_overrides
from macjax.pipeline.report import counted_bits

QUALITY_KEYS = ("perplexity_rel_change", "perplexity_rel_change_stderr", "kl", "cosine_mean", "cosine_min")


def _digest(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: Key prefix of the model metrics measured on text of another domain (``--other-domain``).
OTHER = "prose_"


def measure_point(model, evaluator, block_names: list[str], params: Mapping[str, Any], row: dict) -> dict:
  """Adds the weight error and the model metrics of ``params`` to ``row``; ``evaluator`` is an
  :class:`~macjax.evaluate.Evaluator` or ``{key prefix: Evaluator}`` (``""``: held-out text, :data:`OTHER`: prose)."""
  from macjax.evaluate import metrics  # pylint: disable=g-import-not-at-top
  row["rel_weight_error"] = float(metrics.aggregate_rel_weight_error(model.params, params, block_names))
  for prefix, ev in (evaluator.items() if isinstance(evaluator, Mapping) else [("", evaluator)]):
    quality = ev(params)
    row.update({prefix + k: float(quality[k]) for k in QUALITY_KEYS if k in quality})
  return row


def config_point(model, evaluator, block_names, name: str, cfg: PipelineConfig, step: float) -> dict:
  """One config at one base step: compress, count, measure."""
  t0 = time.perf_counter()
  cfg = with_overrides(cfg, [f"quantize.step={step}", "evaluate.enabled=false"])
  out = compression.compress(model, cfg)
  row = {"series": name, "step": step, **counted_bits(out.manifest)}
  measure_point(model, evaluator, block_names, out.reconstruction, row)
  row["seconds"] = time.perf_counter() - t0
  return row


def baseline_point(model, evaluator, block_names, name: str) -> dict:
  """One baseline (:mod:`macjax.evaluate.peers`) on the block matrices; the other tensors as they are."""
  from macjax.evaluate import peers  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  params, bits, n = dict(model.params), 0.0, 0
  for b in block_names:
    params[b], bpw = peers.quantize(name, np.asarray(model.params[b], np.float32))
    bits, n = bits + bpw * params[b].size, n + params[b].size
  row = measure_point(model, evaluator, block_names, params,
                      {"series": name, "step": None, "block_bits_per_weight": bits / n, "baseline": True})
  row["seconds"] = time.perf_counter() - t0
  return row


def _load(path: pathlib.Path, meta: dict) -> list[dict]:
  """The points of an earlier sweep with the same model and evaluation sizes (else none)."""
  if not path.is_file():
    return []
  try:
    old = json.loads(path.read_text())
  except (OSError, ValueError):
    return []
  return old.get("points", []) if old.get("meta") == meta else []


def _save(out: pathlib.Path, result: dict) -> None:
  out.mkdir(parents=True, exist_ok=True)
  tmp = out / ".rd.json.tmp"
  tmp.write_text(json.dumps(result, indent=1))
  tmp.replace(out / "rd.json")
  keys = ["series", "step", "block_bits_per_weight", "all_bits_per_param", "rel_weight_error", *QUALITY_KEYS,
          *(OTHER + k for k in QUALITY_KEYS if any(OTHER + k in p for p in result["points"])), "seconds"]
  with open(out / "rd.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(result["points"])


def sweep(model, configs: Mapping[str, PipelineConfig], steps: Sequence[float], baselines: Sequence[str] = (), *,
          out: str | pathlib.Path, eval_sizes: Mapping[str, int] | None = None,
          progress: Callable[[Iterable], Iterable] = lambda it: it, restart: bool = False,
          other_domain: bool = False) -> dict:
  """Measures every config at every base step, and every baseline; writes ``out/rd.json`` after each point.

  Args:
    model: a loaded :class:`~macjax.load.Model` (its params in memory).
    configs: ``{series name: config}``; each point overrides ``quantize.step``.
    steps: base steps (relative to each row's RMS; the allocation, if any, scales them per matrix).
    baselines: names from :data:`macjax.evaluate.peers.NAMES`.
    out: folder of ``rd.json`` / ``rd.csv`` (and the figures of :func:`plot`).
    eval_sizes: ``n_seq`` / ``seq_len`` / ``n_sentences`` of the evaluator (default: its defaults).
    progress: wraps the loop over points (e.g. a bar with an ETA).
    restart: ignore the points of an earlier sweep in ``out``.
    other_domain: also measure each point on prose of another domain (the ``"prose"`` split, which no recipe
      is calibrated on), stored under keys prefixed :data:`OTHER`.

  Returns:
    ``{"meta", "points": [...], "bound": {"rel_weight_error": [...], "bits": [...]}}``.
  """
  from macjax.diagnose import shannon_lower_bound  # pylint: disable=g-import-not-at-top
  from macjax.evaluate import Evaluator, peers  # pylint: disable=g-import-not-at-top
  if not steps and configs:
    raise ConfigError("rd: no steps given for the configs")
  if any(not (s > 0) for s in steps):
    raise ConfigError(f"rd: steps must be > 0, got {list(steps)}")
  for b in baselines:
    for m in model.layout.matrices:
      peers.check(b, m.shape, m.name)
  out = pathlib.Path(out)
  sizes = dict(eval_sizes or {})
  meta = {"model": model.source, "family": model.layout.family, "eval_sizes": sizes}
  if other_domain:
    meta["other_domain"] = "prose"
  done = {} if restart else {p["key"]: p for p in _load(out / "rd.json", meta)}
  block_names = [m.name for m in model.layout.matrices]
  errors = np.geomspace(0.005, 0.5, 40)
  bound = shannon_lower_bound([np.asarray(model.params[n], np.float32) for n in block_names], errors)
  result = {"meta": meta, "points": [], "bound": {"rel_weight_error": errors.tolist(), "bits": bound.tolist()}}
  todo = [(n, s, _digest([identity_dict(c), s])) for n, c in configs.items() for s in steps] + [(b, None, b)
                                                                                          for b in baselines]
  evaluator = None
  for name, step, key in progress(todo):
    if key in done:  # the same config and step under whatever name it has now (a renamed config file)
      result["points"].append({**done[key], "series": name})
      continue
    evaluator = evaluator or ({"": Evaluator(model, **sizes), OTHER: Evaluator(model, **sizes, split="prose")}
                              if other_domain else Evaluator(model, **sizes))
    row = (config_point(model, evaluator, block_names, name, configs[name], step) if step is not None
           else baseline_point(model, evaluator, block_names, name))
    result["points"].append({"key": key, **row})
    _save(out, result)
  _save(out, result)
  return result


def bits_at_quality(points: Sequence[tuple[float, float]], target: float,
                    higher_is_better: bool) -> tuple[str, float | None]:
  """Bits at which a curve of ``(bits, quality)`` points first reaches ``target`` along the rate axis (linear
  between the two points around the crossing). Returns ``(relation, bits)``: ``=`` interpolated, ``<`` already
  reached at the lowest rate measured (its bits), ``>`` not reached at the highest (its bits), ``?`` no points.

  Example:
    >>> bits_at_quality([(3.0, 0.5), (4.0, 1.0)], 0.75, higher_is_better=True)
    ('=', 3.5)
  """
  pts = sorted(points)
  if not pts:
    return "?", None
  good = (lambda v: v >= target) if higher_is_better else (lambda v: v <= target)
  if good(pts[0][1]):
    return "<", pts[0][0]
  for (b0, v0), (b1, v1) in zip(pts, pts[1:]):
    if not good(v0) and good(v1):
      return "=", b0 + (target - v0) * (b1 - b0) / (v1 - v0)
  return ">", pts[-1][0]


def bits_at_distortion(points: Sequence[tuple[float, float]], target: float, *,
                       extrapolate: bool = False) -> tuple[float | None, bool]:
  """Bits of a curve of ``(distortion, bits)`` points at distortion ``target``, linear in ``log(distortion)``
  (rate–distortion curves are close to straight there). Points with a distortion ≤ 0 are ignored. Returns
  ``(bits, extrapolated)``: outside the measured range the end segment is extended when ``extrapolate``, else
  ``(None, False)``; ``(None, False)`` with fewer than two points or a target ≤ 0.

  Example:
    >>> bits_at_distortion([(0.1, 3.0), (0.01, 6.0)], 10 ** -1.5)
    (4.5, False)
  """
  pts = sorted((np.log(d), b) for d, b in points if d is not None and d > 0)
  if len(pts) < 2 or target is None or not target > 0:
    return None, False
  x, xs = float(np.log(target)), [p[0] for p in pts]
  if xs[0] <= x <= xs[-1]:
    return float(np.interp(x, xs, [p[1] for p in pts])), False
  if not extrapolate:
    return None, False
  (x0, b0), (x1, b1) = (pts[0], pts[1]) if x < xs[0] else (pts[-2], pts[-1])
  return (float(b0 + (b1 - b0) * (x - x0) / (x1 - x0)) if x1 != x0 else None), True


def format_table(result: dict) -> str:
  """The sweep's points as a table (with the other-domain columns when the sweep measured them)."""
  other = any(OTHER + "kl" in p or OTHER + "cosine_mean" in p for p in result["points"])
  lines = [f"{'series':<28} {'step':>7} {'block b/w':>9} {'all b/p':>8} {'rel err':>8} {'ppl Δ':>8} {'KL':>7} "
           f"{'cos mean':>9}" + (f" | prose: {'ppl Δ':>8} {'KL':>7} {'cos mean':>9}" if other else "")]
  for p in result["points"]:
    cells = [f"{p['series']:<28}", f"{p['step']:>7.4g}" if p["step"] else f"{'-':>7}",
             f"{p['block_bits_per_weight']:>9.3f}", f"{p.get('all_bits_per_param', float('nan')):>8.3f}",
             f"{p['rel_weight_error']:>8.4f}", *_quality_cells(p, "")]
    lines.append(" ".join(cells) + (" | " + " " * 7 + " ".join(_quality_cells(p, OTHER)) if other else ""))
  return "\n".join(lines)


def _quality_cells(p: dict, prefix: str) -> list[str]:
  ppl, kl, cos = (p.get(prefix + k) for k in ("perplexity_rel_change", "kl", "cosine_mean"))
  return [f"{100 * ppl:>+7.2f}%" if ppl is not None else f"{'':>8}", f"{kl:>7.4f}" if kl is not None else f"{'':>7}",
          f"{cos:>9.5f}" if cos is not None else f"{'':>9}"]


def model_distortion(point: dict, prefix: str = "") -> tuple[str, float | None]:
  """The model-output distortion a comparison is made at: KL (causal LMs) or ``1 − mean cosine`` (encoders)."""
  if prefix + "kl" in point:
    return prefix + "kl", point[prefix + "kl"]
  if prefix + "cosine_mean" in point:
    return prefix + "1-cos", 1.0 - point[prefix + "cosine_mean"]
  return "rel_weight_error", point["rel_weight_error"]


def savings(result: dict, reference: str, prefix: str = "", metric: str | None = None) -> list[dict]:
  """Each config point of the other series against the ``reference`` series at equal model-output distortion
  (KL for causal LMs, ``1 − mean cosine`` for encoders; on the other domain's text with ``prefix=OTHER``): the
  reference's block bits/weight there (:func:`bits_at_distortion`, interpolated only) and the saving
  ``reference − point`` (> 0: fewer bits). ``metric`` compares at another distortion key instead (e.g.
  ``"perplexity_rel_change"``, the cross-check of KL); points without it are left out.

  Example:
    >>> pts = [{"series": "a", "step": 1, "block_bits_per_weight": b, "rel_weight_error": 0.1, "kl": k}
    ...        for b, k in ((4.0, 0.04), (5.0, 0.01))]
    >>> savings({"points": pts + [{**pts[0], "series": "b", "block_bits_per_weight": 4.2, "kl": 0.02}]}, "a")[0]["saving"]
    0.3
  """
  ref = [p for p in result["points"] if p["series"] == reference and p.get("step")]
  out = []
  for p in result["points"]:
    if p["series"] == reference or not p.get("step") or (metric and prefix + metric not in p):
      continue
    distortion = (lambda q: (prefix + metric, q.get(prefix + metric))) if metric else (
        lambda q: model_distortion(q, prefix))
    key, d = distortion(p)
    bits, _ = bits_at_distortion([(distortion(r)[1], r["block_bits_per_weight"]) for r in ref], d)
    out.append({"series": p["series"], "step": p["step"], "metric": key, "distortion": d,
                "bits": p["block_bits_per_weight"], "reference_bits": bits,
                "saving": None if bits is None else round(bits - p["block_bits_per_weight"], 6)})
  return out


def format_savings(rows: list[dict], reference: str) -> str:
  """:func:`savings` as a table (``outside`` where the reference's points do not bracket the distortion)."""
  lines = [f"at equal model-output distortion, against {reference}:",
           f"{'series':<28} {'step':>7} {'metric':>11} {'value':>9} {'block b/w':>9} {'ref b/w':>8} {'saving':>8}"]
  for r in rows:
    ref = f"{r['reference_bits']:>8.3f}" if r["reference_bits"] is not None else f"{'outside':>8}"
    saving = f"{r['saving']:>+8.3f}" if r["saving"] is not None else f"{'':>8}"
    lines.append(f"{r['series']:<28} {r['step']:>7.4g} {r['metric']:>11} {r['distortion']:>9.5f} "
                 f"{r['bits']:>9.3f} {ref} {saving}")
  return "\n".join(lines)


def format_comparisons(result: dict, reference: str) -> str:
  """:func:`format_savings` against ``reference`` on the held-out text and, when the sweep measured it, on the
  other domain's text."""
  text = format_savings(savings(result, reference), reference)
  if any(OTHER + "kl" in p or OTHER + "cosine_mean" in p for p in result["points"]):
    text += "\n\n(other domain, prose) " + format_savings(savings(result, reference, OTHER), reference)
  return text


def _quality_axis(points: list[dict]) -> tuple[str, str, Callable[[dict], float | None]]:
  """The model metric to draw: perplexity change (%) for causal LMs, 1 − mean cosine for encoders."""
  if any("perplexity_rel_change" in p for p in points):
    return "perplexity_rel_change", "perplexity change vs the source (%)", lambda p: (
        100 * p["perplexity_rel_change"] if "perplexity_rel_change" in p else None)
  return "cosine_mean", "1 − mean embedding cosine", lambda p: 1 - p["cosine_mean"] if "cosine_mean" in p else None


def plot(result: dict, out: str | pathlib.Path, peers: Sequence[Mapping[str, Any]] = ()) -> pathlib.Path:
  """Writes ``out/rd.png``: block bits/weight against the relative weight error (with the Shannon lower bound) and
  against the model metric, one line per config, one marker per baseline, hollow markers for ``peers``
  (``{"name", "bits", "rel_weight_error" and/or "perplexity_rel_change" / "cosine_mean", "source"}``: figures
  quoted from elsewhere, labelled so)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  points = result["points"]
  key, label, metric = _quality_axis(points)
  fig, (ax_e, ax_q) = plt.subplots(1, 2, figsize=(13.5, 4.5))
  ax_e.plot(result["bound"]["bits"], result["bound"]["rel_weight_error"], "k--", lw=1,
            label="Shannon lower bound")
  for series in dict.fromkeys(p["series"] for p in points):
    ps = sorted((p for p in points if p["series"] == series), key=lambda p: p["block_bits_per_weight"])
    style = dict(marker="s", ls="none") if ps[0].get("baseline") else dict(marker="o")
    bits = [p["block_bits_per_weight"] for p in ps]
    ax_e.plot(bits, [p["rel_weight_error"] for p in ps], label=series, **style)
    ax_q.plot(bits, [metric(p) for p in ps], label=series, **style)
  for name in dict.fromkeys(p["name"] for p in peers):  # one dashed line of hollow markers per quoted peer
    group = sorted((p for p in peers if p["name"] == name), key=lambda p: p["bits"])
    source = group[0].get("source")
    style = dict(marker="D", mfc="none", ls="--", lw=0.8, label=f"{name} ({source or 'quoted'})")
    with_err = [p for p in group if "rel_weight_error" in p]
    if with_err:
      ax_e.plot([p["bits"] for p in with_err], [p["rel_weight_error"] for p in with_err], **style)
    with_q = [p for p in group if key in p]
    if with_q:
      ax_q.plot([p["bits"] for p in with_q], [metric(p) for p in with_q], **style)
  ax_e.set(xlabel="block matrices: bits/weight (everything counted)", ylabel="relative weight error", yscale="log")
  ax_q.set(xlabel="block matrices: bits/weight (everything counted)", ylabel=label)
  if key == "cosine_mean":
    ax_q.set_yscale("log")
  else:  # changes from −0.2 % to +100 %: linear near 0, logarithmic beyond ±1 %
    ax_q.set_yscale("symlog", linthresh=1.0)
  for ax in (ax_e, ax_q):
    ax.grid(alpha=0.3)
  ax_e.legend(fontsize="small")
  ax_q.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.suptitle(f"{pathlib.Path(str(result['meta']['model'])).name}: rate–distortion")
  fig.tight_layout()
  path = pathlib.Path(out) / "rd.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


__all__ = ["QUALITY_KEYS", "baseline_point", "bits_at_distortion", "bits_at_quality", "config_point", "format_table",
           "plot", "sweep"]
