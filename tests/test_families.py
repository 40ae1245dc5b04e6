"""Every supported decoder family end to end, on tiny random-weight checkpoints built by ``transformers`` itself
(``scripts/make_family_fixtures.py``: Hub naming, every option the family's real checkpoints use): the JAX
forward matches ``transformers``' logits; load → compress → decode → export gives a folder with exactly the
checkpoint's tensor names, shapes and layout (GPT-2's ``Conv1D`` transposed back); calibrated GPTQ runs on fused
projections and on experts; what is not supported is refused by name."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import safetensors.numpy

from macjax.errors import ConfigError, ModelLoadError, ShapeError
from macjax.evaluate import decoder
from macjax.export import export_hf
from macjax.load import load_model
from macjax.pipeline import compression, config as config_lib

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "families"
FAMILIES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
NO_EVAL = config_lib.from_dict({"evaluate": {"enabled": False}})


def test_every_family_has_a_fixture():
  assert FAMILIES == ["gemma2", "gemma3", "gpt2", "llama", "mistral", "mixtral", "phi3", "qwen2", "qwen2_moe",
                      "qwen3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
  model = load_model(str(FIXTURES / request.param))
  return request.param, model, np.load(FIXTURES / request.param / "parity.npz")


def test_forward_matches_transformers(family):
  """float32 logits of 3 held-out windows of 40 tokens, against transformers 5.24 + torch 2.13 (measured max
  difference ≤ 2.1e-6 on logits up to 5 in size)."""
  name, model, ref = family
  z = np.asarray(decoder.logits(model.params, model.layout.config, ref["tokens"]))
  np.testing.assert_allclose(z, ref["logits"], atol=2e-5, rtol=0, err_msg=name)


def _stored(folder: pathlib.Path) -> dict[str, np.ndarray]:
  out = {}
  for f in sorted(folder.glob("*.safetensors")):
    out.update(safetensors.numpy.load_file(f))
  return out


def test_export_restores_the_checkpoint_exactly(family, tmp_path):
  """Loading then exporting (float32) gives the checkpoint's own tensors, bit for bit, in its own layout — what
  transformers loads strictly (checked with transformers when the fixtures were made)."""
  name, model, _ = family
  out = export_hf(model.params, model.layout, model.tokenizer_files, tmp_path / "x")
  original, exported = _stored(FIXTURES / name), _stored(out)
  assert set(exported) <= set(original)
  assert set(original) - set(exported) <= {"lm_head.weight"}  # a tied head need not be stored
  for k, a in exported.items():
    assert a.shape == original[k].shape and np.array_equal(a, original[k]), k
  assert json.loads((out / "config.json").read_text())["model_type"] == json.loads(
      (FIXTURES / name / "config.json").read_text())["model_type"]


def test_compress_decode_export_keeps_the_model(family, tmp_path):
  """Default config: every tensor decodes to the encoder's reconstruction, the export has the checkpoint's names
  and shapes, and the decoded model's logits stay close to the reference's."""
  name, model, ref = family
  compressed = compression.compress(model, NO_EVAL)
  decoded = compression.decompress(compressed.units, compressed.manifest)
  for k, w in decoded.items():
    assert np.array_equal(w, compressed.reconstruction[k]), k
  out = export_hf(decoded, model.layout, model.tokenizer_files, tmp_path / "x", dtype="float16")
  original, exported = _stored(FIXTURES / name), _stored(out)
  assert {k: a.shape for k, a in exported.items()} == {k: original[k].shape for k in exported}
  again = load_model(str(out))
  z = np.asarray(decoder.logits(again.params, again.layout.config, ref["tokens"]))
  rel = np.linalg.norm(z - ref["logits"]) / np.linalg.norm(ref["logits"])
  assert rel < 0.05, (name, rel)


@pytest.mark.parametrize("name", ["gpt2", "qwen2_moe"])
def test_sequential_gptq_on_fused_projections_and_experts(name):
  """GPTQ with sequential calibration: fused qkv/gate_up read the attention/MLP inputs, each expert the rows of
  the tokens routed to it; and it lowers the output error of every matrix against plain rounding."""
  from macjax import calibrate
  model = load_model(str(FIXTURES / name))
  calibration = {"n_seq": 4, "seq_len": 32}
  gptq = config_lib.from_dict({"quantize": {"gptq": True, "step": 0.5}, "calibration": calibration,
                               "evaluate": {"enabled": False}})
  plain = config_lib.from_dict({"quantize": {"step": 0.5}, "evaluate": {"enabled": False}})
  a, b = compression.compress(model, gptq), compression.compress(model, plain)
  assert a.manifest["calibration"] == "sequential"
  stats = calibrate.input_statistics(model, **calibration)
  experts = [m for m in model.layout.matrices if m.expert is not None]
  if experts:  # each expert's statistics count only its routed tokens
    assert all(stats[m.name].count < 4 * 32 for m in experts if m.role != "router")

  def error(rec):
    return sum(float(np.trace((model.params[m.name] - rec[m.name]) @ stats[m.name].second_moment
                              @ (model.params[m.name] - rec[m.name]).T)) for m in model.layout.matrices)

  assert error(a.reconstruction) < error(b.reconstruction)


def test_matrices_roles_and_experts_are_described():
  roles = {f: sorted({m.role for m in load_model(str(FIXTURES / f)).layout.matrices}) for f in FAMILIES}
  assert roles["phi3"] == ["down", "gate_up", "o", "qkv"]
  assert roles["gpt2"] == ["down", "o", "qkv", "up"]
  assert roles["mixtral"] == ["down", "gate", "k", "o", "q", "router", "up", "v"]
  moe = load_model(str(FIXTURES / "qwen2_moe")).layout
  assert sorted({m.expert for m in moe.matrices} - {None}) == [0, 1, 2, 3]
  gpt2 = load_model(str(FIXTURES / "gpt2"))
  assert gpt2.params["transformer.h.0.attn.c_attn.weight"].shape == (96, 32)  # Conv1D (32, 96) presented (out, in)


def _copy(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def test_unknown_or_inconsistent_checkpoints_are_refused(tmp_path):
  folder = _copy("phi3", tmp_path)
  cfg = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
  with pytest.raises(ModelLoadError, match=r"model_type 'falcon'.*supported model_type values: bert, gemma2"):
    load_model(str(folder))
  (folder / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 40}))
  with pytest.raises(ShapeError, match=r"mlp\..*_proj\.weight' has shape .*; the config implies .*40"):
    load_model(str(folder))
  tensors = safetensors.numpy.load_file(folder / "model.safetensors")
  del tensors["model.layers.1.mlp.gate_up_proj.weight"]
  safetensors.numpy.save_file(tensors, folder / "model.safetensors")
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ModelLoadError, match=r"missing 1 tensor.*phi3.*model\.layers\.1\.mlp\.gate_up_proj\.weight"):
    load_model(str(folder))


def test_unsupported_options_are_named(tmp_path):
  gpt2 = load_model(str(FIXTURES / "gpt2"))
  with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
    decoder.prepare(gpt2.params, {**gpt2.layout.config, "scale_attn_by_inverse_layer_idx": True})
  llama = load_model(str(FIXTURES / "llama"))
  with pytest.raises(ConfigError, match="rope type 'yarn'"):
    decoder.prepare(llama.params, {**llama.layout.config, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
  folder = _copy("qwen2_moe", tmp_path)
  cfg = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**cfg, "mlp_only_layers": [1]}))
  with pytest.raises(ModelLoadError, match="mlp_only_layers"):
    load_model(str(folder))
  with pytest.raises(ConfigError, match=r"rewrite.*llama family.*gpt2: LayerNorm"):
    compression.compress(gpt2, config_lib.from_dict({"rewrite": {"residual": "hadamard"},
                                                    "evaluate": {"enabled": False}}))


def test_families_group_same_role_and_shape():
  """A mixture of experts' experts are their own families (across layers, or per layer across experts); the
  shared expert of Qwen2-MoE, of another shape, is a dense family of its role."""
  layout = load_model(str(FIXTURES / "qwen2_moe")).layout
  fams = layout.families()
  assert list(fams)[:4] == ["q", "k", "v", "o"]
  assert [m.expert for m in fams["gate.experts"]] == [0, 1, 2, 3] * 2 and len(fams["gate"]) == 2
  per_layer = layout.families("experts")
  assert [m.expert for m in per_layer["down.experts.1"]] == [0, 1, 2, 3]
  assert {m.layer for m in per_layer["down.experts.1"]} == {1}
  assert all(len({tuple(m.shape) for m in ms}) == 1 for ms in {**fams, **per_layer}.values())


@pytest.mark.parametrize("across", ["layers", "experts"])
def test_fit_and_shared_transforms_across_experts_decode_exactly(across):
  """f_θ over the experts' index and one transform state per expert family: stored once, decoded bit-exactly."""
  model = load_model(str(FIXTURES / "qwen2_moe"))
  cfg = config_lib.from_dict({
      "transform": [{"name": "pca"}], "transform_state": {"share": "role"},
      "fit": {"enabled": True, "keep": "always", "across": across, "roles": ["down"],
              "options": {"width": 8, "depth": 1, "n_fourier": 2, "steps": 20, "chunk": 10}},
      "evaluate": {"enabled": False}})
  compressed = compression.compress(model, cfg)
  records = compressed.manifest["tensors"]
  fits = sorted(k for k in records if k.startswith("fit:"))
  expected = (["fit:down", "fit:down.experts"] if across == "layers" else
              ["fit:down", "fit:down.experts.0", "fit:down.experts.1"])
  assert fits == expected
  assert "transform:up.experts" in records and records["transform:up.experts"]["pooled_shape"] == [8 * 24, 32]
  from test_fuzz import _table_fields  # pylint: disable=g-import-not-at-top
  documented = _table_fields("### State records")  # docs/FORMAT.md lists what the code writes
  assert {k for n in records if n.startswith(("fit:", "transform:")) for k in records[n]} == documented
  decoded = compression.decompress(compressed.units, compressed.manifest)
  for k, w in decoded.items():
    assert np.array_equal(w, compressed.reconstruction[k]), k


