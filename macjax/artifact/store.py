"""Saving and restoring artifacts: the one module that touches the artifact's files.

An artifact (format 3) is a folder written one *unit* at a time, so that neither side ever holds the whole model::

    ARTIFACT/
      manifest.json        JSON: format, version, config, source, layout, per-tensor records, and per unit the
                           index of its parts and the shape, dtype and SHA-256 of each of its buckets
      units/<unit>/        an Orbax pytree checkpoint {bucket name: flat array} (see macjax.artifact.pack)
      assets/<file>        tokenizer files, plain bytes

A unit is what the pipeline writes at once: one transformer layer (``layer.00012``), the tensors outside the
blocks (``globals``), or the states shared by many matrices (``shared``: θ of f_θ, role-shared transforms).

Guarantees:

* **Atomic, and resumable.** :class:`ArtifactWriter` builds the artifact in a sibling folder
  ``.<name>.partial`` (one process at a time: an exclusive lock), each unit saved atomically by Orbax and then
  marked finished by its own small JSON record. A run killed at any point leaves that folder, never one that looks
  like an artifact; a new writer with the same *fingerprint* (source, config, version) resumes it (the finished
  units are kept), one with another fingerprint is refused with an error that names what differs.
  :meth:`ArtifactWriter.finish` writes ``manifest.json`` and renames the folder into place.
* **Verified.** :func:`read_manifest` checks the format and version; :func:`load_unit` restores a unit against
  the abstract tree the manifest describes and compares every bucket's SHA-256; any difference, missing file or
  unreadable container raises :class:`~macjax.errors.ArtifactError`.
* **No pickle.** Orbax stores arrays with TensorStore; everything else is JSON.

Example:
  >>> w = ArtifactWriter("/tmp/a", {"model": "x"})  # doctest: +SKIP
  >>> w.write_unit("layer.00000", {"codes__uint32": np.arange(4, dtype=np.uint32)}, {}, {})  # doctest: +SKIP
  >>> w.finish({"hello": 1})  # doctest: +SKIP
  >>> load_unit("/tmp/a", read_manifest("/tmp/a"), "layer.00000")["codes__uint32"]  # doctest: +SKIP
  array([0, 1, 2, 3], dtype=uint32)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import time
import uuid
import warnings
from typing import Mapping

import numpy as np

from macjax.errors import ArtifactError

FORMAT = "macjax-artifact"
FORMAT_VERSION = 3  # 3: manifest.json carries a SHA-256 of itself (see docs/FORMAT.md)
MANIFEST = "manifest.json"
UNITS_DIR = "units"
ASSETS_DIR = "assets"
FINGERPRINT = "fingerprint.json"
RUN = "run.json"
_ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UNIT_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def _check_asset_name(name: str) -> None:
  if not _ASSET_NAME.fullmatch(name):
    raise ArtifactError(f"asset file name {name!r} is not allowed: expected letters, digits, '.', '_', '-' "
                        "(no folders)")


def check_unit_name(name: str) -> None:
  """Unit names become folder names: lower-case letters, digits, ``.``, ``_``, ``-``, starting with a letter."""
  if not isinstance(name, str) or not _UNIT_NAME.fullmatch(name):
    raise ArtifactError(f"unit name {name!r} is not allowed: expected lower-case letters, digits, '.', '_', '-', "
                        "starting with a letter")


def sha256_of(array: np.ndarray) -> str:
  """SHA-256 of an array's bytes (C order)."""
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _ocp():
  # Imported lazily: orbax pulls in a lot, and `macjax info` on a bad path should fail fast.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from orbax.checkpoint import v1 as ocp1  # pylint: disable=g-import-not-at-top
  return ocp1


def partial_path(path: str | os.PathLike) -> pathlib.Path:
  """Where :class:`ArtifactWriter` builds the artifact ``path`` until it is finished."""
  path = pathlib.Path(path).absolute()
  return path.parent / f".{path.name}.partial"


def lock_path(path: str | os.PathLike) -> pathlib.Path:
  """The lock file of the artifact ``path``: a sibling that is never deleted (held by the writing process)."""
  path = pathlib.Path(path).absolute()
  return path.parent / f".{path.name}.lock"


