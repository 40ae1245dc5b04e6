"""Rotation vs alignment, measured: weight statistics per coordinate system, and rate at matched distortion.

Issue 3's "Measured, not assumed" report, on the two default models (``minilm-l6``, ``smollm2-135m``).

Part A — statistics (no coding). For each matrix family (role q, k, v, o, gate, up, down: the model's layers of one
role stacked ``f32[L, out, in]``) and each coordinate system

* ``identity``; ``hadamard`` (randomized Hadamard, input side); ``orthogonal`` (random orthogonal, input side) —
  rotations drawn from a seed, 0 state bits;
* ``pca-matrix`` (KLT of the weight's input side, one ``in×in`` basis per matrix); ``pca-head`` (one
  ``head_dim×head_dim`` basis per attention head: q/k/v on the output side where the heads are, o on the input side;
  not defined for MLP matrices); ``pca-group`` (one basis per group of ``--group`` input channels) — source
  ``weight``, bases stored in float16 and counted;
* ``learned-kurtosis`` / ``learned-rate`` (Cayley rotation of the input side from a randomized Hadamard start, Adam for
  ``--learned-steps`` steps, KurTail-style kurtosis or the differentiable code entropy at ``step = rms/4``; skew
  parameters stored in float16 and counted; fitted on ``--learned-layers`` evenly spaced layers only, for time),

it fits one state per layer (``jax.vmap`` of ``init``/``apply`` over the family's stack), and reports the layer mean
of: Pearson kurtosis, max/RMS, effective rank (Roy & Vetterli), top-1% energy ratio, the order-0 entropy of the codes
``round(x / (std/4))`` (the step of DESIGN.md's first measurement) and of the codes of the pipeline's own quantizer at
its default step (``uniform``: ``fp16(0.0625 · RMS(row))`` per row), the relative weight error each quantizer leaves
(so that equal step can be read as equal distortion, or not), and the state bits per weight of the transform. The
``ΔH`` columns are entropy minus identity's entropy on the same layers; ``net`` = ``−ΔH − state bits/weight``: > 0
means the transform paid for its stored state at that step (entropy is what an ideal order-0 coder spends; table
costs are not in it). One-sided orthogonal changes of coordinates leave the singular values, hence the effective rank,
unchanged: that column is a sanity check, not a finding.

Part B — through the pipeline (``macjax.pipeline.job.run_compress``: every byte on disk counted, bit-exact decode
checked). For a few chains (``none``, ``hadamard``, ``pca-matrix``, ``pca-head`` (input side, blocks of head_dim),
``learned-rate``, and for SmolLM2 the LLaMA invariance rewrite: residual + value-head Hadamard, untied head) at two
or three quantizer steps, it records block bits/weight (codes + tables + scales + transform state), relative weight
error of the block matrices, and model quality (MiniLM: mean cosine of sentence embeddings; SmolLM2: perplexity change
and KL on held-out text), with embeddings and LM head kept in float32 so that quality reflects the block matrices only
(as in DESIGN.md's baselines). Rates are compared at matched distortion: each chain's bits are interpolated (linearly
in ``log`` distortion between its two nearest points) at the weight errors and quality levels the ``none`` chain
reached. The same chains are also run with GPTQ act-order in place of round-to-nearest (``none+gptq``,
``hadamard+gptq``, ``rewrite+gptq``: ``quantize.gptq = true, gptq_order = "descending"``, calibration at the
pipeline's defaults), and a GPTQ chain's rates are matched against ``none+gptq``.

Part P — a probe (SmolLM2 only; ``--parts P``) of why an input-side rotation costs quality under plain per-row
rounding although it leaves the weight error unchanged: the layer-output error ``tr(ΔW S ΔWᵀ)`` of every block
matrix quantized in identity vs Hadamard coordinates (and with the RMSNorm gains folded in, as the invariance
rewrite does), split into the few input channels with the largest ``diag(S)`` and the rest, and the model-level
KL of the original model carrying each role's error from one coordinate system or the other.

Run (2 shared cores; ``--quick`` takes a few minutes, the default about an hour):

    .venv/bin/python benchmarks/transforms_report.py --quick
    .venv/bin/python benchmarks/transforms_report.py [--models minilm-l6,smollm2-135m] [--parts A,B] [--resume]

Results go to ``benchmarks/results/transforms_report.{json,md}`` (``transforms_quick.*`` with ``--quick``); with
``--resume`` finished units already in the JSON are kept and skipped, so a long run can be done in pieces;
``--render`` re-renders the markdown from the JSON, measuring nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import shutil
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from macjax import transforms as T
from macjax.diagnose import matrix_stats
from macjax.load import load_model
from macjax.quantize import uniform
from macjax.pipeline import rd

import _harness

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
MODELS = ("minilm-l6", "smollm2-135m")
COORDINATES = ("identity", "hadamard", "orthogonal", "pca-matrix", "pca-head", "pca-group", "learned-kurtosis",
               "learned-rate")
ROTATIONS = ("hadamard", "orthogonal", "learned-kurtosis", "learned-rate")
ALIGNMENTS = ("pca-matrix", "pca-head", "pca-group")
PIPELINE_DEFAULT_STEP = 0.0625  # configs/default.toml, quantize.step
STD_STEP = 0.25  # DESIGN.md's first measurement: step = std/4
GPTQ_SUFFIX = "+gptq"
GPTQ_QUANTIZE = {"gptq": True, "gptq_order": "descending"}
GPTQ_BASES = ("none", "hadamard", "rewrite")
GPTQ_STEPS = (0.25, 0.5)
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------------------------------
# Part A: statistics


def head_dim(model) -> int:
  """The attention head size from the model's HF config."""
  cfg = model.layout.config
  return int(cfg.get("head_dim") or int(cfg["hidden_size"]) // int(cfg["num_attention_heads"]))


def coordinate_transform(name: str, role: str, *, head: int, group: int, learned_steps: int):
  """The :class:`~macjax.transforms.WeightTransform` of one coordinate system for one role, or None if undefined."""
  if name == "identity":
    return T.identity()
  if name == "hadamard":
    return T.randomized_hadamard(side="input")
  if name == "orthogonal":
    return T.random_orthogonal(side="input")
  if name == "pca-matrix":
    return T.pca(side="input", scope="matrix")
  if name == "pca-head":
    if role in ("q", "k", "v"):
      return T.pca(side="output", scope="head", block_size=head)
    if role == "o":
      return T.pca(side="input", scope="head", block_size=head)
    return None
  if name == "pca-group":
    return T.pca(side="input", scope="group", block_size=group)
  if name == "learned-kurtosis":
    return T.learned_rotation(side="input", objective="kurtosis", steps=learned_steps, init="hadamard")
  if name == "learned-rate":
    return T.learned_rotation(side="input", objective="rate", steps=learned_steps, init="hadamard",
                              step_rel=STD_STEP, max_code=128)
  raise ValueError(f"unknown coordinate system {name!r}; expected one of {COORDINATES}")


def codes_entropy(codes: np.ndarray) -> float:
  """Order-0 empirical entropy (bits/symbol) of integer codes: ``−Σ p_k log2 p_k``."""
  _, counts = np.unique(np.asarray(codes).reshape(-1), return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log2(p)).sum())


@functools.lru_cache(maxsize=4)
def _pipeline_quantizer(step: float):
  q = uniform(step=step)
  return jax.jit(q.quantize), jax.jit(q.dequantize)


def rel_error(W: np.ndarray, W_hat: np.ndarray) -> float:
  """``‖W − Ŵ‖ / ‖W‖`` in float64."""
  W = np.asarray(W, np.float64)
  return float(np.linalg.norm(W - np.asarray(W_hat, np.float64)) / np.linalg.norm(W))


