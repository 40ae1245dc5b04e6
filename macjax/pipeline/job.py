"""The main jobs, end to end: what ``macjax compress / decompress / info`` run.

``run_compress``: open the model (weights stay on disk) → plan → encode one unit at a time into a resumable partial
artifact → finish it → read it back from disk one unit at a time and decode it (verifying every tensor is
bit-identical to the encoder's reconstruction, and measuring the weight error against the source) → evaluate the
decoded model against the reference → report. The report's figures come from the artifact as written on disk, not
from in-memory estimates. Killed and started again with the same arguments, it resumes from the last finished unit.

``run_decompress``: decode an artifact one unit at a time into a sharded Hugging Face folder.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import resource
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

import macjax
from macjax import artifact
from macjax.errors import ConfigError, ModelLoadError
from macjax.load import open_model
from macjax.load.digest import source_fingerprint
from macjax.load.loader import resolve_source
from macjax.pipeline import compression
from macjax.pipeline.config import PipelineConfig, identity_dict
from macjax.pipeline.plan import calibrates_sequentially, needs_calibration, streams
from macjax.pipeline.progress import Progress
from macjax.pipeline.report import artifact_report, source_report


def peak_rss_bytes() -> int:
  """This process's peak resident memory so far (``getrusage``; kilobytes on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == "darwin" else peak * 1024)


class WeightErrors:
  """Accumulates ``Σ‖W−Ŵ‖²`` and ``Σ‖W‖²`` per group (float64) as tensors stream by, and each block matrix's
  ``‖W−Ŵ‖/‖W‖``: the aggregate relative weight error ``sqrt(Σ‖W−Ŵ‖²)/sqrt(Σ‖W‖²)`` without holding the model."""

  def __init__(self):
    self.sums: dict[str, list[float]] = {}
    self.per_tensor: dict[str, float] = {}

  def add(self, name: str, group: str, reference: np.ndarray, decoded: np.ndarray) -> None:
    ref = np.asarray(reference, np.float64)
    err = float(np.sum(np.square(ref - np.asarray(decoded, np.float64))))
    energy = float(np.sum(np.square(ref)))
    s = self.sums.setdefault(group, [0.0, 0.0])
    s[0] += err
    s[1] += energy
    if group == "block":
      self.per_tensor[name] = float(np.sqrt(err / energy)) if energy else 0.0

  def result(self) -> dict:
    out: dict[str, Any] = {"per_tensor": dict(self.per_tensor)}
    for group in ("block", "other"):
      s = self.sums.get(group)
      out[group] = float(np.sqrt(s[0] / s[1])) if s and s[1] else None
    return out


def weight_errors(reference, decoded: dict[str, np.ndarray], manifest: dict) -> dict:
  """Aggregate relative weight error ``sqrt(Σ‖W−Ŵ‖²)/sqrt(Σ‖W‖²)`` over the block matrices and over the other
  2-D tensors, plus the per-tensor ``‖W−Ŵ‖/‖W‖`` of the block matrices (models in memory)."""
  errors = WeightErrors()
  for name, rec in manifest["tensors"].items():
    if rec.get("group") in ("block", "other"):
      errors.add(name, rec["group"], reference[name], decoded[name])
  return errors.result()


def fingerprint(source: str, config: PipelineConfig) -> dict:
  """What a resumed compression must find unchanged: the source files, the config, the macjax version."""
  return {"macjax_version": macjax.__version__, "config": identity_dict(config),
          "source": source_fingerprint(resolve_source(source))}


class _Stages:
  """Wall time, throughput and peak memory per stage of a job."""

  def __init__(self, params: int):
    self.params = params
    self.timings: dict[str, float] = {}
    self.table: dict[str, dict] = {}

  def record(self, name: str, seconds: float) -> None:
    self.timings[name] = seconds
    self.table[name] = {"seconds": seconds, "params_per_s": self.params / seconds if seconds > 0 else None,
                        "peak_rss_bytes": peak_rss_bytes()}


def _check_processes(config: PipelineConfig, index: int, count: int) -> None:
  if not 0 <= index < count:
    raise ConfigError(f"process index {index} of {count} processes; expected 0 <= index < count")
  if count > 1 and calibrates_sequentially(config):
    raise ConfigError("compress: sequential calibration runs layer after layer, so it cannot be split across "
                      f"{count} processes; run one process, or a config without calibration (--config plain)")
  if count > 1 and not streams(config):
    raise ConfigError("compress: this config makes a whole-model pass first ([rewrite], whole-model calibration, "
                      "role-shared transforms, [fit] or [allocation]); every process would recompute it, and hosts "
                      "whose arithmetic differs would mix two plans in one artifact: run one process")


