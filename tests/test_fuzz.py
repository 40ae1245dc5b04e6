"""The artifact fuzzing harness (macjax.artifact.fuzz) on a tiny artifact: damaged files, hostile manifest fields
and hostile bitstreams (bucket bytes rewritten with their SHA-256 recomputed, so the damage reaches the decoders)
end in clean errors or harmless reads — never a crash, a hang or silently wrong weights. Reads run in a child
process, so that an abort would be counted, not end the test run."""

from __future__ import annotations

import logging

import pytest

from macjax.artifact import fuzz
from macjax.load import load_model
from macjax.pipeline import compression, config as config_lib


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
  monkeypatch.setattr(fuzz, "read_all", lambda path: {**reference, next(iter(reference)): "0" * 64})
  assert fuzz.classify(tiny_artifact, reference, 10)[0] == "wrong_weights"
  monkeypatch.setattr(fuzz, "read_all", lambda path: (_ for _ in ()).throw(KeyError("x")))
  assert fuzz.classify(tiny_artifact, reference, 10)[0] == "crash"