def layer_statistics(W2: jax.Array, pipe_step: float) -> list[dict[str, float]]:
  """Per-layer statistics of a stack ``(L, out, in)`` of matrices in their new coordinates."""
  st = jax.jit(jax.vmap(functools.partial(matrix_stats, step_rel=STD_STEP)))(W2)
  quantize, dequantize = _pipeline_quantizer(pipe_step)
  rows = []
  for l in range(W2.shape[0]):
    x = np.asarray(W2[l], np.float64)
    std_step = STD_STEP * x.std()
    err_std = rel_error(x, np.round(x / std_step) * std_step)
    codes, meta = quantize(W2[l])
    rows.append({
        "kurtosis": float(st.kurtosis[l]), "max_to_rms": float(st.max_to_rms[l]),
        "effective_rank": float(st.effective_rank[l]), "top1_energy": float(st.top_energy_ratio[l]),
        "entropy_std4": float(st.code_entropy[l]), "rel_error_std4": err_std,
        "entropy_pipe": codes_entropy(np.asarray(codes)),
        "rel_error_pipe": rel_error(W2[l], dequantize(codes, meta)),
    })
  return rows


def family_coordinates(Ws: np.ndarray, layers: list[int], t, seed: int, pipe_step: float) -> dict[str, Any]:
  """Fits ``t`` per layer (vmapped), applies it, checks the round trip, and measures the result."""
  Ws = jnp.asarray(Ws, jnp.float32)
  keys = jax.vmap(lambda l: jax.random.fold_in(jax.random.PRNGKey(seed), l))(jnp.asarray(layers))
  t0 = time.perf_counter()
  states = jax.jit(jax.vmap(lambda W, k: t.init(W, key=k)))(Ws, keys)
  W2 = jax.jit(jax.vmap(t.apply))(Ws, states)
  jax.block_until_ready(W2)
  fit_s = time.perf_counter() - t0
  back = jax.jit(jax.vmap(t.inverse))(W2, states)
  roundtrip = float(jnp.max(jnp.abs(back - Ws)) / jnp.max(jnp.abs(Ws)))
  bits = int(t.state_bits(states))
  return {"layers": list(layers), "state_bits": bits, "weights": int(Ws.size),
          "state_bits_per_weight": bits / int(Ws.size), "roundtrip_max_rel": roundtrip, "fit_seconds": fit_s,
          "per_layer": layer_statistics(W2, pipe_step)}


def run_part_a(model_name: str, coords: list[str], args, results: dict, save) -> None:
  """Part A for one model: fills ``results["A"][model][coord][role]`` (skipping what is already there)."""
  model = load_model(model_name)
  head = head_dim(model)
  part = results.setdefault("A", {}).setdefault(model_name, {})
  meta = results.setdefault("A_meta", {})
  meta[model_name] = {"head_dim": head, "group": args.group, "num_layers": model.layout.num_layers,
                      "learned_steps": args.learned_steps, "std_step": STD_STEP, "pipe_step": PIPELINE_DEFAULT_STEP}
  all_layers = list(range(model.layout.num_layers))
  if args.layers:
    all_layers = _spaced(all_layers, args.layers)
  learned_layers = _spaced(all_layers, args.learned_layers)
  meta[model_name].update(layers=all_layers, learned_layers=learned_layers)
  for coord in coords:
    for role in ROLES:
      infos = model.layout.by_role(role)
      if not infos or role in part.get(coord, {}):
        continue
      t = coordinate_transform(coord, role, head=head, group=args.group, learned_steps=args.learned_steps)
      if t is None:
        continue
      layers = learned_layers if coord.startswith("learned") else all_layers
      by_layer = {m.layer: m for m in infos}
      Ws = np.stack([model.params[by_layer[l].name] for l in layers])
      t0 = time.perf_counter()
      rec = family_coordinates(Ws, layers, t, args.seed, PIPELINE_DEFAULT_STEP)
      rec["shape"] = list(Ws.shape[1:])
      part.setdefault(coord, {})[role] = rec
      print(f"  A {model_name} {coord:17s} {role:5s} {Ws.shape} {time.perf_counter() - t0:6.1f}s "
            f"H4 {np.mean([r['entropy_std4'] for r in rec['per_layer']]):.3f} "
            f"state {rec['state_bits_per_weight']:.3f} b/w", flush=True)
      save()


def _spaced(items: list[int], n: int) -> list[int]:
  if n <= 0 or n >= len(items):
    return list(items)
  idx = np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))
  return [items[i] for i in idx]


STAT_KEYS = ("kurtosis", "max_to_rms", "effective_rank", "top1_energy", "entropy_std4", "rel_error_std4",
             "entropy_pipe", "rel_error_pipe")


def summarize_a(part: dict) -> dict:
  """Per (coordinate, family) layer means, ΔH against identity on the same layers, net gains; plus an ``all`` row
  (means over the families present for that coordinate, weighted by weight count)."""
  ident = part.get("identity", {})
  out: dict[str, dict] = {}
  for coord, fams in part.items():
    rows = {}
    for role, rec in fams.items():
      row = {k: float(np.mean([r[k] for r in rec["per_layer"]])) for k in STAT_KEYS}
      row["state_bits_per_weight"] = rec["state_bits_per_weight"]
      row["weights"] = rec["weights"]
      row["layers"] = len(rec["layers"])
      if role in ident:
        ref = {l: r for l, r in zip(ident[role]["layers"], ident[role]["per_layer"])}
        for h in ("entropy_std4", "entropy_pipe"):
          base = float(np.mean([ref[l][h] for l in rec["layers"]]))
          row[f"d_{h}"] = row[h] - base
          row[f"net_{h}"] = -row[f"d_{h}"] - row["state_bits_per_weight"]
        for k in ("kurtosis", "max_to_rms", "top1_energy"):
          row[f"ref_{k}"] = float(np.mean([ref[l][k] for l in rec["layers"]]))
      rows[role] = row
    if rows:
      w = np.array([r["weights"] for r in rows.values()], np.float64)
      keys = [k for k in next(iter(rows.values())) if k not in ("weights", "layers")]
      rows["all"] = {k: float(np.sum(w * np.array([r.get(k, np.nan) for r in rows.values()])) / w.sum()) for k in keys}
      rows["all"]["weights"] = int(w.sum())
      rows["all"]["roles"] = list(fams)
    out[coord] = rows
  return out


# ---------------------------------------------------------------------------------------------------------------------
# Part B: through the pipeline


def chain_configs(model_name: str, head: int, learned_steps: int, group: int = 64) -> dict[str, dict]:
  """The pipeline configs compared in part B (without the quantizer step)."""
  chains = {
      "none": {},
      "hadamard": {"transform": [{"name": "hadamard", "side": "input"}]},
      "orthogonal": {"transform": [{"name": "orthogonal", "side": "input"}]},
      "pca-matrix": {"transform": [{"name": "pca", "side": "input"}]},
      "pca-group": {"transform": [{"name": "pca", "side": "input", "scope": "group", "block_size": group}]},
      "pca-head": {"transform": [{"name": "pca", "side": "input", "scope": "head", "block_size": head}]},
      "learned-rate": {"transform": [{"name": "learned", "side": "input", "objective": "rate",
                                      "steps": learned_steps, "max_code": 256}]},
      "learned-kurtosis": {"transform": [{"name": "learned", "side": "input", "objective": "kurtosis",
                                          "steps": learned_steps}]},
  }
  if model_name == "smollm2-135m":
    chains["rewrite"] = {"rewrite": {"residual": "hadamard", "head_rotation": True, "untie": True}}
  # the same chains with GPTQ act-order in place of round-to-nearest (quantize.gptq, columns by decreasing H_jj)
  for base in GPTQ_BASES:
    if base in chains:
      chains[base + GPTQ_SUFFIX] = {**json.loads(json.dumps(chains[base])), "quantize": dict(GPTQ_QUANTIZE)}
  return chains


def reference_chain(chain: str) -> str:
  """The chain another chain's rates are matched against: ``none``, or ``none+gptq`` for a GPTQ chain (so that a
  rotation is judged under the same quantizer); ``none+gptq`` itself is matched against ``none``."""
  return "none" + GPTQ_SUFFIX if chain.endswith(GPTQ_SUFFIX) and chain != "none" + GPTQ_SUFFIX else "none"


def quality_distortion(model_name: str, q: dict | None) -> float | None:
  """The model-quality distortion used to match rates: ``1 − cosine_mean`` (encoders) or KL (causal LMs)."""
  if not q:
    return None
  return 1.0 - q["cosine_mean"] if "cosine_mean" in q else q["kl"]


