"""The rotation-vs-alignment table on a real model: every block matrix's statistics under several coordinates.

The seed notes' claim is that rotations (QuaRot's randomized Hadamard, a random orthogonal ``Q``) *flatten* weights
— kurtosis towards 3, smaller max/RMS — while alignment (PCA/KLT bases) *concentrates* them — a larger share of the
energy in few entries, fewer effective directions, fewer bits at the same step. :func:`analyze` measures that on
every transformer-block matrix of a model (read one matrix at a time), :func:`format_table` prints the per-role
means, and :func:`plot` draws per-layer × role heatmaps and per-layer lines (matplotlib, PNG).

Statistics (see :mod:`macjax.diagnose.stats`): kurtosis, max/RMS, effective rank as a fraction of ``min(out, in)``,
top-1% energy, the order-0 entropy of the codes at a step relative to each matrix's std, and per role the Shannon
lower bound (:func:`macjax.diagnose.shannon_lower_bound`, given each row's and column's spread) at a relative
weight error. Bits of a scope's state (a PCA basis is stored; seeded rotations cost 0) are reported per weight.

Example:
  >>> result = analyze(load_model("smollm2-135m"), scopes=("identity", "hadamard"))  # doctest: +SKIP
  >>> print(format_table(result))                                                     # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np

from macjax import transforms as T
from macjax.diagnose.bound import bound_from_entropy, differential_entropy
from macjax.diagnose.stats import matrix_stats
from macjax.errors import ConfigError

#: The coordinates :func:`analyze` can compare, by name: rotations (randomized Hadamard, Haar-random orthogonal, a
#: rotation learned per matrix to lower its codes' entropy), alignments (PCA of the input side over the whole
#: matrix, or per group of 32 input channels).
SCOPES: dict[str, Callable[[], T.WeightTransform]] = {
    "identity": T.identity,
    "hadamard": T.randomized_hadamard,
    "orthogonal": T.random_orthogonal,
    "pca": T.pca,
    "pca-group32": lambda: T.pca(scope="group", block_size=32),
    "learned": lambda: T.learned_rotation(objective="rate", steps=50),
}
#: What ``macjax analyze`` compares unless told otherwise (``learned`` fits an optimizer loop per matrix).
DEFAULT_SCOPES = ("identity", "hadamard", "orthogonal", "pca")
#: Per-matrix statistics, in table order: (key, column title, format).
STATS = (("kurtosis", "kurt", "{:.2f}"), ("max_to_rms", "max/RMS", "{:.1f}"),
         ("effective_rank_fraction", "erank", "{:.3f}"), ("top_energy_ratio", "top-1%", "{:.3f}"),
         ("code_entropy", "H@step", "{:.3f}"), ("state_bits_per_weight", "state b/w", "{:.3f}"))


def check(scopes: Sequence[str], step_rel: float, rel_error: float) -> None:
  """Raises :class:`~macjax.errors.ConfigError` for unknown scopes, a step ≤ 0 or an error outside (0, 1)."""
  unknown = [s for s in scopes if s not in SCOPES]
  if unknown or not scopes:
    raise ConfigError(f"analyze: scopes {list(scopes)}; expected some of {list(SCOPES)}")
  if not (step_rel > 0 and math.isfinite(step_rel)) or not (0 < rel_error < 1):
    raise ConfigError(f"analyze: step {step_rel} must be > 0 and error {rel_error} in (0, 1)")


def matrix_row(W: np.ndarray, scopes: Sequence[str], key: jax.Array, step_rel: float) -> dict[str, dict]:
  """``{scope: {stat: value}}`` of one matrix, and per scope what the role's Shannon bound pools under
  ``"_bound"``: ``(size · h, Σ W²)`` of the transformed matrix."""
  out: dict[str, Any] = {"_bound": {}}
  Wj = jax.numpy.asarray(W, jax.numpy.float32)
  for i, name in enumerate(scopes):
    t = SCOPES[name]()
    state = t.init(Wj, key=jax.random.fold_in(key, i))
    W2 = t.apply(Wj, state)
    s = matrix_stats(W2, step_rel=step_rel)
    out[name] = {"kurtosis": float(s.kurtosis), "max_to_rms": float(s.max_to_rms),
                 "effective_rank_fraction": float(s.effective_rank) / min(W.shape),
                 "top_energy_ratio": float(s.top_energy_ratio), "code_entropy": float(s.code_entropy),
                 "state_bits_per_weight": float(t.state_bits(state)) / W.size}
    W2 = np.asarray(W2, np.float64)
    # Coordinates with (numerically) zero columns (a PCA basis of a matrix with fewer rows than columns) put a point mass
    # at 0, where the differential-entropy bound degenerates (−∞): no bound is given for them.
    dead = lambda M: np.sqrt(np.mean(M**2, axis=0)) <= 1e-3 * np.sqrt(np.mean(M**2))  # noqa: E731  (float16 basis)
    degenerate = bool(np.any(dead(W2)) and not np.any(dead(np.asarray(W, np.float64))))
    out["_bound"][name] = None if degenerate else (W2.size * differential_entropy([W2]), float(np.sum(W2**2)))
  return out


def analyze(model, *, scopes: Sequence[str] = DEFAULT_SCOPES, step_rel: float = 0.25, rel_error: float = 0.05,
            seed: int = 0, progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict:
  """Statistics of every block matrix of ``model`` under each scope, per-role means and per-role Shannon bounds.

  Args:
    model: a :class:`~macjax.load.Model` (its params may be lazy: one matrix is read at a time).
    scopes: names from :data:`SCOPES`.
    step_rel: the code entropy's step, relative to each (transformed) matrix's std.
    rel_error: relative weight error at which the Shannon lower bound is given.
    seed: seeds the rotations.
    progress: wraps the loop over matrices (e.g. a tqdm bar).

  Returns:
    ``{"model", "family", "scopes", "step_rel", "rel_error", "matrices": [{"name", "role", "layer", "shape",
    scope: {stat: value}}], "roles": {role: {scope: {stat: mean}}}, "bound": {role: {scope: bits/weight, or None
    where the coordinates have (numerically) zero columns}}}``.

  Raises:
    ConfigError: unknown scopes, a step ≤ 0 or an error outside (0, 1).
  """
  check(scopes, step_rel, rel_error)
  key = jax.random.key(seed)
  rows, pooled = [], {}  # pooled[role][scope] = [Σ size·h, Σ W², Σ size]: the bound without holding the matrices
  for info in progress(model.layout.matrices):
    W = np.asarray(model.params[info.name], np.float32)
    row = matrix_row(W, scopes, jax.random.fold_in(key, len(rows)), step_rel)
    for name, part in row.pop("_bound").items():
      acc = pooled.setdefault(info.role, {}).setdefault(name, [0.0, 0.0, 0])
      if part is None or acc[2] < 0:
        acc[2] = -1  # degenerate: no bound for this role and scope
        continue
      acc[0], acc[1], acc[2] = acc[0] + part[0], acc[1] + part[1], acc[2] + W.size
    rows.append({"name": info.name, "role": info.role, "layer": info.layer, "shape": list(W.shape), **row})
  roles = {role: {s: {k: float(np.mean([r[s][k] for r in rows if r["role"] == role])) for k, _, _ in STATS}
                  for s in scopes} for role in pooled}
  bound = {role: {s: float(bound_from_entropy(nh / n, sumsq / n, [rel_error])[0]) if n > 0 else None
                  for s, (nh, sumsq, n) in by_scope.items()} for role, by_scope in pooled.items()}
  return {"model": model.source, "family": model.layout.family, "scopes": list(scopes), "step_rel": step_rel,
          "rel_error": rel_error, "matrices": rows, "roles": roles, "bound": bound}


def format_table(result: dict) -> str:
  """Per role and scope: the mean of each statistic over the role's layers, and the role's Shannon bound."""
  head = ["role", "scope"] + [title for _, title, _ in STATS] + [f"bound@{result['rel_error']:g}"]
  lines = [f"{result['model']} ({result['family']}): {len(result['matrices'])} block matrices; code entropy at "
           f"step {result['step_rel']:g}·std, Shannon bound in bits/weight at relative error {result['rel_error']:g}",
           "  ".join(f"{h:>9}" for h in head)]
  for role, by_scope in result["roles"].items():
    for scope, means in by_scope.items():
      cells = [role, scope] + [fmt.format(means[k]) for k, _, fmt in STATS]
      b = result["bound"][role][scope]
      cells.append(f"{b:.3f}" if b is not None else "n/a")
      lines.append("  ".join(f"{c:>9}" for c in cells))
  if any(b is None for by in result["bound"].values() for b in by.values()):
    lines.append("n/a: these coordinates have (numerically) zero columns (a PCA basis of a matrix with fewer rows than "
                 "columns); the differential-entropy bound degenerates there")
  return "\n".join(lines)


def _grid(result: dict, scope: str, stat: str) -> tuple[np.ndarray, list[str]]:
  """``[layers, roles]`` values of one statistic in one scope (NaN where a role has no matrix at a layer)."""
  roles = list(result["roles"])
  layers = sorted({r["layer"] for r in result["matrices"]})
  grid = np.full((len(layers), len(roles)), np.nan)
  for r in result["matrices"]:
    grid[layers.index(r["layer"]), roles.index(r["role"])] = r[scope][stat]
  return grid, roles


def plot(result: dict, folder, stats: Sequence[str] = ("kurtosis", "top_energy_ratio", "code_entropy",
                                                        "effective_rank_fraction")) -> list:
  """Writes ``heatmap_<stat>.png`` (layer × role, one panel per scope) and ``layers_<stat>.png`` (the statistic
  along depth, one panel per role, one line per scope) into ``folder``; returns their paths."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  titles = {k: t for k, t, _ in STATS}
  paths = []
  for stat in stats:
    scopes = result["scopes"]
    grids = [_grid(result, s, stat) for s in scopes]
    lo, hi = np.nanmin([g for g, _ in grids]), np.nanmax([g for g, _ in grids])
    # one colour scale for every panel; logarithmic when the scopes span decades (PCA's kurtosis reaches 1000s)
    norm = (matplotlib.colors.LogNorm(lo, hi) if lo > 0 and hi > 20 * lo else
            matplotlib.colors.Normalize(lo, hi))
    fig, axes = plt.subplots(1, len(scopes), figsize=(2.6 * len(scopes) + 1, 4.5), squeeze=False, sharey=True)
    for ax, scope, (grid, roles) in zip(axes[0], scopes, grids):
      im = ax.imshow(grid, aspect="auto", norm=norm, cmap="viridis", interpolation="nearest")
      ax.set_title(scope)
      ax.set_xticks(range(len(roles)), roles, rotation=90)
    axes[0][0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), label=titles[stat])
    fig.suptitle(f"{result['model']}: {titles[stat]} per layer and role")
    paths.append(folder / f"heatmap_{stat}.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    roles = list(result["roles"])
    fig, axes = plt.subplots(1, len(roles), figsize=(2.4 * len(roles) + 1, 3.2), squeeze=False, sharey=True)
    for ax, role in zip(axes[0], roles):
      for scope, (grid, _) in zip(scopes, grids):
        ax.plot(grid[:, roles.index(role)], label=scope)
      ax.set_title(role)
      ax.set_xlabel("layer")
      ax.set_yscale("log" if isinstance(norm, matplotlib.colors.LogNorm) else "linear")
    axes[0][0].set_ylabel(titles[stat])
    axes[0][-1].legend(fontsize="small")
    fig.tight_layout()
    paths.append(folder / f"layers_{stat}.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
  return paths


__all__ = ["DEFAULT_SCOPES", "SCOPES", "STATS", "analyze", "check", "format_table", "matrix_row", "plot"]
