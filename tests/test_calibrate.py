"""Tests of macjax.calibrate: input statistics of every block matrix against an independent eager witness.

The witness (:func:`_llama_inputs`, :func:`_bert_inputs`) is a plain numpy float64 loop over layers written here from
the architectures' definitions (RMSNorm / rotate-half RoPE / grouped-query causal attention / SiLU-gated MLP;
post-LN BERT with masked attention and exact GELU), sharing no code with :mod:`macjax.evaluate`. The toolkit runs
float32 through ``jit`` and sums ``XᵀX`` per batch in float32: relative differences are ~1e-6; the tolerance
(1e-4 of the largest entry) is far below what a wrong site gives (another site's statistics differ at O(1)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import TINY_LLAMA_CONFIG, tiny_llama_params
from macjax.calibrate import (InputStats, accumulate_statistics, by_matrix, hessian, input_statistics,
                              output_energy, relative_output_error)
from macjax.errors import ConfigError, ShapeError
from macjax.evaluate import text
from macjax.load import families
from macjax.load.layout import Model

RTOL = 1e-4  # of the largest |entry| of each statistic (measured ~1e-6)
# Which witness rows feed each role, written here from the architectures (not imported from the code under test).
WITNESS_SITE = {"q": "attn", "k": "attn", "v": "attn", "o": "context", "gate": "mlp", "up": "mlp", "down": "act"}

from conftest import TINY_BERT as TINY_BERT_CONFIG, tiny_bert_params  # pylint: disable=g-import-not-at-top




def _layout(params, config):
  return families.build_layout(families.family_spec(config, names=frozenset(params)), config)


# ----------------------------------------------------------------------------------------------------------------
# The witness: eager numpy float64, one layer at a time, returning each site's input rows.


def _softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _llama_inputs(params, config, tokens):
  """``[{site: X [batch*seq, in]} per layer]`` of a LLaMA model, float64."""
  P = {k: np.asarray(v, np.float64) for k, v in params.items()}
  n_h, n_kv, d = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
  eps = config["rms_norm_eps"]
  b, s = tokens.shape
  rms = lambda x, g: g * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
  freq = config["rope_theta"] ** (-np.arange(0, d, 2) / d)
  ang = np.arange(s)[:, None] * np.concatenate([freq, freq])[None, :]   # [s, d]

  def rope(t):  # [b, s, heads, d]
    rot = np.concatenate([-t[..., d // 2:], t[..., :d // 2]], axis=-1)
    return t * np.cos(ang)[None, :, None] + rot * np.sin(ang)[None, :, None]

  x = P["model.embed_tokens.weight"][tokens]
  out = []
  for layer in range(config["num_hidden_layers"]):
    g = lambda n: P[f"model.layers.{layer}.{n}"]
    h = rms(x, g("input_layernorm.weight"))
    q = rope((h @ g("self_attn.q_proj.weight").T).reshape(b, s, n_h, d))
    k = rope((h @ g("self_attn.k_proj.weight").T).reshape(b, s, n_kv, d))
    v = (h @ g("self_attn.v_proj.weight").T).reshape(b, s, n_kv, d)
    context = np.zeros((b, s, n_h, d))
    for head in range(n_h):
      kv = head // (n_h // n_kv)
      scores = np.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kv]) / math.sqrt(d)
      scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
      context[:, :, head] = np.einsum("bqk,bkd->bqd", _softmax(scores), v[:, :, kv])
    context = context.reshape(b, s, n_h * d)
    x = x + context @ g("self_attn.o_proj.weight").T
    h2 = rms(x, g("post_attention_layernorm.weight"))
    gate, up = h2 @ g("mlp.gate_proj.weight").T, h2 @ g("mlp.up_proj.weight").T
    act = gate / (1 + np.exp(-gate)) * up
    x = x + act @ g("mlp.down_proj.weight").T
    out.append({site: a.reshape(b * s, -1) for site, a in
                (("attn", h), ("context", context), ("mlp", h2), ("act", act))})
  return out


def _bert_inputs(params, config, tokens, mask, prefix=""):
  """``[{site: X [real tokens, in]} per layer]`` of a BERT model (padded rows dropped), float64."""
  P = {k[len(prefix):]: np.asarray(v, np.float64) for k, v in params.items()}
  heads, eps = config["num_attention_heads"], config["layer_norm_eps"]
  b, s = tokens.shape
  d = config["hidden_size"] // heads
  erf = np.vectorize(math.erf)

  def ln(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * P[name + ".weight"] + P[name + ".bias"]

  dense = lambda x, name: x @ P[name + ".weight"].T + P[name + ".bias"]
  x = (P["embeddings.word_embeddings.weight"][tokens] + P["embeddings.position_embeddings.weight"][:s][None]
       + P["embeddings.token_type_embeddings.weight"][0])
  x = ln(x, "embeddings.LayerNorm")
  real = mask.astype(bool).reshape(-1)
  out = []
  for layer in range(config["num_hidden_layers"]):
    pre = f"encoder.layer.{layer}."
    q, k, v = (dense(x, pre + f"attention.self.{n}").reshape(b, s, heads, d) for n in ("query", "key", "value"))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    scores = np.where(mask.astype(bool)[:, None, None, :], scores, -np.inf)
    context = np.einsum("bhqk,bkhd->bqhd", _softmax(scores), v).reshape(b, s, heads * d)
    x1 = ln(x + dense(context, pre + "attention.output.dense"), pre + "attention.output.LayerNorm")
    z = dense(x1, pre + "intermediate.dense")
    act = 0.5 * z * (1 + erf(z / math.sqrt(2)))
    out.append({site: a.reshape(b * s, -1)[real] for site, a in
                (("attn", x), ("context", context), ("mlp", x1), ("act", act))})
    x = ln(x1 + dense(act, pre + "output.dense"), pre + "output.LayerNorm")
  return out


def _witness_stats(per_batch_inputs):
  """``[{site: (S, absmax, n)} per layer]`` from the witness' rows of every batch."""
  layers = len(per_batch_inputs[0])
  out = []
  for layer in range(layers):
    sites = {}
    for site in ("attn", "context", "mlp", "act"):
      X = np.concatenate([batch[layer][site] for batch in per_batch_inputs])
      sites[site] = (X.T @ X / len(X), np.abs(X).max(axis=0), len(X))
    out.append(sites)
  return out