def quality_rel_stderr(q: dict | None) -> float | None:
  """Standard error of :func:`quality_distortion` relative to its value (KL, or ``1 − cosine_mean``)."""
  if not q:
    return None
  if "cosine_mean" in q:
    return q["cosine_mean_stderr"] / (1.0 - q["cosine_mean"]) if q.get("cosine_mean_stderr") is not None else None
  return q["kl_stderr"] / q["kl"] if q.get("kl_stderr") is not None and q["kl"] > 0 else None


def run_part_b(model_name: str, plan: list[tuple[str, float, bool]], args, results: dict, save) -> None:
  """Part B for one model: compresses each ``(chain, step, evaluate)`` point of ``plan`` not yet in the results."""
  from macjax import artifact
  from macjax.evaluate import Evaluator
  from macjax.pipeline import compression
  from macjax.pipeline.config import from_dict
  from macjax.pipeline.job import run_compress

  part = results.setdefault("B", {}).setdefault(model_name, {})
  todo = [(c, s, e) for c, s, e in plan if f"{c}@{s:g}" not in part or (e and not part[f"{c}@{s:g}"].get("quality"))]
  if not todo:
    return
  model = load_model(model_name)
  chains = chain_configs(model_name, head_dim(model), args.learned_steps_b, args.group)
  sizes = {"n_sentences": args.n_sentences} if model.layout.family == "bert" else {
      "n_seq": args.n_seq, "seq_len": args.seq_len}
  evaluator = None
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="transforms_report_"))
  try:
    for chain, step, do_eval in todo:
      data = json.loads(json.dumps(chains[chain]))
      data["quantize"] = {**data.get("quantize", {}), "step": step}
      data["embeddings"] = {"treatment": "float32"}
      data["evaluate"] = {"enabled": False}
      if chain == "learned-rate":
        data["transform"][0]["step_rel"] = step  # the rate proxy at the quantizer's own step
      cfg = from_dict(data)
      out = tmp / f"{model_name}-{chain}-{step:g}"
      t0 = time.perf_counter()
      report = run_compress(model_name, cfg, out, overwrite=True)
      rec = {"chain": chain, "step": step, "config": data, "artifact": report["artifact"],
             "weight_error": {k: report["weight_error"][k] for k in ("block", "other")},
             "rewrite": report.get("rewrite"), "timings": report["timings"]}
      if do_eval:
        if evaluator is None:
          evaluator = Evaluator(model, **sizes)
        buckets, manifest = artifact.load(out)
        t1 = time.perf_counter()
        rec["quality"] = evaluator(compression.decompress(buckets, manifest, verify=True))
        rec["timings"]["evaluate"] = time.perf_counter() - t1
      shutil.rmtree(out, ignore_errors=True)
      rec["seconds"] = time.perf_counter() - t0
      part[f"{chain}@{step:g}"] = rec
      a = rec["artifact"]
      qd = quality_distortion(model_name, rec.get("quality"))
      print(f"  B {model_name} {chain:12s} step {step:<6g} {a['block_bits_per_weight']:.3f} b/w "
            f"(transform {a['block_bits_per_weight_parts'].get('transform', 0):.3f}) err "
            f"{rec['weight_error']['block']:.4f} q-dist {qd if qd is None else f'{qd:.5f}'} "
            f"{rec['seconds']:.0f}s", flush=True)
      save()
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def summarize_b(model_name: str, part: dict) -> dict:
  """Per chain: the points, and bits at the ``none`` chain's weight errors and quality levels (and the savings)."""
  by_chain: dict[str, list[dict]] = {}
  for rec in part.values():
    by_chain.setdefault(rec["chain"], []).append(rec)
  for recs in by_chain.values():
    recs.sort(key=lambda r: r["step"])
  out = {}
  for chain, recs in by_chain.items():
    ref_name = reference_chain(chain)
    ref = by_chain.get(ref_name, []) if chain != "none" else by_chain.get("none", [])
    w_pts = [(r["weight_error"]["block"], r["artifact"]["block_bits_per_weight"]) for r in recs]
    q_pts = [(quality_distortion(model_name, r.get("quality")), r["artifact"]["block_bits_per_weight"])
             for r in recs if r.get("quality")]
    matched = []
    for r in ref:
      row = {"none_step": r["step"], "none_bits": r["artifact"]["block_bits_per_weight"],
             "weight_error": r["weight_error"]["block"]}
      b, ex = rd.bits_at_distortion(w_pts, row["weight_error"], extrapolate=True)
      row.update(bits_at_weight_error=b, extrapolated_w=ex, saving_at_weight_error=None if b is None else
                 row["none_bits"] - b)
      qd = quality_distortion(model_name, r.get("quality"))
      row["quality_distortion"] = qd
      b, ex = rd.bits_at_distortion(q_pts, qd, extrapolate=True) if qd is not None else (None, False)
      row.update(bits_at_quality=b, extrapolated_q=ex, saving_at_quality=None if b is None else row["none_bits"] - b)
      # resolution: the bits the chain's curve spans across ± one combined relative standard error of the two
      # quality measurements (treated as independent, which overstates it: both are scored on the same text)
      rel = [quality_rel_stderr(r.get("quality"))] + [quality_rel_stderr(c.get("quality")) for c in recs]
      if b is not None and None not in rel:
        se = math.sqrt(rel[0] ** 2 + float(np.mean(np.square(rel[1:]))))
        hi, _ = rd.bits_at_distortion(q_pts, qd * (1 + se), extrapolate=True)
        lo, _ = rd.bits_at_distortion(q_pts, qd * max(1 - se, 1e-6), extrapolate=True)
        row["saving_at_quality_se"] = None if hi is None or lo is None else abs(lo - hi) / 2
      matched.append(row)
    out[chain] = {"reference": ref_name, "points": [{"step": r["step"], "bits": r["artifact"]["block_bits_per_weight"],
                              "transform_bits": r["artifact"]["block_bits_per_weight_parts"].get("transform", 0.0),
                              "bits_per_param": r["artifact"]["bits_per_param"],
                              "weight_error": r["weight_error"]["block"], "quality": r.get("quality")}
                             for r in recs], "matched": matched}
  return out


# ---------------------------------------------------------------------------------------------------------------------
# Part P: why an input-side rotation costs quality on SmolLM2 under plain per-row rounding (a probe, no coding)

#: Readers of a normalized stream and the RMSNorm whose gain the invariance rewrite folds into them (LLaMA).
NORM_OF_ROLE = {"q": "input_layernorm", "k": "input_layernorm", "v": "input_layernorm",
                "gate": "post_attention_layernorm", "up": "post_attention_layernorm"}
#: Model-level variants: each role's quantization error taken from one coordinate system (see ``probe_errors``).
PROBE_VARIANTS = {
    "id": ("identity coordinates everywhere (= the `none` chain)", {}),
    "had": ("input-side Hadamard everywhere (= the `hadamard` chain)", {r: "had" for r in ROLES}),
    "had-except-v": ("Hadamard everywhere except v (identity)", {**{r: "had" for r in ROLES}, "v": "id"}),
    "id-except-v-had": ("identity everywhere except v (Hadamard)", {"v": "had"}),
    "id-except-down-had": ("identity everywhere except down (Hadamard)", {"down": "had"}),
    "had-except-v-down": ("Hadamard everywhere except v and down (identity)",
                          {**{r: "had" for r in ROLES}, "v": "id", "down": "id"}),
    "fold": ("norm gains folded into q/k/v/gate/up, no rotation", {r: "fold" for r in NORM_OF_ROLE}),
    "fold-gateup": ("gains folded into gate/up only", {"gate": "fold", "up": "fold"}),
    "fold-qkv": ("gains folded into q/k/v only", {"q": "fold", "k": "fold", "v": "fold"}),
    "foldhad": ("fold + Hadamard on readers' inputs, Hadamard on writers' (o, down) outputs (what the rewrite "
                "quantizes)", {**{r: "foldhad" for r in NORM_OF_ROLE}, "o": "outhad", "down": "outhad"}),
}


