"""Reports: what an artifact costs, bit by bit, and what it does to the model.

:func:`artifact_report` needs only an artifact's manifest and folder (it is what ``macjax info`` prints);
:func:`format_report` renders a report dict as a plain-text table.

Conventions (every number counts every byte needed to decode):

* ``bits_per_param`` = 8 · (bytes of the artifact folder − tokenizer assets) / (all parameters of the model).
  Tokenizer files ride along so that an exported folder is usable; they are not weights, so they are reported
  separately (``bits_per_param_with_assets`` includes them).
* ``block_bits_per_weight`` = (codes + tables + quantizer scales + stored transform states, per matrix or shared
  per role + θ of the transformer-block matrices) / their weights —
  the figure comparable with per-matrix peers (GPTQ, HQQ, NNCodec …). The manifest and container bytes are shared by
  all tensors and are counted in ``bits_per_param`` only.
* ``compression_ratio_vs_fp16`` = 16 · params / (8 · bytes without assets).
"""

from __future__ import annotations

import os

import numpy as np

from macjax import artifact


def counted_bits(manifest: dict) -> dict:
  """What a manifest's records count, without the files: ``block_bits_per_weight`` (codes + tables + scales of the
  block matrices, plus the transform states and θ stored once per family, over the block weights), its
  ``block_bits_parts`` and ``all_bits_per_param`` (every tensor's counted bits over all parameters; the folder's
  container and manifest bytes are on top, see :func:`artifact_report`)."""
  tensors = manifest["tensors"]
  shared = [r for r in tensors.values() if r.get("group") in ("fit", "transform")]
  block = [r for r in tensors.values() if r.get("group") == "block"]
  n_block = sum(int(np.prod(r["shape"])) for r in block)
  parts = {k: sum(r["bits"].get(k, 0) for r in block + shared)
           for k in ("codes", "tables", "scales", "transform", "theta")}
  n_all = sum(int(np.prod(r["shape"])) for r in tensors.values() if r.get("group") not in ("fit", "transform"))
  every = sum(sum(r["bits"].values()) for r in tensors.values())
  return {"block_bits_per_weight": sum(parts.values()) / n_block if n_block else 0.0,
          "block_bits_parts": {k: v / n_block for k, v in parts.items()} if n_block else {},
          "all_bits_per_param": every / n_all if n_all else 0.0}


def artifact_report(path: str | os.PathLike, manifest: dict) -> dict:
  """Bit accounting of an artifact on disk.

  Returns:
    A dict with ``params``, ``block_params``, ``bytes`` (the :func:`~macjax.artifact.size_breakdown`),
    ``bits_per_param``, ``bits_per_param_with_assets``, ``block_bits_per_weight`` (and its parts), coded vs
    Shannon-information bits, and ``compression_ratio_vs_fp16``.
  """
  sizes = artifact.size_breakdown(path, manifest)
  everything = manifest["tensors"]
  # θ of f_θ ("fit" records) and role-shared transform states ("transform" records) are stored once per family;
  # they are counted with the block matrices' bits.
  tensors = {n: r for n, r in everything.items() if r.get("group") not in ("fit", "transform")}
  shared = {n: r for n, r in everything.items() if r.get("group") in ("fit", "transform")}
  fits = {n: r for n, r in shared.items() if r["group"] == "fit"}
  params = int(sum(int(np.prod(r["shape"])) for r in tensors.values()))
  block = {n: r for n, r in tensors.items() if r.get("group") == "block"}
  block_params = int(sum(int(np.prod(r["shape"])) for r in block.values()))
  counted = counted_bits(manifest)
  coded = sum(r["bits"].get("codes", 0) for r in tensors.values() if "information_bits" in r)
  info = sum(r["information_bits"] for r in tensors.values() if "information_bits" in r)
  weight_bytes = sizes["total"] - sizes["assets"]
  by_group = {}
  for group in ("block", "other", "vector"):
    rs = [r for r in tensors.values() if r.get("group") == group]
    n = int(sum(int(np.prod(r["shape"])) for r in rs))
    bits = int(sum(sum(r["bits"].values()) for r in rs))
    if group == "block":
      bits += int(sum(sum(r["bits"].values()) for r in shared.values()))
    by_group[group] = {"params": n, "bits": bits, "bits_per_weight": bits / n if n else 0.0}
  fit_report = {}
  for r in fits.values():
    family, n = r.get("family", r["role"]), max(int(np.prod(r["shape"])), 1)
    residual = sum(sum(b["bits"].get(k, 0) for k in ("codes", "tables", "scales"))
                   for b in block.values() if b.get("fit") == family)
    fit_report[family] = {"theta_bits": r["bits"].get("theta", 0), "theta_bits_per_weight": r["bits"].get("theta", 0) / n,
                          "residual_bits_per_weight": residual / n, "explained_energy": r.get("explained_energy"),
                          "explained_energy_per_layer": r.get("explained_energy_per_layer")}
  return {
      "source": manifest.get("source"),
      "family": manifest["layout"]["family"],
      "params": params,
      "block_params": block_params,
      "bytes": sizes,
      "bits_per_param": 8 * weight_bytes / params,
      "bits_per_param_with_assets": 8 * sizes["total"] / params,
      "block_bits_per_weight": counted["block_bits_per_weight"],
      "block_bits_per_weight_parts": counted["block_bits_parts"],
      "by_group": by_group,
      "coded_bits": int(coded),
      "information_bits": float(info),
      "coding_overhead": (coded / info - 1.0) if info else 0.0,
      "compression_ratio_vs_fp16": 16 * params / (8 * weight_bytes),
      "fit": fit_report,
      "fit_decisions": manifest.get("fit_decisions"),
  }