def _assert_close(got, want, what):
  scale = max(float(np.max(np.abs(want))), 1e-30)
  err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
  assert err <= RTOL * scale, f"{what}: max |diff| {err:.3g} > {RTOL} x {scale:.3g}"


def _check_against_witness(stats, layout, witness):
  for info in layout.matrices:
    want_s, want_a, want_n = witness[info.layer][WITNESS_SITE[info.role]]
    got = stats[info.name]
    assert got.count == want_n, info.name
    assert got.second_moment.dtype == np.float32 and got.absmax.dtype == np.float32
    _assert_close(got.second_moment, want_s, f"{info.name} second_moment")
    _assert_close(got.absmax, want_a, f"{info.name} absmax")


# ----------------------------------------------------------------------------------------------------------------
# Statistics against the witness.


def _llama_batches(seed=0, shapes=((3, 16), (3, 16))):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, TINY_LLAMA_CONFIG["vocab_size"], size=s).astype(np.int32) for s in shapes]


def _bert_batches(seed=0):
  rng = np.random.default_rng(seed)
  vocab = TINY_BERT_CONFIG["vocab_size"]
  out = []
  for lengths, width in (((5, 12, 9), 12), ((16, 3), 16)):  # padding in both; two compiled widths
    tokens = rng.integers(1, vocab, size=(len(lengths), width)).astype(np.int32)
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    out.append((tokens * mask, mask))
  return out


def test_llama_statistics_match_eager_witness():
  params, config = tiny_llama_params(), TINY_LLAMA_CONFIG
  layout = _layout(params, config)
  batches = _llama_batches()
  stats = by_matrix(layout, accumulate_statistics("llama", params, config, [(t, None) for t in batches]))
  assert set(stats) == layout.matrix_names
  _check_against_witness(stats, layout, _witness_stats([_llama_inputs(params, config, t) for t in batches]))


@pytest.mark.parametrize("prefix", ["", "bert."], ids=["plain", "bert-prefix"])
def test_bert_statistics_match_eager_witness_and_ignore_padding(prefix):
  params, config = tiny_bert_params(prefix=prefix), TINY_BERT_CONFIG
  layout = _layout(params, config)
  batches = _bert_batches()
  stats = by_matrix(layout, accumulate_statistics("bert", params, config, batches))
  assert set(stats) == layout.matrix_names
  assert next(iter(stats.values())).count == sum(int(m.sum()) for _, m in batches)
  witness = _witness_stats([_bert_inputs(params, config, t, m, prefix) for t, m in batches])
  _check_against_witness(stats, layout, witness)