def probe_errors(model, step: float, seed: int) -> dict[tuple[str, str], np.ndarray]:
  """``{(coords, name): ΔW}``: each block matrix quantized per row (``uniform(step)``, round to nearest) in some
  coordinates, the error mapped back to the model's own coordinates, so that ``W + ΔW`` is the model's matrix.

  ``id``: ``W``. ``had``: ``W Q`` (randomized Hadamard, input side; ``ΔW = (Q̂ − W Q) Qᵀ``). For readers of a
  normalized stream (q/k/v/gate/up) ``fold``: ``W diag(g)`` (the RMSNorm gain folded in, as the invariance rewrite
  does; ``ΔW = Δ diag(1/g)``) and ``foldhad``: ``W diag(g) Q``. For writers (o, down) ``outhad``: ``Qᵀ W``.
  """
  quantizer = uniform(step=step)
  qd = jax.jit(lambda W: quantizer.dequantize(*quantizer.quantize(W)))
  hin, hout = T.randomized_hadamard(side="input"), T.randomized_hadamard(side="output")
  errors = {}
  for i, info in enumerate(model.layout.matrices):
    W = jnp.asarray(model.params[info.name], jnp.float32)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    errors[("id", info.name)] = np.asarray(qd(W) - W, np.float32)
    st = hin.init(W, key=key)
    W2 = hin.apply(W, st)
    errors[("had", info.name)] = np.asarray(hin.inverse(qd(W2) - W2, st), np.float32)
    if info.role in NORM_OF_ROLE:
      g = jnp.asarray(model.params[f"model.layers.{info.layer}.{NORM_OF_ROLE[info.role]}.weight"], jnp.float32)
      Wx = W * g[None, :]
      errors[("fold", info.name)] = np.asarray((qd(Wx) - Wx) / g[None, :], np.float32)
      st = hin.init(Wx, key=key)
      W2 = hin.apply(Wx, st)
      errors[("foldhad", info.name)] = np.asarray(hin.inverse(qd(W2) - W2, st) / g[None, :], np.float32)
    else:
      st = hout.init(W, key=key)
      W2 = hout.apply(W, st)
      errors[("outhad", info.name)] = np.asarray(hout.inverse(qd(W2) - W2, st), np.float32)
  return errors


def probe_split(model, stats, errors, top: int) -> dict[str, dict]:
  """Per role (all layers): the layer-output error ``E = tr(ΔW S ΔWᵀ)`` split into the ``top`` input channels by
  ``diag(S)`` (``E_top = tr(ΔW_T S_TT ΔW_Tᵀ)``), the rest (``E_rest``) and the cross term, for ``id`` and ``had``,
  summed over layers and divided by the output energy ``tr(W S Wᵀ)``; plus per-layer means of the top channels'
  share of ``tr S``, of their weights' RMS over the row RMS and of their squared weight error over the mean."""
  out = {}
  for role in ROLES:
    infos = model.layout.by_role(role)
    if not infos:
      continue
    acc = {c: {"E": 0.0, "E_top": 0.0, "E_rest": 0.0} for c in ("id", "had", "fold", "foldhad", "outhad")}
    energy, share, wtop, colmse, per_layer = 0.0, [], [], {"id": [], "had": []}, []
    for info in infos:
      S = np.asarray(stats[info.name].second_moment, np.float64)
      W = np.asarray(model.params[info.name], np.float64)
      d = np.diag(S)
      t = np.argsort(d)[::-1][:top]
      r = np.setdiff1d(np.arange(len(d)), t)
      en = float(np.sum((W @ S) * W))
      energy += en
      share.append(float(d[t].sum() / d.sum()))
      wtop.append(float(np.sqrt(np.mean(W[:, t] ** 2) / np.mean(W ** 2))))
      row = {"layer": info.layer, "energy": en, "top_share": share[-1], "diag_max_over_mean": float(d.max() / d.mean())}
      for c in acc:
        if (c, info.name) not in errors:
          continue
        D = errors[(c, info.name)].astype(np.float64)
        E = float(np.sum((D @ S) * D))
        acc[c]["E"] += E
        row[c] = E
        if c in colmse:
          acc[c]["E_top"] += float(np.sum((D[:, t] @ S[np.ix_(t, t)]) * D[:, t]))
          acc[c]["E_rest"] += float(np.sum((D[:, r] @ S[np.ix_(r, r)]) * D[:, r]))
          colmse[c].append(float(np.mean(D[:, t] ** 2) / np.mean(D ** 2)))
      per_layer.append(row)
    rec = {"layers": len(infos), "energy": energy, "top_share": float(np.mean(share)),
           "w_top_over_row_rms": float(np.mean(wtop))}
    for c, a in acc.items():
      if a["E"] == 0.0:
        continue
      rec[c] = {"rel_out_err": math.sqrt(a["E"] / energy), "E": a["E"] / energy}
      if c in colmse:
        rec[c].update(E_top=a["E_top"] / energy, E_rest=a["E_rest"] / energy,
                      E_cross=(a["E"] - a["E_top"] - a["E_rest"]) / energy,
                      col_mse_top_over_mean=float(np.mean(colmse[c])))
    big = max(per_layer, key=lambda x: x["had"])
    rec["largest_layer"] = {"layer": big["layer"], "share_of_had_E": big["had"] / sum(x["had"] for x in per_layer),
                            "had_over_id": big["had"] / big["id"], "top_share": big["top_share"],
                            "diag_max_over_mean": big["diag_max_over_mean"]}
    out[role] = rec
  return out


def run_part_p(model_name: str, args, results: dict, save) -> None:
  """Part P for a LLaMA model: ``results["P"][model]`` = the per-role split and model-level KL of the variants."""
  from macjax.calibrate import input_statistics
  from macjax.evaluate import Evaluator

  part = results.setdefault("P", {}).setdefault(model_name, {})
  todo = [v for v in PROBE_VARIANTS if v not in part.get("model", {})]
  if "split" in part and not todo:
    return
  model = load_model(model_name)
  if model.layout.family != "llama":
    print(f"  P {model_name}: skipped (the probe is for the LLaMA family)")
    results["P"].pop(model_name)
    return
  part["meta"] = {"step": args.probe_step, "top": args.probe_top, "calib_n_seq": args.probe_calib, "seq_len": 256,
                  "eval_n_seq": args.probe_eval, "eval_seq_len": 256, "seed": args.seed}
  t0 = time.perf_counter()
  errors = probe_errors(model, args.probe_step, args.seed)
  print(f"  P {model_name} errors {time.perf_counter() - t0:.0f}s", flush=True)
  if "split" not in part:
    stats = input_statistics(model, n_seq=args.probe_calib, seq_len=256)
    part["split"] = probe_split(model, stats, errors, args.probe_top)
    del stats
    print(f"  P {model_name} split {time.perf_counter() - t0:.0f}s", flush=True)
    save()
  evaluator = Evaluator(model, n_seq=args.probe_eval, seq_len=256)
  models = part.setdefault("model", {})
  for v in todo:
    what, assign = PROBE_VARIANTS[v]
    params = dict(model.params)
    for info in model.layout.matrices:
      c = assign.get(info.role, "id")
      params[info.name] = (np.asarray(model.params[info.name], np.float32) + errors[(c, info.name)]).astype(np.float32)
    t1 = time.perf_counter()
    q = evaluator(params)
    models[v] = {"what": what, "assign": {r: assign.get(r, "id") for r in ROLES},
                 **{k: float(x) for k, x in q.items() if isinstance(x, (int, float))}}
    print(f"  P {model_name} {v:20s} ppl {100 * q['perplexity_rel_change']:+.1f}% KL {q['kl']:.4f} "
          f"{time.perf_counter() - t1:.0f}s", flush=True)
    save()


