"""GPTQ in front of the quantizers on MiniLM: sentence-embedding cosine vs bits/weight, with vs without feedback.

Run: ``.venv/bin/python benchmarks/coding_gptq.py [--out benchmarks/results/coding_gptq.json]``

Calibration: ``--n-calib`` passages of the *calibration* split (disjoint from the held-out text the cosine is
measured on); each block matrix's Hessian ``H = XᵀX`` sums its input rows over the real (unpadded) tokens, with
the inputs of the fp32 model (non-sequential GPTQ). Bits/weight count coded words, tables, headers and float16
steps of the 36 block matrices, as in ``coding_quality.py``. The per-layer input capture below recomputes
:mod:`macjax.evaluate.bert`'s layer with the same weights and formulas (calibration only; the scored forward is
the library's :class:`macjax.evaluate.Evaluator`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from macjax.coding import coded_bits, decode, encode
from macjax.evaluate import Evaluator, text
from macjax.evaluate.bert import BertDims, _dense, layer_norm, prepare_bert
from macjax.load import load_model
from macjax.quantize import gptq, trellis, uniform

ROLE_INPUT = {"q": "x", "k": "x", "v": "x", "o": "context", "up": "mid", "down": "inner"}


def layer_hessians(model, n_calib: int) -> dict[str, np.ndarray]:
  """``{HF name: XᵀX}`` of every block matrix's inputs over the calibration passages (fp32 model)."""
  config = dict(model.layout.config)
  dims = BertDims.from_config(config)
  weights = prepare_bert(model.params, config)
  tokens, mask = text.sentence_batch(text.tokenizer_for(model), text.sentences("calibration", n_calib))
  tokens, mask = jnp.asarray(tokens, jnp.int32), jnp.asarray(mask != 0)
  seq = tokens.shape[1]
  x = weights.word[tokens] + weights.position[:seq][None] + weights.token_type[jnp.zeros_like(tokens)]
  x = layer_norm(x, weights.emb_ln, weights.emb_ln_bias, dims.ln_eps)
  valid = mask[..., None].astype(jnp.float32)
  gram = jax.jit(lambda a: jnp.einsum("bsi,bsj->ij", a * valid, a))
  out = {}
  by_layer = {}
  for m in model.layout.matrices:
    by_layer.setdefault(m.layer, {})[m.role] = m.name
  batch = tokens.shape[0]
  hd = dims.hidden // dims.num_heads
  for layer in range(dims.num_layers):
    p = {k: v[layer] for k, v in weights.layers.items()}
    split = lambda t: t.reshape(batch, seq, dims.num_heads, hd)
    q, k, v = (split(_dense(x, p[n], p[n + "_bias"])) for n in ("q", "k", "v"))
    scores = jnp.einsum("bqhd,bshd->bhqs", q, k) / np.sqrt(hd).astype(np.float32)
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    context = jnp.einsum("bhqs,bshd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(batch, seq, dims.hidden)
    mid = layer_norm(x + _dense(context, p["o"], p["o_bias"]), p["attn_ln"], p["attn_ln_bias"], dims.ln_eps)
    inner = jax.nn.gelu(_dense(mid, p["up"], p["up_bias"]), approximate=False)
    acts = {"x": x, "context": context, "mid": mid, "inner": inner}
    for role, name in by_layer[layer].items():
      out[name] = np.asarray(gram(acts[ROLE_INPUT[role]]))
    x = layer_norm(mid + _dense(inner, p["down"], p["down_bias"]), p["out_ln"], p["out_ln_bias"], dims.ln_eps)
  return out


def compress(matrices, hessians, q, use_gptq: bool):
  g = gptq(q, block_size=128)
  quantize = jax.jit(g.quantize if use_gptq else q.quantize)
  dequantize = jax.jit(q.dequantize)
  out, bits, n = {}, 0, 0
  for name, W in matrices.items():
    codes, meta = quantize(jnp.asarray(W), jnp.asarray(hessians[name])) if use_gptq else quantize(jnp.asarray(W))
    coded = encode(np.asarray(codes), model="auto")
    out[name] = np.asarray(dequantize(jnp.asarray(decode(coded)), meta))
    bits += coded_bits(coded)["total"] + 16 * int(np.asarray(meta.step).size)
    n += W.size
  return out, bits / n


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "coding_gptq.json"))
  parser.add_argument("--n-calib", type=int, default=128)
  parser.add_argument("--n-sentences", type=int, default=128)
  parser.add_argument("--steps", default="0.6,0.45,0.3,0.2")
  args = parser.parse_args(argv)
  model = load_model("minilm-l6")
  matrices = {m.name: np.asarray(model.params[m.name], np.float32) for m in model.layout.matrices}
  t0 = time.perf_counter()
  hessians = layer_hessians(model, args.n_calib)
  print(f"calibration Hessians: {time.perf_counter() - t0:.1f} s", flush=True)
  evaluator = Evaluator(model, n_sentences=args.n_sentences)
  methods = {
      "uniform, per-row step": (lambda s: uniform(s), False),
      "GPTQ + uniform, per-row step": (lambda s: uniform(s), True),
      "GPTQ + trellis λ.3 (column axis), per-row step": (lambda s: trellis(0.6 * s, lam=0.3, axis="column"), True),
  }
  rows = []
  for name, (factory, use_gptq) in methods.items():
    for s in [float(v) for v in args.steps.split(",")]:
      t0 = time.perf_counter()
      decoded, bpw = compress(matrices, hessians, factory(s), use_gptq)
      params = dict(model.params)
      params.update(decoded)
      cos = float(evaluator(params)["cosine_mean"])
      rows.append({"method": name, "step": s, "bits_per_weight": bpw, "embedding_cosine": cos,
                   "seconds": time.perf_counter() - t0})
      print(f"{name:48s} step {s:<5} {bpw:6.3f} bits/weight  cosine {cos:.4f}  ({rows[-1]['seconds']:.0f} s)",
            flush=True)
  lines = ["# MiniLM: GPTQ in front of the quantizers (embedding cosine vs bits/weight)", "",
           f"Produced by `benchmarks/coding_gptq.py` ({args.n_calib} calibration passages, {args.n_sentences} held-out"
           " passages scored). Peers (DESIGN.md): NNCodec 0.994 @ 4.98, 0.978 @ 4.01, 0.926 @ 3.10; GPTQ int g64"
           " 0.982 @ 4.25, 0.900 @ 3.25.", "", "| method | step/RMS | bits/weight | embedding cosine |",
           "|---|---|---|---|"]
  lines += [f"| {r['method']} | {r['step']} | {r['bits_per_weight']:.3f} | {r['embedding_cosine']:.4f} |"
            for r in rows]
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(args.out, "w") as f:
    json.dump({"benchmark": "coding_gptq", "model": "minilm-l6", "n_calib": args.n_calib,
               "n_sentences": args.n_sentences, "rows": rows}, f, indent=1)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
