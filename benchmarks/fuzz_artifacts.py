"""Fuzzing summary: damaged and hostile copies of an artifact, read as ``macjax info`` / ``decompress`` would.

Compresses a tiny family fixture (default: ``tests/fixtures/families/qwen2``) with the default config, then runs
:func:`macjax.artifact.fuzz.run` (each read in a child process) and writes the outcome counts by kind of damage.
Any ``crash``, ``hang`` or ``wrong_weights`` is a defect and is listed.

    .venv/bin/python benchmarks/fuzz_artifacts.py [--cases 1500] [--seed 0] [--model PATH]
        # writes benchmarks/results/fuzz_artifacts.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import tempfile

from macjax.artifact import fuzz
from macjax.load import load_model
from macjax.pipeline import compression, config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=str(ROOT / "tests" / "fixtures" / "families" / "qwen2"))
  p.add_argument("--cases", type=int, default=1500)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  logging.disable(logging.CRITICAL)
  with tempfile.TemporaryDirectory() as tmp:
    compressed = compression.compress(load_model(args.model), config_lib.from_dict({"evaluate": {"enabled": False}}))
    path = pathlib.Path(tmp) / "art"
    compression.save(path, compressed)
    summary = fuzz.run(path, cases=args.cases, seed=args.seed, isolate=True)
  summary["model"] = os.path.relpath(args.model, ROOT)
  summary["loadavg"] = os.getloadavg()
  print(f"{summary['cases']} cases in {summary['seconds']:.0f} s: {summary['outcomes']}")
  for kind, counts in summary["by_kind"].items():
    print(f"  {kind:10s} {counts}")
  for d in summary["defects"]:
    print(f"  DEFECT case {d['index']} {d['kind']}: {d['detail']} -> {d['outcome']}: {d['message']}")
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / "fuzz_artifacts.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
  main()
