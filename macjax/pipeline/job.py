"""The main jobs, end to end: what ``macjax compress / decompress / info`` run.

``run_compress``: load → compress → save the artifact → restore it from disk and decode (verifying every tensor is
bit-identical to the encoder's reconstruction) → evaluate the decoded model against the reference → report.
The report's figures come from the artifact as written on disk, not from in-memory estimates.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Callable

import numpy as np

from macjax import artifact
from macjax.load import load_model
from macjax.pipeline import codec
from macjax.pipeline.config import PipelineConfig
from macjax.pipeline.report import artifact_report


def weight_errors(reference: dict[str, np.ndarray], decoded: dict[str, np.ndarray], manifest: dict) -> dict:
  """Aggregate relative weight error ``sqrt(Σ‖W−Ŵ‖²) / sqrt(Σ‖W‖²)`` over the block matrices and over the other
  2-D tensors, plus the per-tensor ``‖W−Ŵ‖/‖W‖`` of the block matrices."""
  from macjax.evaluate import metrics  # pylint: disable=g-import-not-at-top
  out = {"per_tensor": {}}
  for group in ("block", "other"):
    names = [n for n, r in manifest["tensors"].items() if r.get("group") == group]  # ("fit" records hold θ only)
    if not names:
      out[group] = None
      continue
    out[group] = float(metrics.aggregate_rel_weight_error(reference, decoded, names))
    if group == "block":
      out["per_tensor"] = {n: float(metrics.rel_weight_error(reference[n], decoded[n])) for n in names}
  return out


def run_compress(source: str, config: PipelineConfig, out: str | os.PathLike, *, overwrite: bool = False,
                 evaluate: bool | None = None, progress: Callable[[str], None] | None = None) -> dict:
  """Compresses ``source`` into the artifact folder ``out`` and returns the report.

  The report (also written as JSON to ``<out>.report.json``) holds the artifact's bit accounting (see
  :func:`~macjax.pipeline.report.artifact_report`), relative weight errors, model quality before and after
  (unless ``evaluate`` is false or ``config.evaluate.enabled`` is off), and wall time per stage.
  """
  say = progress or (lambda _: None)
  out = pathlib.Path(out)
  timings: dict[str, float] = {}
  t0 = time.perf_counter()
  say(f"load {source}")
  model = load_model(source)
  timings["load"] = time.perf_counter() - t0

  compressed = codec.compress(model, config, progress=say)
  timings.update(compressed.timings)

  t0 = time.perf_counter()
  say(f"save {out}")
  artifact.save(out, compressed.buckets, compressed.manifest, assets=compressed.assets, overwrite=overwrite)
  timings["save"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  say("restore from disk and decode (checking bit-exactness)")
  buckets, manifest = artifact.load(out)
  decoded = codec.decompress(buckets, manifest, verify=True)
  timings["restore+decode"] = time.perf_counter() - t0

  report = {"path": str(out), "artifact": artifact_report(out, manifest)}
  # Weight errors against what was compressed (the rewritten model, if a rewrite ran); quality against the original.
  report["weight_error"] = weight_errors(compressed.reference, decoded, manifest)
  report["rewrite"] = manifest.get("rewrite")
  do_eval = config.evaluate.enabled if evaluate is None else evaluate
  if do_eval:
    from macjax.evaluate import quality  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    say("evaluate reference vs decoded model on held-out text")
    sizes = {k: v for k, v in (("n_seq", config.evaluate.n_seq), ("seq_len", config.evaluate.seq_len),
                                ("n_sentences", config.evaluate.n_sentences)) if v}
    report["quality"] = quality(model, decoded, **sizes)
    timings["evaluate"] = time.perf_counter() - t0
  report["timings"] = timings
  report["config"] = manifest["config"]
  report_path = out.with_name(out.name + ".report.json")
  report_path.write_text(json.dumps(report, indent=1))
  report["report_path"] = str(report_path)
  return report


def run_decompress(path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False,
                   dtype: str = "float32") -> pathlib.Path:
  """Decodes an artifact and writes a Hugging Face folder that ``transformers`` loads."""
  from macjax.export import export_hf  # pylint: disable=g-import-not-at-top
  buckets, manifest = artifact.load(path)
  params = codec.decompress(buckets, manifest, verify=True)
  layout = codec.layout_from_json(manifest["layout"])
  return export_hf(params, layout, artifact.load_assets(path, manifest), out_dir, dtype=dtype, overwrite=overwrite)


def run_info(path: str | os.PathLike) -> dict:
  """The bit accounting of an artifact, from its manifest and files (arrays are not decoded)."""
  manifest = artifact.read_manifest(path)
  return {"path": str(path), "artifact": artifact_report(path, manifest), "config": manifest["config"]}