def _take_lock(path: pathlib.Path):
  f = open(lock_path(path), "a+")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError as e:
    f.close()
    raise ArtifactError(f"{path}: another process is writing this artifact (it holds {lock_path(path)}); wait for "
                        "it to finish or choose another --out") from e
  except OSError as e:
    f.close()
    raise ArtifactError(f"{path}: cannot lock {lock_path(path)} ({e}); the filesystem must support flock") from e
  return f


def _lock_held(path: pathlib.Path) -> bool:
  """Whether some process holds the artifact's lock (tested by trying to take it)."""
  if not lock_path(path).exists():
    return False
  with open(lock_path(path), "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      return True
    fcntl.flock(f, fcntl.LOCK_UN)
    return False


def bucket_table(buckets: Mapping[str, np.ndarray]) -> dict[str, dict]:
  """``{bucket: {shape, dtype, sha256}}``: what the manifest records of a unit's buckets."""
  return {name: {"shape": list(a.shape), "dtype": a.dtype.name, "sha256": sha256_of(a)}
          for name, a in sorted(buckets.items())}


def _write_json(path: pathlib.Path, value) -> None:
  """Writes JSON atomically (a temporary sibling, flushed, renamed)."""
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(value, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def _read_json(path: pathlib.Path, what: str) -> dict:
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ArtifactError(f"{path}: the {what} cannot be read ({type(e).__name__}: {e})") from e
  if not isinstance(value, dict):
    raise ArtifactError(f"{path}: the {what} is not a JSON object")
  return value


def _describe_difference(old: dict, new: dict) -> str:
  keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  return ", ".join(keys) or "nothing"


class ArtifactWriter:
  """Builds an artifact one unit at a time, in a resumable partial folder (see the module docstring).

  Args:
    path: the artifact folder to create.
    fingerprint: a JSON-able dict that identifies the run (source digests, config, macjax version): a partial
      folder left by a run with another fingerprint is refused.
    overwrite: allow :meth:`finish` to replace an existing artifact at ``path``.
    restart: discard a partial folder left by an earlier run instead of resuming or refusing it.
    helper: a helper process of a multi-process run: wait (up to ``wait_s``) until the primary process has prepared
      the partial folder for the same fingerprint, then only write units (the primary holds the lock, waits for
      every unit with :meth:`wait_for` and finishes).
    processes: how many processes write units into this artifact (helpers must agree with the primary).
    wait_s: how long a helper waits for the primary.

  Attributes:
    resumed: whether a partial folder with the same fingerprint was found (its finished units are kept).

  Raises:
    ArtifactError: ``path`` exists and ``overwrite`` is false; another process is writing the same artifact; a
      partial folder with another fingerprint exists and ``restart`` is false.
  """

  def __init__(self, path: str | os.PathLike, fingerprint: dict, *, overwrite: bool = False,
               restart: bool = False, helper: bool = False, processes: int = 1, wait_s: float = 600.0):
    self.path = pathlib.Path(path).absolute()
    self.partial = partial_path(self.path)
    self.overwrite = overwrite
    self.helper = helper
    if helper:
      self._join(json.loads(json.dumps(fingerprint)), wait_s, processes)
      return
    if self.path.exists() and not overwrite:
      raise ArtifactError(f"{self.path} already exists; choose another path or pass overwrite=True (--overwrite)")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._lock = _take_lock(self.path)
    try:
      self._prepare(json.loads(json.dumps(fingerprint)), restart, processes)
    except BaseException:
      self.close()
      raise

  def _prepare(self, fingerprint: dict, restart: bool, processes: int) -> None:
    """Under the lock: resume the partial folder of the same run, or start it afresh; then announce the run."""
    if self.path.exists() and not self.overwrite:  # finished by another process while this one waited
      raise ArtifactError(f"{self.path} already exists; choose another path or pass overwrite=True (--overwrite)")
    self.partial.mkdir(exist_ok=True)
    found = self.partial / FINGERPRINT
    self.resumed = False
    if found.is_file() and not restart:
      old = _read_json(found, "fingerprint of an earlier, unfinished run (pass --restart to discard it)")
      if old != fingerprint:
        raise ArtifactError(
            f"{self.path}: an unfinished compression of another run is in {self.partial} (it differs in: "
            f"{_describe_difference(old, fingerprint)}); resuming it would mix two runs. Delete that folder, or pass "
            "restart=True (--restart) to discard it")
      self.resumed = True
    if not self.resumed:
      for child in self.partial.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
      (self.partial / UNITS_DIR).mkdir()
      _write_json(found, fingerprint)
    # Helpers join only this run (a run file written now, by the process holding the lock).
    _write_json(self.partial / RUN, {"run": uuid.uuid4().hex, "processes": int(processes)})

  def _join(self, fingerprint: dict, wait_s: float, processes: int) -> None:
    """A helper process's writer: waits until a primary process holds the lock and has announced this run (same
    fingerprint, same process count) in the partial folder, then only writes units into it (no lock, no
    manifest)."""
    self._lock = None
    deadline = time.monotonic() + wait_s
    while True:
      if _lock_held(self.path) and (self.partial / RUN).is_file():
        try:
          run = _read_json(self.partial / RUN, "run file")
          if _read_json(self.partial / FINGERPRINT, "fingerprint") == fingerprint:
            if run.get("processes") != processes:
              raise ArtifactError(f"{self.path}: process 0 runs with {run.get('processes')} processes, this one was "
                                  f"started with {processes}; start every process with the same --process-count")
            break
        except ArtifactError as e:
          if "--process-count" in str(e):
            raise
      if time.monotonic() > deadline:
        raise ArtifactError(f"{self.path}: no primary process prepared {self.partial} for this run within "
                            f"{wait_s:.0f} s (start process 0 with the same command, on a filesystem both see)")
      time.sleep(0.2)
    self.resumed = bool(self.done_units())

  def wait_for(self, units, wait_s: float = 3600.0) -> None:
    """Waits until every unit of ``units`` is finished (by any process writing into the partial folder).

    Raises:
      ArtifactError: naming the missing units, after ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    while True:
      missing = sorted(set(units) - set(self.done_units()))
      if not missing:
        return
      if time.monotonic() > deadline:
        raise ArtifactError(f"{self.path}: units {missing[:4]}{' ...' if len(missing) > 4 else ''} were not written "
                            f"by the other processes within {wait_s:.0f} s; run the same command again to resume")
      time.sleep(0.5)

  def close(self) -> None:
    """Releases the lock (the partial folder stays, for a later resume)."""
    if self._lock is not None and not self._lock.closed:
      fcntl.flock(self._lock, fcntl.LOCK_UN)
      self._lock.close()
    self._lock = None

  def done_units(self) -> dict[str, dict]:
    """``{unit: record}`` of the units finished by this or an earlier run (their Orbax data is complete)."""
    out = {}
    for f in sorted((self.partial / UNITS_DIR).glob("*.json")):
      unit = f.name[:-len(".json")]
      if (self.partial / UNITS_DIR / unit).is_dir():
        out[unit] = _read_json(f, f"record of unit {unit}")
    return out

  def load_unit(self, unit: str, record: dict | None = None) -> dict[str, np.ndarray]:
    """The buckets of a finished unit of the partial folder (verified, as :func:`load_unit`); ``record``: its
    record from :meth:`done_units`, when the caller has it."""
    record = record or self.done_units().get(unit)
    if record is None:
      raise ArtifactError(f"{self.partial}: unit {unit!r} is not finished")
    return load_unit(self.partial, {"units": {unit: record}}, unit)

  def write_unit(self, unit: str, buckets: Mapping[str, np.ndarray], index: dict, records: dict) -> dict:
    """Saves one unit's buckets (Orbax, atomically) and then its record; returns the record.

    Args:
      unit: the unit's name (see :func:`check_unit_name`).
      buckets: ``{bucket: flat array}`` from :meth:`~macjax.artifact.Packer.finish`.
      index: ``{tensor: {part: location}}`` of the same packer.
      records: the unit's per-tensor manifest records (JSON-able).
    """
    check_unit_name(unit)
    folder = self.partial / UNITS_DIR / unit
    if folder.exists():  # left by a run killed between the Orbax save and the record
      shutil.rmtree(folder)
    record = {"buckets": bucket_table(buckets), "index": index, "tensors": records}
    try:
      json.dumps(record)
    except TypeError as e:
      raise ArtifactError(f"unit {unit}: its record is not JSON-serializable: {e}") from e
    with self._writing(f"unit {unit}"):
      save_buckets(folder, buckets)
      _write_json(self.partial / UNITS_DIR / f"{unit}.json", record)
    return record

  @contextlib.contextmanager
  def _writing(self, what: str):
    """Reports a failed write (a full disk, ...) as one error that says where the finished units wait."""
    try:
      yield
    except (OSError, ArtifactError) as e:
      raise ArtifactError(f"{self.path}: writing {what} failed, nothing was moved into place ({e}); the units "
                          f"finished so far are kept in {self.partial}: free space (or fix the cause) and run the same "
                          f"command again to resume, or delete that folder") from e

  def finish(self, manifest: dict, assets: Mapping[str, bytes] | None = None) -> pathlib.Path:
    """Writes the manifest (with the ``units`` table of every finished unit) and the assets, and moves the
    artifact into place. ``format``, ``format_version``, ``units``, ``assets`` and the manifest's ``checksum`` are
    set here.

    Raises:
      ArtifactError: the manifest is not JSON-serializable, an asset name is not allowed, or ``path`` appeared
        meanwhile and ``overwrite`` is false.
    """
    if self.helper:
      raise ArtifactError(f"{self.path}: only the primary process (index 0) finishes an artifact")
    manifest = dict(manifest)
    manifest["format"], manifest["format_version"] = FORMAT, FORMAT_VERSION
    units = self.done_units()
    manifest["units"] = {u: {"buckets": r["buckets"], "index": r["index"]} for u, r in units.items()}
    assets = dict(assets or {})
    for name in assets:
      _check_asset_name(name)
    manifest["assets"] = {name: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                          for name, b in sorted(assets.items())}
    try:
      json.dumps(manifest)
    except TypeError as e:
      raise ArtifactError(f"artifact manifest is not JSON-serializable: {e}") from e
    with self._writing("the manifest and assets"):
      if assets:
        (self.partial / ASSETS_DIR).mkdir(exist_ok=True)
        for name, content in assets.items():
          (self.partial / ASSETS_DIR / name).write_bytes(content)
      _write_json(self.partial / MANIFEST, seal(manifest))
    # The records now live in the manifest; the fingerprint goes last, so that a kill in between still resumes.
    for unit in units:
      (self.partial / UNITS_DIR / f"{unit}.json").unlink()
    for leftover in [*self.partial.glob(".*.json.*"), *(self.partial / UNITS_DIR).glob(".*.json.*"),
                     self.partial / RUN]:
      leftover.unlink(missing_ok=True)  # temporary files of writes a kill interrupted, the run file
    (self.partial / FINGERPRINT).unlink()
    if self.path.exists():  # (the lock is still held: no other writer can be between these steps)
      if not self.overwrite:
        raise ArtifactError(f"{self.path} appeared while it was being written; the new artifact is left in "
                            f"{self.partial}")
      shutil.rmtree(self.path)
    os.replace(self.partial, self.path)
    self.close()
    return self.path


def save(path: str | os.PathLike, units: Mapping[str, tuple[Mapping[str, np.ndarray], dict, dict]],
         manifest: dict, *, assets: dict[str, bytes] | None = None, overwrite: bool = False) -> pathlib.Path:
  """Writes a whole artifact at once: ``units`` maps a unit name to ``(buckets, index, records)``.

  Raises:
    ArtifactError: as :class:`ArtifactWriter` and :meth:`ArtifactWriter.finish`.
  """
  writer = ArtifactWriter(path, {"save": uuid.uuid4().hex}, overwrite=overwrite, restart=True)
  try:
    for unit, (buckets, index, records) in units.items():
      writer.write_unit(unit, buckets, index, records)
    return writer.finish(manifest, assets)
  finally:
    writer.close()


def manifest_checksum(manifest: Mapping) -> str:
  """SHA-256 of the manifest's canonical JSON (sorted keys, no spaces), its ``checksum`` field left out."""
  body = {k: v for k, v in manifest.items() if k != "checksum"}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def seal(manifest: dict) -> dict:
  """``manifest`` with its ``checksum`` set (what :class:`ArtifactWriter` writes)."""
  manifest["checksum"] = {"sha256": manifest_checksum(manifest)}
  return manifest


def save_buckets(folder: str | os.PathLike, buckets: Mapping[str, np.ndarray]) -> None:
  """Writes one unit's buckets as an Orbax checkpoint at ``folder`` (which must not exist).

  Raises:
    ArtifactError: the write failed (a full disk, a read-only or vanished folder: Orbax and TensorStore report
      these as ``OSError``, ``ValueError`` or their own types, so every failure is reported as this one).
  """
  folder = pathlib.Path(folder).absolute()
  absl = logging.getLogger("absl")  # Orbax logs a failed write's traceback from its thread: the error says it all
  level = absl.level
  absl.setLevel(logging.CRITICAL)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      _ocp().save_pytree(folder, {k: np.ascontiguousarray(v) for k, v in buckets.items()})
  except Exception as e:  # pylint: disable=broad-except  (see Raises)
    for tmp in folder.parent.glob(f"{folder.name}.orbax-checkpoint-tmp*"):
      shutil.rmtree(tmp, ignore_errors=True)  # Orbax's half-written temporary folder: it never looks finished
    why = str(e).splitlines()[0][:400] if str(e) else type(e).__name__
    raise ArtifactError(f"{folder}: writing failed ({why})") from e
  finally:
    absl.setLevel(level)


def read_manifest(path: str | os.PathLike) -> dict:
  """Reads and checks an artifact's manifest without loading its arrays.

  Raises:
    ArtifactError: missing folder, an unfinished (partial) artifact, not a macjax artifact, or an unsupported
      format version.
  """
  path = pathlib.Path(path).absolute()
  if not path.exists():
    hint = (f" (an unfinished compression is in {partial_path(path)}: run the same command again to resume it)"
            if partial_path(path).is_dir() else "")
    raise ArtifactError(f"artifact {path} does not exist{hint}")
  if not path.is_dir():
    raise ArtifactError(f"artifact {path} is not a folder (an artifact is the folder `macjax compress` writes)")
  if not (path / MANIFEST).is_file():
    if (path / "_CHECKPOINT_METADATA").is_file():
      raise ArtifactError(f"{path}: written by artifact format 1 (an older macjax), this macjax reads format "
                          f"{FORMAT_VERSION}; compress the model again")
    raise ArtifactError(f"{path} is not a macjax artifact: it has no {MANIFEST}")
  manifest = _read_json(path / MANIFEST, "manifest")
  if manifest.get("format") != FORMAT:
    raise ArtifactError(f"{path}: {MANIFEST} is not a macjax artifact manifest (no '{FORMAT}' format)")
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise ArtifactError(f"{path}: written by artifact format {version!r}, this macjax reads format "
                        f"{FORMAT_VERSION}")
  checksum = manifest.get("checksum")
  if not isinstance(checksum, dict) or checksum.get("sha256") != manifest_checksum(manifest):
    raise ArtifactError(f"{path}: {MANIFEST} does not match its checksum: it was damaged or edited")
  if not isinstance(manifest.get("units"), dict):
    raise ArtifactError(f"{path}: manifest has no unit table")
  from macjax.artifact import validate  # pylint: disable=g-import-not-at-top
  validate.check_manifest(manifest, str(path))
  return manifest


def load_unit(path: str | os.PathLike, manifest: dict, unit: str) -> dict[str, np.ndarray]:
  """Restores one unit's buckets and verifies each one's shape, dtype and SHA-256 against the manifest.

  Raises:
    ArtifactError: for any missing, truncated or altered part of the unit.
  """
  path = pathlib.Path(path).absolute()  # Orbax refuses relative paths
  check_unit_name(unit)
  try:
    table = manifest["units"][unit]["buckets"]
    specs = {name: _bucket_spec(b) for name, b in table.items()}
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise ArtifactError(f"{path}: malformed bucket table of unit {unit!r} in the manifest ({e})") from e
  if not specs:
    return {}
  # Before anything is allocated: a sanity bound on what the buckets may claim given the bytes on disk (entropy-coded
  # payloads barely compress; MAX_EXPANSION leaves room for zstd on redundant raw tensors and stops a manifest
  # claiming petabytes; issue 15 replaces it with a validated manifest).
  on_disk = disk_bytes(path / UNITS_DIR / unit) if (path / UNITS_DIR / unit).is_dir() else 0
  claimed = sum(int(n) * np.dtype(d).itemsize for n, d in specs.values())
  if claimed > MAX_EXPANSION * on_disk + (64 << 20):
    raise ArtifactError(f"{path}: unit {unit}'s bucket table claims {claimed:,} bytes, but its folder holds "
                        f"{on_disk:,} bytes on disk: the manifest or the unit is damaged")
  abstract = {name: np.empty(n, np.dtype(d)) for name, (n, d) in specs.items()}
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      restored = _ocp().load_pytree(path / UNITS_DIR / unit, abstract)
  except Exception as e:  # TensorStore / Orbax errors for missing or truncated chunks.
    raise ArtifactError(f"{path}: unit {unit} cannot be restored, it is truncated or damaged "
                        f"({type(e).__name__}: {str(e)[:300]})") from e
  buckets = {}
  for name, b in table.items():
    if name not in restored:
      raise ArtifactError(f"{path}: bucket {name!r} of unit {unit} is listed in the manifest but missing")
    a = np.asarray(restored[name])
    if list(a.shape) != list(b["shape"]) or a.dtype.name != b["dtype"]:
      raise ArtifactError(f"{path}: bucket {name!r} of unit {unit} has shape {a.shape} {a.dtype}, manifest says "
                          f"{b['shape']} {b['dtype']}")
    if sha256_of(a) != b["sha256"]:
      raise ArtifactError(f"{path}: bucket {name!r} of unit {unit} does not match its SHA-256 in the manifest: "
                          "the artifact was altered")
    buckets[name] = a
  return buckets


#: How many times its bytes on disk a unit's buckets may claim (see :func:`load_unit`).
MAX_EXPANSION = 4096
BUCKET_DTYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
                  "bool")


def _bucket_spec(b: dict) -> tuple[int, str]:
  """``(elements, dtype)`` of a bucket table entry: a flat array of a known dtype."""
  shape, dtype = b["shape"], b["dtype"]
  if (not isinstance(shape, list) or len(shape) != 1 or not isinstance(shape[0], int) or isinstance(shape[0], bool)
      or shape[0] < 0 or dtype not in BUCKET_DTYPES):
    raise ValueError(f"bucket entry {b!r}: expected a flat shape [n] and one of {BUCKET_DTYPES}")
  return shape[0], dtype


def load(path: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
  """Restores ``({unit: buckets}, manifest)``, every bucket verified (the whole artifact in memory: for small
  models; :func:`load_unit` reads one unit at a time).

  Raises:
    ArtifactError: for any missing, truncated or altered part of the artifact.
  """
  manifest = read_manifest(path)
  return {unit: load_unit(path, manifest, unit) for unit in manifest["units"]}, manifest


def load_assets(path: str | os.PathLike, manifest: dict) -> dict[str, bytes]:
  """Reads the asset files listed in the manifest and checks their sizes and SHA-256.

  Raises:
    ArtifactError: an asset is missing, has a disallowed name, or was altered.
  """
  out = {}
  listed = manifest.get("assets", {})
  if not isinstance(listed, dict):
    raise ArtifactError(f"{path}: malformed asset table in the manifest")
  for name, rec in listed.items():
    _check_asset_name(name)
    f = pathlib.Path(path) / ASSETS_DIR / name
    if not f.is_file():
      raise ArtifactError(f"{path}: asset {name} is listed in the manifest but missing from {ASSETS_DIR}/")
    content = f.read_bytes()
    if not isinstance(rec, dict) or len(content) != rec.get("bytes") or (
        hashlib.sha256(content).hexdigest() != rec.get("sha256")):
      raise ArtifactError(f"{path}: asset {name} does not match its size/SHA-256 in the manifest: it was altered")
    out[name] = content
  return out


def assets_bytes(path: str | os.PathLike) -> int:
  """Bytes of the plain asset files under ``assets/``."""
  return disk_bytes(pathlib.Path(path) / ASSETS_DIR) if (pathlib.Path(path) / ASSETS_DIR).is_dir() else 0


def disk_bytes(path: str | os.PathLike) -> int:
  """Total size in bytes of every file under the artifact folder (what it costs on disk)."""
  total = 0
  for root, _, files in os.walk(path):
    for f in files:
      total += os.path.getsize(os.path.join(root, f))
  return total


def manifest_bytes(path: str | os.PathLike) -> int:
  """Size in bytes of the JSON manifest file."""
  return os.path.getsize(pathlib.Path(path) / MANIFEST)