GGUF_FAMILIES = {"qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3",
                 "gpt2": "gpt2", "llama": "llama", "mixtral": "llama", "qwen2_moe": "qwen2moe"}


def llama_cpp_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
  """llama.cpp's ``rope_freqs`` for HF's ``llama3`` scaling (convert_hf_to_gguf.py, LlamaModel)."""
  import math
  freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  old, low, high, factor = (rope["original_max_position_embeddings"], rope["low_freq_factor"],
                            rope["high_freq_factor"], rope["factor"])
  out = []
  for freq in freqs:
    wavelen = 2 * math.pi / freq
    if wavelen < old / high:
      out.append(1.0)
    elif wavelen > old / low:
      out.append(factor)
    else:
      smooth = (old / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


def write_family_gguf(path: pathlib.Path, name: str, arch: str, pre: str = "gpt2") -> pathlib.Path:
  """A family fixture as llama.cpp's ``convert_hf_to_gguf.py`` writes it: names from ``gguf``'s TensorNameMap,
  metadata under ``<arch>.``, Gemma norm gains stored as ``1 + w``, GPT-2 ``Conv1D`` weights transposed to
  ``(out, in)``, q/k rows permuted and ``llama3`` RoPE scaling baked into ``rope_freqs`` for ``llama``."""
  import gguf
  from macjax.load import families, gguf_file
  from test_load import MERGES, SPECIALS, tiny_tokens  # pylint: disable=g-import-not-at-top
  model = load_model(str(FIXTURES / name))
  cfg = dict(model.layout.config)
  spec = families.family_spec(cfg, name_prefix=model.layout.name_prefix)
  to_gguf = {}
  for g, hf in gguf_file.name_map(arch, spec).items():
    to_gguf.update({hf: g} if isinstance(hf, str) else {n: [g] for n in hf})
  w = gguf.GGUFWriter(str(path), arch)
  gpt2 = arch == "gpt2"
  w.add_block_count(cfg["n_layer" if gpt2 else "num_hidden_layers"])
  w.add_context_length(cfg["n_positions" if gpt2 else "max_position_embeddings"])
  w.add_embedding_length(cfg["n_embd" if gpt2 else "hidden_size"])
  w.add_head_count(cfg["n_head" if gpt2 else "num_attention_heads"])
  w.add_vocab_size(cfg["vocab_size"])
  if gpt2:
    w.add_feed_forward_length(4 * cfg["n_embd"])
    w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
  else:
    rope = cfg["rope_parameters"].get("full_attention", cfg["rope_parameters"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(int(cfg["head_dim"] * rope.get("partial_rotary_factor", 1.0)))
  if arch in ("gemma2", "gemma3"):
    w.add_sliding_window(cfg["sliding_window"])
    w.add_sliding_window_pattern(2)
  if name == "mixtral":
    w.add_expert_count(cfg["num_local_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
  if name == "qwen2_moe":
    w.add_expert_count(cfg["num_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_expert_weights_norm(cfg["norm_topk_prob"])
  if arch == "gemma2":
    w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
    w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
  tokens = tiny_tokens()
  tokens += [f"<x{i}>" for i in range(cfg["vocab_size"] - len(tokens))]
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
  w.add_token_merges(MERGES)
  if not gpt2 and rope.get("rope_type") == "llama3":
    w.add_tensor("rope_freqs.weight", llama_cpp_rope_factors(rope, cfg["head_dim"]))
  merged: dict[str, list] = {}
  for hf, array in model.params.items():
    if isinstance(to_gguf[hf], list):  # experts: merged into one [experts, rows, cols] tensor
      continue
    if arch in ("gemma2", "gemma3") and hf.endswith("norm.weight"):
      array = array + np.float32(1)
    if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
      from test_load import llama_cpp_permute  # pylint: disable=g-import-not-at-top
      heads = cfg["num_attention_heads"] if hf.endswith("q_proj.weight") else cfg["num_key_value_heads"]
      array = llama_cpp_permute(array, heads)
    if hf.endswith("shared_expert_gate.weight"):
      array = array[0]  # llama.cpp stores it as [H]
    w.add_tensor(to_gguf[hf], np.ascontiguousarray(array))  # Conv1D: already (out, in), as llama.cpp stores it
  for g, names in gguf_file.name_map(arch, spec).items():
    if isinstance(names, list):
      w.add_tensor(g, np.stack([model.params[n] for n in names]))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


@pytest.mark.parametrize("name", sorted(GGUF_FAMILIES))
def test_gguf_files_of_each_architecture_load_like_the_checkpoint(name, tmp_path):
  """The same weights read from a GGUF file: identical tensors, and the forward matches transformers."""
  hf = load_model(str(FIXTURES / name))
  model = load_model(str(write_family_gguf(tmp_path / f"{name}.gguf", name, GGUF_FAMILIES[name])))
  assert model.layout.family == hf.layout.family and model.layout.matrices == hf.layout.matrices
  assert set(model.params) == set(hf.params) - {"lm_head.weight"} or set(model.params) == set(hf.params)
  for k, a in model.params.items():
    np.testing.assert_allclose(a, hf.params[k], rtol=0, atol=1e-6 if "norm" in k else 0, err_msg=k)
  ref = np.load(FIXTURES / name / "parity.npz")
  z = np.asarray(decoder.logits(model.params, model.layout.config, ref["tokens"]))
  np.testing.assert_allclose(z, ref["logits"], atol=2e-5, rtol=0, err_msg=name)


def test_a_gguf_tokenizer_that_cannot_be_rebuilt_leaves_the_weights_usable(tmp_path):
  """A pre-tokenizer that is not rebuilt (here Mistral's ``tekken``): the weights load and compress; what needs
  text says why it cannot."""
  from macjax import calibrate
  model = load_model(str(write_family_gguf(tmp_path / "q.gguf", "qwen2", "qwen2", pre="tekken")))
  assert model.tokenizer_files == {} and "tokenizer.ggml.pre is 'tekken'" in model.tokenizer_error
  compression.compress(model, NO_EVAL)
  with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.pre is 'tekken'.*run without them"):
    calibrate.input_statistics(model, n_seq=1, seq_len=8)
  from macjax import cli
  args = ["compress", str(tmp_path / "q.gguf"), "--out", str(tmp_path / "art")]
  assert cli.main(args) == 2 and not (tmp_path / "art").exists()  # evaluation asked for: refused before any work
  assert cli.main(args + ["--no-eval"]) == 2  # the default config calibrates: refused too
  assert cli.main(args + ["--no-eval", "--config", "plain"]) == 0


def test_llama3_rope_is_recovered_from_llama_cpp_factors():
  """Llama 3.1's scaling (θ 500000, head_dim 128, factor 8, bands 1/4, 8192 original positions) comes back
  exactly from the factors llama.cpp bakes; factors no such scaling gives are refused."""
  from macjax.load import gguf_file
  rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
  got = gguf_file.llama3_rope(llama_cpp_rope_factors(rope, 128), 500000.0, 128, "x")
  assert got["factor"] == 8.0 and abs(got["original_max_position_embeddings"] - 8192) < 1e-2
  other = gguf_file.llama3_rope(llama_cpp_rope_factors({**rope, "high_freq_factor": 2.0}, 128), 500000.0, 128, "x")
  assert abs(other["high_freq_factor"] - 2.0) < 1e-3 and abs(other["original_max_position_embeddings"] - 8192) < 1
  bumpy = llama_cpp_rope_factors(rope, 128)
  bumpy[40] *= 1.5
  with pytest.raises(ModelLoadError, match="not llama.cpp's 'llama3' scaling"):
    gguf_file.llama3_rope(bumpy, 500000.0, 128, "x")


@pytest.mark.parametrize("name", ["gpt2", "qwen2_moe", "gemma3"])
def test_bf16_sharded_checkpoints_load_like_the_float32_one(name, tmp_path):
  """The same checkpoint saved as bf16 in three shards with Hugging Face's index: the same names, shapes and layout
  (Conv1D included), values rounded to bf16."""
  import ml_dtypes
  folder = _copy(name, tmp_path)
  tensors = safetensors.numpy.load_file(folder / "model.safetensors")
  (folder / "model.safetensors").unlink()
  names = sorted(tensors)
  parts = [names[i::3] for i in range(3)]
  weight_map = {}
  for k, part in enumerate(parts):
    file = f"model-{k + 1:05d}-of-00003.safetensors"
    safetensors.numpy.save_file({n: tensors[n].astype(ml_dtypes.bfloat16) for n in part}, folder / file)
    weight_map.update({n: file for n in part})
  (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  bf16, f32 = load_model(str(folder)), load_model(str(FIXTURES / name))
  assert bf16.layout == f32.layout and set(bf16.params) == set(f32.params)
  for k, a in bf16.params.items():
    expected = f32.params[k].astype(ml_dtypes.bfloat16).astype(np.float32)
    assert a.shape == expected.shape and np.array_equal(a, expected), k


def test_a_broken_tokenizer_json_leaves_the_weights_usable(tmp_path):
  """tokenizer.json that `tokenizers` cannot build: the model loads and compresses without text; what needs text
  is refused up front, naming the file (no traceback)."""
  from macjax import cli
  folder = _copy("qwen2", tmp_path)
  (folder / "tokenizer.json").write_text('{"garbage')
  model = load_model(str(folder))
  assert "tokenizer.json is not a tokenizer" in model.tokenizer_error
  args = ["compress", str(folder), "--out", str(tmp_path / "art")]
  assert cli.main(args) == 2 and not (tmp_path / "art").exists()
  assert cli.main(args + ["--no-eval", "--config", "plain"]) == 0


def test_another_models_tokenizer_is_refused_for_text(tmp_path):
  """A tokenizer.json with ids beyond the embedding's rows (another model's): a gather would clamp those ids
  silently, so runs that need text are refused, naming both sizes; the weights stay usable."""
  folder = _copy("qwen2", tmp_path)
  config = json.loads((folder / "config.json").read_text())
  tok = json.loads((folder / "tokenizer.json").read_text())
  tok["added_tokens"].append({"id": config["vocab_size"] + 5, "content": "<extra>", "single_word": False,
                              "lstrip": False, "rstrip": False, "normalized": False, "special": True})
  (folder / "tokenizer.json").write_text(json.dumps(tok))
  model = load_model(str(folder))
  assert f"but the model's vocab_size is {config['vocab_size']} (the tokenizer of another model?)" in \
      model.tokenizer_error
  assert load_model(str(FIXTURES / "qwen2")).tokenizer_error is None


@pytest.mark.parametrize("shape", [(0, 32), (96 * 32,), (96, 32, 1), (32, 96)], ids=["zero-rows", "1-d", "3-d",
                                                                                     "transposed"])
def test_odd_tensor_shapes_are_refused_by_name(tmp_path, shape):
  folder = _copy("phi3", tmp_path)
  tensors = safetensors.numpy.load_file(folder / "model.safetensors")
  tensors["model.layers.0.mlp.gate_up_proj.weight"] = np.zeros(shape, np.float32)
  safetensors.numpy.save_file(tensors, folder / "model.safetensors")
  with pytest.raises(ShapeError, match=r"model\.layers\.0\.mlp\.gate_up_proj\.weight.*has shape"):
    load_model(str(folder))


def test_a_weights_file_that_is_a_symlink_to_something_else_is_refused(tmp_path):
  folder = _copy("gpt2", tmp_path)
  (folder / "model.safetensors").unlink()
  (folder / "model.safetensors").symlink_to(folder / "config.json")
  with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
    load_model(str(folder))