def markdown_p(results: dict) -> list[str]:
  """The part P subsection (tables and a conclusion phrased from the numbers)."""
  lines = []
  for m, part in results.get("P", {}).items():
    if "split" not in part:
      continue
    meta, sp, mo = part["meta"], part["split"], part.get("model", {})
    k = meta["top"]
    lines += [f"### Why rotation costs quality on {m} with plain rounding (probe)", "",
              f"Every block matrix quantized per row by round-to-nearest at step {meta['step']:g}·RMS(row) (no coding, "
              f"no GPTQ) in identity (`id`) or randomized-Hadamard input coordinates (`had`, `W Q`), the error "
              f"mapped back to the model's coordinates (`ΔW`). Layer-output error `E = tr(ΔW S ΔWᵀ)` with `S` the "
              f"input second moment on {meta['calib_n_seq']}×{meta['seq_len']} calibration tokens, summed over all "
              f"layers of a role and divided by the output energy `tr(W S Wᵀ)`; `top` = the {k} input channels with "
              f"the largest `diag(S)` in each layer, `rest` = the others (the cross term is at most "
              f"{max(abs(r[c]['E_cross']) for r in sp.values() for c in ('id', 'had')):.5f} of the output energy in "
              "any role). `top share` = their share of `tr S` (layer mean); `w_top/rms` = RMS of "
              "the weights reading them over the row RMS (layer mean); `col MSE top/mean` = mean squared weight "
              "error on those columns over the matrix's mean (layer mean). `fold`: the RMSNorm gain folded into the "
              "readers (`W diag(g)`), as the invariance rewrite does; `fold+had`: `W diag(g) Q` for readers and "
              "`Qᵀ W` for writers (o, down), i.e. what the rewrite quantizes, except that here each matrix draws "
              "its own Hadamard where the rewrite shares one residual rotation, and the value-head rotations are "
              "left out.", ""]
    cells = []
    for role, r in sp.items():
      fh = r.get("foldhad") or r.get("outhad")
      fo = r.get("fold") or r["id"]
      big = r["largest_layer"]
      cells.append([role, f"{r['top_share']:.3f}", f"{r['w_top_over_row_rms']:.2f}",
                    f"{r['id']['col_mse_top_over_mean']:.3f}", f"{r['had']['col_mse_top_over_mean']:.3f}",
                    f"{r['id']['rel_out_err']:.4f}", f"{r['had']['rel_out_err']:.4f}", f"{fo['rel_out_err']:.4f}",
                    f"{fh['rel_out_err']:.4f}", f"{r['id']['E_top']:.5f}", f"{r['had']['E_top']:.5f}",
                    f"{r['id']['E_rest']:.5f}", f"{r['had']['E_rest']:.5f}",
                    f"{big['layer']} ({big['share_of_had_E']:.2f}, {big['had_over_id']:.2f})"])
    lines += _harness.markdown_table(
        ["role", "top share", "w_top/rms", "col MSE top/mean id", "had", "rel. out err id", "had", "fold", "fold+had",
         "E_top id", "had", "E_rest id", "had", "largest layer (had E share, had/id)"], cells)
    lines.append("")
    if mo:
      lines += [f"Model-level effect: the original model with each role's error `ΔW` taken from the coordinates "
                f"named (held-out text, {meta['eval_n_seq']}×{meta['eval_seq_len']} tokens; the part B rows above use "
                "12 windows and the pipeline's own Hadamard draws, so the two agree in direction, not to the digit).",
                ""]
      lines += _harness.markdown_table(
          ["variant", "what", "ppl change", "KL"],
          [[f"`{v}`", r["what"],
            f"{100 * r['perplexity_rel_change']:+.1f}% (±{100 * r['perplexity_rel_change_stderr']:.1f})",
            f"{r['kl']:.4f} (±{r['kl_stderr']:.4f})"] for v, r in mo.items()])
      lines.append("")
    pb = results.get("B", {}).get(m, {})
    gq = {c: pb[f"{c}{GPTQ_SUFFIX}@{meta['step']:g}"]["quality"]["kl"] for c in GPTQ_BASES
          if (pb.get(f"{c}{GPTQ_SUFFIX}@{meta['step']:g}") or {}).get("quality")}
    lines += probe_conclusion(sp, mo, meta["step"], k, gq) + [""]
  return lines


def probe_conclusion(sp: dict, mo: dict, step: float, top: int, gptq: dict | None = None) -> list[str]:
  """The probe's findings, phrased from its numbers (``gptq``: part B's ``{chain: KL}`` at ``step``, if run)."""
  out = ["Conclusion:"]
  grew, flat = [], []
  for role, r in sp.items():
    t_ratio = r["had"]["E_top"] / r["id"]["E_top"]
    r_ratio = r["had"]["E_rest"] / r["id"]["E_rest"]
    (grew if t_ratio >= 1.1 else flat).append((role, t_ratio, r_ratio, r))
  if grew:
    out.append("- The hypothesis (a rotation moves rounding error onto the massive-activation channels, which carry "
               "most of the input energy) holds for " + "; ".join(
                   f"`{ro}`: output error through the top {top} channels ×{t:.2f}, through the rest ×{rr:.2f}; its "
                   f"largest layer {r['largest_layer']['layer']} ({r['largest_layer']['share_of_had_E']:.0%} of the "
                   f"role's rotated error, ×{r['largest_layer']['had_over_id']:.2f} there; its top {top} input "
                   f"channels carry {r['largest_layer']['top_share']:.1%} of `tr S`, the largest "
                   f"{r['largest_layer']['diag_max_over_mean']:.0f}× the mean)" for ro, t, rr, r in grew) + ".")
    small = [(ro, r) for ro, _, _, r in grew if r["id"]["col_mse_top_over_mean"] < 0.9]
    if small:
      out.append("- Where identity coordinates protect the massive channels, they do so as hypothesized: the weights "
                 "reading them are small (" + ", ".join(f"`{ro}` {r['w_top_over_row_rms']:.2f}× the row RMS"
                                                        for ro, r in small) +
                 f", against a rounding dead zone of ±{step / 2:g}·RMS at this step), so their error is bounded by "
                 "the weights themselves (squared error on those columns " +
                 ", ".join(f"{r['id']['col_mse_top_over_mean']:.2f}" for _, r in small) + " of the mean; "
                 "rotated: " + ", ".join(f"{r['had']['col_mse_top_over_mean']:.2f}" for _, r in small) + ").")
  if flat:
    out.append("- It does not hold for " + ", ".join(f"`{ro}` (×{t:.2f})" for ro, t, _, _ in flat) + ": identity's "
               "rounding error on the massive-channel columns is already as large as on any other (squared error "
               + ", ".join(f"{r['id']['col_mse_top_over_mean']:.2f}" for _, _, _, r in flat) + " of the mean), "
               "since the weights there are not small (" +
               ", ".join(f"{r['w_top_over_row_rms']:.2f}" for _, _, _, r in flat) +
               f"× the row RMS against a dead zone of ±{step / 2:g}·RMS): identity coordinates already spread the "
               "error evenly, and a rotation has nothing left to spread.")
  g = lambda v: mo[v]["kl"] if v in mo else None  # noqa: E731
  if g("id") is not None and g("had") is not None:
    gap = g("had") - g("id")
    parts = [f"- At model level the rotation raises KL from {g('id'):.3f} to {g('had'):.3f} ({gap:+.3f})."]
    if g("id-except-v-had") is not None and g("had-except-v") is not None:
      parts.append(f"Rotating v alone: {g('id-except-v-had'):.3f} ({g('id-except-v-had') - g('id'):+.3f}); "
                   f"everything but v: {g('had-except-v'):.3f} ({g('had-except-v') - g('id'):+.3f}).")
    if g("id-except-down-had") is not None:
      parts.append(f"Rotating down alone: {g('id-except-down-had'):.3f} ({g('id-except-down-had') - g('id'):+.3f}).")
    if g("had-except-v-down") is not None:
      left = g("had-except-v-down") - g("id")
      parts.append(f"Everything but v and down rotated: {g('had-except-v-down'):.3f} ({left:+.3f}, "
                   f"{'within' if abs(left) <= 2 * mo['id']['kl_stderr'] else 'outside'} two standard errors of the "
                   "unrotated model): " + ("the regression is carried by v and down, the two roles where the "
                                           "top-channel error grew." if abs(left) <= 2 * mo["id"]["kl_stderr"] else
                                           "other roles contribute too."))
    out.append(" ".join(parts))
  if g("id") is not None and g("fold") is not None:
    parts = [f"- The invariance rewrite costs more than the plain rotation because it also folds the RMSNorm gains "
             f"into the readers: folding alone, with no rotation, raises KL from {g('id'):.3f} to {g('fold'):.3f}"]
    if g("fold-gateup") is not None and g("fold-qkv") is not None:
      parts.append(f"(gate/up folded alone {g('fold-gateup'):.3f}, q/k/v alone {g('fold-qkv'):.3f})")
    if g("foldhad") is not None and g("had") is not None:
      parts.append(f"and the rotations on top of the folded weights to {g('foldhad'):.3f} "
                   f"({g('foldhad') - g('fold'):+.3f}, against {g('had') - g('id'):+.3f} for the rotation of the "
                   "unfolded model)")
    folded = [f"{ro} {sp[ro]['id']['rel_out_err']:.3f} → {sp[ro]['fold']['rel_out_err']:.3f}"
              for ro in ("q", "k", "v", "gate", "up") if ro in sp and "fold" in sp[ro]]
    out.append(" ".join(parts) + ". Folding multiplies input column j by its gain g_j before the per-row step is "
               "set, so the step follows the large-gain columns and the error on a column, mapped back to the "
               "model's coordinates, is divided by g_j; relative layer-output error, unfolded → folded: "
               + ", ".join(folded) + ".")
    if g("fold-qkv") is not None and g("fold-qkv") - g("id") > 2 * mo["fold-qkv"]["kl_stderr"]:
      same = [ro for ro in ("q", "k", "v") if ro in sp and "fold" in sp[ro]
              and abs(sp[ro]["fold"]["rel_out_err"] / sp[ro]["id"]["rel_out_err"] - 1) < 0.05]
      if same:
        out.append(f"- Not explained by the token-averaged layer-output error: folding leaves it within 5% for "
                   f"{'/'.join(same)}, yet folding q/k/v raises KL to {g('fold-qkv'):.3f}. What that average misses "
                   "(error on a few tokens, e.g. the ones carrying the massive activations, or attention's "
                   "sensitivity to q/k) is not measured here.")
  if gptq and gptq.get("none") is not None and gptq.get("hadamard") is not None:
    out.append(f"- GPTQ act-order minimizes this layer-output error directly, and there the order reverses (part B, "
               f"step {step:g}): KL {gptq['none']:.3f} without rotation, {gptq['hadamard']:.3f} with the Hadamard "
               "chain" + (f", {gptq['rewrite']:.3f} with the rewrite" if gptq.get("rewrite") is not None else "") +
               ".")
  return out



