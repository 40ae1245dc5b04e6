"""Damaged and hostile copies of an artifact, and what reading them does: a seeded fuzzing harness.

Each case copies an artifact (hard links where the file system allows: only the file that is damaged gets its own
bytes), damages the copy in one way and reads it the way ``macjax decompress`` and ``macjax info`` do (manifest,
assets, bit accounting, units decoded with SHA-256 verification). Only the units the damage can reach are decoded
(those whose files or manifest records differ from the original, all of them when a global field or the shared
unit changed), so a case costs one unit's decoding even on a full-size model. Damage:

* ``truncate`` / ``flip`` / ``delete``: a random file of the folder cut short, a few bits flipped, or removed;
* ``manifest``: one random field of ``manifest.json`` replaced by a hostile value (negative, huge, zero, wrong type,
  missing) and the manifest's checksum recomputed, as an attacker would (accidental damage to the manifest is the
  ``truncate``/``flip`` cases, which its checksum catches);
* ``bitstream``: a random run of one bucket's bytes rewritten, *and its SHA-256 in the manifest rewritten to match*,
  as an attacker would, so that the damage reaches the decoders.

Outcomes: ``clean_error`` (a :class:`~macjax.errors.MacjaxError`: one ``macjax: error:`` line on the command line),
``harmless`` (every tensor decodes to exactly the reference), ``crash`` (any other exception), ``hang`` (past the
time limit) and ``wrong_weights`` (decoded without error to something else). The last three are defects.

Example:
  >>> summary = run("artifacts/tiny", cases=300, seed=0)      # doctest: +SKIP
  >>> summary["outcomes"]                                       # doctest: +SKIP
  {'clean_error': 231, 'harmless': 69, 'crash': 0, 'hang': 0, 'wrong_weights': 0}
"""

from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import functools
import hashlib
import json
import os
import pathlib
import shutil
import signal
import tempfile
import time
from typing import Any, Callable

import numpy as np

from macjax.errors import MacjaxError

OUTCOMES = ("clean_error", "harmless", "crash", "hang", "wrong_weights")
DEFECTS = ("crash", "hang", "wrong_weights")
KINDS = ("truncate", "flip", "delete", "manifest", "bitstream")
_HOSTILE = (-1, 0, 1, 2 ** 31, 2 ** 40, 2 ** 63, -(2 ** 63), 1.5, float("nan"), "x", "", None, [], {}, True,
            [2 ** 40], [-1, 2], "../../etc/passwd", "<delete>")


@dataclasses.dataclass
class Case:
  """One damaged copy: what was done and what reading it gave."""

  index: int
  kind: str
  detail: str
  outcome: str = ""
  message: str = ""


class _Hang(Exception):
  pass


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.rglob("*") if p.is_file())


def _own(f: pathlib.Path) -> pathlib.Path:
  """Gives ``f`` bytes of its own (breaks a hard link to the original artifact) before it is changed in place."""
  tmp = f.with_name(f.name + ".own")
  shutil.copyfile(f, tmp)
  os.replace(tmp, f)
  return f


def _truncate(rng, folder: pathlib.Path) -> str:
  f = _own(_files(folder)[rng.integers(len(_files(folder)))])
  size = f.stat().st_size
  keep = int(rng.integers(0, max(size, 1)))
  with open(f, "r+b") as h:
    h.truncate(keep)
  return f"{f.relative_to(folder)}: {size} -> {keep} bytes"


def _flip(rng, folder: pathlib.Path) -> str:
  f = _own(_files(folder)[rng.integers(len(_files(folder)))])
  data = bytearray(f.read_bytes())
  if not data:
    return f"{f.relative_to(folder)}: empty, nothing flipped"
  where = rng.integers(0, len(data), size=int(rng.integers(1, 4)))
  for i in where:
    data[i] ^= 1 << int(rng.integers(8))
  f.write_bytes(bytes(data))
  return f"{f.relative_to(folder)}: bits flipped at {sorted(int(i) for i in where)}"


def _delete(rng, folder: pathlib.Path) -> str:
  f = _files(folder)[rng.integers(len(_files(folder)))]
  f.unlink()
  return f"{f.relative_to(folder)} deleted"


def _paths(value, prefix=()) -> list[tuple]:
  """Every path to a leaf or container of a JSON value."""
  out = [prefix] if prefix else []
  if isinstance(value, dict):
    for k, v in value.items():
      out += _paths(v, prefix + (k,))
  elif isinstance(value, list):
    for i, v in enumerate(value[:8]):
      out += _paths(v, prefix + (i,))
  return out


def _manifest(rng, folder: pathlib.Path) -> str:
  m = json.loads((folder / "manifest.json").read_text())
  paths = _paths(m)
  path = paths[rng.integers(len(paths))]
  value = _HOSTILE[rng.integers(len(_HOSTILE))]
  parent = functools.reduce(lambda c, k: c[k], path[:-1], m)
  if value == "<delete>":
    del parent[path[-1]]
  else:
    parent[path[-1]] = value
  from macjax.artifact import store  # pylint: disable=g-import-not-at-top
  _own(folder / "manifest.json").write_text(json.dumps(store.seal(m)))  # checksum recomputed: a hostile edit
  return f"manifest {'/'.join(map(str, path))} = {value!r}"


