"""Compression at scale: streamed (a lazy model, one unit at a time), resumable after a kill, deterministic, and the
same on 8 devices as on 1."""

from __future__ import annotations

import json
import os
import re
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from macjax import artifact
from macjax.errors import ArtifactError
from macjax.load import LazyTensors, load_model, open_model
from macjax.pipeline import compression, config as config_lib, job

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import synthetic_checkpoint  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

NO_EVAL = config_lib.from_dict({"evaluate": {"enabled": False}})
GPTQ = config_lib.from_dict({"quantize": {"gptq": True, "gptq_block_size": 8}, "evaluate": {"enabled": False},
                             "calibration": {"n_seq": 2, "seq_len": 16}})
TUNED = config_lib.from_dict({**config_lib.to_dict(GPTQ), "calibration": {"n_seq": 2, "seq_len": 16, "tune_steps": 2}})


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> pathlib.Path:
  """A 6-layer synthetic LLaMA in bf16, in 4 shards (written by the project's own script)."""
  config = synthetic_checkpoint.llama_config(64, 6, vocab=300)
  return synthetic_checkpoint.write_checkpoint(tmp_path_factory.mktemp("syn") / "m", config, shard_bytes=40_000)


def _payload(path) -> dict:
  """What must be identical between two runs: every unit's bucket table and every tensor's record."""
  m = artifact.read_manifest(path)
  return {"units": m["units"], "tensors": m["tensors"]}


def test_open_model_reads_nothing_until_asked(synthetic_dir):
  model = open_model(str(synthetic_dir))
  assert isinstance(model.params, LazyTensors)
  name = "model.layers.3.mlp.down_proj.weight"
  assert model.params.shape(name) == (64, model.layout.config["intermediate_size"])
  assert model.params.dtype(name) == "BF16"
  assert model.num_params == sum(a.size for a in load_model(str(synthetic_dir)).params.values())
  np.testing.assert_array_equal(model.params[name], load_model(str(synthetic_dir)).params[name])


def test_streamed_compress_equals_in_memory(synthetic_dir, tmp_path):
  """The streamed job (lazy model, unit by unit to disk) writes what the in-memory compress computes."""
  rep = job.run_compress(str(synthetic_dir), NO_EVAL, tmp_path / "art")
  assert rep["devices"] >= 1 and rep["stages"]["quantize+code"]["peak_rss_bytes"] > 0
  in_memory = compression.compress(load_model(str(synthetic_dir)), NO_EVAL)
  assert _payload(tmp_path / "art")["tensors"] == in_memory.manifest["tensors"]
  units = sorted(artifact.read_manifest(tmp_path / "art")["units"])
  assert units == ["globals"] + [f"layer.{l:05d}" for l in range(6)]


@pytest.mark.parametrize("config", [NO_EVAL, GPTQ], ids=["default", "gptq"])
def test_same_input_config_and_seed_give_the_same_artifact(synthetic_dir, tmp_path, config):
  job.run_compress(str(synthetic_dir), config, tmp_path / "a", verify=False)
  job.run_compress(str(synthetic_dir), config, tmp_path / "b", verify=False)
  assert _payload(tmp_path / "a") == _payload(tmp_path / "b")