# ---------------------------------------------------------------------------------------------------------------------
# markdown


def _f(x, fmt=".3f"):
  return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _pm(x) -> str:
  return "" if x is None else f" (±{x:.3f})"


def _q(model_name, q):
  if not q:
    return "not evaluated"
  if "cosine_mean" in q:
    return f"cos {q['cosine_mean']:.4f}"
  return f"ppl {100 * q['perplexity_rel_change']:+.2f}% (±{100 * q['perplexity_rel_change_stderr']:.2f}), KL {q['kl']:.4f}"


def _markdown_a(results: dict, sa: dict) -> list[str]:
  """Part A: one table of layer-mean statistics per model."""
  lines = ["## Part A — weight statistics per coordinate system", "",
           "Layer means per family. `H@std/4`: entropy (bits/weight) of `round(x/(std/4))` over the matrix; "
           "`H@pipe`: entropy of the pipeline quantizer's codes at its default step (0.0625·RMS(row)); `err`: the "
           "relative weight error that quantizer leaves; `ΔH`: entropy minus identity's on the same layers; "
           "`state`: stored transform bits per weight; `net` = −ΔH − state (> 0: paid for its state). Learned rotations "
           "are fitted on a subset of layers: compare their kurtosis / rank / energy with identity on the same "
           "layers (the findings below do), not with identity's all-layer rows. Effective rank is invariant under "
           "any one-sided orthogonal change of coordinates (all of these are orthogonal): it differs only where the "
           "layers differ.", ""]
  for m, summ in sa.items():
    meta = results["A_meta"][m]
    lines += [f"### {m}", "",
              f"Layers {meta['layers'] if len(meta['layers']) < meta['num_layers'] else 'all ' + str(meta['num_layers'])}"
              f"; learned rotations on layers {meta['learned_layers']} ({meta['learned_steps']} Adam steps); head_dim "
              f"{meta['head_dim']}, PCA groups of {meta['group']} input channels.", ""]
    cells = []
    for coord in COORDINATES:
      for role in ROLES + ("all",):
        r = summ.get(coord, {}).get(role)
        if r is not None:
          cells.append([f"**{coord}**" if role == "all" else coord, role, _f(r["kurtosis"], ".1f"),
                        _f(r["max_to_rms"], ".1f"), _f(r["effective_rank"], ".0f"), _f(r["top1_energy"]),
                        _f(r["entropy_std4"]), _f(r.get("d_entropy_std4"), "+.3f"), _f(r["entropy_pipe"]),
                        _f(r["rel_error_pipe"], ".4f"), _f(r.get("d_entropy_pipe"), "+.3f"),
                        _f(r["state_bits_per_weight"]), _f(r.get("net_entropy_std4"), "+.3f"),
                        _f(r.get("net_entropy_pipe"), "+.3f")])
    lines += _harness.markdown_table(
        ["coordinates", "family", "kurtosis", "max/RMS", "eff. rank", "top-1% energy", "H@std/4", "ΔH@std/4", "H@pipe",
         "err@pipe", "ΔH@pipe", "state b/w", "net@std/4", "net@pipe"], cells) + [""]
  return lines


def _matched_table(summ: dict) -> list[str]:
  """Part B: every chain's bits at its reference chain's distortions."""
  return _harness.markdown_table(
      ["chain", "reference", "ref. step", "ref. bits", "bits @ equal weight error", "saving", "bits @ equal quality",
       "saving"],
      [[chain, s["reference"], f"{r['none_step']:g}", f"{r['none_bits']:.3f}",
        f"{_f(r['bits_at_weight_error'])}{'*' if r['extrapolated_w'] else ''}",
        _f(r["saving_at_weight_error"], "+.3f"), f"{_f(r['bits_at_quality'])}{'*' if r['extrapolated_q'] else ''}",
        f"{_f(r['saving_at_quality'], '+.3f')}{_pm(r.get('saving_at_quality_se'))}"]
       for chain, s in summ.items() if chain != "none" for r in s["matched"]])


def _markdown_b(sb: dict) -> list[str]:
  """Part B: per model, the points, then the rates at matched distortion."""
  if not sb:
    return []
  lines = ["## Part B — through the pipeline", "",
           "Block matrices only (embeddings and LM head kept in float32). `bits` = block bits/weight, all stored "
           "bytes of the block matrices counted (codes + tables + scales + transform state); `transform` is the "
           "state's share. Quality: MiniLM mean cosine of sentence embeddings vs fp32; SmolLM2 perplexity change "
           "(± its standard error) and KL (nats/token) on held-out text. Whole-model bits/param counts every byte of "
           "the artifact, including the float32 embeddings (and, for the rewrite, the untied float32 LM head), "
           "so it is dominated by them here; compare chains on the block column.", ""]
  for m, summ in sb.items():
    lines += [f"### {m}", ""]
    lines += _harness.markdown_table(
        ["chain", "step", "bits/weight", "transform b/w", "whole-model bits/param", "rel. weight error", "quality"],
        [[chain, f"{p['step']:g}", f"{p['bits']:.3f}", f"{p['transform_bits']:.3f}", f"{p['bits_per_param']:.3f}",
          f"{p['weight_error']:.4f}", _q(m, p["quality"])] for chain, s in summ.items() for p in s["points"]])
    lines += ["", f"Matched distortion ({m}): bits each chain needs at the weight error / quality its reference "
              "chain reached at each of its steps (interpolated in log distortion; `*` = extrapolated beyond the "
              "chain's points). The reference is `none` (no transform, same quantizer) for round-to-nearest "
              f"chains and `none{GPTQ_SUFFIX}` for the other GPTQ chains; `none{GPTQ_SUFFIX}` itself is matched "
              "against `none` (what GPTQ buys). Saving = reference's bits − chain's bits (> 0: fewer bits than "
              "the reference); (±) = the bits the chain's curve spans across one standard error of the two quality "
              "measurements combined as if independent (they are scored on the same text, so this overstates "
              "it); a saving inside it is not a measured difference.", ""]
    lines += _matched_table(summ) + [""]
  return lines