def test_statistics_do_not_depend_on_batching():
  params, config = tiny_llama_params(seed=1), TINY_LLAMA_CONFIG
  (whole,) = _llama_batches(seed=2, shapes=((4, 16),))
  one = accumulate_statistics("llama", params, config, [(whole, None)])
  split = accumulate_statistics("llama", params, config, [(whole[:1], None), (whole[1:], None)])
  for site in one:
    for a, b in zip(one[site], split[site]):
      assert a.count == b.count == whole.size
      # the forward compiles per batch shape: float32 rounding differs, nothing more
      np.testing.assert_allclose(a.second_moment, b.second_moment, atol=1e-5 * np.abs(a.second_moment).max())
      np.testing.assert_allclose(a.absmax, b.absmax, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_sharing_shapes_symmetry_psd_and_absmax(family):
  if family == "llama":
    params, config = tiny_llama_params(), TINY_LLAMA_CONFIG
    batches = [(t, None) for t in _llama_batches()]
  else:
    params, config = tiny_bert_params(), TINY_BERT_CONFIG
    batches = _bert_batches()
  layout = _layout(params, config)
  stats = by_matrix(layout, accumulate_statistics(family, params, config, batches))
  for layer in range(layout.num_layers):
    by_role = {m.role: stats[m.name] for m in layout.matrices if m.layer == layer}
    assert by_role["q"] is by_role["k"] is by_role["v"]
    if family == "llama":
      assert by_role["gate"] is by_role["up"]
    distinct = {id(by_role[r]) for r in ("q", "o", "up", "down")}
    assert len(distinct) == 4, "attention input, context, MLP input and activation are four different inputs"
  for m in layout.matrices:
    s = stats[m.name]
    assert isinstance(s, InputStats)
    assert s.second_moment.shape == (m.shape[1], m.shape[1]) and s.absmax.shape == (m.shape[1],)
    np.testing.assert_array_equal(s.second_moment, s.second_moment.T)
    eig = np.linalg.eigvalsh(s.second_moment.astype(np.float64))
    assert eig.min() >= -1e-6 * eig.max(), f"{m.name}: not PSD (min eigenvalue {eig.min():.3g})"
    assert np.all(s.absmax.astype(np.float64) ** 2 >= np.diag(s.second_moment) * (1 - 1e-6)), m.name


# ----------------------------------------------------------------------------------------------------------------
# End to end on text: a tiny LLaMA with MiniLM's tokenizer (its vocabulary size), and MiniLM itself.


@pytest.fixture(scope="module")
def minilm():
  from macjax.load import load_model
  return load_model("minilm-l6")


def test_input_statistics_llama_uses_calibration_windows(minilm, monkeypatch):
  config = dict(TINY_LLAMA_CONFIG, vocab_size=minilm.layout.config["vocab_size"])
  params = tiny_llama_params(config=config)
  model = Model(params=params, layout=_layout(params, config), source="tiny", tokenizer_files=minilm.tokenizer_files)
  splits = []
  windows = text.token_windows
  monkeypatch.setattr(text, "token_windows", lambda tok, split, **kw: splits.append(split) or windows(tok, split, **kw))
  stats = input_statistics(model, n_seq=3, seq_len=16, batch_size=2)
  assert splits == ["calibration"]
  tokens = windows(text.tokenizer_for(minilm), "calibration", n_seq=3, seq_len=16)
  witness = _witness_stats([_llama_inputs(params, config, tokens[:2]), _llama_inputs(params, config, tokens[2:])])
  _check_against_witness(stats, model.layout, witness)


def test_minilm_smoke_every_matrix_finite_and_calibration_split(minilm, monkeypatch):
  splits = []
  sentences = text.sentences
  monkeypatch.setattr(text, "sentences", lambda split, n: splits.append(split) or sentences(split, n))
  stats = input_statistics(minilm, n_sentences=24)
  assert splits == ["calibration"]
  assert set(stats) == minilm.layout.matrix_names and len(stats) == 36
  for m in minilm.layout.matrices:
    s = stats[m.name]
    assert s.count > 0 and s.second_moment.shape == (m.shape[1], m.shape[1])
    assert np.all(np.isfinite(s.second_moment)) and np.all(np.isfinite(s.absmax))
    assert np.trace(s.second_moment) > 0


def test_calibration_text_is_disjoint_from_heldout():
  assert not set(text.CALIBRATION_WORKS) & set(text.HELDOUT_WORKS)
  calibration = set(text.sentences("calibration", 256))
  heldout = set(text.sentences("heldout", 256))
  assert not calibration & heldout
  held_texts = text.split_texts("heldout")
  for passage in list(calibration)[:64]:  # no calibration passage occurs verbatim anywhere in the held-out works
    if len(passage) > 80:
      assert not any(passage in " ".join(t.split()) for t in held_texts), passage[:60]


# ----------------------------------------------------------------------------------------------------------------
# Helpers and errors.


def test_output_energy_hessian_and_relative_error_match_definitions():
  rng = np.random.default_rng(3)
  X = rng.standard_t(4, size=(200, 6))
  stats = InputStats((X.T @ X / len(X)).astype(np.float32), np.abs(X).max(0).astype(np.float32), len(X))
  W = rng.normal(size=(5, 6))
  W_hat = W + 0.01 * rng.normal(size=W.shape)
  np.testing.assert_allclose(output_energy(stats, W), np.mean(np.sum((X @ W.T) ** 2, axis=1)), rtol=1e-6)
  np.testing.assert_allclose(hessian(stats), X.T @ X, rtol=1e-6)
  want = math.sqrt(np.sum((X @ (W_hat - W).T) ** 2) / np.sum((X @ W.T) ** 2))
  np.testing.assert_allclose(relative_output_error(stats, W, W_hat), want, rtol=1e-5)
  assert relative_output_error(stats, W, W) == 0.0
  with pytest.raises(ShapeError, match=r"\(out, 6\)"):
    output_energy(stats, W.T)
  with pytest.raises(ShapeError, match="equal shapes"):
    relative_output_error(stats, W, W[:3])


def test_errors_name_what_was_expected():
  params, config = tiny_llama_params(), TINY_LLAMA_CONFIG
  (tokens,) = _llama_batches(shapes=((1, 8),))
  with pytest.raises(ConfigError, match="'falcon'"):
    accumulate_statistics("falcon", params, config, [(tokens, None)])
  with pytest.raises(ConfigError, match="no batches"):
    accumulate_statistics("llama", params, config, [])
  with pytest.raises(ShapeError, match="mask holding zeros"):
    accumulate_statistics("llama", params, config, [(tokens, np.zeros_like(tokens))])
  bparams = tiny_bert_params()
  t = np.ones((2, 4), np.int32)
  with pytest.raises(ConfigError, match="masked out"):
    accumulate_statistics("bert", bparams, TINY_BERT_CONFIG, [(t, np.zeros_like(t))])
  with pytest.raises(ShapeError, match="attention mask"):
    accumulate_statistics("bert", bparams, TINY_BERT_CONFIG, [(t, np.ones((2, 3), np.int32))])
  layout = _layout(params, config)
  per_site = accumulate_statistics("llama", params, config, [(tokens, None)])
  per_site["act"] = per_site["mlp"]  # down_proj takes intermediate (64) inputs, not hidden (32)
  with pytest.raises(ShapeError, match=r"down_proj.*64 inputs.*\(32, 32\)"):
    by_matrix(layout, per_site)


@pytest.mark.slow
def test_smollm2_every_matrix_has_finite_statistics():
  pytest.importorskip("gguf")
  from macjax.load import load_model
  model = load_model("smollm2-135m")
  stats = input_statistics(model, n_seq=8, seq_len=128)
  assert set(stats) == model.layout.matrix_names and len(stats) == 210
  assert len({id(s) for s in stats.values()}) == 4 * model.layout.num_layers
  for m in model.layout.matrices:
    s = stats[m.name]
    assert s.count == 8 * 128 and s.second_moment.shape == (m.shape[1], m.shape[1])
    assert np.all(np.isfinite(s.second_moment)) and np.all(np.isfinite(s.absmax)) and np.trace(s.second_moment) > 0
    assert np.all(s.absmax.astype(np.float64) ** 2 >= np.diag(s.second_moment) * (1 - 1e-6)), m.name


# --- probes: sensitivity at the model output ----------------------------------------------------------------

def test_probe_distortion_is_zero_for_exact_and_grows_with_the_perturbation(tiny_llama_dir):
  from macjax.calibrate import probe  # pylint: disable=g-import-not-at-top
  from macjax.evaluate import Evaluator  # pylint: disable=g-import-not-at-top
  from macjax.load import load_model  # pylint: disable=g-import-not-at-top
  model = load_model(str(tiny_llama_dir))
  ev = Evaluator(model, n_seq=2, seq_len=32, split="calibration")
  rng = np.random.default_rng(0)
  names = [m.name for m in model.layout.by_role("v")]
  noise = {n: rng.normal(size=model.params[n].shape).astype(np.float32) for n in names}
  reps = {f"x{a}": {n: model.params[n] + a * 0.05 * noise[n] for n in names} for a in (0, 1, 2)}
  d = {k: probe.output_distortion(ev, model.params, r, {"v": names})["v"] for k, r in reps.items()}
  assert abs(d["x0"]) < 1e-6 < d["x1"] < d["x2"]
  with pytest.raises(ConfigError, match="no replacement"):
    probe.output_distortion(ev, model.params, {}, {"v": names})
  with pytest.raises(ShapeError, match="shape"):
    probe.output_distortion(ev, model.params, {names[0]: np.zeros((2, 2))}, {"v": names[:1]})


def test_evaluator_split_selects_the_text():
  from macjax.evaluate import Evaluator  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="split"):
    Evaluator(None, split="test")


