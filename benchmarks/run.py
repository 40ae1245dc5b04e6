"""The benchmarks' one entry point: runs them and writes ``benchmarks/RESULTS.md``, the index of what each one
measures, the command that regenerates its results, and the files (tables, JSON, figures) it wrote.

    .venv/bin/python benchmarks/run.py                     # re-render RESULTS.md from the committed results
    .venv/bin/python benchmarks/run.py --run rd fuzz       # run those benchmarks (one at a time), then re-render
    .venv/bin/python benchmarks/run.py --run all           # everything (many hours on a 2-core CPU)

Each benchmark prints its table and writes its JSON (and markdown or figures) under ``benchmarks/results/``
through ``benchmarks/_harness.py`` (one writer: the same run metadata in every JSON, markdown rendered from the JSON;
``--render`` re-renders it; ``_``-prefixed files are helpers, not benchmarks). Speed and memory figures are measured
in the same process against a baseline and depend on the machine's load, which the results record.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One benchmark: its script (or command), the runs that produce the committed results, and their files."""

  name: str
  script: str  # benchmarks/<script>.py, or "macjax" for the command line
  runs: tuple[tuple[str, ...], ...]
  results: tuple[str, ...]  # globs under benchmarks/results/
  cost: str
  note: str = ""
  note_about: str = ""  # what a command-line benchmark measures (scripts say it in their docstring)

  def commands(self) -> list[list[str]]:
    if self.script == "macjax":
      return [[str(ROOT / ".venv" / "bin" / "macjax"), *run] for run in self.runs]
    return [[sys.executable, str(ROOT / "benchmarks" / f"{self.script}.py"), *run] for run in self.runs]

  def about(self) -> str:
    """The first line of the script's docstring (or the command's description)."""
    if self.script == "macjax":
      return self.note_about
    tree = ast.parse((ROOT / "benchmarks" / f"{self.script}.py").read_text())
    return (ast.get_docstring(tree) or "").splitlines()[0]


RD_FIGURE = ("rd", "smollm2-135m", "--configs", "default,plain", "--steps", "0.0625,0.125,0.25", "--baselines",
             "Q4_0,Q5_0,Q8_0,rtn_int4", "--peers", "benchmarks/peers/smollm2-135m.json", "--out",
             "benchmarks/results/rd/smollm2-135m")