def _evaluate(model, decoded: dict, config: PipelineConfig, progress: Progress) -> dict:
  """The report's ``quality`` (held-out plays) and ``quality_prose`` (another domain; when the prose text is too
  short for the evaluation sizes asked, ``quality_prose_error`` says so instead: the artifact is already written)."""
  from macjax.evaluate import quality  # pylint: disable=g-import-not-at-top
  progress.say("evaluate reference vs decoded model on held-out text")
  sizes = {k: v for k, v in (("n_seq", config.evaluate.n_seq), ("seq_len", config.evaluate.seq_len),
                              ("n_sentences", config.evaluate.n_sentences)) if v}
  out = {"quality": quality(model, decoded, **sizes)}
  if config.evaluate.other_domain:
    progress.say("evaluate on text of another domain (prose)")
    try:
      out["quality_prose"] = quality(model, decoded, **sizes, split="prose")
    except ConfigError as e:
      out["quality_prose_error"] = str(e)
  return out


def run_compress(source: str, config: PipelineConfig, out: str | os.PathLike, *, overwrite: bool = False,
                 restart: bool = False, evaluate: bool | None = None, verify: bool = True,
                 progress: Progress | Callable[[str], None] | None = None,
                 devices: Sequence[Any] | None = None, process: tuple[int, int] = (0, 1)) -> dict:
  """Compresses ``source`` into the artifact folder ``out`` and returns the report.

  The report (also written as JSON to ``<out>.report.json``) holds the artifact's bit accounting (see
  :func:`~macjax.pipeline.report.artifact_report`), relative weight errors (when ``verify``), model quality before
  and after (unless ``evaluate`` is false or ``config.evaluate.enabled`` is off), the device count, and wall time,
  params/s and peak resident memory per stage.

  Args:
    restart: discard an unfinished earlier run into ``out`` instead of resuming it (a run with another source,
      config or macjax version is refused unless this is set).
    verify: read the artifact back from disk, decode it and check every tensor (and measure the weight error).
    devices: where to run (default ``jax.devices()``).
    process: ``(index, count)`` of this process among ``count`` processes (on one or many hosts) compressing the
      same model into the same ``out`` on a filesystem they all see: each encodes every ``count``-th unit and reads
      only those tensors; process 0 holds the lock, waits for the others' units, finishes the artifact and
      reports; the others return after their units (a report of what they wrote).
  """
  import jax  # pylint: disable=g-import-not-at-top
  progress = progress if isinstance(progress, Progress) else Progress(say=progress)
  out = pathlib.Path(out)
  index, count = process
  _check_processes(config, index, count)
  t0 = time.perf_counter()
  progress.say(f"open {source}")
  model = open_model(source)
  do_eval = config.evaluate.enabled if evaluate is None else evaluate
  if model.tokenizer_error and (do_eval or needs_calibration(config)):
    raise ModelLoadError(f"{model.tokenizer_error}; evaluation and calibration need the tokenizer: run with "
                         "--no-eval and a config without calibration (--config plain)")
  if not streams(config):
    progress.say("this config makes a pass over the whole model first ([rewrite], whole-model calibration, "
                 "role-shared transforms, [fit] or [allocation]) and holds what those stages need of it (several "
                 "times the float32 model); for a model larger than memory use a config that streams "
                 "(--config plain, or GPTQ without [allocation])")
  stages = _Stages(model.num_params)
  writer = artifact.ArtifactWriter(out, fingerprint(source, config), overwrite=overwrite, restart=restart,
                                   helper=index > 0, processes=count)
  stages.record("open", time.perf_counter() - t0)
  try:
    plan, written = _encode(model, config, writer, stages, progress, devices, process)
  finally:
    writer.close()
  if index > 0:
    return {"path": str(out), "process": [index, count], "timings": stages.timings, "stages": stages.table,
            "units_written": written}
  manifest = artifact.read_manifest(out)
  report: dict[str, Any] = {"path": str(out), "source": source_report(model),
                            "artifact": artifact_report(out, manifest), "processes": count,
                            "devices": len(devices) if devices is not None else jax.device_count()}
  decoded = {} if do_eval else None
  if verify or do_eval:
    report["weight_error"] = _read_back(out, manifest, plan, stages, progress, decoded)
  report["rewrite"] = manifest.get("rewrite")
  if do_eval:
    t0 = time.perf_counter()
    report.update(_evaluate(model, decoded, config, progress))
    stages.record("evaluate", time.perf_counter() - t0)
  report.update(timings=stages.timings, stages=stages.table, peak_rss_bytes=peak_rss_bytes(),
                config=manifest["config"])
  report_path = out.with_name(out.name + ".report.json")
  report_path.write_text(json.dumps(report, indent=1))
  report["report_path"] = str(report_path)
  return report