FLOAT_STORAGE = ("F64", "F32", "F16", "BF16", "float64", "float32", "float16", "bfloat16")


def source_report(model) -> dict:
  """What a model was read from: ``{"path", "files", "bytes", "params", "stored_as": {dtype: params},
  "quantized": [dtypes that are quantizer grids]}``. The files are those the loader reads (a GGUF file; a folder's
  safetensors, index, config and tokenizer files). Weights of a quantized source (a GGUF ``Q4_1`` ...) sit on that
  quantizer's grid and are the reference every quality figure is measured against."""
  from macjax.load import lazy, loader  # pylint: disable=g-import-not-at-top
  path = loader.resolve_source(model.source)
  if path.is_dir():
    names = ({f.name for f in path.glob("*.safetensors")} | set(model.tokenizer_files)
             | {"config.json", "model.safetensors.index.json"})
    files = sorted(path / n for n in names if (path / n).is_file())
  else:
    files = [path]
  stored: dict[str, int] = {}
  for name in model.params:
    dtype = model.source_dtypes.get(name, "?")
    stored[dtype] = stored.get(dtype, 0) + int(np.prod(lazy.shape_of(model.params, name), dtype=np.int64))
  return {"path": str(path), "files": [f.name for f in files], "bytes": int(sum(f.stat().st_size for f in files)),
          "params": int(sum(stored.values())), "stored_as": dict(sorted(stored.items(), key=lambda kv: -kv[1])),
          "quantized": sorted(d for d in stored if d not in FLOAT_STORAGE and d != "?")}


def _source_lines(report: dict) -> list[str]:
  """The report's opening: the source file and its size, the artifact's size and the ratio between them."""
  src, total = report["source"], report["artifact"]["bytes"]["total"]
  stored = ", ".join(f"{_share(n, src['params'])} {d}" for d, n in src["stored_as"].items())
  name = src["files"][0] if len(src["files"]) == 1 else f"{src['path']} ({len(src['files'])} files)"
  lines = [f"source           {name}: {src['bytes'] / 1e6:.1f} MB, {8 * src['bytes'] / src['params']:.2f} bits/param "
           f"(weights stored as {stored})",
           f"artifact         {report['path']}: {total / 1e6:.1f} MB = {total / src['bytes']:.3f} × the source "
           f"({'smaller' if total < src['bytes'] else 'LARGER'} by {abs(1 - total / src['bytes']):.1%})"]
  if src["quantized"]:
    grids = "/".join(src["quantized"])
    lines += [f"                 note: the source is already quantized ({grids}): quality below is measured against "
              f"its dequantized weights, not the original model's,",
              f"                 and the artifact re-quantizes weights that sit on that grid (nothing here is tuned "
              f"to it; coding the grid's indices losslessly is not implemented)"]
  return lines


def _share(n: int, total: int) -> str:
  pct = 100 * n / total if total else 0.0
  return f"{pct:.0f} %" if pct >= 1 or pct == 0 else "<1 %"


