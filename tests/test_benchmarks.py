"""benchmarks/: one harness writes every result, and each committed markdown is what its script renders from the
committed JSON, so a table cannot drift from its data."""

from __future__ import annotations

import doctest
import importlib.util
import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"

# Committed result (benchmarks/results/<stem>.{json,md}) -> the script whose ``render(data)`` writes its markdown.
RENDERED = {
    "coding_gptq": "coding_gptq", "coding_quality": "coding_quality", "coding_rd": "coding_rd",
    "coding_speed": "coding_speed", "fit_explained": "fit_explained", "fit_rd_minilm-l6": "fit_rd",
    "fit_rd_smollm2-135m": "fit_rd", "fuzz_default_models": "fuzz_artifacts", "moe_families": "moe_families",
    "rd_models_minilm-l6": "rd_models", "rd_models_smollm2-135m": "rd_models", "scale": "scale",
    "transforms_report": "transforms_report", "transforms_quick": "transforms_report",
    "curvature_terms": "curvature_terms", "curvature_bases_smollm2-135m": "curvature_bases", "verdict": "verdict",
    "fisher_steps": "fisher_steps", "output_hessians": "output_hessians",
}
# The index, which writes benchmarks/RESULTS.md, not a result.
NOT_HARNESSED = {"run"}
WRITES = re.compile(r"json\.dump\(|\.write_text\(|open\([^)]*[\"']w")  # a file written by hand


def bench(name: str):
  """``benchmarks/<name>.py`` imported as ``bench_<name>`` (benchmarks/ goes on ``sys.path`` for ``_harness``)."""
  if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))
  key = f"bench_{name}"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]


@pytest.mark.parametrize("stem", sorted(RENDERED))
def test_committed_markdown_is_rendered_from_committed_json(stem):
  """``benchmarks/<script>.py --render`` would rewrite the committed .md unchanged."""
  data = json.loads((RESULTS / f"{stem}.json").read_text())
  assert bench(RENDERED[stem]).render(data) == (RESULTS / f"{stem}.md").read_text()


def test_every_script_writes_through_the_harness_and_every_render_is_checked():
  scripts = {p.stem: p.read_text() for p in BENCH.glob("[!_]*.py")}
  for name, text in scripts.items():
    if name in NOT_HARNESSED:
      continue
    assert "_harness.write_results(" in text and not WRITES.search(text), name
  with_render = {name for name, text in scripts.items() if '"--render"' in text}
  assert with_render == set(RENDERED.values())


def test_markdown_table_aligns_numbers_right_and_shows_missing_values():
  harness = bench("_harness")
  lines = harness.markdown_table(["method", "step", "bits", "note"],
                                 [["a|b", 0.5, "2.834", "x"], ["c", 12, None, "—"], ["d", "-1.5 %", "3.1*", ""]])
  assert lines == ["| method | step | bits | note |", "|---|---:|---:|---|", "| a\\|b | 0.5 | 2.834 | x |",
                   "| c | 12 | – | — |", "| d | -1.5 % | 3.1* |  |"]
  assert harness.markdown_table(["a", "b"], [["1", "x"]], align="cr")[1] == "|:---:|---:|"
  assert harness.markdown_table(["a"], [])[1] == "|---|"
  with pytest.raises(ValueError, match="2 cells"):
    harness.markdown_table(["a", "b"], [["1"]])
  with pytest.raises(ValueError, match="align"):
    harness.markdown_table(["a", "b"], [["1", "2"]], align="l")
  assert doctest.testmod(harness).failed == 0  # its docstring's example (benchmarks/ is not in the doctest paths)


def test_write_results_adds_meta_and_renders_from_what_it_wrote(tmp_path, capsys):
  harness = bench("_harness")
  stem = tmp_path / "demo"
  data = {"rows": [1, 2], "meta": {"own": "kept"}}
  written = harness.write_results(stem, data, lambda d: f"# {d['meta']['command']}: {len(d['rows'])} rows",
                                  argv=["--steps", "0.5 0.25"], script=BENCH / "demo.py")
  text = (tmp_path / "demo.json").read_text()
  assert text.endswith("}\n") and json.loads(text) == written and "meta" not in data["rows"]
  meta = written["meta"]
  assert meta["own"] == "kept" and meta["command"] == "benchmarks/demo.py --steps '0.5 0.25'"
  assert {"date_utc", "commit", "platform", "cpu_count", "loadavg", "python", "jax"} <= set(meta)
  assert (tmp_path / "demo.md").read_text() == "# benchmarks/demo.py --steps '0.5 0.25': 2 rows\n"
  assert "2 rows" in capsys.readouterr().out
  harness.write_results(stem, {"rows": []}, "quiet", meta=False, quiet=True)
  assert capsys.readouterr().out == ""
  assert harness.read_results(tmp_path / "demo.json") == {"rows": []}
  assert harness.render_results(stem, lambda d: f"{len(d['rows'])} rows", quiet=True) == "0 rows\n"
  assert (tmp_path / "demo.md").read_text() == "0 rows\n"
  assert harness.paths("coding_rd") == (RESULTS / "coding_rd.json", RESULTS / "coding_rd.md")


def test_verdict_is_current_with_the_results_it_reads():
  """benchmarks/verdict.py re-run on the committed results gives the committed verdict (rows and numbers)."""
  committed = json.loads((RESULTS / "verdict.json").read_text())
  assert bench("verdict").measure()["rows"] == committed["rows"]