@pytest.mark.parametrize("floor", [1e-3, 0.5])
def test_separable_estimates_sum_to_the_role_probes(floor):
  from macjax.calibrate import probe  # pylint: disable=g-import-not-at-top
  by_role = {"q": 1.0, "v": 3.0, "o": 0.0}
  by_layer = {0: 1.0, 1: 3.0}
  members = {f"{r}{l}": (r, l) for r in by_role for l in by_layer}
  d = probe.separable(by_role, by_layer, members, floor=floor)
  assert all(v > 0 for v in d.values())  # the zero probe is floored, not free
  clipped = {r: max(v, floor * 3.0) for r, v in by_role.items()}
  for r in by_role:  # each role's estimates sum to its (clipped) probe
    assert math.isclose(d[f"{r}0"] + d[f"{r}1"], clipped[r], rel_tol=1e-9)
  assert math.isclose(d["v1"] / d["v0"], 3.0 / max(1.0, floor * 3.0), rel_tol=1e-9)
  with pytest.raises(ConfigError, match="no probe"):
    probe.separable({"q": 1.0}, {0: 1.0}, {"a": ("k", 0)})
  with pytest.raises(ConfigError, match="positive"):
    probe.separable({"q": 0.0}, {0: 1.0}, {"a": ("q", 0)})


