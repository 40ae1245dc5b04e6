"""CLI: user errors end with one clear line, exit status 2, no traceback, and nothing written that looks valid."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from macjax import cli
from conftest import TINY_LLAMA_CONFIG, tiny_llama_params, write_hf_folder


def _run(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def _assert_user_error(code, err, *needles):
  assert code == 2
  lines = [l for l in err.strip().splitlines() if not l.startswith("[macjax]")]
  assert len(lines) == 1 and lines[0].startswith("macjax: error: "), err
  assert "Traceback" not in err
  for n in needles:
    assert n in lines[0], (n, lines[0])


def test_compress_info_decompress(capsys, tiny_llama_dir, tmp_path):
  art = tmp_path / "art"
  code, out, _ = _run(capsys, "compress", tiny_llama_dir, "--out", art, "--no-eval")
  assert code == 0 and "bits/param" in out and "block matrices" in out
  code, out, _ = _run(capsys, "info", art, "--json")
  assert code == 0 and json.loads(out)["artifact"]["params"] > 0
  code, out, _ = _run(capsys, "decompress", art, "--out", tmp_path / "hf")
  assert code == 0 and (tmp_path / "hf" / "model.safetensors").is_file()


def test_missing_model(capsys, tmp_path):
  code, _, err = _run(capsys, "compress", tmp_path / "nowhere", "--out", tmp_path / "a", "--no-eval")
  _assert_user_error(code, err, "nowhere")
  assert not (tmp_path / "a").exists()


def test_unknown_alias(capsys, tmp_path):
  code, _, err = _run(capsys, "compress", "gpt-17", "--out", tmp_path / "a", "--no-eval")
  _assert_user_error(code, err, "gpt-17")


def test_unknown_architecture(capsys, tmp_path):
  cfg = dict(TINY_LLAMA_CONFIG, model_type="mamba", architectures=["MambaForCausalLM"])
  folder = write_hf_folder(tmp_path / "m", tiny_llama_params(), cfg)
  code, _, err = _run(capsys, "compress", folder, "--out", tmp_path / "a", "--no-eval")
  _assert_user_error(code, err, "mamba")
  assert not (tmp_path / "a").exists()


def test_nan_weight(capsys, tmp_path):
  params = tiny_llama_params()
  params["model.layers.0.self_attn.v_proj.weight"][0, 0] = np.nan
  folder = write_hf_folder(tmp_path / "m", params, TINY_LLAMA_CONFIG)
  code, _, err = _run(capsys, "compress", folder, "--out", tmp_path / "a", "--no-eval")
  _assert_user_error(code, err, "model.layers.0.self_attn.v_proj.weight")
  assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("args, needle", [
    (["--set", "quantize.stepp=0.1"], "quantize.stepp"),
    (["--set", "quantize.step=-3"], "quantize.step"),
    (["--config", "missing.toml"], "missing.toml"),
], ids=["unknown-key", "bad-value", "missing-config"])
def test_bad_config(capsys, tiny_llama_dir, tmp_path, args, needle):
  code, _, err = _run(capsys, "compress", tiny_llama_dir, "--out", tmp_path / "a", "--no-eval", *args)
  _assert_user_error(code, err, needle)
  assert not (tmp_path / "a").exists()


def test_existing_artifact_is_not_overwritten(capsys, tiny_llama_dir, tmp_path):
  art = tmp_path / "art"
  assert _run(capsys, "compress", tiny_llama_dir, "--out", art, "--no-eval")[0] == 0
  before = sorted((p.relative_to(art), p.stat().st_size) for p in art.rglob("*") if p.is_file())
  code, _, err = _run(capsys, "compress", tiny_llama_dir, "--out", art, "--no-eval", "--set", "quantize.step=0.5")
  _assert_user_error(code, err, "already exists")
  assert sorted((p.relative_to(art), p.stat().st_size) for p in art.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("damage", ["truncate", "manifest"])
def test_damaged_artifact(capsys, tiny_llama_dir, tmp_path, damage):
  art = tmp_path / "art"
  assert _run(capsys, "compress", tiny_llama_dir, "--out", art, "--no-eval")[0] == 0
  if damage == "truncate":
    big = max((p for p in art.rglob("*") if p.is_file() and "/d/" in str(p)), key=lambda p: p.stat().st_size)
    with open(big, "r+b") as f:
      f.truncate(big.stat().st_size // 2)
  else:
    (art / "manifest.json").write_text("{not json")
  code, _, err = _run(capsys, "decompress", art, "--out", tmp_path / "hf")
  _assert_user_error(code, err, str(art))
  assert not (tmp_path / "hf").exists()


def test_info_on_a_non_artifact(capsys, tmp_path):
  code, _, err = _run(capsys, "info", tmp_path)
  _assert_user_error(code, err, "not a macjax artifact")


def test_relative_paths(capsys, tiny_llama_dir, tmp_path, monkeypatch):
  """The default --out is relative (artifacts/<name>); every command must work with relative paths."""
  monkeypatch.chdir(tmp_path)
  model = tiny_llama_dir.relative_to(tmp_path)
  assert _run(capsys, "compress", model, "--no-eval")[0] == 0
  assert (tmp_path / "artifacts" / model.name / "manifest.json").is_file()
  assert _run(capsys, "info", pathlib.Path("artifacts") / model.name)[0] == 0
  assert _run(capsys, "decompress", pathlib.Path("artifacts") / model.name, "--out", "hf")[0] == 0
  assert (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.parametrize("environ, expected", [
    ({}, (0, 1)),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "RANK": "5", "WORLD_SIZE": "6"}, (3, 8)),  # the first launcher wins
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, (1, 2)),
    ({"PMI_RANK": "0", "PMI_SIZE": "4"}, (0, 4)),
    ({"RANK": "2", "WORLD_SIZE": "3"}, (2, 3)),
])
def test_process_slot_from_the_launchers_environment(environ, expected):
  assert cli.process_slot("auto", "auto", environ) == expected
  assert cli.process_slot("4", "5", environ) == (4, 5)  # explicit numbers ignore the environment


@pytest.mark.parametrize("index, count, environ, needle", [
    ("auto", "2", {}, "both be 'auto'"),
    ("x", "2", {}, "expected integers"),
    ("auto", "auto", {"SLURM_PROCID": "a", "SLURM_NTASKS": "2"}, "SLURM_PROCID/SLURM_NTASKS"),
])
def test_process_slot_errors(index, count, environ, needle):
  from macjax.errors import ConfigError
  with pytest.raises(ConfigError, match=needle):
    cli.process_slot(index, count, environ)


def test_process_index_out_of_range_is_a_user_error(capsys, tiny_llama_dir, tmp_path):
  code, _, err = _run(capsys, "compress", tiny_llama_dir, "--out", tmp_path / "a", "--no-eval", "--process-index",
                      "3", "--process-count", "2")
  _assert_user_error(code, err, "process index 3 of 2")


def test_full_disk_while_compressing_then_resume(capsys, tiny_llama_dir, tmp_path, monkeypatch):
  """A failing write (here: the second unit's Orbax save, as a full disk reports it) is one error line; nothing
  looks finished; the same command then resumes and writes what an uninterrupted run writes."""
  from macjax.artifact import store  # pylint: disable=g-import-not-at-top
  real, saves = store._ocp(), []

  class FullDisk:
    def save_pytree(self, folder, tree):
      saves.append(folder)
      if len(saves) == 2:
        (folder.parent / f"{folder.name}.orbax-checkpoint-tmp-1").mkdir()  # what Orbax leaves half-written
        raise ValueError(f"RESOURCE_EXHAUSTED: Error writing in OCDBT database at {folder}: Failed to write 697509 "
                         "bytes to file 18: No space left on device [os_error_code='28']\nmore lines")
      return real.save_pytree(folder, tree)

  art = tmp_path / "art"
  monkeypatch.setattr(store, "_ocp", FullDisk)
  code, _, err = _run(capsys, "compress", tiny_llama_dir, "--out", art, "--no-eval")
  _assert_user_error(code, err, "writing unit", "No space left on device", "run the same command again to resume")
  monkeypatch.undo()
  assert not art.exists() and not list(tmp_path.rglob("*orbax-checkpoint-tmp*"))
  code, _, err = _run(capsys, "compress", tiny_llama_dir, "--out", art, "--no-eval")
  assert code == 0 and "resuming" in err
  assert _run(capsys, "compress", tiny_llama_dir, "--out", tmp_path / "whole", "--no-eval")[0] == 0
  units = [json.loads((p / "manifest.json").read_text())["units"] for p in (art, tmp_path / "whole")]
  assert units[0] == units[1]


def test_full_disk_while_decompressing(capsys, tiny_llama_dir, tmp_path, monkeypatch):
  import safetensors  # pylint: disable=g-import-not-at-top
  art = tmp_path / "art"
  assert _run(capsys, "compress", tiny_llama_dir, "--out", art, "--no-eval")[0] == 0

  def full(*args, **kwargs):
    raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

  monkeypatch.setattr("safetensors.numpy.save_file", full)
  code, _, err = _run(capsys, "decompress", art, "--out", tmp_path / "hf")
  _assert_user_error(code, err, "writing failed, nothing was changed there", "No space left on device")
  assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf*"))  # no half-written folder either


def test_report_opens_with_the_source_file_and_says_when_it_is_quantized(capsys, tiny_llama_dir, tmp_path):
  import gguf  # pylint: disable=g-import-not-at-top
  from test_load import tiny_llama_config, write_tiny_gguf  # pylint: disable=g-import-not-at-top
  config = tiny_llama_config()
  q41 = write_tiny_gguf(tmp_path / "t.gguf", config, tiny_llama_params(config=config),
                        qtype=gguf.GGMLQuantizationType.Q4_1)
  for source, quantized in ((q41, True), (tiny_llama_dir, False)):
    out = tmp_path / f"art-{quantized}"
    code, text, _ = _run(capsys, "compress", source, "--out", out, "--no-eval", "--config", "plain")
    lines = text.splitlines()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    src = q41.stat().st_size if quantized else sum(f.stat().st_size for f in tiny_llama_dir.iterdir())
    assert code == 0 and lines[0].startswith("source ") and f"{src / 1e6:.1f} MB" in lines[0]
    assert lines[1].startswith("artifact ") and f"{size / src:.3f} × the source" in lines[1]
    assert ("already quantized (Q4_1)" in text) == quantized, text