def _encode(model, config: PipelineConfig, writer, stages: _Stages, progress: Progress, devices,
            process: tuple[int, int]):
  """Encodes this process's units into ``writer``; process 0 then waits for the others' and finishes the
  artifact. Returns the plan and the units this process wrote."""
  if writer.resumed:
    progress.say(f"resuming the unfinished compression in {writer.partial}")
  before = set(writer.done_units())
  records, plan, timings = compression.encode_units(model, config, writer, devices=devices, progress=progress,
                                                    process=process)
  for name, seconds in timings.items():
    stages.record(name, seconds)
  written = sorted(set(writer.done_units()) - before)
  index, count = process
  if index > 0:
    return plan, written
  if count > 1:
    t0 = time.perf_counter()
    progress.say(f"wait for the units of processes 1–{count - 1}")
    writer.wait_for(compression.unit_names(model, plan))
    records = {n: r for rec in writer.done_units().values() for n, r in rec["tensors"].items()}
    stages.record("wait", time.perf_counter() - t0)
  t0 = time.perf_counter()
  progress.say(f"save {writer.path}")
  writer.finish(compression.make_manifest(model, config, plan, records), assets=model.tokenizer_files)
  stages.record("save", time.perf_counter() - t0)
  return plan, written


def _read_back(out: pathlib.Path, manifest: dict, plan, stages: _Stages, progress: Progress,
               decoded: dict | None) -> dict:
  """Restores the artifact from disk unit by unit, decodes and verifies every tensor, and measures the weight
  errors against what was compressed (the rewritten model, if a rewrite ran); keeps the tensors in ``decoded``
  when it is a dict (for the evaluation)."""
  t0 = time.perf_counter()
  progress.say("restore from disk and decode (checking bit-exactness)")
  errors = WeightErrors()
  groups = {n: r.get("group") for n, r in manifest["tensors"].items()}
  units = compression.iter_decompress(manifest, functools.partial(artifact.load_unit, out, manifest), verify=True)
  for _, tensors in progress.bar(units, desc="verify", unit="unit"):
    for name, W in tensors.items():
      errors.add(name, groups[name], plan.model.params[name], W)
      if decoded is not None:
        decoded[name] = W
  stages.record("restore+decode", time.perf_counter() - t0)
  return errors.result()


def run_decompress(path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False,
                   dtype: str = "float32", max_shard_bytes: int | None = None,
                   progress: Progress | None = None) -> pathlib.Path:
  """Decodes an artifact one unit at a time into a Hugging Face folder (sharded safetensors + index, config,
  tokenizer) that ``transformers`` loads; the whole decoded model is never in memory."""
  from macjax.export import export_hf_stream  # pylint: disable=g-import-not-at-top
  progress = progress or Progress()
  manifest = artifact.read_manifest(path)
  layout = compression.layout_from_json(manifest["layout"])
  assets = artifact.load_assets(path, manifest)
  units = compression.iter_decompress(manifest, functools.partial(artifact.load_unit, path, manifest), verify=True)
  tensors = (item for _, unit in progress.bar(units, desc="decompress", unit="unit") for item in unit.items())
  kwargs = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
  return export_hf_stream(tensors, layout, assets, out_dir, dtype=dtype, overwrite=overwrite, **kwargs)


def run_info(path: str | os.PathLike) -> dict:
  """The bit accounting of an artifact, from its manifest and files (arrays are not decoded)."""
  manifest = artifact.read_manifest(path)
  return {"path": str(path), "artifact": artifact_report(path, manifest), "config": manifest["config"]}