BENCHMARKS = (
    Benchmark("rd", "macjax", (RD_FIGURE,), ("rd/smollm2-135m/rd.png", "rd/smollm2-135m/rd.csv"), "9 min",
              note_about="Rate–distortion figure of the default model: `macjax rd` (configs over steps, baselines, "
                         "quoted peers)."),
    Benchmark("analyze", "macjax", tuple(("analyze", m, "--out", f"benchmarks/results/analyze/{m}")
                                         for m in ("smollm2-135m", "minilm-l6")),
              ("analyze/*/analysis.json", "analyze/*/*.png"), "3.5 min + 1 min",
              note_about="Rotation vs alignment on the default model's weights: `macjax analyze` (every block matrix "
                         "under identity / Hadamard / random orthogonal / PCA coordinates)."),
    Benchmark("rd_models", "rd_models", (("--model", "minilm-l6"), ("--model", "smollm2-135m")),
              ("rd_models_*.md",), "hours (every recipe × step, evaluated)",
              "The committed rows were measured by several runs, each with its own `--methods` and `--steps` (every "
              "row records its recipe and step; rows are merged into the JSON); the command runs the whole grid."),
    Benchmark("coding_rd", "coding_rd", ((),), ("coding_rd.md",), "minutes"),
    Benchmark("coding_quality", "coding_quality", ((),), ("coding_quality.md",), "minutes"),
    Benchmark("coding_gptq", "coding_gptq", ((),), ("coding_gptq.md",), "minutes"),
    Benchmark("coding_speed", "coding_speed", ((),), ("coding_speed.md",), "minutes"),
    Benchmark("transforms", "transforms_report", ((), ("--quick",)), ("transforms_report.md", "transforms_quick.md"),
              "hours (the full run); minutes (--quick)"),
    Benchmark("fit_explained", "fit_explained", ((),), ("fit_explained.md",), "minutes"),
    Benchmark("fit_rd", "fit_rd", (("--model", "minilm-l6"), ("--model", "smollm2-135m")), ("fit_rd_*.md",),
              "hours"),
    Benchmark("shared_basis", "shared_basis", ((),), ("shared_basis.md",), "minutes"),
    Benchmark("moe", "moe_families", ((),), ("moe_families.md",), "3 min"),
    Benchmark("scale", "scale", ((),), ("scale.md",), "~30 min"),
    Benchmark("curvature_terms", "curvature_terms", ((),), ("curvature_terms.md",), "1 min"),
    Benchmark("curvature_bases", "curvature_bases", ((),), ("curvature_bases_*.md",), "4 min"),
    Benchmark("curvature_rd", "macjax", tuple(
        ("rd", m, "--configs", configs, "--steps", "0.0625,0.125,0.25", "--baselines", "",
         "--out", f"benchmarks/results/rd/curvature_{m}") for m, configs in (
             ("minilm-l6", "default,configs/curvature.toml,configs/fisher.toml,"
                           "benchmarks/configs/curvature_noalloc.toml,benchmarks/configs/default_whole_model.toml"),
             ("smollm2-135m", "default,configs/curvature.toml,benchmarks/configs/curvature_noalloc.toml"))),
              ("rd/curvature_*/rd.png", "rd/curvature_*/rd.csv"), "45 min",
              note_about="Curvature-set column steps (and, on MiniLM, GPTQ on Fisher-weighted Hessians: "
                         "`configs/fisher.toml`) against the default recipe at equal model-output quality: "
                         "`macjax rd` of `configs/curvature.toml`, the no-allocation variant and `default` on both "
                         "default models (and the default calibrated on the whole model, Fisher's reference)."),
    Benchmark("domains", "macjax", (("rd", "smollm2-135m", "--configs",
                                     "default,plain,benchmarks/configs/default_damp0.1.toml,configs/fisher.toml,"
                                     "benchmarks/configs/fisher_curvature_noalloc.toml,"
                                     "benchmarks/configs/default_whole_model.toml,"
                                     "benchmarks/configs/default_tuned.toml", "--steps", "0.125,0.25",
                                     "--baselines", "", "--other-domain", "--out",
                                     "benchmarks/results/rd/domains_smollm2-135m"),),
              ("rd/domains_*/rd.png", "rd/domains_*/rd.csv"), "90 min",
              note_about="Quality on the held-out plays and on prose of another domain (never used for calibration):"
                         " the calibrated default, the uncalibrated plain config, the default with 10× GPTQ "
                         "dampening, GPTQ on Fisher-weighted Hessians with and without the allocation, and the default "
                         "with each layer's norm gains refit to the reference layer's output "
                         "(`macjax rd --other-domain`)."),
    Benchmark("aligned", "macjax", (("rd", "minilm-l6", "--configs",
                                     "configs/quality.toml,configs/aligned.toml,"
                                     "benchmarks/configs/quality_hadamard.toml,"
                                     "benchmarks/configs/aligned_tuned.toml",
                                     "--steps", "0.2,0.3,0.45", "--baselines", "", "--peers",
                                     "benchmarks/peers/minilm-l6.json", "--out",
                                     "benchmarks/results/rd/aligned_minilm-l6"),),
              ("rd/aligned_*/rd.png", "rd/aligned_*/rd.csv"), "20 min",
              note_about="Aligned (curvature column steps) vs unaligned vs Hadamard coordinates on the same axes: "
                         "`configs/aligned.toml` against `configs/quality.toml` and the same recipe after an "
                         "input-side Hadamard, on MiniLM, with NNCodec's quoted figures; and the aligned recipe with "
                         "each layer's vectors refit to the reference layer's output "
                         "(`benchmarks/configs/aligned_tuned.toml`)."),
    Benchmark("fisher_steps", "fisher_steps", ((),), ("fisher_steps.md",), "13 min"),
    Benchmark("output_hessians", "output_hessians", ((),), ("output_hessians.md",), "20 min"),
    Benchmark("verdict", "verdict", ((),), ("verdict.md",), "seconds (reads the results above)"),
    Benchmark("fuzz", "fuzz_artifacts", ((), ("--real",)), ("fuzz_default_models.md", "fuzz_artifacts.json"),
              "~40 min"),
)


def render() -> str:
  """RESULTS.md: one section per benchmark (what it measures, how to regenerate it, its files)."""
  lines = ["# Benchmark results", "",
           "Generated by `benchmarks/run.py` (do not edit: run it). Each benchmark's command regenerates the files "
           "listed under it; every measured figure the README quotes comes from one of them.", ""]
  for b in BENCHMARKS:
    lines += [f"## {b.name}", "", b.about(), "", f"Cost on the 2-core development CPU: {b.cost}." +
              (f" {b.note}" if b.note else ""), "", "```bash"]
    prog = ".venv/bin/macjax" if b.script == "macjax" else f".venv/bin/python benchmarks/{b.script}.py"
    lines += [" ".join([prog, shlex.join(run)]) if run else prog for run in b.runs]
    lines += ["```", ""]
    files = sorted({p for pattern in b.results for p in RESULTS.glob(pattern)})
    for f in files:
      rel = f.relative_to(ROOT / "benchmarks")
      lines.append(f"![{b.name}]({rel})" if f.suffix == ".png" else f"- [{rel}]({rel})")
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--run", nargs="*", default=[], help="benchmark names, or 'all'")
  args = p.parse_args(argv)
  names = [b.name for b in BENCHMARKS] if args.run == ["all"] else args.run
  unknown = sorted(set(names) - {b.name for b in BENCHMARKS})
  if unknown:
    p.error(f"unknown benchmarks {unknown}; known: {[b.name for b in BENCHMARKS]}")
  for b in BENCHMARKS:
    if b.name in names:
      for cmd in b.commands():
        print(f"[run] {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
  (ROOT / "benchmarks" / "RESULTS.md").write_text(render())
  print(f"wrote {ROOT / 'benchmarks' / 'RESULTS.md'}")


if __name__ == "__main__":
  main()
