"""``macjax`` command line: a thin shell over :mod:`macjax.pipeline.job`.

    macjax compress MODEL [--config FILE] [--set section.key=value ...] [--out DIR] [--overwrite] [--restart]
                    [--no-eval] [--no-verify] [--process-index I|auto --process-count N|auto]
    macjax decompress ARTIFACT --out DIR [--overwrite] [--dtype float32|float16] [--max-shard-mb N]
    macjax info ARTIFACT [--json]
    macjax rd MODEL [--configs default,plain,FILE.toml] [--steps 0.0625,0.125,0.25] [--baselines Q4_0,Q5_0,Q8_0]
              [--peers FILE.json] [--out DIR] [--n-seq N] [--restart]
    macjax analyze MODEL [--scopes identity,hadamard,orthogonal,pca] [--step 0.25] [--error 0.05] [--out DIR]
                   [--no-plots] [--json]

MODEL is an alias (``smollm2-135m``, ``minilm-l6``) or a path (a Hugging Face folder or a ``.gguf`` file).
User errors (:class:`~macjax.errors.MacjaxError`) print one line, ``macjax: error: ...``, and exit with status 2.
A ``compress`` that was interrupted (Ctrl-C, ``kill -9``, a crash) resumes from its last finished layer when the
same command is run again.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Mapping

from macjax.errors import MacjaxError


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="macjax", description="Compress transformer weights in manifold-aligned "
                              "coordinates and measure what it costs.")
  sub = p.add_subparsers(dest="command", required=True)
  c = sub.add_parser("compress", help="compress a model into an artifact and print a report")
  c.add_argument("model", help="alias (smollm2-135m, minilm-l6) or path to a HF folder / .gguf file")
  c.add_argument("--config", default="default",
                 help="a preset (default: the recommended operating point, = configs/default.toml; plain: no "
                      "calibration, = configs/plain.toml) or a TOML pipeline config file")
  c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
  c.add_argument("--out", help="artifact folder to write (default: artifacts/<model name>)")
  c.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
  c.add_argument("--restart", action="store_true",
                 help="discard an unfinished earlier compression into --out instead of resuming it")
  c.add_argument("--no-eval", action="store_true", help="skip the model-quality evaluation")
  c.add_argument("--no-verify", action="store_true",
                 help="skip reading the artifact back and decoding it (no weight errors in the report)")
  c.add_argument("--process-index", default="0",
                 help="this process's index among --process-count processes sharing the work (one per host), or "
                 "'auto': from the launcher's environment (SLURM, Open MPI, PMI, torchrun)")
  c.add_argument("--process-count", default="1",
                 help="processes (on one or many hosts, sharing a filesystem) compressing the same model into --out, "
                 "or 'auto' (as --process-index)")
  c.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
  d = sub.add_parser("decompress", help="decode an artifact into a Hugging Face folder")
  d.add_argument("artifact")
  d.add_argument("--out", required=True, help="folder to write (must not exist, or be empty, unless --overwrite)")
  d.add_argument("--overwrite", action="store_true")
  d.add_argument("--dtype", default="float32", choices=("float32", "float16"))
  d.add_argument("--max-shard-mb", type=int, default=1024, help="the most MiB of tensors per safetensors shard")
  i = sub.add_parser("info", help="print an artifact's bit accounting")
  i.add_argument("artifact")
  i.add_argument("--json", action="store_true")
  r = sub.add_parser("rd", help="rate–distortion sweep: configs over steps and baselines; table, JSON/CSV and a "
                     "PNG plot with the Shannon bound")
  r.add_argument("model", help="alias or path, as for compress")
  r.add_argument("--configs", default="default,plain", help="comma-separated presets or TOML files")
  r.add_argument("--steps", default="0.0625,0.125,0.25", help="comma-separated base steps (relative to row RMS)")
  r.add_argument("--baselines", default="Q4_0,Q5_0,Q8_0",
                 help="comma-separated: GGUF Q4_0 Q4_1 Q5_0 Q5_1 Q8_0, rtn_int8/4/3/2 (groups of 64); '' for none")
  r.add_argument("--peers", help="JSON list of quoted peer points to draw: {name, bits, rel_weight_error / "
                 "perplexity_rel_change / cosine_mean, source}")
  r.add_argument("--out", help="folder for rd.json, rd.csv and rd.png (default: rd/<model name>)")
  r.add_argument("--n-seq", type=int, default=0, help="held-out windows per evaluation (causal LMs; 0: default)")
  r.add_argument("--restart", action="store_true", help="ignore the points of an earlier sweep in --out")
  r.add_argument("--other-domain", action="store_true", help="also measure every point on prose of another domain "
                 "(text no recipe is calibrated on), beside the held-out plays")
  r.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
  a = sub.add_parser("analyze", help="statistics of every block matrix under identity / Hadamard / random "
                     "orthogonal / PCA coordinates: a table, JSON and PNG figures")
  a.add_argument("model", help="alias or path, as for compress")
  a.add_argument("--scopes", default="identity,hadamard,orthogonal,pca",
                 help="comma-separated coordinates among identity, hadamard, orthogonal, pca, pca-group32, learned")
  a.add_argument("--step", type=float, default=0.25, help="code entropy's step, relative to each matrix's std")
  a.add_argument("--error", type=float, default=0.05, help="relative weight error of the Shannon lower bound")
  a.add_argument("--out", help="folder for analysis.json and the figures (default: analysis/<model name>)")
  a.add_argument("--no-plots", action="store_true", help="write the JSON only")
  a.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
  return p


def _default_out(model: str) -> pathlib.Path:
  name = pathlib.Path(model.rstrip("/")).name
  for suffix in (".gguf",):
    name = name.removesuffix(suffix)
  return pathlib.Path("artifacts") / name


#: Environment variables of the common launchers: (index, count), first match wins.
LAUNCHER_ENV = (("SLURM_PROCID", "SLURM_NTASKS"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                ("PMI_RANK", "PMI_SIZE"), ("RANK", "WORLD_SIZE"))


def process_slot(index: str, count: str, environ: Mapping[str, str]) -> tuple[int, int]:
  """``(index, count)`` of this process from ``--process-index/--process-count``: integers, or ``auto`` for the
  launcher's variables (:data:`LAUNCHER_ENV`; one process when none is set).

  Raises:
    ConfigError: not an integer or ``auto``, ``auto`` for one but not the other, or a launcher's values unusable.
  """
  from macjax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  if (index == "auto") != (count == "auto"):
    raise ConfigError("--process-index and --process-count must both be 'auto' or both be numbers")
  if index == "auto":
    found = next(((environ[i], environ[n], f"{i}/{n}") for i, n in LAUNCHER_ENV if i in environ and n in environ),
                 ("0", "1", "no launcher variables"))
    index, count, source = found
  else:
    source = "--process-index/--process-count"
  try:
    return int(index), int(count)
  except ValueError as e:
    raise ConfigError(f"process index {index!r} and count {count!r} (from {source}); expected integers") from e


def _csv(text: str) -> list[str]:
  return [x.strip() for x in text.split(",") if x.strip()]


def _number(text: str) -> float:
  from macjax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    return float(text)
  except ValueError as e:
    raise ConfigError(f"{text!r} is not a number") from e


def _progress():
  from macjax.pipeline.progress import Progress  # pylint: disable=g-import-not-at-top
  return Progress(say=lambda msg: print(f"[macjax] {msg}", file=sys.stderr, flush=True), bars=True)


def _run(args) -> int:
  # Imported here so that `macjax --help` and argument errors answer at once.
  from macjax.pipeline import config as config_lib, job, report  # pylint: disable=g-import-not-at-top
  if args.command == "compress":
    cfg = config_lib.load_or_preset(args.config)
    cfg = config_lib.with_overrides(cfg, args.set)
    out = pathlib.Path(args.out) if args.out else _default_out(args.model)
    index, count = process_slot(args.process_index, args.process_count, os.environ)
    rep = job.run_compress(args.model, cfg, out, overwrite=args.overwrite, restart=args.restart,
                           evaluate=not args.no_eval, verify=not args.no_verify, progress=_progress(),
                           process=(index, count))
    if index > 0:
      print(f"process {index} of {count}: wrote {len(rep['units_written'])} units into {out}; process 0 finishes "
            "the artifact")
      return 0
    print(json.dumps(rep, indent=1) if args.json else report.format_report(rep))
    if not args.json:
      print(f"report written to {rep['report_path']}")
  elif args.command == "decompress":
    path = job.run_decompress(args.artifact, args.out, overwrite=args.overwrite, dtype=args.dtype,
                              max_shard_bytes=args.max_shard_mb << 20, progress=_progress())
    print(f"wrote Hugging Face folder {path}")
  elif args.command == "rd":
    out = pathlib.Path(args.out) if args.out else pathlib.Path("rd") / _default_out(args.model).name
    result = job.run_rd(args.model, out, configs=_csv(args.configs), steps=[_number(x) for x in _csv(args.steps)],
                        baselines=_csv(args.baselines), peers_file=args.peers, restart=args.restart,
                        eval_sizes={"n_seq": args.n_seq} if args.n_seq else None, progress=_progress(),
                        other_domain=args.other_domain)
    print(json.dumps(result, indent=1) if args.json else result["table"])
    print(f"wrote {out / 'rd.json'}, {out / 'rd.csv'} and {result['figure']}")
  elif args.command == "analyze":
    out = pathlib.Path(args.out) if args.out else pathlib.Path("analysis") / _default_out(args.model).name
    result = job.run_analyze(args.model, out, scopes=tuple(_csv(args.scopes)),
                             step_rel=args.step, rel_error=args.error, plots=not args.no_plots, progress=_progress())
    print(json.dumps(result, indent=1) if args.json else result["table"])
    print(f"wrote {out / 'analysis.json'}" + (f" and {len(result['figures'])} figures" if result["figures"] else ""))
  elif args.command == "info":
    rep = job.run_info(args.artifact)
    print(json.dumps(rep, indent=1) if args.json else report.format_report(rep))
  return 0


def _drop_closed_loop_callbacks(default=sys.unraisablehook):
  """An unraisable-exception hook that drops TensorStore's late callbacks into the event loop Orbax closed after
  a failed read or write (``RuntimeError: Event loop is closed``: noise, the failure itself is reported as one
  error line); everything else goes to ``default``."""
  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      default(unraisable)
  return hook


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  sys.unraisablehook = _drop_closed_loop_callbacks()
  try:
    return _run(args)
  except MacjaxError as e:
    print(f"macjax: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("macjax: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
