"""``macjax`` command line: a thin shell over :mod:`macjax.pipeline.job`.

    macjax compress MODEL [--config FILE] [--set section.key=value ...] [--out DIR] [--overwrite] [--restart]
                    [--no-eval] [--no-verify] [--process-index I|auto --process-count N|auto]
    macjax decompress ARTIFACT --out DIR [--overwrite] [--dtype float32|float16] [--max-shard-mb N]
    macjax info ARTIFACT [--json]

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