def run_analyze(source: str, out: str | os.PathLike, *, scopes: Sequence[str] = ("identity", "hadamard",
                                                                                 "orthogonal", "pca"),
                step_rel: float = 0.25, rel_error: float = 0.05, plots: bool = True,
                progress: Progress | Callable[[str], None] | None = None) -> dict:
  """The rotation-vs-alignment analysis of ``source`` (:mod:`macjax.diagnose.analyze`): writes
  ``out/analysis.json`` and, with ``plots``, the PNG figures; returns the result with ``table`` (the text table)
  and ``figures`` (paths) added."""
  from macjax.diagnose import analyze as analysis  # pylint: disable=g-import-not-at-top
  progress = progress if isinstance(progress, Progress) else Progress(say=progress)
  analysis.check(scopes, step_rel, rel_error)
  progress.say(f"open {source}")
  model = open_model(source)
  result = analysis.analyze(model, scopes=scopes, step_rel=step_rel, rel_error=rel_error,
                            progress=lambda it: progress.bar(list(it), desc="matrices", unit="matrix"))
  out = pathlib.Path(out)
  try:
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    figures = [str(p) for p in analysis.plot(result, out)] if plots else []
  except OSError as e:
    raise ConfigError(f"analyze: cannot write into {out} ({e})") from e
  return {**result, "table": analysis.format_table(result), "figures": figures}


def _read_peers(path: str | os.PathLike | None) -> list[dict]:
  """Quoted peer points from a JSON file: a list of ``{"name": str, "bits": number, "rel_weight_error" /
  "perplexity_rel_change" / "cosine_mean": number, "source": str}`` (figures measured elsewhere)."""
  if path is None:
    return []
  try:
    peers = json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError) as e:
    raise ConfigError(f"rd: cannot read the peers file {path} ({e})") from e
  numbers = ("bits", "rel_weight_error", "perplexity_rel_change", "cosine_mean")
  for i, p in enumerate(peers if isinstance(peers, list) else [None]):
    if not (isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("bits"), (int, float))
            and all(isinstance(p[k], (int, float)) for k in numbers if k in p)):
      raise ConfigError(f"rd: peers file {path}: entry {i} must be {{'name': str, 'bits': number, ...}}, got {p!r}")
  return peers


def run_rd(source: str, out: str | os.PathLike, *, configs: Sequence[str] = ("default", "plain"),
           steps: Sequence[float] = (0.0625, 0.125, 0.25), baselines: Sequence[str] = ("Q4_0", "Q5_0", "Q8_0"),
           peers_file: str | os.PathLike | None = None, eval_sizes: dict | None = None, restart: bool = False,
           progress: Progress | Callable[[str], None] | None = None, other_domain: bool = False) -> dict:
  """A rate–distortion sweep of ``source`` (:mod:`macjax.pipeline.rd`): writes ``out/rd.json``, ``rd.csv`` and
  ``rd.png`` and returns the result with ``table`` and ``figure`` added. ``configs`` are preset names or TOML files;
  a sweep started again with the same arguments resumes; ``other_domain`` also measures every point on prose of
  another domain (:func:`macjax.pipeline.rd.sweep`) and adds its savings table."""
  from macjax.load import load_model  # pylint: disable=g-import-not-at-top
  from macjax.pipeline import config as config_lib, rd  # pylint: disable=g-import-not-at-top
  progress = progress if isinstance(progress, Progress) else Progress(say=progress)
  named = {(c if c in config_lib.PRESETS else pathlib.Path(c).stem): config_lib.load_or_preset(c) for c in configs}
  peers = _read_peers(peers_file)
  progress.say(f"open {source}")
  model = load_model(source)
  if model.tokenizer_error:
    raise ModelLoadError(f"{model.tokenizer_error}; a rate–distortion sweep measures the model on text")
  result = rd.sweep(model, named, steps, baselines, out=out, eval_sizes=eval_sizes, restart=restart,
                    progress=lambda it: progress.bar(list(it), desc="rd points", unit="point"),
                    other_domain=other_domain)
  figure = rd.plot(result, out, peers)
  table = rd.format_table(result)
  if len(named) > 1:  # the other configs against the first at equal model-output distortion
    first = next(iter(named))
    table += "\n\n" + rd.format_comparisons(result, first)
  return {**result, "table": table, "figure": str(figure)}