def _bitstream(rng, folder: pathlib.Path) -> str:
  """Rewrites a run of one bucket's elements, re-saves the unit and rewrites the bucket's SHA-256."""
  from macjax.artifact import store  # pylint: disable=g-import-not-at-top
  m = json.loads((folder / "manifest.json").read_text())
  units = [u for u, t in m["units"].items() if t.get("buckets")]
  unit = units[rng.integers(len(units))]
  buckets = store.load_unit(folder, m, unit)
  name = sorted(buckets)[rng.integers(len(buckets))]
  a = buckets[name].copy()
  if a.size == 0:
    return f"{unit}/{name}: empty bucket, untouched"
  start = int(rng.integers(a.size))
  stop = min(a.size, start + int(rng.integers(1, 9)))
  raw = a.view(np.uint8)
  step = a.dtype.itemsize
  raw[start * step:stop * step] = rng.integers(0, 256, size=(stop - start) * step, dtype=np.uint8)
  buckets[name] = a
  shutil.rmtree(folder / store.UNITS_DIR / unit)
  store.save_buckets(folder / store.UNITS_DIR / unit, buckets)
  m["units"][unit]["buckets"][name]["sha256"] = store.sha256_of(a)
  _own(folder / "manifest.json").write_text(json.dumps(store.seal(m)))
  return f"{unit}/{name}[{start}:{stop}] rewritten, SHA-256 rewritten"


MUTATIONS: dict[str, Callable] = {"truncate": _truncate, "flip": _flip, "delete": _delete, "manifest": _manifest,
                                  "bitstream": _bitstream}


def read_all(path: pathlib.Path, units: set[str] | None = None) -> dict[str, str]:
  """What ``info`` and ``decompress`` read: ``{tensor: SHA-256 of its decoded float32 bytes}``; with ``units``,
  only the tensors of those units are decoded (the manifest is still validated whole)."""
  from macjax import artifact  # pylint: disable=g-import-not-at-top
  from macjax.pipeline import compression, report  # pylint: disable=g-import-not-at-top
  manifest = artifact.read_manifest(path)
  artifact.load_assets(path, manifest)
  report.artifact_report(path, manifest)
  decoded = manifest
  if units is not None:
    keep = set(units) | {compression.SHARED_UNIT}
    decoded = {**manifest, "units": {u: t for u, t in manifest["units"].items() if u in keep},
               "tensors": {n: r for n, r in manifest["tensors"].items() if r.get("unit") in keep}}
  out = {}
  for _, tensors in compression.iter_decompress(decoded, functools.partial(artifact.load_unit, path, manifest),
                                                workers=1):
    out.update({n: hashlib.sha256(np.ascontiguousarray(w, np.float32).tobytes()).hexdigest()
                for n, w in tensors.items()})
  return out


def _link_or_copy(src: str, dst: str) -> None:
  try:
    os.link(src, dst)
  except OSError:  # another file system, or links not allowed
    shutil.copy2(src, dst)


def _reachable_units(original: pathlib.Path, copy: pathlib.Path) -> set[str] | None:
  """Units a damaged copy can decode differently from the original: those whose files are no longer the
  original's (hard links broken, removed, rewritten) or whose manifest records changed; ``None`` (decode all)
  when the manifest changed outside its unit and tensor records, does not parse, or the shared unit is hit."""
  from macjax.pipeline import compression  # pylint: disable=g-import-not-at-top
  units: set[str] = set()
  for f in _files(original):
    rel = f.relative_to(original)
    g = copy / rel
    if g.exists() and (g.stat().st_ino == f.stat().st_ino or filecmp.cmp(f, g, shallow=False)):
      continue
    if rel.parts[0] == "units" and len(rel.parts) > 2:
      units.add(rel.parts[1])
    elif rel.name == "manifest.json":
      try:
        a, b = json.loads(f.read_text()), json.loads(g.read_text())
      except (OSError, ValueError):
        return None
      changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)} - {"checksum"}
      if not changed <= {"units", "tensors"} or not all(isinstance(m.get(k), dict) for m in (a, b) for k in changed):
        return None
      for u in set(a.get("units", {})) | set(b.get("units", {})):
        if a["units"].get(u) != b["units"].get(u):
          units.add(u)
      for n in set(a.get("tensors", {})) | set(b.get("tensors", {})):
        ra, rb = a["tensors"].get(n), b["tensors"].get(n)
        if ra != rb:
          units |= {r.get("unit") for r in (ra, rb) if isinstance(r, dict) and isinstance(r.get("unit"), str)}
          if not all(isinstance(r, dict) and isinstance(r.get("unit"), str) for r in (ra, rb)):
            return None
  return None if compression.SHARED_UNIT in units else units


