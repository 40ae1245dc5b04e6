"""The artifact fuzzing harness (macjax.artifact.fuzz) on a tiny artifact: damaged files, hostile manifest fields
and hostile bitstreams (bucket bytes rewritten with their SHA-256 recomputed, so the damage reaches the decoders)
end in clean errors or harmless reads — never a crash, a hang or silently wrong weights. Reads run in a child
process, so that an abort would be counted, not end the test run."""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re

import pytest

from macjax.artifact import fuzz
from macjax.coding import codec
from macjax.load import load_model
from macjax.pipeline import compression, config as config_lib, records


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
  from conftest import TINY_LLAMA_CONFIG, tiny_llama_params, write_hf_folder  # pylint: disable=g-import-not-at-top
  folder = write_hf_folder(tmp_path_factory.mktemp("m") / "m", tiny_llama_params(), TINY_LLAMA_CONFIG)
  compressed = compression.compress(load_model(str(folder)), config_lib.from_dict({"evaluate": {"enabled": False}}))
  path = tmp_path_factory.mktemp("a") / "art"
  compression.save(path, compressed)
  return path


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's abandoned async reads
def test_damaged_and_hostile_artifacts_fail_cleanly(tiny_artifact):
  logging.disable(logging.CRITICAL)  # Orbax logs every unreadable checkpoint it is shown
  try:
    summary = fuzz.run(tiny_artifact, cases=300, seed=0, isolate=True)
  finally:
    logging.disable(logging.NOTSET)
  assert summary["cases"] == 300 and sum(summary["outcomes"].values()) == 300
  assert not summary["defects"], summary["defects"][:3]
  assert all(sum(v.values()) == 60 for v in summary["by_kind"].values())  # every kind of damage, in turn
  assert summary["by_kind"]["bitstream"]["clean_error"] > 0  # the hostile streams did reach the decoders
  assert summary["by_kind"]["manifest"]["clean_error"] > 30


def test_the_harness_sees_a_defect(tiny_artifact, monkeypatch):
  """A reader that decodes wrong weights without an error is classified as such (the harness can fail)."""
  reference = fuzz.read_all(tiny_artifact)
  monkeypatch.setattr(fuzz, "read_all", lambda path, units=None: {**reference, next(iter(reference)): "0" * 64})
  assert fuzz.classify(tiny_artifact, reference, 10)[0] == "wrong_weights"
  monkeypatch.setattr(fuzz, "read_all", lambda path, units=None: (_ for _ in ()).throw(KeyError("x")))
  assert fuzz.classify(tiny_artifact, reference, 10)[0] == "crash"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_decoding_only_reachable_units_changes_no_outcome(tiny_artifact):
  """Focused reads (only the units a damage can reach) classify every case as reading everything does."""
  logging.disable(logging.CRITICAL)
  try:
    runs = [fuzz.run(tiny_artifact, cases=40, seed=3, focus=focus) for focus in (True, False)]
  finally:
    logging.disable(logging.NOTSET)
  assert runs[0]["by_kind"] == runs[1]["by_kind"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2-135m", "minilm-l6"])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_default_models_artifacts_5000_cases_each(model, tmp_path):
  """The issue's 10,000-case run on the real default models (benchmarks/fuzz_artifacts.py --real commits it)."""
  compressed = compression.compress(load_model(model), config_lib.from_dict({"evaluate": {"enabled": False}}))
  compression.save(tmp_path / "art", compressed)
  logging.disable(logging.CRITICAL)
  try:
    summary = fuzz.run(tmp_path / "art", cases=5000, seed=0, isolate=True)
  finally:
    logging.disable(logging.NOTSET)
  assert not summary["defects"], summary["defects"][:3]
  assert summary["by_kind"]["bitstream"]["clean_error"] > 500



FORMAT_MD = pathlib.Path(__file__).parents[1] / "docs" / "FORMAT.md"


def _section(title: str) -> str:
  return FORMAT_MD.read_text().split(title + "\n", 1)[1].split("\n#", 1)[0]


def _table_fields(title: str) -> set[str]:
  """Field names in the first column of the table under ``title`` in docs/FORMAT.md."""
  rows = [line.split("|")[1] for line in _section(title).splitlines() if line.startswith("| `")]
  return {name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row)}


def test_format_md_lists_what_the_code_writes(tiny_artifact):
  """docs/FORMAT.md's field lists equal the manifest keys written, the tensor record's fields and the coder
  header's keys (so the document cannot fall behind the code)."""
  manifest = json.loads((tiny_artifact / "manifest.json").read_text())
  assert _table_fields("## manifest.json") == set(manifest)
  documented = _table_fields("### Tensor records")
  assert documented == {f.name for f in dataclasses.fields(records.TensorRecord)} - {"name"}
  assert {k for r in manifest["tensors"].values() for k in r} <= documented
  coder = _section("### Coded streams").split("The\nsymbols", 1)[0]
  named = set(re.findall(r'"([a-z_]+)"', coder)) | set(re.findall(r"`([a-z_]+)`", coder))
  assert named - {"grouped", "classed", "ans"} == (set(codec._HEADER_KEYS)  # pylint: disable=protected-access
                                                            | {"group_rows", "row_classes", "col_classes"})
