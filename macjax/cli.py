"""``macjax`` command line: a thin shell over :mod:`macjax.pipeline.job`.

    macjax compress MODEL [--config FILE] [--set section.key=value ...] [--out DIR] [--overwrite] [--restart]
                    [--no-eval] [--no-verify] [--process-index I --process-count N]
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
import pathlib
import sys

from macjax.errors import MacjaxError


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="macjax", description="Compress transformer weights in manifold-aligned "
                              "coordinates and measure what it costs.")
  sub = p.add_subparsers(dest="command", required=True)
  c = sub.add_parser("compress", help="compress a model into an artifact and print a report")
  c.add_argument("model", help="alias (smollm2-135m, minilm-l6) or path to a HF folder / .gguf file")
  c.add_argument("--config", help="TOML pipeline config (default: the built-in default, = configs/default.toml)")
  c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
  c.add_argument("--out", help="artifact folder to write (default: artifacts/<model name>)")
  c.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
  c.add_argument("--restart", action="store_true",
                 help="discard an unfinished earlier compression into --out instead of resuming it")
  c.add_argument("--no-eval", action="store_true", help="skip the model-quality evaluation")
  c.add_argument("--no-verify", action="store_true",
                 help="skip reading the artifact back and decoding it (no weight errors in the report)")
  c.add_argument("--process-index", type=int, default=0,
                 help="this process's index among --process-count processes sharing the work (one per host)")
  c.add_argument("--process-count", type=int, default=1,
                 help="processes (on one or many hosts, sharing a filesystem) compressing the same model into --out")
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


def _progress():
  from macjax.pipeline.progress import Progress  # pylint: disable=g-import-not-at-top
  return Progress(say=lambda msg: print(f"[macjax] {msg}", file=sys.stderr, flush=True), bars=True)


def _run(args) -> int:
  # Imported here so that `macjax --help` and argument errors answer at once.
  from macjax.pipeline import config as config_lib, job, report  # pylint: disable=g-import-not-at-top
  if args.command == "compress":
    cfg = config_lib.load(args.config) if args.config else config_lib.PipelineConfig()
    cfg = config_lib.with_overrides(cfg, args.set)
    out = pathlib.Path(args.out) if args.out else _default_out(args.model)
    rep = job.run_compress(args.model, cfg, out, overwrite=args.overwrite, restart=args.restart,
                           evaluate=not args.no_eval, verify=not args.no_verify, progress=_progress(),
                           process=(args.process_index, args.process_count))
    if args.process_index > 0:
      print(f"process {args.process_index} of {args.process_count}: wrote {len(rep['units_written'])} units into "
            f"{out}; process 0 finishes the artifact")
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


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
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
