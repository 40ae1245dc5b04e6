"""What every benchmark shares: one writer of results and one markdown table.

A benchmark measures, puts its numbers in a JSON-able dict and renders its markdown *from that dict*;
:func:`write_results` writes both under ``benchmarks/results/`` with the same run metadata for every script
(:func:`run_meta`: the command that regenerates the result, date, commit, machine and load). A script's
``--render`` re-renders its markdown from the committed JSON with :func:`render_results`, measuring nothing, so
``tests/test_benchmarks.py`` can check that no table drifts from its data.

The leading underscore keeps this helper out of ``benchmarks/run.py``'s index of benchmarks.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
from typing import Any, Callable, Iterable, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MISSING = "–"  # how a table shows a cell with no value (None)
_BLANKS = ("", "-", "–", "—", "n/a")  # cells that say nothing about a column's kind
_NUMBER = re.compile(r"[<>≈≥≤]? ?[+\-−]?\d[\d,]*(\.\d*)?([eE][+\-]?\d+)?( ?%)?\*?")

Render = Callable[[dict], str]


def cell(value: Any) -> str:
  """A table cell's text: ``None`` as :data:`MISSING`, ``|`` escaped, anything else as ``str``."""
  if value is None:
    return MISSING
  return str(value).replace("|", "\\|")


def _numeric(text: str) -> bool:
  return bool(_NUMBER.fullmatch(text.strip()))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
  """A GitHub markdown table as lines (no blank line around it).

  ``align``: one of ``l``/``r``/``c`` per column; by default a column is right-aligned when every cell that says
  something is a number (``12``, ``-0.5``, ``4,000``, ``+1.2 %``, ``3.1*``) and left-aligned otherwise.

  >>> print("\\n".join(markdown_table(["method", "bits"], [["uniform", "2.834"], ["gptq", None]])))
  | method | bits |
  |---|---:|
  | uniform | 2.834 |
  | gptq | – |
  """
  body = [[cell(v) for v in r] for r in rows]
  if any(len(r) != len(header) for r in body):
    raise ValueError(f"every row needs {len(header)} cells: {[len(r) for r in body]}")
  if align is None:
    align = "".join("r" if (cells := [r[j] for r in body if r[j].strip() not in _BLANKS + (MISSING,)])
                    and all(_numeric(c) for c in cells) else "l" for j in range(len(header)))
  if len(align) != len(header) or set(align) - set("lrc"):
    raise ValueError(f"align {align!r}: one of l, r, c per column ({len(header)})")
  rule = {"l": "---", "r": "---:", "c": ":---:"}
  lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
  return lines + ["| " + " | ".join(r) + " |" for r in body]


def _git_commit() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def command(argv: Sequence[str] | None = None, script: str | os.PathLike | None = None) -> str:
  """The command line that regenerates a result, from the repository root: ``benchmarks/<script>.py ARGS``.

  ``argv`` are the script's arguments (default ``sys.argv[1:]``), ``script`` its file (default ``sys.argv[0]``).
  """
  path = pathlib.Path(script or sys.argv[0]).resolve()
  try:
    rel = str(path.relative_to(ROOT))
  except ValueError:
    rel = str(path)
  return shlex.join([rel, *(sys.argv[1:] if argv is None else argv)])


def run_meta(argv: Sequence[str] | None = None, script: str | os.PathLike | None = None) -> dict:
  """How a result was made: command, UTC date, git commit, machine, CPUs, load average, Python and jax versions."""
  return {"command": command(argv, script),
          "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
          "commit": _git_commit(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
          "loadavg": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
          "jax": _version("jax")}


def paths(stem: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
  """``(JSON, markdown)`` paths of a result: a bare stem lives in ``benchmarks/results/``; a path (with a folder,
  or ending in ``.json``) is taken as given."""
  p = pathlib.Path(stem)
  name = p.name[:-len(".json")] if p.name.endswith(".json") else p.name
  folder = p.parent if (p.parent != pathlib.Path(".") or p.is_absolute()) else RESULTS
  return folder / f"{name}.json", folder / f"{name}.md"


def read_results(stem: str | os.PathLike) -> Any:
  """The JSON of a result (as :func:`paths` finds it)."""
  return json.loads(paths(stem)[0].read_text())


def write_results(stem: str | os.PathLike, data: Any, markdown: str | Render | None = None, *,
                  argv: Sequence[str] | None = None, script: str | os.PathLike | None = None, meta: bool = True,
                  quiet: bool = False) -> Any:
  """Writes a result's JSON (indent 1, trailing newline) and its markdown, and prints the markdown.

  Args:
    stem: the result's name under ``benchmarks/results/`` (or a path, see :func:`paths`).
    data: what was measured. A dict gets a ``"meta"`` entry: :func:`run_meta` merged over the ``"meta"`` it
      already has (the script's own run details are kept, the shared ones refreshed).
    markdown: the markdown text, or a function rendering it from the written data (meta included), so that the
      markdown is a function of the JSON; None: no markdown file.
    argv, script: for :func:`run_meta` (the script's arguments and file).
    meta: False writes ``data`` as it is (a re-render that adds derived data keeps the measuring run's meta).
    quiet: print nothing (incremental writes after every point).
  Returns:
    The data as written.
  """
  json_path, md_path = paths(stem)
  json_path.parent.mkdir(parents=True, exist_ok=True)
  if meta and isinstance(data, dict):
    data = {**data, "meta": {**data.get("meta", {}), **run_meta(argv, script)}}
  json_path.write_text(json.dumps(data, indent=1) + "\n")
  if markdown is not None:
    text = markdown(data) if callable(markdown) else markdown
    md_path.write_text(text if text.endswith("\n") else text + "\n")
    if not quiet:
      print(text)
  if not quiet:
    print(f"wrote {json_path}" + (f" and {md_path}" if markdown is not None else ""))
  return data


def render_results(stem: str | os.PathLike, render: Render, *, quiet: bool = False) -> str:
  """Re-renders a result's markdown from its JSON (nothing measured, the JSON untouched); returns the text."""
  text = render(read_results(stem))
  text = text if text.endswith("\n") else text + "\n"
  md_path = paths(stem)[1]
  md_path.write_text(text)
  if not quiet:
    print(text, end="")
    print(f"wrote {md_path}")
  return text