@contextlib.contextmanager
def _deadline(seconds: float):
  def fire(*_):
    raise _Hang()
  old = signal.signal(signal.SIGALRM, fire)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def classify(path: pathlib.Path, reference: dict[str, str], timeout: float,
             units: set[str] | None = None) -> tuple[str, str]:
  """``(outcome, message)`` of reading one damaged copy (only ``units`` decoded, if given), in this process."""
  try:
    with _deadline(timeout):
      got = read_all(path, units)
  except _Hang:
    return "hang", f"no answer within {timeout} s"
  except MacjaxError as e:
    return "clean_error", str(e)[:300]
  except Exception as e:  # pylint: disable=broad-except  (what the harness is looking for)
    return "crash", f"{type(e).__name__}: {str(e)[:300]}"
  expected = reference if units is None else {k: v for k, v in reference.items() if k in got}
  if got == expected and (units is not None or len(got) == len(reference)):
    return "harmless", ""
  return "wrong_weights", f"{sum(got.get(k) != v for k, v in expected.items())} tensors differ"


def _quiet() -> None:
  import logging  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  logging.disable(logging.CRITICAL)
  warnings.simplefilter("ignore")


class _Isolated:
  """Reads in a child process (spawned once, replaced when a read kills it): an abort or an out-of-memory kill in
  a decoder is then a ``crash`` outcome, not the end of the run."""

  def __init__(self, timeout: float):
    self.timeout, self.pool = timeout, None

  def _pool(self):
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    import multiprocessing  # pylint: disable=g-import-not-at-top
    if self.pool is None:
      self.pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                         initializer=_quiet)
    return self.pool

  def __call__(self, path: pathlib.Path, reference: dict[str, str], units=None) -> tuple[str, str]:
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    future = self._pool().submit(classify, path, reference, self.timeout, units)
    try:
      return future.result(timeout=self.timeout + 60)
    except concurrent.futures.process.BrokenProcessPool as e:
      self.close()
      return "crash", f"the reading process died ({e})"
    except concurrent.futures.TimeoutError:
      self.close(kill=True)
      return "hang", f"no answer within {self.timeout + 60} s"

  def close(self, kill: bool = False) -> None:
    if self.pool is not None:
      if kill:
        for p in list(getattr(self.pool, "_processes", {}).values()):
          p.kill()
      self.pool.shutdown(wait=False, cancel_futures=True)
      self.pool = None


def run(path: str | pathlib.Path, *, cases: int = 300, seed: int = 0, timeout: float = 60.0,
        kinds: tuple[str, ...] = KINDS, isolate: bool = False, focus: bool = True,
        say: Callable[[str], None] | None = None, every: int = 0) -> dict[str, Any]:
  """Damages ``cases`` copies of the artifact ``path`` (kinds in turn, positions from ``seed``) and classifies
  each read (module docstring); ``isolate`` reads in a child process, so that a read that kills its process is
  counted rather than ending the run; ``focus`` decodes only the units the damage can reach (module docstring);
  ``say`` hears every defect, and a progress line every ``every`` cases. Returns ``{"outcomes": {outcome: count}, "by_kind": ..., "defects":
  [cases], "cases": n, "seconds": ...}``."""
  path = pathlib.Path(path).absolute()
  reference = read_all(path)
  rng = np.random.default_rng(seed)
  counts = {o: 0 for o in OUTCOMES}
  by_kind = {k: {o: 0 for o in OUTCOMES} for k in kinds}
  defects: list[dict] = []
  t0 = time.perf_counter()
  read = _Isolated(timeout) if isolate else (lambda p, ref, units: classify(p, ref, timeout, units))
  with tempfile.TemporaryDirectory(prefix="macjax-fuzz-") as tmp, contextlib.ExitStack() as stack:
    if isolate:
      stack.callback(read.close)
    for i in range(cases):
      kind = kinds[i % len(kinds)]
      copy = pathlib.Path(tmp) / f"case{i:06d}"
      shutil.copytree(path, copy, copy_function=_link_or_copy)
      case = Case(i, kind, MUTATIONS[kind](rng, copy))
      case.outcome, case.message = read(copy, reference, _reachable_units(path, copy) if focus else None)
      counts[case.outcome] += 1
      by_kind[kind][case.outcome] += 1
      if case.outcome in DEFECTS:
        defects.append(dataclasses.asdict(case))
        if say:
          say(f"case {i} {kind}: {case.detail} -> {case.outcome}: {case.message}")
      shutil.rmtree(copy, ignore_errors=True)
      if say and every and (i + 1) % every == 0:
        say(f"{i + 1}/{cases} cases, {time.perf_counter() - t0:.0f} s: {counts}")
  return {"cases": cases, "seed": seed, "outcomes": counts, "by_kind": by_kind, "defects": defects,
          "seconds": time.perf_counter() - t0}