def _missing(results: dict) -> list[str]:
  """What the default plan has that the results lack (a run cut short)."""
  missing = []
  for m, part in results.get("A", {}).items():
    model_roles = set().union(*[set(f) for f in part.values()])
    for c in COORDINATES:
      got = set(part.get(c, {}))
      want = model_roles - ({"gate", "up", "down"} if c == "pca-head" else set())
      if got != want:
        missing.append(f"part A {m} `{c}`: " + (f"families {', '.join(sorted(want - got))}" if got else "not run"))
  for m, part in results.get("B", {}).items():
    gaps = [f"{c}@{st:g}" for c, st, _ in default_plan(m, False, None, None) if f"{c}@{st:g}" not in part]
    if gaps:
      missing.append(f"part B {m}: {', '.join(gaps)}")
  return missing


def markdown(results: dict) -> str:
  """The report as markdown: tables, then findings phrased from the numbers."""
  lines = ["# Rotation vs alignment, measured", "",
           f"Generated by `benchmarks/transforms_report.py` ({results['meta']['mode']} mode) on "
           f"{results['meta']['date']}; every number below comes from `{results['meta']['json']}`.", ""]
  sa = {m: summarize_a(p) for m, p in results.get("A", {}).items()}
  sb = {m: summarize_b(m, p) for m, p in results.get("B", {}).items()}
  lines += _markdown_a(results, sa) + _markdown_b(sb)
  lines += markdown_p(results)
  missing = _missing(results)
  if missing:
    lines += ["## Not measured in this run (time ran out; `--resume` continues)", ""] + [f"- {x}" for x in missing] + [""]
  lines += ["## Findings", ""] + findings(results, sa, sb) + [""]
  lines += ["## How to read part B against part A", "",
            "- The pipeline applies one transform chain to every block matrix, on one side: `pca-head` in part B is "
            "input-side blocks of head_dim (true heads only for `o`; for q/k/v/MLP they are groups of input "
            "channels), while part A's `pca-head` puts q/k/v's bases on the output side, where the heads are. "
            "Where head_dim equals the PCA group (SmolLM2: 64), part B's `pca-head` and `pca-group` are the same "
            "config and their rows coincide.",
            "- The pipeline's quantizer steps are relative to each row's RMS. An input-side change of coordinates "
            "keeps every row's RMS, so equal step is (nearly) equal distortion; an output-side one moves energy "
            "between rows and each row is still coded at the same relative step, so concentration across rows "
            "buys no rate (compare part A's ΔH@std/4 and ΔH@pipe for pca-head on q/k/v).",
            "- A matrix-scope PCA basis of a wide matrix's input side (`down`: in > out) stores a full in×in "
            "basis although at most `out` directions carry energy; the remaining coefficients are zero, which "
            "lowers both the entropy and the weight error at a given step, and the basis costs 16·in/out "
            "bits/weight.", ""]
  return "\n".join(lines)


def render(results: dict) -> str:
  """The written report: :func:`markdown`, then ``shared_basis.md`` (written by hand next to
  ``benchmarks/shared_basis.py``'s JSON) appended as a subsection."""
  extra = RESULTS / "shared_basis.md"
  return markdown(results) + ("\n#" + extra.read_text() if extra.exists() else "")


def _mean_saving(rows: list[dict], key: str) -> float | None:
  vals = [r[key] for r in rows if r.get(key) is not None]
  return float(np.mean(vals)) if vals else None


def findings(results: dict, sa: dict, sb: dict) -> list[str]:
  """Plain statements derived from the numbers (nothing here is typed in by hand)."""
  out = []
  for m, summ in sa.items():
    ident = summ.get("identity", {}).get("all")
    if not ident:
      continue
    out.append(f"**{m}, statistics (all families, weight-weighted).** Identity: kurtosis {ident['kurtosis']:.1f}, "
               f"max/RMS {ident['max_to_rms']:.1f}, top-1% energy {ident['top1_energy']:.3f}, "
               f"H@std/4 {ident['entropy_std4']:.3f}, H@pipe {ident['entropy_pipe']:.3f} bits/weight.")
    for coord in COORDINATES[1:]:
      r = summ.get(coord, {}).get("all")
      if not r or r.get("d_entropy_std4") is None:
        continue
      flat = "flattened" if r["kurtosis"] < r["ref_kurtosis"] else "did not flatten"
      conc = "concentrated" if r["top1_energy"] > r["ref_top1_energy"] else "did not concentrate"
      paid = [f"{'paid' if r[f'net_entropy_{h}'] > 0 else 'did not pay'} for its state at {lbl} "
              f"(ΔH {r[f'd_entropy_{h}']:+.3f}, state {r['state_bits_per_weight']:.3f}, net "
              f"{r[f'net_entropy_{h}']:+.3f} bits/weight)" for h, lbl in (("std4", "std/4"), ("pipe", "the pipeline step"))]
      scope = "" if r.get("roles") and len(r["roles"]) == len(summ["identity"]) - 1 else \
          f" [families {', '.join(r['roles'])}]"
      share = ""
      if r["state_bits_per_weight"] > 0 and r["net_entropy_std4"] <= 0 < -r["d_entropy_std4"]:
        share = (f" Break-even: the state would have to be shared by ≥ {r['state_bits_per_weight'] / -r['d_entropy_std4']:.0f} "
                 "matrices (and keep its gain when shared) to pay at std/4.")
      out.append(f"- `{coord}`{scope}: {flat} (kurtosis {r['ref_kurtosis']:.1f} → {r['kurtosis']:.1f}, max/RMS "
                 f"{r['ref_max_to_rms']:.1f} → {r['max_to_rms']:.1f}), {conc} (top-1% energy "
                 f"{r['ref_top1_energy']:.3f} → {r['top1_energy']:.3f}); " + "; ".join(paid) + "." + share)
    rot = [summ[c]["all"] for c in ("hadamard", "orthogonal") if c in summ]
    if rot:
      dk = [r["kurtosis"] for r in rot]
      dh = [r["d_entropy_std4"] for r in rot]
      verdict = ("rotation flattened without lowering entropy" if max(dk) < ident["kurtosis"] and min(dh) > -0.05 else
                 "rotation flattened and lowered entropy" if max(dk) < ident["kurtosis"] else
                 "rotation did not flatten")
      out.append(f"- DESIGN.md's first measurement, re-measured: {verdict} (kurtosis {ident['kurtosis']:.1f} → "
                 f"{', '.join(f'{k:.1f}' for k in dk)}; ΔH@std/4 {', '.join(f'{h:+.3f}' for h in dh)} bits/weight).")
    pm = summ.get("pca-matrix", {}).get("all")
    if pm and pm.get("d_entropy_std4") is not None:
      survived = pm["net_entropy_std4"] > 0
      out.append(f"- PCA alignment's entropy gain {'survived' if survived else 'did not survive'} the cost of its "
                 f"stored basis: per-matrix PCA saves {-pm['d_entropy_std4']:.3f} bits/weight at std/4 "
                 f"({-pm['d_entropy_pipe']:.3f} at the pipeline step) and its float16 basis costs "
                 f"{pm['state_bits_per_weight']:.3f} bits/weight (net {pm['net_entropy_std4']:+.3f} / "
                 f"{pm['net_entropy_pipe']:+.3f}).")
    if m == "smollm2-135m":
      out.append("- Caveat: SmolLM2's reference weights are the dequantized Q4_1 GGUF (blocks of 32 on a 4-bit grid, "
                 "DESIGN.md). In identity coordinates the codes at a fine step inherit that grid; any rotation "
                 "destroys it, so a rotation's ΔH on this model includes losing the grid.")
    out.append("")
  for m, summ in sb.items():
    if "none" not in summ:
      continue
    out.append(f"**{m}, through the pipeline (mean saving over the reference chain's steps; > 0 = fewer bits than "
               f"the reference at equal distortion; reference `none`, or `none{GPTQ_SUFFIX}` for GPTQ chains).**")
    for chain, s in summ.items():
      if chain == "none" or s["reference"] not in summ:
        continue
      sw = _mean_saving(s["matched"], "saving_at_weight_error")
      sq = _mean_saving(s["matched"], "saving_at_quality")
      tb = float(np.mean([p["transform_bits"] for p in s["points"]]))
      if sw is None and sq is None:
        ref = {p["step"]: p for p in summ[s["reference"]]["points"]}
        same = [f"at step {p['step']:g}: {p['bits']:.3f} vs {ref[p['step']]['bits']:.3f} bits/weight, weight error "
                f"{p['weight_error']:.4f} vs {ref[p['step']]['weight_error']:.4f}, quality "
                f"{_q(m, p['quality'])} vs {_q(m, ref[p['step']]['quality'])}"
                for p in s["points"] if p["step"] in ref]
        out.append(f"- `{chain}` (one point only, no interpolation; compared with `{s['reference']}` at the same "
                   "step): "
                   + "; ".join(same) + ".")
        continue
      decisive = sq if sq is not None else sw
      se = _mean_saving(s["matched"], "saving_at_quality_se") if sq is not None else None
      verdict = "paid for its bits" if decisive is not None and decisive > 0 else "did not pay for its bits"
      if se is not None and abs(decisive) <= se:
        verdict = "neither paid nor lost measurably"
      out.append(f"- `{chain}` {verdict} (vs `{s['reference']}`): {_f(sw, '+.3f')} bits/weight at equal weight "
                 f"error, {_f(sq, '+.3f')}{_pm(se)} at equal model quality (its "
                 f"stored state: {tb:.3f} bits/weight).")
    for base in GPTQ_BASES[1:]:
      rtn, gq = summ.get(base), summ.get(base + GPTQ_SUFFIX)
      if not rtn or not gq:
        continue
      a_rtn, a_gq = (_mean_saving(x["matched"], "saving_at_quality") for x in (rtn, gq))
      e_rtn, e_gq = (_mean_saving(x["matched"], "saving_at_quality_se") for x in (rtn, gq))
      if a_rtn is None or a_gq is None:
        continue
      out.append(f"- `{base}` under the two quantizers, at equal model quality: with round-to-nearest "
                 f"{a_rtn:+.3f}{_pm(e_rtn)} bits/weight against `none`; with GPTQ act-order {a_gq:+.3f}{_pm(e_gq)} "
                 f"against `none{GPTQ_SUFFIX}`.")
    if "rewrite" in summ or "rewrite" + GPTQ_SUFFIX in summ:
      out.append("- The rewrite's weight error is measured on the rewritten (norm-folded, rotated) weights, so its "
                 "equal-weight-error column compares different parametrizations; equal quality is the fair column.")
    out.append("")
  return out


