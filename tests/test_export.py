"""Tests of macjax.export.export_hf: bit-exact round trips through load_model, validation, atomic writes."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from macjax.errors import ConfigError, NonFiniteError, ShapeError
from macjax.export import ExportError, export_hf
from macjax.load import load_model

REAL = ["minilm-l6", "smollm2-135m"]


def tiny_llama_folder(folder: pathlib.Path, *, tied: bool, seed: int = 0, torch_dtype: str = "float32"
                      ) -> pathlib.Path:
  """A 2-layer LLaMA HF folder (GQA 4/2 heads, hidden 16) with random weights and a stand-in tokenizer file."""
  rng = np.random.default_rng(seed)
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
            "intermediate_size": 24, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
            "vocab_size": 10, "tie_word_embeddings": tied, "rms_norm_eps": 1e-6, "torch_dtype": torch_dtype}
  shapes = {"model.embed_tokens.weight": (10, 16), "model.norm.weight": (16,)}
  if not tied:
    shapes["lm_head.weight"] = (10, 16)
  for layer in range(2):
    p = f"model.layers.{layer}."
    shapes.update({p + "self_attn.q_proj.weight": (16, 16), p + "self_attn.k_proj.weight": (8, 16),
                   p + "self_attn.v_proj.weight": (8, 16), p + "self_attn.o_proj.weight": (16, 16),
                   p + "mlp.gate_proj.weight": (24, 16), p + "mlp.up_proj.weight": (24, 16),
                   p + "mlp.down_proj.weight": (16, 24), p + "input_layernorm.weight": (16,),
                   p + "post_attention_layernorm.weight": (16,)})
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(config))
  (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
  safetensors.numpy.save_file({n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()},
                              folder / "model.safetensors")
  return folder


@pytest.fixture(scope="module")
def real_models():
  return {alias: load_model(alias) for alias in REAL}


@pytest.fixture
def tiny(tmp_path):
  return load_model(str(tiny_llama_folder(tmp_path / "src", tied=False)))


def assert_same_model(a, b):
  assert a.layout == b.layout
  assert a.params.keys() == b.params.keys()
  for name, array in a.params.items():
    assert b.params[name].dtype == array.dtype and np.array_equal(b.params[name], array), name
  assert a.tokenizer_files == b.tokenizer_files


@pytest.mark.parametrize("alias", REAL, ids=REAL)
def test_real_model_round_trip_is_bit_exact(real_models, tmp_path, alias):
  model = real_models[alias]
  out = export_hf(model.params, model.layout, model.tokenizer_files, tmp_path / "out")
  assert out == (tmp_path / "out").absolute()
  assert_same_model(model, load_model(str(out)))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind


def test_gguf_export_is_what_llama_for_causal_lm_expects(real_models, tmp_path):
  model = real_models["smollm2-135m"]
  out = export_hf(model.params, model.layout, model.tokenizer_files, tmp_path / "smol")
  with safetensors.safe_open(out / "model.safetensors", "np") as f:
    names, metadata = set(f.keys()), f.metadata()
  assert metadata == {"format": "pt"}
  assert "lm_head.weight" not in names and len(names) == 1 + 1 + 30 * 9  # tied: embeddings, norm, 9 per block
  config = json.loads((out / "config.json").read_text())
  assert config["tie_word_embeddings"] is True and config["architectures"] == ["LlamaForCausalLM"]
  import transformers  # pylint: disable=g-import-not-at-top
  hf_config = transformers.AutoConfig.from_pretrained(str(out))
  assert (hf_config.model_type, hf_config.num_key_value_heads, hf_config.head_dim) == ("llama", 3, 64)
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert hf_tok.decode(hf_tok("To be, or not to be")["input_ids"]) == "To be, or not to be"


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_tiny_llama_round_trip(tmp_path, tied):
  model = load_model(str(tiny_llama_folder(tmp_path / "src", tied=tied)))
  out = export_hf(model.params, model.layout, model.tokenizer_files, tmp_path / "out")
  assert_same_model(model, load_model(str(out)))
  assert ("lm_head.weight" in model.params) == (not tied)


def test_float16_export_rounds_each_weight_once(tiny, tmp_path):
  out = export_hf(tiny.params, tiny.layout, tiny.tokenizer_files, tmp_path / "half", dtype="float16")
  with safetensors.safe_open(out / "model.safetensors", "np") as f:
    assert {f.get_tensor(n).dtype for n in f.keys()} == {np.dtype(np.float16)}
  back = load_model(str(out))
  for name, array in tiny.params.items():
    np.testing.assert_array_equal(back.params[name], array.astype(np.float16).astype(np.float32), err_msg=name)
  assert back.layout.config["torch_dtype"] == "float16"


def test_config_records_the_stored_dtype(tmp_path):
  model = load_model(str(tiny_llama_folder(tmp_path / "src", tied=True, torch_dtype="bfloat16")))
  back = load_model(str(export_hf(model.params, model.layout, model.tokenizer_files, tmp_path / "out")))
  assert back.layout.config == {**model.layout.config, "torch_dtype": "float32"}
  assert all(np.array_equal(back.params[n], a) for n, a in model.params.items())


def test_accepts_jax_arrays(tiny, tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = {n: jnp.asarray(a) for n, a in tiny.params.items()}
  out = export_hf(params, tiny.layout, tiny.tokenizer_files, tmp_path / "out")
  assert_same_model(tiny, load_model(str(out)))
  half = {n: jnp.asarray(a, jnp.bfloat16) for n, a in tiny.params.items()}
  back = load_model(str(export_hf(half, tiny.layout, tiny.tokenizer_files, tmp_path / "bf16")))
  for name, array in half.items():
    np.testing.assert_array_equal(back.params[name], np.asarray(array, np.float32), err_msg=name)


def test_refuses_non_empty_out_dir_unless_overwrite(tiny, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(ExportError, match=r"out.*not empty.*overwrite=True"):
    export_hf(tiny.params, tiny.layout, tiny.tokenizer_files, out)
  assert (out / "keep.txt").read_text() == "mine"
  export_hf(tiny.params, tiny.layout, tiny.tokenizer_files, out, overwrite=True)
  assert not (out / "keep.txt").exists()
  assert_same_model(tiny, load_model(str(out)))
  (tmp_path / "file").write_text("x")
  with pytest.raises(ExportError, match="not a folder"):
    export_hf(tiny.params, tiny.layout, tiny.tokenizer_files, tmp_path / "file", overwrite=True)
  with pytest.raises(ExportError, match="cannot create a folder next to it"):
    export_hf(tiny.params, tiny.layout, tiny.tokenizer_files, tmp_path / "file" / "sub")
  empty = tmp_path / "empty"
  empty.mkdir()
  export_hf(tiny.params, tiny.layout, tiny.tokenizer_files, empty)  # an empty folder is fine
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "out", "src"]


def test_failure_mid_write_leaves_nothing_that_looks_valid(tiny, tmp_path, monkeypatch):
  def fail(self, data):
    raise OSError("disk full")

  export_hf(tiny.params, tiny.layout, tiny.tokenizer_files, tmp_path / "old")
  other = {n: 2 * a for n, a in tiny.params.items()}  # what the failed overwrites would have written
  monkeypatch.setattr(pathlib.Path, "write_bytes", fail)
  with pytest.raises(ExportError, match=r"new: writing failed, nothing was changed there \(disk full\)"):
    export_hf(tiny.params, tiny.layout, tiny.tokenizer_files, tmp_path / "new")
  with pytest.raises(ExportError, match="disk full"):
    export_hf(other, tiny.layout, tiny.tokenizer_files, tmp_path / "old", overwrite=True)
  monkeypatch.undo()
  real_replace, calls = os.replace, []

  def fail_second_replace(src, dst):  # the swap: moving the old folder aside works, moving the new one in fails
    calls.append(dst)
    if len(calls) == 2:
      raise OSError("rename failed")
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", fail_second_replace)
  with pytest.raises(ExportError, match="rename failed"):
    export_hf(other, tiny.layout, tiny.tokenizer_files, tmp_path / "old", overwrite=True)
  monkeypatch.undo()
  assert len(calls) == 3  # aside, (failed) in, restored
  assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "src"]  # no "new", no temporary folders
  assert_same_model(tiny, load_model(str(tmp_path / "old")))  # the previous export is intact


def _drop(params, layout, tok):
  del params["model.layers.1.mlp.up_proj.weight"]
  return ExportError, r"missing 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"


def _reshape(params, layout, tok):
  params["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 16), np.float32)
  return ShapeError, r"model\.layers\.0\.self_attn\.k_proj\.weight.*\(16, 16\).*\(8, 16\)"


def _transpose(params, layout, tok):
  name = "model.layers.1.mlp.down_proj.weight"
  params[name] = params[name].T.copy()
  return ShapeError, r"model\.layers\.1\.mlp\.down_proj\.weight.*\(24, 16\).*\(16, 24\)"


def _extra(params, layout, tok):
  params["model.layers.0.self_attn.q_norm.weight"] = np.ones(4, np.float32)
  return ExportError, r"unexpected tensor 'model\.layers\.0\.self_attn\.q_norm\.weight'"


def _nan(params, layout, tok):
  params["model.norm.weight"] = np.full(16, np.nan, np.float32)
  return NonFiniteError, r"model\.norm\.weight.*16 NaN/inf"


def _int_weights(params, layout, tok):
  params["model.norm.weight"] = np.ones(16, np.int32)
  return ExportError, r"model\.norm\.weight.*int32.*floating"


def _bad_tokenizer_name(params, layout, tok):
  tok["../evil.json"] = b"{}"
  return ExportError, r"'\.\./evil\.json' is not a plain file name"


def _tokenizer_overrides_config(params, layout, tok):
  tok["config.json"] = b"{}"
  return ExportError, r"'config\.json' is not a plain file name other than config\.json"


def _layout_disagrees_with_config(params, layout, tok):
  return ExportError, r"layout .*3 layers.*implies family 'llama', 2 layers"


def _unknown_model_type(params, layout, tok):
  return ExportError, r"model_type 'falcon'.*supported model_type values: bert, gemma2"


LAYOUT_EDITS = {
    "_layout_disagrees_with_config": lambda layout: dataclasses.replace(layout, num_layers=3),
    "_unknown_model_type": lambda layout: dataclasses.replace(layout, config={**layout.config,
                                                                             "model_type": "falcon"}),
}
EXPORT_ERRORS = [_drop, _reshape, _transpose, _extra, _nan, _int_weights, _bad_tokenizer_name,
                 _tokenizer_overrides_config, _layout_disagrees_with_config, _unknown_model_type]


@pytest.mark.parametrize("case", EXPORT_ERRORS, ids=[c.__name__[1:] for c in EXPORT_ERRORS])
def test_export_errors_write_nothing(tiny, tmp_path, case):
  params, tok = dict(tiny.params), dict(tiny.tokenizer_files)
  layout = LAYOUT_EDITS.get(case.__name__, lambda x: x)(tiny.layout)
  error, pattern = case(params, layout, tok)
  with pytest.raises(error, match=pattern):
    export_hf(params, layout, tok, tmp_path / "out")
  assert not (tmp_path / "out").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_float16_overflow_is_refused(tiny, tmp_path):
  params = dict(tiny.params)
  params["model.layers.0.mlp.up_proj.weight"] = params["model.layers.0.mlp.up_proj.weight"] * 1e5
  with pytest.raises(NonFiniteError, match=r"cast to float16.*model\.layers\.0\.mlp\.up_proj\.weight"):
    export_hf(params, tiny.layout, tiny.tokenizer_files, tmp_path / "out", dtype="float16")
  assert not (tmp_path / "out").exists()


def test_unsupported_dtype(tiny, tmp_path):
  with pytest.raises(ConfigError, match=r"export dtype 'int8'.*float32, float16"):
    export_hf(tiny.params, tiny.layout, tiny.tokenizer_files, tmp_path / "out", dtype="int8")


@pytest.mark.torch
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_transformers_loads_every_tensor(tmp_path, tied):
  """Where torch is installed (not a dependency of macjax): LlamaForCausalLM uses every exported tensor as is."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  model = load_model(str(tiny_llama_folder(tmp_path / "src", tied=tied)))
  out = export_hf(model.params, model.layout, model.tokenizer_files, tmp_path / "out")
  hf, info = transformers.LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
  assert not any(info.values()), info
  state = hf.state_dict()
  for name, array in model.params.items():
    np.testing.assert_array_equal(state[name].numpy(), array, err_msg=name)
  if tied:
    np.testing.assert_array_equal(state["lm_head.weight"].numpy(), model.params["model.embed_tokens.weight"])
