"""Scale: peak memory and throughput of ``macjax compress`` / ``decompress`` on synthetic LLaMA checkpoints.

For each size (``w<hidden>_l<layers>``), a bf16 checkpoint is written by ``scripts/synthetic_checkpoint.py`` (sharded
like Hugging Face, 1 GiB shards; cached in ``--work``), then each config is run as its own process, exactly as a
user runs it:

* ``python -m macjax.cli compress CKPT --out ART --no-eval --no-verify [--config ...]``: load → coded artifact on
  disk (the report's stage timings are read back from its JSON);
* ``python -m macjax.cli decompress ART --out HF --dtype float16``: artifact → sharded Hugging Face folder.

Each child's wall time and peak resident memory (``ru_maxrss`` from ``wait4``) are measured; params/s is the
model's parameters over the child's whole wall time (Python and JAX start-up included). The memory targets are
read off the same table: the peak should not grow with depth, and should stay below the checkpoint's file size.

Usage:
  python benchmarks/scale.py [--sizes w1024_l8,w2048_l4,w2048_l24,w2048_l32] [--configs plain,gptq]
                             [--gptq-sizes w1024_l8,w2048_l4] [--work /tmp/macjax-scale]
Writes benchmarks/results/scale.json and scale.md (``--render``: re-render scale.md from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time

import _harness

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: ``plain`` (no calibration; what the table's older rows call ``default``, the built-in default before the
#: ``default`` preset gained GPTQ + allocation, which does not stream) and ``configs/gptq.toml``.
CONFIGS = {"plain": "plain", "gptq": ROOT / "configs" / "gptq.toml"}
#: The GPTQ runs calibrate on 8 windows of 256 tokens (the config's default is 48): 2 cores, every layer run twice.
GPTQ_SETS = ["calibration.n_seq=8"]


def timed(cmd: list[str], env: dict) -> dict:
  """Runs a child process; returns its wall time, its own peak RSS (bytes, ``wait4``) and its output."""
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
  return {"wall_s": wall, "peak_rss_bytes": int(usage.ru_maxrss) * 1024, "stdout": stdout, "stderr": stderr}


def checkpoint(work: pathlib.Path, size: str, env: dict) -> tuple[pathlib.Path, int, int]:
  m = re.fullmatch(r"w(\d+)_l(\d+)", size)
  if not m:
    raise SystemExit(f"size {size!r}: expected w<hidden>_l<layers>")
  path = work / size
  if not (path / "config.json").is_file():
    subprocess.run([sys.executable, str(ROOT / "scripts" / "synthetic_checkpoint.py"), str(path), "--hidden",
                    m.group(1), "--layers", m.group(2)], env=env, check=True)
  sys.path.insert(0, str(ROOT / "scripts"))
  import synthetic_checkpoint  # pylint: disable=g-import-not-at-top
  config = json.loads((path / "config.json").read_text())
  params = sum(int(__import__("numpy").prod(s)) for s in synthetic_checkpoint.tensor_shapes(config).values())
  file_bytes = sum(p.stat().st_size for p in path.glob("*.safetensors"))
  return path, params, file_bytes


def bench_size(work: pathlib.Path, size: str, configs: list[str], env: dict) -> list[dict]:
  path, params, file_bytes = checkpoint(work, size, env)
  rows = []
  for name in configs:
    art, hf = work / f"{size}.{name}.mjx", work / f"{size}.{name}.hf"
    cmd = [sys.executable, "-m", "macjax.cli", "compress", str(path), "--out", str(art), "--overwrite", "--restart",
           "--no-eval", "--no-verify", "--json"]
    cmd += ["--config", str(CONFIGS[name])]
    if name == "gptq":
      cmd += [a for s in GPTQ_SETS for a in ("--set", s)]
    c = timed(cmd, env)
    report = json.loads(c["stdout"][c["stdout"].index("{"):])
    shutil.rmtree(hf, ignore_errors=True)
    d = timed([sys.executable, "-m", "macjax.cli", "decompress", str(art), "--out", str(hf), "--dtype", "float16"],
              env)
    row = {"size": size, "params": params, "file_bytes": file_bytes, "config": name,
           "compress": {"wall_s": c["wall_s"], "params_per_s": params / c["wall_s"],
                        "peak_rss_bytes": c["peak_rss_bytes"], "stages": report["stages"],
                        "bits_per_param": report["artifact"]["bits_per_param"],
                        "block_bits_per_weight": report["artifact"]["block_bits_per_weight"],
                        "artifact_bytes": report["artifact"]["bytes"]["total"], "devices": report["devices"]},
           "decompress": {"wall_s": d["wall_s"], "params_per_s": params / d["wall_s"],
                          "peak_rss_bytes": d["peak_rss_bytes"]}}
    rows.append(row)
    print(_line(row), flush=True)
    shutil.rmtree(hf, ignore_errors=True)
    shutil.rmtree(art, ignore_errors=True)
  return rows


def _gb(n: int) -> str:
  return f"{n / 2**30:.2f}"


HEADER = ["size", "params (B)", "bf16 file (GiB)", "config", "compress wall (s)", "compress M params/s",
          "compress peak RSS (GiB)", "peak / file", "block bits/weight", "decompress wall (s)", "decompress M params/s",
          "decompress peak RSS (GiB)"]
#: What each config name in the rows means (``default``: the rows measured before ``plain`` was split off).
CONFIG_NOTES = {"default": "`default` = the built-in config",
                "plain": "`plain` = `--config plain` (no calibration)",
                "gptq": "`gptq` = `configs/gptq.toml` with sequential calibration on {sets} (8 windows of 256 tokens)"}


def _cells(r: dict) -> list[str]:
  c, d = r["compress"], r["decompress"]
  return [r["size"], f"{r['params'] / 1e9:.3f}", _gb(r["file_bytes"]), r["config"], f"{c['wall_s']:.0f}",
          f"{c['params_per_s'] / 1e6:.1f}", _gb(c["peak_rss_bytes"]), f"{c['peak_rss_bytes'] / r['file_bytes']:.2f}",
          f"{c['block_bits_per_weight']:.2f}", f"{d['wall_s']:.0f}", f"{d['params_per_s'] / 1e6:.1f}",
          _gb(d["peak_rss_bytes"])]


def _line(r: dict) -> str:
  return "| " + " | ".join(_cells(r)) + " |"


def _load(meta: dict) -> str:
  if meta.get("load_note"):
    return meta["load_note"]
  return (f"1-min load average {meta.get('loadavg_start', ['?'])[0]:.2f} at the start, "
          f"{meta.get('loadavg_end', ['?'])[0]:.2f} at the end")


def render(data: dict) -> str:
  """The markdown of a result: the table, and how peak memory grows with depth."""
  meta, rows = data["meta"], data["rows"]
  configs = list(dict.fromkeys(r["config"] for r in rows))
  notes = "; ".join(CONFIG_NOTES[c].format(sets=" ".join(meta["gptq_sets"])) for c in configs if c in CONFIG_NOTES)
  lines = ["# Scale: synthetic LLaMA checkpoints (bf16), `macjax compress` / `decompress` as separate processes", "",
           f"Machine: {meta['machine']}; {meta['cpus']} CPUs; jax devices: {meta['devices']}; {meta['date']}. "
           f"Generated by `python benchmarks/scale.py` (see its docstring for what is measured). {notes}. Wall time "
           f"includes Python/JAX start-up; decompress writes float16 shards. Machine load: {_load(meta)}.", ""]
  lines += _harness.markdown_table(HEADER, [_cells(r) for r in rows])
  depth = {r["size"]: r for r in rows if r["config"] in ("plain", "default")}
  if "w2048_l4" in depth and "w2048_l24" in depth:
    a, b = depth["w2048_l4"]["compress"]["peak_rss_bytes"], depth["w2048_l24"]["compress"]["peak_rss_bytes"]
    lines += ["", f"Peak memory from 4 to 24 layers at width 2048 ({depth['w2048_l4']['config']} config): {_gb(a)} → "
              f"{_gb(b)} GiB ({100 * (b / a - 1):+.1f} %)."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", default="w1024_l8,w2048_l4,w2048_l24,w2048_l32")
  p.add_argument("--configs", default="plain,gptq")
  p.add_argument("--gptq-sizes", default="w1024_l8,w2048_l4", help="sizes on which the gptq config also runs")
  p.add_argument("--work", default="/tmp/macjax-scale")
  p.add_argument("--render", "--render-only", action="store_true", help="only re-render scale.md from scale.json")
  a = p.parse_args(argv)
  if a.render:
    _harness.render_results("scale", render)
    return 0
  work = pathlib.Path(a.work)
  work.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  import jax  # pylint: disable=g-import-not-at-top
  meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "devices": jax.device_count(),
          "date": time.strftime("%Y-%m-%d"), "gptq_sets": GPTQ_SETS, "loadavg_start": os.getloadavg()}
  rows = []
  print("\n".join(_harness.markdown_table(HEADER, [])))
  for size in a.sizes.split(","):
    configs = [c for c in a.configs.split(",") if c == "plain" or size in a.gptq_sizes.split(",")]
    rows += bench_size(work, size, configs, env)
    meta["loadavg_end"] = os.getloadavg()
    _harness.write_results("scale", {"meta": meta, "rows": rows}, render, argv=argv, script=__file__, quiet=True)
  return 0

if __name__ == "__main__":
  sys.exit(main())