@pytest.mark.parametrize("floor", [1e-3, 0.5])
def test_by_size_splits_each_group_probe_by_weights(floor):
  from macjax.calibrate import probe  # pylint: disable=g-import-not-at-top
  by_group = {"q": 1.0, "v": 4.0, "o": 0.0}
  groups = {"q": ["q0", "q1"], "v": ["v0"], "o": ["o0", "o1"]}
  sizes = {"q0": 30, "q1": 10, "v0": 7, "o0": 1, "o1": 3}
  d = probe.by_size(by_group, groups, sizes, floor=floor)
  assert set(d) == set(sizes) and all(v > 0 for v in d.values())  # the zero probe is floored, not free
  for g, names in groups.items():  # a group's estimates sum to its clipped probe, equal per weight within it
    assert math.isclose(sum(d[n] for n in names), max(by_group[g], floor * 4.0), rel_tol=1e-9)
    per_weight = {d[n] / sizes[n] for n in names}
    assert max(per_weight) - min(per_weight) <= 1e-12 * max(per_weight)
  # the per-layer-free special case of separable: one layer
  one = probe.separable(by_group, {0: 1.0}, {g: (g, 0) for g in groups}, floor=floor)
  for g, names in groups.items():
    assert math.isclose(sum(d[n] for n in names), one[g], rel_tol=1e-9)
  with pytest.raises(ConfigError, match="no probe"):
    probe.by_size({"q": 1.0}, {"k": ["a"]}, {"a": 1})
  with pytest.raises(ConfigError, match="positive"):
    probe.by_size({"q": 0.0}, {"q": ["a"]}, {"a": 1})
