"""Do f_θ and shared transforms pay across a mixture of experts' experts? Bits of the expert matrices, by variant.

Experts of one layer are many matrices of one shape and role — a "family across an index", what ``W = f_θ(α) + r``
and role-shared transform states were built for. This measures, on Mixtral-shaped checkpoints made here (no MoE
checkpoint installs offline), at one quantizer step:

* ``plain``: the default pipeline (no transform, no f_θ);
* ``pca-matrix``: an input-side PCA basis per matrix (stored, counted);
* ``pca-family``: one basis per expert family (all layers' experts of a role), fitted on their stacked rows;
* ``fit-layers``: f_θ per expert family across layers and experts (the index runs layer-major over both);
* ``fit-experts``: f_θ per role and layer across that layer's experts (``fit.across = "experts"``).

f_θ is kept whatever it costs (``fit.keep = "always"``) so that its price shows; the ``if_pays`` rule's verdict
(code bits saved vs θ bits) is reported beside it. Two kinds of experts: ``independent`` (each expert drawn on its
own) and ``upcycled`` (``W_e = B + 0.3·R_e``: experts grown from one dense FFN ``B``, as Qwen1.5-MoE and
sparse-upcycled models are, before training moves them apart). Expert bits/weight counts the experts' codes,
tables, scales and the family records (θ, bases) over the experts' weights; the weight error is over the experts.

    .venv/bin/python benchmarks/moe_families.py      # ~3 min; writes benchmarks/results/moe_families.{json,md}
    .venv/bin/python benchmarks/moe_families.py --render   # re-renders the .md from the JSON
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from macjax.load import families
from macjax.load.layout import Model
from macjax.pipeline import compression, config as config_lib

import _harness

FIT = {"width": 32, "depth": 2, "n_fourier": 8, "steps": 400, "chunk": 100}
VARIANTS = {
    "plain": {},
    "pca-matrix": {"transform": [{"name": "pca", "side": "input"}]},
    "pca-family": {"transform": [{"name": "pca", "side": "input"}], "transform_state": {"share": "role"}},
    "fit-layers": {"fit": {"enabled": True, "keep": "always", "options": FIT}},
    "fit-experts": {"fit": {"enabled": True, "keep": "always", "across": "experts", "options": FIT}},
}


def moe_model(upcycled: bool, *, hidden=256, inter=512, experts=8, layers=2, seed=0) -> Model:
  """A Mixtral-shaped model with random weights; experts ``B + 0.3·R_e`` when ``upcycled``."""
  config = {"model_type": "mixtral", "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": hidden // 8, "vocab_size": 512,
            "num_local_experts": experts, "num_experts_per_tok": 2, "tie_word_embeddings": True}
  spec = families.family_spec(config)
  rng = np.random.default_rng(seed)
  params, base = {}, {}
  for name, shape in {**spec.required, **spec.optional}.items():
    if name == "lm_head.weight":
      continue
    if len(shape) == 1:
      params[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
      continue
    w = rng.standard_normal(shape) / np.sqrt(shape[1])
    if upcycled and ".experts." in name:
      key = name.split(".experts.")[0] + name.split(".experts.")[1].split(".", 1)[1]
      base.setdefault(key, rng.standard_normal(shape) / np.sqrt(shape[1]))
      w = base[key] + 0.3 * w
    params[name] = w.astype(np.float32)
  return Model(params=params, layout=families.build_layout(spec, config), source="synthetic-moe", tokenizer_files={})


def _expert_bits(manifest: dict) -> tuple[float, int]:
  tensors = manifest["tensors"]
  bits = sum(sum(r["bits"].values()) for n, r in tensors.items() if ".experts." in n and r["group"] == "block")
  bits += sum(sum(r["bits"].values()) for n, r in tensors.items()
              if r["group"] in ("fit", "transform") and ".experts" in r.get("family", ""))
  weights = sum(int(np.prod(r["shape"])) for n, r in tensors.items() if ".experts." in n and r["group"] == "block")
  return bits, weights


def _expert_error(model: Model, decoded: dict) -> float:
  names = [m.name for m in model.layout.matrices if m.expert is not None]
  num = sum(float(np.sum((model.params[n] - decoded[n]) ** 2)) for n in names)
  return float(np.sqrt(num / sum(float(np.sum(model.params[n] ** 2)) for n in names)))


def run(step: float) -> list[dict]:
  rows = []
  for kind in ("independent", "upcycled"):
    model = moe_model(kind == "upcycled")
    for variant, extra in VARIANTS.items():
      cfg = config_lib.from_dict({**extra, "quantize": {"step": step}, "evaluate": {"enabled": False}})
      t0 = time.perf_counter()
      compressed = compression.compress(model, cfg)
      decoded = compression.decompress(compressed.units, compressed.manifest)  # checks every tensor's SHA-256
      bits, weights = _expert_bits(compressed.manifest)
      decisions = {f: d for f, d in (compressed.manifest.get("fit_decisions") or {}).items() if ".experts" in f}
      pays = [d["code_bits_saved"] > d["theta_bits"] for d in decisions.values()]
      row = {"experts": kind, "variant": variant, "step": step, "expert_bpw": bits / weights,
             "rel_err": _expert_error(model, decoded), "fit_pays": f"{sum(pays)}/{len(pays)}" if pays else "",
             "code_bits_saved": sum(d["code_bits_saved"] for d in decisions.values()),
             "theta_bits": sum(d["theta_bits"] for d in decisions.values()),
             "seconds": time.perf_counter() - t0}
      rows.append(row)
      print(f"{kind:11s} {variant:11s} experts {row['expert_bpw']:.4f} bits/weight, rel. error {row['rel_err']:.5f}"
            f"{'  f_θ pays in ' + row['fit_pays'] + ' families' if pays else ''} ({row['seconds']:.0f} s)",
            flush=True)
  return rows


def render(data: dict) -> str:
  """The markdown of a result: one row per kind of experts × variant."""
  rows = data["rows"]
  plain = {r["experts"]: r["expert_bpw"] for r in rows if r["variant"] == "plain"}
  cells = [[r["experts"], r["variant"], f"{r['expert_bpw']:.4f}",
            f"{100 * (r['expert_bpw'] / plain[r['experts']] - 1):+.2f} %", f"{r['rel_err']:.5f}", r["fit_pays"],
            f"{r['code_bits_saved']:,.0f} / {r['theta_bits']:,}" if r["fit_pays"] else ""] for r in rows]
  table = _harness.markdown_table(["experts", "variant", "expert bits/weight", "vs plain", "rel. weight error",
                                   "f_θ pays (families)", "f_θ code bits saved / θ bits"], cells)
  return "\n".join([f"# f_θ and shared transforms across experts (Mixtral-shaped, hidden 256, 8 experts of 512, 2 "
                    f"layers; quantizer step {rows[0]['step']})", "",
                    "Generated by `python benchmarks/moe_families.py` (see its docstring).", "", *table]) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--step", type=float, default=0.0625)
  p.add_argument("--render", action="store_true", help="only re-render moe_families.md from its JSON")
  args = p.parse_args(argv)
  if args.render:
    _harness.render_results("moe_families", render)
    return
  _harness.write_results("moe_families", {"rows": run(args.step)}, render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