def _fmt_bytes(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024
  return str(n)


def _quality_lines(q: dict, where: str) -> list[str]:
  lines = []
  if "perplexity" in q:
    se = q.get("perplexity_rel_change_stderr")
    lines.append(f"perplexity       {q['perplexity_reference']:.4f} → {q['perplexity']:.4f} "
                 f"({100 * q['perplexity_rel_change']:+.2f}%" + (f" ± {100 * se:.2f}%" if se is not None else "")
                 + f"), KL {q['kl']:.5f} nats/token on {q.get('tokens', '?')} {where} tokens")
  if "cosine_mean" in q:
    lines.append(f"embedding cosine mean {q['cosine_mean']:.5f}, min {q['cosine_min']:.5f} "
                 f"on {q.get('sentences', '?')} {where} sentences")
  return lines


def format_report(report: dict) -> str:
  """Renders a report dict (from :func:`artifact_report`, optionally with ``quality``, ``weight_error`` and
  ``timings`` keys) as text."""
  a = report["artifact"] if "artifact" in report else report
  lines = []
  if "source" in report and "artifact" in report:
    lines = _source_lines(report)
  lines.append(f"model            {a['source']} ({a['family']}), {a['params']:,} parameters "
               f"({a['block_params']:,} in transformer-block matrices)")
  if "path" in report and "source" not in report:
    lines.append(f"artifact         {report['path']}")
  b = a["bytes"]
  lines.append(f"size on disk     {_fmt_bytes(b['total'])}  = " + " + ".join(
      f"{k} {_fmt_bytes(b[k])}" for k in ("codes", "tables", "scales", "theta", "transform", "raw", "assets",
                                          "manifest", "container") if b[k]) + (" (Orbax files net of their zstd)"
                                                                              if b["container"] else ""))
  lines.append(f"bits/param       {a['bits_per_param']:.3f} (whole model, all bytes but tokenizer assets); "
               f"{a['bits_per_param_with_assets']:.3f} with assets")
  parts = a["block_bits_per_weight_parts"]
  lines.append(f"block matrices   {a['block_bits_per_weight']:.3f} bits/weight = " + " + ".join(
      f"{k} {v:.3f}" for k, v in parts.items() if v or k in ("codes", "tables", "scales")))
  for g, d in a["by_group"].items():
    if d["params"]:
      lines.append(f"  {g:<14} {d['params']:>12,} params  {d['bits_per_weight']:.3f} bits/weight")
  for role, f in a.get("fit", {}).items():
    per_layer = " ".join(f"{x:.3f}" for x in f["explained_energy_per_layer"])
    lines.append(f"  f_θ '{role}'{' ' * max(1, 8 - len(role))}explains {f['explained_energy']:.4f} of the energy "
                 f"(per layer: {per_layer}); θ {f['theta_bits_per_weight']:.4f} + residual "
                 f"{f['residual_bits_per_weight']:.3f} bits/weight")
  for role, d in (a.get("fit_decisions") or {}).items():
    if not d["kept"]:
      lines.append(f"  f_θ '{role}' not kept: it explained {d['explained_energy']:.4f} of the energy and saved "
                   f"{d['code_bits_saved']:,.0f} code bits, less than its θ ({d['theta_bits']:,} bits)")
  lines.append(f"entropy coder    {a['coded_bits']:,} bits coded vs {a['information_bits']:,.0f} bits of information "
               f"(+{100 * a['coding_overhead']:.3f}%)")
  lines.append(f"ratio vs fp16    {a['compression_ratio_vs_fp16']:.2f}x")
  if report.get("rewrite"):
    r = report["rewrite"]
    lines.append(f"rewrite          residual {r['residual']}, value heads rotated: {r['head_rotation']}, untied: "
                 f"{r['untied']} (+{r['extra_params']:,} weights, counted above)")
  if "weight_error" in report:
    w = report["weight_error"]
    lines.append(f"rel. weight err  block matrices {w['block']:.4f}" +
                 (f", other 2-D tensors {w['other']:.4f}" if w.get("other") is not None else ""))
  for key, where in (("quality", "held-out"), ("quality_prose", "other-domain (prose)")):
    if report.get(key):
      lines += _quality_lines(report[key], where)
  if report.get("quality_prose_error"):
    lines.append(f"other domain     not scored: {report['quality_prose_error']}")
  if report.get("timings"):
    lines.append("time (s)         " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()))
  return "\n".join(lines)
