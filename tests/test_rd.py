"""`macjax rd`: a rate–distortion sweep counts bits as the report does, resumes from its JSON, draws its figure
and refuses bad input up front."""

from __future__ import annotations

import csv
import json
import pathlib

import pytest

from macjax.errors import ConfigError, ShapeError
from macjax.pipeline import compression, config as config_lib, job, rd, report
from macjax.load import load_model

EVAL = {"n_seq": 2, "seq_len": 16}
GPTQ_TOML = pathlib.Path(__file__).resolve().parents[1] / "configs" / "gptq.toml"


def test_sweep_counts_like_the_report_resumes_and_plots(tiny_llama_dir, tmp_path, monkeypatch):
  out = tmp_path / "rd"
  peers = tmp_path / "peers.json"
  peers.write_text(json.dumps([{"name": "NNCodec", "bits": 5.0, "perplexity_rel_change": 0.02, "source": "x"}]))
  result = job.run_rd(str(tiny_llama_dir), out, configs=["plain", str(GPTQ_TOML)], steps=[0.1, 0.4],
                      baselines=["Q8_0"], peers_file=peers, eval_sizes=EVAL, other_domain=True)
  plain = [p for p in result["points"] if p["series"] == "plain"]
  assert [p["step"] for p in plain] == [0.1, 0.4] and plain[0]["block_bits_per_weight"] > plain[1]["block_bits_per_weight"]
  assert plain[0]["rel_weight_error"] < plain[1]["rel_weight_error"] and "perplexity_rel_change" in plain[0]
  cfg = config_lib.with_overrides(config_lib.preset("plain"), ["quantize.step=0.4", "evaluate.enabled=false"])
  manifest = compression.compress(load_model(str(tiny_llama_dir)), cfg).manifest
  assert plain[1]["block_bits_per_weight"] == report.counted_bits(manifest)["block_bits_per_weight"]
  q8 = [p for p in result["points"] if p["series"] == "Q8_0"][0]
  assert q8["block_bits_per_weight"] == 8.5 and q8["rel_weight_error"] < 0.01
  assert (out / "rd.png").read_bytes()[:4] == b"\x89PNG"
  rows = list(csv.DictReader(open(out / "rd.csv", encoding="utf-8")))
  assert len(rows) == 5 and "prose_kl" in rows[0]
  # Every point also scored on the other domain's text; the savings tables compare gptq with plain on both.
  assert all(p["kl"] != p["prose_kl"] for p in result["points"])
  assert result["table"].count("at equal model-output distortion, against plain") == 2 and "| prose:" in result["table"]
  assert [(r["series"], r["metric"]) for r in rd.savings(result, "plain", rd.OTHER)] == [("gptq", "prose_kl")] * 2
  monkeypatch.setattr(compression, "compress", lambda *a, **k: pytest.fail("a finished point was run again"))
  again = job.run_rd(str(tiny_llama_dir), out, configs=["plain", str(GPTQ_TOML)], steps=[0.1, 0.4],
                     baselines=["Q8_0"], eval_sizes=EVAL, other_domain=True)
  assert again["points"] == result["points"]
  renamed = tmp_path / "renamed.toml"  # the same config under another name: its points are reused and relabelled
  renamed.write_text(GPTQ_TOML.read_text())
  third = job.run_rd(str(tiny_llama_dir), out, configs=["plain", str(renamed)], steps=[0.1, 0.4], baselines=["Q8_0"],
                     eval_sizes=EVAL, other_domain=True)
  assert [p["series"] for p in third["points"]] == ["plain", "plain", "renamed", "renamed", "Q8_0"]
  assert [{**p, "series": 0} for p in third["points"]] == [{**p, "series": 0} for p in result["points"]]


@pytest.mark.parametrize("kwargs, error, needle", [
    ({"baselines": ["Q9_9"]}, ConfigError, "baseline 'Q9_9'"),
    ({"baselines": ["rtn_int4"]}, ShapeError, "not a multiple of its block size 64"),
    ({"steps": [0.0]}, ConfigError, "steps must be > 0"),
    ({"configs": ["fast"]}, ConfigError, "unknown config preset|does not exist"),
])
def test_bad_sweeps_are_refused_before_any_work(tiny_llama_dir, tmp_path, kwargs, error, needle):
  args = {"configs": ["plain"], "steps": [0.1], "baselines": [], "eval_sizes": EVAL, **kwargs}
  with pytest.raises(error, match=needle):
    job.run_rd(str(tiny_llama_dir), tmp_path / "rd", **args)
  assert not (tmp_path / "rd").exists()


def test_bad_peers_file(tiny_llama_dir, tmp_path):
  bad = tmp_path / "peers.json"
  bad.write_text(json.dumps([{"name": "x", "bits": "four"}]))
  with pytest.raises(ConfigError, match="entry 0 must be"):
    job.run_rd(str(tiny_llama_dir), tmp_path / "rd", configs=["plain"], steps=[0.1], peers_file=bad)


def test_benchmarks_have_one_entry_point_and_results_md_is_current():
  """benchmarks/run.py lists every benchmark script (not the ``_``-prefixed helpers), each listed result file exists,
  and the committed benchmarks/RESULTS.md is what it renders (so the index cannot drift from the results)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("bench_run", root / "benchmarks" / "run.py")
  run = importlib.util.module_from_spec(spec)
  sys.modules["bench_run"] = run  # dataclasses look their module up there
  spec.loader.exec_module(run)
  scripts = {p.stem for p in (root / "benchmarks").glob("[!_]*.py")} - {"run"}  # _harness.py etc. are helpers
  assert scripts == {b.script for b in run.BENCHMARKS} - {"macjax"}
  for b in run.BENCHMARKS:
    assert all(list((root / "benchmarks" / "results").glob(g)) for g in b.results), b.name
  assert (root / "benchmarks" / "RESULTS.md").read_text() == run.render()


@pytest.mark.parametrize("name", ["default", "plain"])
def test_committed_sweeps_still_resume(name):
  """Config fields added since a sweep was recorded (config.LATE_FIELDS) leave its points' keys unchanged."""
  path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "rd" / "smollm2-135m" / "rd.json"
  keys = {p["key"] for p in json.loads(path.read_text())["points"]}
  assert all(rd._digest([config_lib.identity_dict(config_lib.preset(name)), s]) in keys  # pylint: disable=protected-access
             for s in (0.0625, 0.125, 0.25))