# ---------------------------------------------------------------------------------------------------------------------


def default_plan(model_name: str, quick: bool, chains: list[str] | None, steps: list[float] | None):
  """``[(chain, step, evaluate)]`` for part B."""
  if quick:
    plan = [(c, s, True) for c in ("none", "hadamard", "pca-matrix") for s in (0.25, 0.5)]
    return [p for p in plan if chains is None or p[0] in chains]
  if model_name == "minilm-l6":
    if chains or steps:
      return [(c, s, True) for c in (chains or ["none", "hadamard"]) for s in (steps or [0.125, 0.25, 0.5])]
    return ([(c, s, True) for c in ["none", "hadamard", "pca-matrix", "pca-head", "learned-rate"]
             for s in (0.125, 0.25, 0.5)] +
            [(c + GPTQ_SUFFIX, s, True) for c in ("none", "hadamard") for s in GPTQ_STEPS])
  if chains or steps:
    return [(c, s, True) for c in (chains or ["none", "rewrite"]) for s in (steps or [0.25, 0.5])]
  # ~3-5 minutes a point here: the most informative points first (a run cut short keeps what it finished)
  return [("none", 0.25, True), ("rewrite", 0.25, True), ("none", 0.5, True), ("rewrite", 0.5, True),
          ("hadamard", 0.25, True), ("hadamard", 0.5, True), ("pca-matrix", 0.25, True), ("pca-head", 0.25, True)] + \
      [(c + GPTQ_SUFFIX, s, True) for s in (0.5, 0.25) for c in GPTQ_BASES]


def _merge(results: dict, files: list[pathlib.Path]) -> None:
  """Merges result JSONs of runs made in pieces into ``results``."""
  for other in files:
    piece = json.loads(other.read_text())
    for section in ("A", "B", "A_meta", "P"):
      for model_name, entries in piece.get(section, {}).items():
        if section == "A_meta":
          results.setdefault(section, {})[model_name] = entries
          continue
        dest = results.setdefault(section, {}).setdefault(model_name, {})
        for k, v in entries.items():
          if section == "A":
            dest.setdefault(k, {}).update(v)
          else:
            dest[k] = v


def main(argv=None) -> None:
  """Command line."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=",".join(MODELS), help="comma-separated model aliases")
  p.add_argument("--parts", default="A,B", help="A (statistics), B (pipeline), P (rotation probe, LLaMA only)")
  p.add_argument("--coords", default=",".join(COORDINATES), help="part A coordinate systems")
  p.add_argument("--chains", default="", help="part B chains (default: per model, see default_plan)")
  p.add_argument("--steps", default="", help="part B quantizer steps (default: per model)")
  p.add_argument("--quick", action="store_true", help="2 layers per family, 5 learned steps, a small part B")
  p.add_argument("--layers", type=int, default=0, help="part A: evenly spaced layers per family (0: all)")
  p.add_argument("--learned-layers", type=int, default=2, help="part A: layers per family for learned rotations")
  p.add_argument("--learned-steps", type=int, default=20, help="part A: Adam steps of the learned rotations")
  p.add_argument("--learned-steps-b", type=int, default=20, help="part B: Adam steps of the learned-rate chain")
  p.add_argument("--group", type=int, default=64, help="pca-group: input channels per group")
  p.add_argument("--n-seq", type=int, default=12, help="SmolLM2 evaluation windows")
  p.add_argument("--seq-len", type=int, default=256, help="SmolLM2 evaluation window length")
  p.add_argument("--n-sentences", type=int, default=256, help="MiniLM evaluation passages")
  p.add_argument("--probe-step", type=float, default=0.5, help="part P: quantizer step (relative to row RMS)")
  p.add_argument("--probe-top", type=int, default=4, help="part P: input channels counted as massive, per layer")
  p.add_argument("--probe-calib", type=int, default=16, help="part P: calibration windows of 256 tokens for S")
  p.add_argument("--probe-eval", type=int, default=8, help="part P: held-out windows of 256 tokens")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--resume", action="store_true", help="keep and skip finished units of the existing JSON")
  p.add_argument("--merge", default="", help="comma-separated result JSONs (of runs in pieces) to merge in first")
  p.add_argument("--out", default="", help="output path prefix (default benchmarks/results/transforms_report)")
  p.add_argument("--render", action="store_true", help="only re-render the markdown from the JSON (--quick: the "
                 "quick run's)")
  args = p.parse_args(argv)
  if args.quick:
    args.layers = args.layers or 2
    args.learned_layers = min(args.learned_layers, 1)
    args.learned_steps = min(args.learned_steps, 5)
    args.learned_steps_b = min(args.learned_steps_b, 5)
  prefix = pathlib.Path(args.out) if args.out else RESULTS / ("transforms_quick" if args.quick else "transforms_report")
  if args.render:
    _harness.render_results(prefix, render)
    return
  json_path = _harness.paths(prefix)[0]
  results = json.loads(json_path.read_text()) if args.resume and json_path.exists() else {}
  _merge(results, [pathlib.Path(f.strip()) for f in args.merge.split(",") if f.strip()])
  try:
    json_rel = json_path.relative_to(pathlib.Path(__file__).resolve().parent.parent)
  except ValueError:
    json_rel = json_path
  results["meta"] = {"mode": "quick" if args.quick else "full", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                   time.gmtime()),
                     "json": str(json_rel), "jax": jax.__version__, "backend": jax.default_backend(),
                     "args": vars(args)}

  def save():
    _harness.write_results(prefix, results, render, argv=argv, script=__file__, quiet=True)

  parts = {s.strip().upper() for s in args.parts.split(",")}
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  chains = [c.strip() for c in args.chains.split(",") if c.strip()] or None
  steps = [float(s) for s in args.steps.split(",") if s.strip()] or None
  for m in models:
    if "A" in parts:
      run_part_a(m, [c.strip() for c in args.coords.split(",") if c.strip()], args, results, save)
    if "B" in parts:
      run_part_b(m, default_plan(m, args.quick, chains, steps), args, results, save)
    if "P" in parts:
      run_part_p(m, args, results, save)
  _harness.write_results(prefix, results, render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