@pytest.mark.parametrize("config", [NO_EVAL, GPTQ, TUNED], ids=["default", "gptq-sequential", "gptq-tuned"])
def test_interrupted_compress_resumes_to_the_same_artifact(synthetic_dir, tmp_path, monkeypatch, config):
  """Resuming rebuilds what the finished layers left behind (sequential calibration: the next layer's inputs, by
  replaying the finished layers forward from their decoded weights; with the vectors refit, the reference stream
  too) and writes the identical artifact."""
  job.run_compress(str(synthetic_dir), config, tmp_path / "whole", verify=False)
  real, calls = artifact.ArtifactWriter.write_unit, []

  def crash_after_three(self, *args):
    if len(calls) == 3:
      raise KeyboardInterrupt  # as a Ctrl-C between two units
    calls.append(args[0])
    return real(self, *args)

  monkeypatch.setattr(artifact.ArtifactWriter, "write_unit", crash_after_three)
  with pytest.raises(KeyboardInterrupt):
    job.run_compress(str(synthetic_dir), config, tmp_path / "art")
  monkeypatch.undo()
  assert not (tmp_path / "art").exists() and artifact.partial_path(tmp_path / "art").is_dir()
  with pytest.raises(ArtifactError, match="unfinished compression"):
    artifact.read_manifest(tmp_path / "art")  # an unfinished run never looks like an artifact
  lines = []
  job.run_compress(str(synthetic_dir), config, tmp_path / "art", progress=lines.append)
  assert any("resuming: 3 of 7 units already written (layers 0–2); continuing at layer.00003" in l for l in lines)
  assert any("replaying layers 0–2" in l for l in lines) == (config is not NO_EVAL)
  tuned = {int(m.group(1)) for l in lines for m in [re.search(r"tune: layer (\d+):", l)] if m}
  assert tuned == ({3, 4, 5} if config is TUNED else set())  # only the layers encoded after the resume
  assert _payload(tmp_path / "art") == _payload(tmp_path / "whole")
  assert not artifact.partial_path(tmp_path / "art").exists()


