"""End-to-end pipeline properties: decode is bit-exact, every byte is accounted, the export round-trips."""

from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
import pytest

from macjax import artifact
from macjax.errors import ArtifactError, ConfigError
from macjax.load import load_model
from macjax.pipeline import PipelineConfig, components, compression, job, plan
from macjax.pipeline import config as config_lib
from macjax.pipeline import report as report_lib

NO_EVAL = config_lib.from_dict({"evaluate": {"enabled": False}})


def _params_equal(a: dict, b: dict):
  assert set(a) == set(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("overrides", [
    [],
    ["quantize.step=0.3", "quantize.group_size=16"],
    ["embeddings.treatment=float16", "vectors.dtype=float16"],
    ["embeddings.treatment=float32", "quantize.step=2.0"],
    ["coding.classes=auto", "coding.model=auto"],
    ["coding.classes=4x2", "quantize.method=trellis"],
], ids=["default", "coarse-grouped", "fp16-kept", "fp32-kept-very-coarse", "context-classes-auto", "classes-4x2"])
def test_round_trip_is_bit_exact(tiny_llama_dir, tmp_path, overrides):
  cfg = config_lib.with_overrides(NO_EVAL, overrides)
  model = load_model(str(tiny_llama_dir))
  compressed = compression.compress(model, cfg)
  # In memory, and through the artifact on disk.
  _params_equal(compression.decompress(compressed.units, compressed.manifest), compressed.reconstruction)
  path = compression.save(tmp_path / "a", compressed)
  buckets, manifest = artifact.load(path)
  _params_equal(compression.decompress(buckets, manifest), compressed.reconstruction)


@pytest.mark.parametrize("step", [0.05, 0.2, 1.0])
def test_quantized_error_is_bounded_by_half_a_step(tiny_llama_dir, step):
  model = load_model(str(tiny_llama_dir))
  cfg = config_lib.with_overrides(NO_EVAL, [f"quantize.step={step}", f"embeddings.step={step}"])
  rec = compression.compress(model, cfg).reconstruction
  for name, W in model.params.items():
    if W.ndim == 2:
      rms = np.sqrt(np.mean(W.astype(np.float64) ** 2, axis=1, keepdims=True))
      bound = 0.5 * step * rms * (1 + 2**-10) + 1e-12  # steps are rounded to float16
      assert np.all(np.abs(W - rec[name]) <= bound), name


def test_report_accounts_for_every_byte(tiny_llama_dir, tmp_path):
  rep = job.run_compress(str(tiny_llama_dir), NO_EVAL, tmp_path / "art")
  a = rep["artifact"]
  on_disk = sum(f.stat().st_size for f in (tmp_path / "art").rglob("*") if f.is_file())
  assert a["bytes"]["total"] == on_disk
  assert a["bits_per_param"] * a["params"] == pytest.approx(8 * (on_disk - a["bytes"]["assets"]))
  # Per-tensor bit counts add up to the payload buckets.
  manifest = artifact.read_manifest(tmp_path / "art")
  per_tensor = sum(sum(r["bits"].values()) for r in manifest["tensors"].values())
  assert per_tensor == 8 * sum(a["bytes"][k] for k in artifact.KINDS)
  # Coded bits are never below the Shannon information of the codes under the stored model.
  for name, r in manifest["tensors"].items():
    if "information_bits" in r:
      assert r["bits"]["codes"] >= r["information_bits"], name
  assert json.loads(pathlib.Path(rep["report_path"]).read_text())["artifact"]["params"] == a["params"]


def test_decode_detects_a_wrong_reconstruction(tiny_llama_dir):
  compressed = compression.compress(load_model(str(tiny_llama_dir)), NO_EVAL)
  name = next(n for n, r in compressed.manifest["tensors"].items() if r["treatment"] == "quantize")
  compressed.manifest["tensors"][name]["sha256"] = "0" * 64
  with pytest.raises(ArtifactError, match=name):
    compression.decompress(compressed.units, compressed.manifest)


def test_nan_weight_is_refused(tiny_llama_dir):
  model = load_model(str(tiny_llama_dir))
  model.params["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
  with pytest.raises(Exception, match="model.layers.1.mlp.up_proj.weight"):
    compression.compress(model, NO_EVAL)


def test_minilm_end_to_end(tmp_path):
  """The real encoder: compress, restore from disk bit-exactly, export a HF folder that loads back identically."""
  rep = job.run_compress("minilm-l6", NO_EVAL, tmp_path / "art")
  a = rep["artifact"]
  assert a["block_params"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
  assert len([r for r in artifact.read_manifest(tmp_path / "art")["tensors"].values() if r["group"] == "block"]) == 36
  assert a["bits_per_param"] < 16
  assert 0 < rep["weight_error"]["block"] < 0.05
  assert a["coding_overhead"] < 0.01
  out = job.run_decompress(tmp_path / "art", tmp_path / "hf")
  exported = load_model(str(out))
  buckets, manifest = artifact.load(tmp_path / "art")
  _params_equal(exported.params, compression.decompress(buckets, manifest))
  original = load_model("minilm-l6")
  assert exported.layout == original.layout
  assert exported.tokenizer_files == original.tokenizer_files


@pytest.mark.parametrize("chain", [
    [{"name": "hadamard", "side": "input"}],
    [{"name": "orthogonal", "side": "both"}],
    [{"name": "pca", "side": "input", "scope": "matrix"}],
    [{"name": "pca", "side": "input", "scope": "head", "block_size": 8}],
    [{"name": "hadamard", "side": "output"}, {"name": "pca", "side": "input"}],
], ids=["hadamard", "orthogonal-both", "pca-matrix", "pca-head", "hadamard+pca"])
def test_transform_chain_round_trip_and_accounting(tiny_llama_dir, tmp_path, chain):
  cfg = config_lib.from_dict({"transform": chain, "evaluate": {"enabled": False}})
  model = load_model(str(tiny_llama_dir))
  compressed = compression.compress(model, cfg)
  path = compression.save(tmp_path / "a", compressed)
  buckets, manifest = artifact.load(path)
  _params_equal(compression.decompress(buckets, manifest), compressed.reconstruction)
  for name, rec in manifest["tensors"].items():
    if rec["group"] == "block":
      stored = sum(a.nbytes for k, a in compression.unit_parts(buckets, manifest, rec["unit"])[name].items()
                   if k.startswith("transform."))
      assert rec["bits"]["transform"] == 8 * stored > 0
  # Orthogonal and PCA changes of coordinates keep the error at the quantizer's level.
  err = job.weight_errors(compressed.reference, compressed.reconstruction, manifest)["block"]
  assert err < 0.05


def test_rewrite_preserves_function_and_round_trips(tiny_llama_dir, tmp_path):
  from macjax.evaluate.decoder import logits as llama_logits
  cfg = config_lib.from_dict({"rewrite": {"residual": "hadamard", "head_rotation": True, "untie": True},
                              "evaluate": {"enabled": False}})
  model = load_model(str(tiny_llama_dir))
  compressed = compression.compress(model, cfg)
  assert compressed.manifest["rewrite"]["untied"] and "lm_head.weight" in compressed.reconstruction
  tokens = np.arange(12, dtype=np.int32)[None] % 64
  rewritten_config = compressed.manifest["layout"]["config"]
  np.testing.assert_allclose(llama_logits(compressed.reference, rewritten_config, tokens),
                             llama_logits(model.params, model.layout.config, tokens), atol=2e-4)
  _params_equal(compression.decompress(compressed.units, compressed.manifest), compressed.reconstruction)


def test_rewrite_of_a_tied_model_needs_untie(tiny_llama_dir):
  cfg = config_lib.from_dict({"rewrite": {"residual": "hadamard"}, "evaluate": {"enabled": False}})
  with pytest.raises(Exception, match="untie"):
    compression.compress(load_model(str(tiny_llama_dir)), cfg)


@pytest.mark.parametrize("fit_cfg, chain", [
    ({"enabled": True, "roles": ["q", "down"], "keep": "always",
      "options": {"width": 8, "depth": 1, "n_fourier": 2, "steps": 30, "batch": 256, "chunk": 10}}, []),
    ({"enabled": True, "roles": ["gate", "up"], "keep": "always",
      "options": {"width": 8, "tile": 8, "row_embed": 2, "steps": 30, "batch": 64, "chunk": 10, "theta_dtype": "int8"}},
     [{"name": "hadamard", "side": "input"}]),
], ids=["q-down-elementwise", "gate-up-rowwise-after-hadamard"])
def test_functional_fit_round_trip_and_accounting(tiny_llama_dir, tmp_path, fit_cfg, chain):
  cfg = config_lib.from_dict({"fit": fit_cfg, "transform": chain, "evaluate": {"enabled": False}})
  rep = job.run_compress(str(tiny_llama_dir), cfg, tmp_path / "art")
  manifest = artifact.read_manifest(tmp_path / "art")
  fits = {n: r for n, r in manifest["tensors"].items() if r["group"] == "fit"}
  roles = fit_cfg.get("roles") or ["q", "k", "v", "o", "gate", "up", "down"]
  assert sorted(r["role"] for r in fits.values()) == sorted(roles)
  units, _ = artifact.load(tmp_path / "art")
  theta_bytes = sum(a.nbytes for u in units.values() for k, a in u.items() if k.startswith("theta__"))
  assert sum(r["bits"]["theta"] for r in fits.values()) == 8 * theta_bytes > 0
  assert set(rep["artifact"]["fit"]) == set(roles)
  # Params are counted once: θ records do not add weights.
  model = load_model(str(tiny_llama_dir))
  assert rep["artifact"]["params"] == model.num_params
  # Decode from disk is bit-exact (checked by hash inside) and the error stays at the quantizer's level.
  decoded = compression.decompress(*artifact.load(tmp_path / "art"))
  assert job.weight_errors(model.params, decoded, manifest)["block"] < 0.05


def test_quantizer_steps_are_stored_as_float16(tiny_llama_dir):
  compressed = compression.compress(load_model(str(tiny_llama_dir)), NO_EVAL)
  rec = compressed.manifest["tensors"]["model.layers.0.mlp.down_proj.weight"]
  assert rec["bits"]["scales"] == 16 * rec["shape"][0]  # one float16 step per row


CALIBRATION = {"n_seq": 4, "seq_len": 32, "n_sentences": 16}


@pytest.mark.parametrize("overrides", [
    {"quantize": {"gptq": True, "gptq_block_size": 8, "gptq_column_steps": "curvature"}},
    {"quantize": {"gptq": True, "method": "dead_zone", "options": {"width": 1.4}},
     "transform": [{"name": "hadamard", "side": "input"}]},
    {"transform": [{"name": "scaling", "alpha": 0.5}, {"name": "pca", "side": "output"}]},
    {"transform": [{"name": "pca", "source": "activations"}]},
    {"quantize": {"gptq": True}, "transform": [{"name": "hadamard", "side": "input"}],
     "allocation": {"sensitivity": "weight"}},
    {"quantize": {"gptq": True}, "transform": [{"name": "pca", "source": "activations"}],
     "allocation": {"sensitivity": "weight"}},
], ids=["gptq-curvature-steps", "gptq-deadzone-after-hadamard", "smoothquant+output-pca", "activation-pca",
        "hadamard+gptq+allocation", "activation-pca+gptq+allocation"])
def test_calibrated_stages_round_trip(tiny_llama_dir, tmp_path, overrides):
  cfg = config_lib.from_dict({**overrides, "calibration": CALIBRATION, "evaluate": {"enabled": False}})
  model = load_model(str(tiny_llama_dir))
  compressed = compression.compress(model, cfg)
  # Sequential unless an activation-aware transform must be fitted before encoding (here: for the allocation).
  ahead = "allocation" in overrides and overrides["transform"][0].get("source") == "activations"
  assert compressed.manifest["calibration"] == ("whole_model" if ahead else "sequential")
  path = compression.save(tmp_path / "a", compressed)
  _params_equal(compression.decompress(*artifact.load(path)), compressed.reconstruction)
  if overrides.get("quantize", {}).get("gptq_column_steps") == "curvature":
    rec = compressed.manifest["tensors"]["model.layers.0.mlp.down_proj.weight"]
    assert rec["bits"]["scales"] == 16 * rec["shape"][0] + 8 * rec["shape"][1]  # row steps + column exponents


def test_gptq_lowers_output_error_on_calibration_inputs(tiny_llama_dir):
  from macjax import calibrate
  model = load_model(str(tiny_llama_dir))
  stats = calibrate.input_statistics(model, **CALIBRATION)
  base = {"calibration": CALIBRATION, "evaluate": {"enabled": False}, "quantize": {"step": 0.5}}
  plain = compression.compress(model, config_lib.from_dict(base)).reconstruction
  gptq_cfg = config_lib.from_dict({**base, "quantize": {"step": 0.5, "gptq": True},
                                   "calibration": {**CALIBRATION, "sequential": False}})
  assert plan.needs_calibration(gptq_cfg) and not plan.needs_calibration(config_lib.from_dict(base))
  gptq = compression.compress(model, gptq_cfg, stats=stats).reconstruction  # precomputed statistics are reused
  # ... and give the same result as statistics computed inside compress.
  _params_equal(gptq, compression.compress(model, gptq_cfg).reconstruction)

  def output_error(rec):  # Σ_matrices tr(ΔW H ΔWᵀ): the squared output error on calibration inputs
    return sum(float(np.trace((model.params[m.name] - rec[m.name]) @ stats[m.name].second_moment
                              @ (model.params[m.name] - rec[m.name]).T)) for m in model.layout.matrices)

  assert output_error(gptq) < 0.9 * output_error(plain)


def test_fisher_hessians_drive_gptq_and_round_trip(tiny_llama_dir, tmp_path, monkeypatch):
  """``calibration.hessian = "fisher"``: GPTQ minimizes the output error weighted by the model's sensitivity (lower
  there than GPTQ on ``XᵀX``, higher on ``XᵀX``'s own measure), calibrates on the whole model, decodes bit-exact.
  (The encoder's Hessians are checked in tests/test_calibrate_fisher.py; the pipeline treats both kinds alike.)"""
  from macjax import calibrate
  from macjax.calibrate import fisher
  model = load_model(str(tiny_llama_dir))
  base = {"quantize": {"gptq": True, "step": 0.5}, "evaluate": {"enabled": False}}
  with monkeypatch.context() as m:  # every matrix has a Fisher Hessian and nothing else reads XᵀX: not computed
    m.setattr(plan, "calibration_stats", lambda *a, **k: pytest.fail("XᵀX computed though nothing reads it"))
    weighted = compression.compress(model, config_lib.from_dict(
        {**base, "calibration": {**CALIBRATION, "hessian": "fisher"}}))
  assert weighted.manifest["calibration"] == "whole_model"
  plain = compression.compress(model, config_lib.from_dict(
      {**base, "calibration": {**CALIBRATION, "sequential": False}}))
  H_f = {n: o.hessian for n, o in fisher.fisher_hessians(model, **CALIBRATION).items()}
  stats = calibrate.input_statistics(model, **CALIBRATION)

  def error(rec, H):  # Σ_matrices tr(ΔW H ΔWᵀ)
    return sum(float(np.trace((model.params[m.name] - rec[m.name]) @ H(m.name) @ (model.params[m.name]
                                                                                  - rec[m.name]).T))
               for m in model.layout.matrices)

  assert error(weighted.reconstruction, H_f.get) < error(plain.reconstruction, H_f.get)
  assert error(plain.reconstruction, lambda n: stats[n].second_moment) < error(
      weighted.reconstruction, lambda n: stats[n].second_moment)
  path = compression.save(tmp_path / "a", weighted)
  _params_equal(compression.decompress(*artifact.load(path)), weighted.reconstruction)


def test_fisher_hessian_needs_gptq():
  with pytest.raises(ConfigError, match="set quantize.gptq = true"):
    config_lib.from_dict({"calibration": {"hessian": "fisher"}})
  with pytest.raises(ConfigError, match="calibration.hessian"):
    config_lib.from_dict({"quantize": {"gptq": True}, "calibration": {"hessian": "output"}})


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_bert_dir"])
def test_sequential_calibration_measures_each_layer_on_the_compressed_layers(request, model_fixture):
  """Sequential GPTQ = GPTQ given, for layer l, the statistics of block l's inputs when the layers before it are the
  compressed ones (re-measured here from the reconstructions); layer 0 sees the reference embeddings either way."""
  from macjax import calibrate
  model = load_model(str(request.getfixturevalue(model_fixture)))
  cfg = config_lib.from_dict({"quantize": {"gptq": True, "step": 0.5}, "calibration": CALIBRATION,
                              "evaluate": {"enabled": False}})
  seq = compression.compress(model, cfg)
  assert seq.manifest["calibration"] == "sequential"
  replay = calibrate.SequentialCalibration(model, **CALIBRATION)
  replay.start(model.params)
  stats = {}
  for layer in range(model.layout.num_layers):
    stats.update(replay.statistics(layer, model.params))
    replay.advance(layer, {**model.params, **seq.reconstruction})
  _params_equal(seq.reconstruction, compression.compress(model, cfg, stats=stats).reconstruction)
  whole = compression.compress(model, cfg, stats=calibrate.input_statistics(model, **CALIBRATION)).reconstruction
  first = [m.name for m in model.layout.matrices if m.layer == 0]
  later = [m.name for m in model.layout.matrices if m.layer > 0]
  assert all(np.array_equal(whole[n], seq.reconstruction[n]) for n in first)
  assert not all(np.array_equal(whole[n], seq.reconstruction[n]) for n in later)


def test_activations_offloaded_to_disk_give_the_same_artifact(tiny_llama_dir):
  """``calibration.offload = "disk"``: the carried hidden states wait in .npy files (one batch in memory), with the
  same statistics and the same artifact as in memory; the folder goes with the calibration."""
  from macjax import calibrate
  model = load_model(str(tiny_llama_dir))
  on_disk = calibrate.SequentialCalibration(model, **CALIBRATION, batch_size=1, offload="disk")
  in_memory = calibrate.SequentialCalibration(model, **CALIBRATION, batch_size=1)
  on_disk.start(model.params)
  in_memory.start(model.params)
  folder = pathlib.Path(on_disk.hidden._folder.name)  # pylint: disable=protected-access
  assert len(list(folder.glob("*.npy"))) == len(on_disk.batches) == CALIBRATION["n_seq"]
  for layer in range(model.layout.num_layers):
    a, b = on_disk.statistics(layer, model.params), in_memory.statistics(layer, model.params)
    assert all(np.array_equal(a[n].second_moment, b[n].second_moment) for n in a)
    on_disk.advance(layer, model.params)
    in_memory.advance(layer, model.params)
  del on_disk
  assert not folder.exists()
  cfg = {"quantize": {"gptq": True, "step": 0.5}, "evaluate": {"enabled": False}}
  memory = compression.compress(model, config_lib.from_dict({**cfg, "calibration": CALIBRATION}))
  disk = compression.compress(model, config_lib.from_dict({**cfg, "calibration": {**CALIBRATION, "offload": "disk"}}))
  assert disk.manifest["tensors"] == memory.manifest["tensors"]
  with pytest.raises(ConfigError, match="offload"):
    config_lib.from_dict({"calibration": {"offload": "ssd"}})


def test_target_bits_hits_the_rate(tiny_llama_dir):
  cfg = config_lib.from_dict({"allocation": {"target_bits": 3.0}, "evaluate": {"enabled": False}})
  compressed = compression.compress(load_model(str(tiny_llama_dir)), cfg)
  block = [r for r in compressed.manifest["tensors"].values() if r["group"] == "block"]
  info = sum(r["information_bits"] for r in block) / sum(int(np.prod(r["shape"])) for r in block)
  assert abs(info - 3.0) < 0.1  # the entropy of the codes under their stored tables


@pytest.mark.parametrize("allocation", [
    {"sensitivity": "weight"},
    {"sensitivity": "layer_output"},
    {"sensitivity": "model_output", "probe_groups": "role", "probe_n_seq": 2, "probe_seq_len": 32},
    {"sensitivity": "model_output", "probe_n_seq": 2, "probe_seq_len": 32},
    {"sensitivity": "model_output", "probe_n_seq": 2, "probe_seq_len": 32, "rewrite": True},
], ids=["weight", "layer_output", "model_output-role", "model_output-role_layer", "model_output-after-rewrite"])
def test_sensitivity_allocation_is_equal_slope(tiny_llama_dir, allocation):
  allocation = dict(allocation)
  rewrite = {"residual": "hadamard", "untie": True} if allocation.pop("rewrite", False) else {}
  transform = [{"name": "hadamard", "side": "input"}] if rewrite else []  # probes see the model's coordinates
  cfg = config_lib.from_dict({"allocation": allocation, "calibration": CALIBRATION, "quantize": {"step": 0.5},
                              "rewrite": rewrite, "transform": transform, "evaluate": {"enabled": False}})
  compressed = compression.compress(load_model(str(tiny_llama_dir)), cfg)
  rec = compressed.manifest["allocation"]
  scales, d = rec["step_scales"], rec["unit_distortion"]
  sizes = {m: int(np.prod(r["shape"])) for m, r in compressed.manifest["tensors"].items() if m in d}
  # c_i ∝ sqrt(n_i / d_i): scales² · d / n is the same for every matrix, and the scales are not all equal.
  slope = np.array([scales[m] ** 2 * d[m] / sizes[m] for m in d])
  np.testing.assert_allclose(slope, slope[0], rtol=1e-6)
  assert max(scales.values()) > 1.05 * min(scales.values())
  if allocation["sensitivity"] == "model_output":
    assert set(rec["probe_by_role"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert ("probe_by_layer" in rec) == (allocation.get("probe_groups", "role_layer") == "role_layer")
  _params_equal(compression.decompress(compressed.units, compressed.manifest), compressed.reconstruction)


def test_layer_output_allocation_gives_finer_steps_to_louder_inputs(tiny_llama_dir):
  cfg = config_lib.from_dict({"allocation": {"sensitivity": "input_energy"}, "calibration": CALIBRATION,
                              "evaluate": {"enabled": False}})  # the older name of layer_output
  compressed = compression.compress(load_model(str(tiny_llama_dir)), cfg)
  rec = compressed.manifest["allocation"]
  assert rec["sensitivity"] == "layer_output"
  tensors = compressed.manifest["tensors"]
  per_weight = {m: v / np.prod(tensors[m]["shape"]) for m, v in rec["unit_distortion"].items()}
  hi, lo = max(per_weight, key=per_weight.get), min(per_weight, key=per_weight.get)
  assert rec["step_scales"][hi] < rec["step_scales"][lo]


SHARED_PCA = [{"name": "pca", "side": "input"}]


def _shared_cfg(chain, share="role", **extra):
  return config_lib.from_dict({"transform": chain, "transform_state": {"share": share}, "evaluate": {"enabled": False},
                               **extra})


def test_role_shared_pca_round_trip_and_accounting(tiny_llama_dir, tmp_path):
  """One float16 in×in basis per role, stored and counted once; decode is bit-exact from the artifact on disk."""
  rep = job.run_compress(str(tiny_llama_dir), _shared_cfg(SHARED_PCA), tmp_path / "art")  # decodes + verifies
  buckets, manifest = artifact.load(tmp_path / "art")
  model = load_model(str(tiny_llama_dir))
  tensors = manifest["tensors"]
  roles = sorted({m.role for m in model.layout.matrices})
  shared = {n: r for n, r in tensors.items() if r["group"] == "transform"}
  assert sorted(shared) == [f"transform:{r}" for r in roles]
  expected = sum(model.layout.by_role(r)[0].shape[1] ** 2 * 16 for r in roles)
  assert sum(r["bits"]["transform"] for r in shared.values()) == expected
  for m in model.layout.matrices:
    assert tensors[m.name]["transform_shared"] == m.role and "transform" not in tensors[m.name]["bits"]
  # The shared states are counted with the block matrices, and every stored byte is in some record.
  a = rep["artifact"]
  assert a["block_bits_per_weight_parts"]["transform"] * a["block_params"] == pytest.approx(expected)
  assert a["params"] == sum(v.size for v in model.params.values())
  assert sum(sum(r["bits"].values()) for r in tensors.values()) == 8 * sum(a["bytes"][k] for k in artifact.KINDS)
  # Fewer transform bits than a basis per matrix.
  per_matrix = compression.compress(model, _shared_cfg(SHARED_PCA, share="none"))
  assert expected < sum(r["bits"].get("transform", 0) for r in per_matrix.manifest["tensors"].values())
  assert job.weight_errors(model.params, compression.decompress(buckets, manifest), manifest)["block"] < 0.05


@pytest.mark.parametrize("chain", [SHARED_PCA, [{"name": "pca", "scope": "head", "block_size": 8},
                                                {"name": "hadamard", "side": "input"}]], ids=["pca", "pca-head+hadamard"])
def test_role_shared_state_is_the_chain_fitted_on_stacked_rows(tiny_llama_dir, chain):
  model = load_model(str(tiny_llama_dir))
  compressed = compression.compress(model, _shared_cfg(chain))
  parts = compression.unit_parts(compressed.units, compressed.manifest, "shared")
  t = components.build_chain([(c["name"], {k: v for k, v in c.items() if k != "name"}) for c in chain])
  for role in sorted({m.role for m in model.layout.matrices}):
    fam = model.layout.by_role(role)
    pooled = np.concatenate([model.params[m.name] for m in fam], axis=0)
    rec = compressed.manifest["tensors"][f"transform:{role}"]
    assert rec["pooled_shape"] == list(pooled.shape) and rec["members"] == [m.name for m in fam]
    want = jax.tree_util.tree_leaves(t.init(pooled, key=plan.role_key(0, role)))  # pylint: disable=protected-access
    stored = [parts[f"transform:{role}"][f"transform.{i}"] for i in range(len(want))]
    for w, s in zip(want, stored):
      np.testing.assert_array_equal(np.asarray(w), s.astype(np.asarray(w).dtype), err_msg=role)


@pytest.mark.parametrize("extra", [{}, {"quantize": {"gptq": True, "gptq_block_size": 8}}], ids=["rtn", "gptq"])
def test_role_shared_activation_pca_round_trip(tiny_llama_dir, tmp_path, extra):
  from macjax import calibrate  # pylint: disable=g-import-not-at-top
  model = load_model(str(tiny_llama_dir))
  stats = calibrate.input_statistics(model, **CALIBRATION)
  cfg = _shared_cfg([{"name": "pca", "source": "activations"}], calibration=CALIBRATION, **extra)
  compressed = compression.compress(model, cfg, stats=stats)
  path = compression.save(tmp_path / "a", compressed)
  _params_equal(compression.decompress(*artifact.load(path)), compressed.reconstruction)
  # The down role's basis diagonalizes its layers' pooled input second moment (count-weighted mean).
  fam = model.layout.by_role("down")
  S = sum(stats[m.name].count * stats[m.name].second_moment.astype(np.float64) for m in fam)
  V = compression.unit_parts(compressed.units, compressed.manifest, "shared")["transform:down"]["transform.0"]
  V = np.asarray(V, np.float64).reshape(S.shape)
  D = V.T @ S @ V
  off = D - np.diag(np.diag(D))
  assert np.abs(off).max() < 1e-2 * np.abs(np.diag(D)).max()
  assert np.all(np.diff(np.diag(D)) <= 1e-3 * np.abs(np.diag(D)).max())


@pytest.mark.parametrize("chain", [[{"name": "pca", "side": "output"}],
                                   [{"name": "pca", "side": "input"}, {"name": "orthogonal", "side": "both"}]],
                         ids=["output-pca", "input-pca+both"])
def test_role_sharing_refuses_output_side_members(tiny_llama_dir, chain):
  with pytest.raises(ConfigError, match="input-side"):
    compression.compress(load_model(str(tiny_llama_dir)), _shared_cfg(chain))


def test_role_shared_state_missing_from_the_artifact_is_named(tiny_llama_dir):
  compressed = compression.compress(load_model(str(tiny_llama_dir)), _shared_cfg(SHARED_PCA))
  del compressed.manifest["tensors"]["transform:up"]
  with pytest.raises(ArtifactError, match="transform:up"):
    compression.decompress(compressed.units, compressed.manifest)
  compressed = compression.compress(load_model(str(tiny_llama_dir)), _shared_cfg(SHARED_PCA))
  compressed.manifest["tensors"]["transform:q"]["pooled_shape"] = [3, 3]
  with pytest.raises(ArtifactError, match="transform:q"):
    compression.decompress(compressed.units, compressed.manifest)


def test_manifest_without_transform_state_section_decodes(tiny_llama_dir):
  """Artifacts written before [transform_state] existed still decode (the section takes its defaults)."""
  compressed = compression.compress(load_model(str(tiny_llama_dir)), _shared_cfg(SHARED_PCA, share="none"))
  del compressed.manifest["config"]["transform_state"]
  _params_equal(compression.decompress(compressed.units, compressed.manifest), compressed.reconstruction)


def test_fit_that_does_not_pay_is_dropped(tiny_llama_dir, tmp_path):
  """Random weights have no structure over (layer, row, column): θ would cost more than it saves, so it is not kept."""
  cfg = config_lib.from_dict({"fit": {"enabled": True, "roles": ["q"], "options": {
      "width": 8, "depth": 1, "n_fourier": 2, "steps": 20, "batch": 256, "chunk": 10}}, "evaluate": {"enabled": False}})
  rep = job.run_compress(str(tiny_llama_dir), cfg, tmp_path / "art")
  decision = rep["artifact"]["fit_decisions"]["q"]
  assert not decision["kept"] and decision["code_bits_saved"] < decision["theta_bits"]
  assert not rep["artifact"]["fit"]  # nothing stored
  assert not [k for u in artifact.load(tmp_path / "art")[0].values() for k in u if k.startswith("theta__")]


def test_theta_size_is_chosen_by_the_rate_budget(tiny_llama_dir, tmp_path):
  budget = 0.5  # bits per weight of each family
  cfg = config_lib.from_dict({"fit": {"enabled": True, "roles": ["gate", "down"], "keep": "always",
                                      "theta_bits_per_weight": budget,
                                      "options": {"depth": 1, "n_fourier": 2, "steps": 20, "batch": 256, "chunk": 10}},
                              "evaluate": {"enabled": False}})
  lines = []
  compressed = compression.compress(load_model(str(tiny_llama_dir)), cfg, progress=lines.append)
  assert any("step 20/20" in l for l in lines)  # progress of the fit is shown
  for role in ("gate", "down"):
    rec = compressed.manifest["tensors"][f"fit:{role}"]
    n = int(np.prod(rec["shape"]))
    assert rec["bits"]["theta"] <= budget * n
    wider = dict(rec["options"], width=rec["options"]["width"] + 1)
    from macjax import fit
    assert fit.functional_fit(**wider).bits(tuple(rec["shape"])) > budget * n  # the largest width that fits
  _params_equal(compression.decompress(compressed.units, compressed.manifest), compressed.reconstruction)


def test_report_scores_held_out_plays_and_another_domain(tiny_llama_dir, tmp_path):
  """With evaluation on, the job scores the decoded model on the held-out plays and on prose of a domain no recipe
  is calibrated on, and the report shows both (``evaluate.other_domain = false`` keeps only the first)."""
  sizes = {"n_seq": 2, "seq_len": 32}
  rep = job.run_compress(str(tiny_llama_dir), config_lib.from_dict({"evaluate": sizes}), tmp_path / "a")
  assert {"perplexity", "kl"} <= set(rep["quality"]) and {"perplexity", "kl"} <= set(rep["quality_prose"])
  assert rep["quality"]["perplexity_reference"] != rep["quality_prose"]["perplexity_reference"]  # other text
  text = report_lib.format_report(rep)
  assert "held-out tokens" in text and "other-domain (prose) tokens" in text
  only = job.run_compress(str(tiny_llama_dir), config_lib.from_dict({"evaluate": {**sizes, "other_domain": False}}),
                          tmp_path / "b")
  assert "quality_prose" not in only and only["quality"]["kl"] == rep["quality"]["kl"]
  # More windows than the prose holds (but not the plays): the artifact and the held-out score stay, the report says
  # why the other domain is missing.
  big = job.run_compress(str(tiny_llama_dir), config_lib.from_dict({"evaluate": {"n_seq": 5000, "seq_len": 16}}),
                         tmp_path / "c")
  assert "quality" in big and "quality_prose" not in big and "holds" in big["quality_prose_error"]
  assert "not scored" in report_lib.format_report(big)


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_bert_dir"])
def test_refit_vectors_are_stored_and_decode_bit_exact(request, model_fixture, tmp_path):
  """``calibration.tune_steps``: each layer's 1-D tensors are refit after its matrices (its output error on the
  calibration text never rises), the artifact stores the refit values in the vectors' place at the same cost, and
  decoding gives exactly the encoder's reconstruction."""
  model = load_model(str(request.getfixturevalue(model_fixture)))
  base = {"quantize": {"gptq": True, "step": 0.5}, "evaluate": {"enabled": False}}
  tuned_cfg = config_lib.from_dict({**base, "calibration": {**CALIBRATION, "tune_steps": 8, "tune_lr": 0.01}})
  lines = []
  tuned = compression.compress(model, tuned_cfg, progress=lines.append)
  plain = compression.compress(model, config_lib.from_dict({**base, "calibration": CALIBRATION}))
  errors = [tuple(map(float, m.groups())) for l in lines
            for m in [re.search(r"tune: layer \d+: relative output error on the calibration text (\S+) → (\S+) ", l)] if m]
  assert len(errors) == model.layout.num_layers and any(after < before for before, after in errors)
  vectors = [n for n, r in tuned.manifest["tensors"].items() if r["group"] == "vector" and r["unit"].startswith("layer.")]
  assert vectors and any(not np.array_equal(tuned.reconstruction[n], model.params[n]) for n in vectors)
  assert all(tuned.manifest["tensors"][n]["bits"] == plain.manifest["tensors"][n]["bits"] for n in vectors)
  path = compression.save(tmp_path / "a", tuned)
  _params_equal(compression.decompress(*artifact.load(path)), tuned.reconstruction)


def test_refit_needs_sequential_calibration(tiny_llama_dir):
  model = load_model(str(tiny_llama_dir))
  cfg = config_lib.from_dict({"quantize": {"gptq": True}, "evaluate": {"enabled": False},
                              "calibration": {**CALIBRATION, "tune_steps": 2, "sequential": False}})
  with pytest.raises(ConfigError, match="does not calibrate sequentially"):
    compression.compress(model, cfg)
  with pytest.raises(ConfigError, match="tune_steps"):
    config_lib.from_dict({"calibration": {"tune_steps": -1}})