def test_resume_with_another_config_is_refused(synthetic_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(artifact.ArtifactWriter, "finish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
  with pytest.raises(KeyboardInterrupt):
    job.run_compress(str(synthetic_dir), NO_EVAL, tmp_path / "art")
  monkeypatch.undo()
  other = config_lib.with_overrides(NO_EVAL, ["quantize.step=0.125"])
  with pytest.raises(ArtifactError, match=r"another run.*differs in: config.*--restart"):
    job.run_compress(str(synthetic_dir), other, tmp_path / "art")
  job.run_compress(str(synthetic_dir), other, tmp_path / "art", restart=True)
  assert artifact.read_manifest(tmp_path / "art")["config"]["quantize"]["step"] == 0.125


_KILL_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from macjax.artifact import store
    when, n = sys.argv[1], int(sys.argv[2])
    real_save, real_json, units = store.ArtifactWriter.write_unit, store._write_json, []
    def save(self, unit, *a):
      units.append(unit)
      return real_save(self, unit, *a)
    def write_json(path, value):
      if path.name.endswith(".json") and path.parent.name == "units" and len(units) == n and when == "before_record":
        os.kill(os.getpid(), signal.SIGKILL)  # the unit's Orbax data is on disk, its record is not
      real_json(path, value)
      if path.parent.name == "units" and len(units) == n and when == "after_record":
        os.kill(os.getpid(), signal.SIGKILL)
    store.ArtifactWriter.write_unit, store._write_json = save, write_json
    from macjax.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("when", ["after_record", "before_record"])
def test_kill_9_then_the_same_command_resumes(synthetic_dir, tmp_path, when):
  """A process killed with SIGKILL mid-run; the same command run again resumes and writes the same artifact."""
  job.run_compress(str(synthetic_dir), NO_EVAL, tmp_path / "whole", verify=False)
  (tmp_path / "driver.py").write_text(_KILL_DRIVER)
  args = ["compress", str(synthetic_dir), "--out", str(tmp_path / "art"), "--no-eval", "--config", "plain"]
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  killed = subprocess.run([sys.executable, str(tmp_path / "driver.py"), when, "3", *args], env=env,
                          capture_output=True, text=True, timeout=300)
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert not (tmp_path / "art").exists()
  again = subprocess.run([sys.executable, "-m", "macjax.cli", *args], env=env, capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  done = 3 if when == "after_record" else 2
  assert f"resuming: {done} of 7 units already written" in again.stderr
  assert _payload(tmp_path / "art") == _payload(tmp_path / "whole")


_DEVICES_DRIVER = textwrap.dedent("""
    import json, sys
    import jax
    from macjax.load import load_model
    from macjax.pipeline import compression, config as config_lib
    assert jax.device_count() == 8, jax.devices()
    used, put = set(), jax.device_put
    def device_put(x, device=None, **kw):
      used.add(device)
      return put(x, device, **kw)
    jax.device_put = device_put
    model = load_model(sys.argv[1])
    out = {}
    for name, cfg in json.loads(sys.argv[2]).items():
      cfg = config_lib.from_dict(cfg)
      many = compression.compress(model, cfg)  # the tensors of each layer spread over the 8 devices
      assert used >= set(jax.devices()), used  # every device got tensors to encode
      out[name] = many.manifest["tensors"]
      used.clear()
    print(json.dumps(out))
""")


FIT = config_lib.from_dict({"fit": {"enabled": True, "keep": "always", "roles": ["q", "up", "down"],
                                    "options": {"width": 8, "depth": 1, "n_fourier": 2, "steps": 20, "chunk": 10}},
                            "evaluate": {"enabled": False}})
#: GPTQ's sequential calibration, the matrices spread over the devices and the f_θ families fitted one per device,
#: in one config (the default run's 8-device check; the slow twin runs each part alone).
GPTQ_FIT = config_lib.from_dict({**config_lib.to_dict(GPTQ), "fit": config_lib.to_dict(FIT)["fit"]})


def _eight_devices_match_one(synthetic_dir, tmp_path, configs: dict) -> None:
  (tmp_path / "driver.py").write_text(_DEVICES_DRIVER)
  env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  configs = {name: config_lib.to_dict(cfg) for name, cfg in configs.items()}
  run = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(synthetic_dir), json.dumps(configs)],
                       env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  eight = json.loads(run.stdout.strip().splitlines()[-1])
  model = load_model(str(synthetic_dir))
  for name, cfg in configs.items():  # the same as this 1-device process
    assert eight[name] == compression.compress(model, config_lib.from_dict(cfg)).manifest["tensors"], name


def test_eight_devices_give_the_same_artifact_as_one(synthetic_dir, tmp_path):
  """The matrices of each layer (with their GPTQ Hessians), and the f_θ families (one fit per device), spread over
  8 host devices: the same tensors, bit for bit."""
  _eight_devices_match_one(synthetic_dir, tmp_path, {"gptq+fit": GPTQ_FIT})


@pytest.mark.slow
def test_eight_devices_give_the_same_artifact_as_one_for_each_part(synthetic_dir, tmp_path):
  """The default run's check, one part per config (plain, GPTQ alone, f_θ alone)."""
  _eight_devices_match_one(synthetic_dir, tmp_path, {"default": NO_EVAL, "gptq": GPTQ, "fit": FIT})


def test_decompress_streams_into_sharded_safetensors(synthetic_dir, tmp_path):
  job.run_compress(str(synthetic_dir), NO_EVAL, tmp_path / "art", verify=False)
  out = job.run_decompress(tmp_path / "art", tmp_path / "hf", max_shard_bytes=50_000)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 3 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
  exported = load_model(str(out))
  decoded = compression.decompress(*artifact.load(tmp_path / "art"))
  assert set(exported.params) == set(decoded)
  for name, W in decoded.items():
    np.testing.assert_array_equal(exported.params[name], W, err_msg=name)


@pytest.mark.parametrize("config", [
    NO_EVAL,
    config_lib.from_dict({"transform": [{"name": "pca"}], "transform_state": {"share": "role"},
                          "fit": {"enabled": True, "keep": "always", "roles": ["up"],
                                  "options": {"width": 8, "depth": 1, "n_fourier": 2, "steps": 20}},
                          "evaluate": {"enabled": False}}),
], ids=["default", "shared-pca+fit"])
def test_decoding_in_worker_processes_is_bit_exact(synthetic_dir, tmp_path, monkeypatch, config):
  """Large units are decoded by worker processes (the entropy coder holds the GIL): the same tensors, bit for bit,
  including the shared transform states and f_θ predictions they are given."""
  job.run_compress(str(synthetic_dir), config, tmp_path / "art", verify=False)
  units, manifest = artifact.load(tmp_path / "art")
  in_process = compression.decompress(units, manifest)
  monkeypatch.setattr(compression, "PROCESS_DECODE_MIN_WEIGHTS", 1)
  decoded = {}
  for _, tensors in compression.iter_decompress(manifest, units.__getitem__, workers=2):
    decoded.update(tensors)
  assert decoded.keys() == in_process.keys()
  for name, W in in_process.items():
    np.testing.assert_array_equal(decoded[name], W, err_msg=name)
  manifest["tensors"]["model.layers.2.mlp.up_proj.weight"]["sha256"] = "0" * 64  # a worker's error reaches us
  with pytest.raises(ArtifactError, match=r"model\.layers\.2\.mlp\.up_proj\.weight differs"):
    for _ in compression.iter_decompress(manifest, units.__getitem__, workers=2):
      pass


def test_processes_sharing_the_work_write_the_same_artifact(synthetic_dir, tmp_path):
  """Three processes (as on three hosts sharing a filesystem) split the units; process 0 waits for the others and
  finishes: the artifact is the single process's, and each helper read only its own units' tensors."""
  job.run_compress(str(synthetic_dir), NO_EVAL, tmp_path / "one", verify=False)
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  base = [sys.executable, "-m", "macjax.cli", "compress", str(synthetic_dir), "--out", str(tmp_path / "art"),
          "--no-eval", "--config", "plain"]
  launchers = [{"SLURM_PROCID": "2", "SLURM_NTASKS": "3"}, {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3"}]
  helpers = [subprocess.Popen(base + ["--process-index", "auto", "--process-count", "auto"], env={**env, **slot},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for slot in launchers]  # helpers first (their slots from a launcher's variables): they wait for process 0
  primary = subprocess.run(base + ["--process-count", "3", "--process-index", "0"], env=env, capture_output=True,
                           text=True, timeout=300)
  outputs = [h.communicate(timeout=300) for h in helpers]
  assert primary.returncode == 0, primary.stderr[-2000:]
  for h, (out, err) in zip(helpers, outputs):
    assert h.returncode == 0, err[-2000:]
    assert "process 0 finishes the artifact" in out
  assert "wait for the units of processes 1–2" in primary.stderr
  assert _payload(tmp_path / "art") == _payload(tmp_path / "one")
  report = json.loads((tmp_path / "art.report.json").read_text())
  assert report["processes"] == 3 and report["weight_error"]["block"] > 0  # verified after the others' units


def test_sequential_calibration_is_not_split_across_processes(synthetic_dir, tmp_path):
  with pytest.raises(config_lib.ConfigError, match="sequential calibration runs layer after layer"):
    job.run_compress(str(synthetic_dir), GPTQ, tmp_path / "art", process=(0, 2))
  assert not list(tmp_path.iterdir())  # refused before anything was written


def test_large_tensors_are_coded_in_row_blocks(synthetic_dir, tmp_path, monkeypatch):
  """Above LARGE_TENSOR_ELEMENTS an embedding is quantized and coded in row blocks (one table each): decoding is
  bit-exact, every block is counted, and its per-row steps make it decode to the same weights as coding it whole."""
  model = load_model(str(synthetic_dir))
  whole = compression.compress(model, NO_EVAL)
  monkeypatch.setattr(compression, "LARGE_TENSOR_ELEMENTS", 5000)  # the 300 x 64 embedding: 4 blocks of 78 rows
  blocked = compression.compress(model, NO_EVAL)
  rec = blocked.manifest["tensors"]["model.embed_tokens.weight"]
  assert rec["block_rows"] == 78 and len(rec["blocks"]) == 4 and "coder" not in rec
  assert rec["bits"]["tables"] == sum(b["bits"]["tables"] for b in rec["blocks"])
  path = compression.save(tmp_path / "a", blocked)
  decoded = compression.decompress(*artifact.load(path))
  name = "model.embed_tokens.weight"
  np.testing.assert_array_equal(decoded[name], blocked.reconstruction[name])
  np.testing.assert_array_equal(decoded[name], whole.reconstruction[name])  # per-row steps: same weights
  rec["blocks"] = rec["blocks"][:3]
  with pytest.raises(ArtifactError, match="blocks"):
    compression.decompress(blocked.units, blocked.manifest)
