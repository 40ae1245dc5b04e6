"""Saving and restoring artifacts with Orbax: the one module that touches the artifact's files.

An artifact is an Orbax checkpoint folder holding

* a pytree ``{bucket name: flat numpy array}`` (see :mod:`macjax.artifact.pack`), and
* a JSON *manifest* in Orbax's custom metadata: format name and version, the pipeline config, the source model,
  the model layout, the per-tensor index and headers, per-tensor bit counts, and a SHA-256 of every bucket.

Guarantees:

* **Atomic.** The folder is written under a temporary sibling name and renamed at the end: a failed save leaves
  nothing that looks like an artifact. An existing artifact is never overwritten unless asked.
* **Verified.** :func:`load` checks the format and version, restores against the abstract tree described by the
  manifest (shape and dtype of every bucket), and compares each bucket's SHA-256 with the manifest's; any
  difference, missing file or unreadable container raises :class:`~macjax.errors.ArtifactError`.
* **No pickle.** Orbax stores arrays with TensorStore and the manifest as JSON.

Example:
  >>> save("/tmp/a", {"codes__uint32": np.arange(4, dtype=np.uint32)}, {"hello": 1})  # doctest: +SKIP
  >>> buckets, manifest = load("/tmp/a")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import uuid
import warnings

import numpy as np

from macjax.errors import ArtifactError

FORMAT = "macjax-artifact"
FORMAT_VERSION = 1
ASSETS_DIR = "assets"
_ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_asset_name(name: str) -> None:
  if not _ASSET_NAME.match(name):
    raise ArtifactError(f"asset file name {name!r} is not allowed: expected letters, digits, '.', '_', '-' "
                        "(no folders)")


def _sha256(array: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _ocp():
  # Imported lazily: orbax pulls in a lot, and `macjax info` on a bad path should fail fast.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from orbax.checkpoint import v1 as ocp1  # pylint: disable=g-import-not-at-top
  return ocp1


def save(path: str | os.PathLike, buckets: dict[str, np.ndarray], manifest: dict, *,
         assets: dict[str, bytes] | None = None, overwrite: bool = False) -> pathlib.Path:
  """Writes an artifact folder atomically.

  Args:
    path: the folder to create.
    buckets: ``{name: flat numpy array}``.
    manifest: JSON-serializable dict; ``format``, ``format_version``, ``buckets`` (shape, dtype, SHA-256 of each
      bucket) and ``assets`` (size and SHA-256 of each asset file) are added here.
    assets: ``{file name: bytes}`` stored as plain files under ``assets/`` (tokenizer files: needed to export a
      usable folder, not to decode weights; plain files so that their bytes on disk are exactly their size).
    overwrite: replace an existing folder at ``path``.

  Returns:
    The artifact's path.

  Raises:
    ArtifactError: if ``path`` exists and ``overwrite`` is false, or the manifest is not JSON-serializable.
  """
  path = pathlib.Path(path).absolute()
  if path.exists() and not overwrite:
    raise ArtifactError(f"{path} already exists; choose another path or pass overwrite=True (--overwrite)")
  manifest = dict(manifest)
  manifest["format"] = FORMAT
  manifest["format_version"] = FORMAT_VERSION
  manifest["buckets"] = {
      name: {"shape": list(a.shape), "dtype": a.dtype.name, "sha256": _sha256(a)} for name, a in buckets.items()
  }
  assets = dict(assets or {})
  for name in assets:
    _check_asset_name(name)
  manifest["assets"] = {name: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                        for name, b in sorted(assets.items())}
  try:
    json.dumps(manifest)
  except TypeError as e:
    raise ArtifactError(f"artifact manifest is not JSON-serializable: {e}") from e
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      _ocp().save_pytree(tmp, {k: np.ascontiguousarray(v) for k, v in buckets.items()}, custom_metadata=manifest)
    if assets:
      (tmp / ASSETS_DIR).mkdir()
      for name, content in assets.items():
        (tmp / ASSETS_DIR / name).write_bytes(content)
    if path.exists():
      shutil.rmtree(path)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def read_manifest(path: str | os.PathLike) -> dict:
  """Reads and checks an artifact's manifest without loading its arrays.

  Raises:
    ArtifactError: missing folder, not an Orbax checkpoint, not a macjax artifact, or an unsupported version.
  """
  path = pathlib.Path(path).absolute()  # Orbax refuses relative paths
  if not path.exists():
    raise ArtifactError(f"artifact {path} does not exist")
  if not path.is_dir():
    raise ArtifactError(f"artifact {path} is not a folder (an artifact is the folder `macjax compress` writes)")
  meta_file = path / "_CHECKPOINT_METADATA"
  if not meta_file.is_file():
    raise ArtifactError(f"{path} is not a macjax artifact: it has no Orbax checkpoint metadata (_CHECKPOINT_METADATA)")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      manifest = _ocp().pytree_metadata(path).custom_metadata
  except Exception as e:  # Orbax raises many types for a damaged folder.
    raise ArtifactError(f"{path}: the Orbax checkpoint metadata cannot be read ({type(e).__name__}: {e})") from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise ArtifactError(f"{path} is an Orbax checkpoint but not a macjax artifact (no '{FORMAT}' manifest)")
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise ArtifactError(
        f"{path}: artifact format version {version!r} is not supported by this macjax (reads version {FORMAT_VERSION})")
  if not isinstance(manifest.get("buckets"), dict):
    raise ArtifactError(f"{path}: manifest has no bucket table")
  return manifest


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
  """Restores ``(buckets, manifest)`` and verifies every bucket's shape, dtype and SHA-256.

  Raises:
    ArtifactError: for any missing, truncated or altered part of the artifact.
  """
  path = pathlib.Path(path).absolute()  # Orbax refuses relative paths
  manifest = read_manifest(path)
  try:
    abstract = {
        name: np.empty([int(s) for s in b["shape"]], np.dtype(b["dtype"])) for name, b in manifest["buckets"].items()
    }
  except (KeyError, TypeError, ValueError) as e:
    raise ArtifactError(f"{path}: malformed bucket table in the manifest ({e})") from e
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      restored = _ocp().load_pytree(path, abstract)
  except Exception as e:  # TensorStore / Orbax errors for missing or truncated chunks.
    raise ArtifactError(f"{path}: the artifact's arrays cannot be restored, it is truncated or damaged "
                        f"({type(e).__name__}: {str(e)[:300]})") from e
  buckets = {}
  for name, b in manifest["buckets"].items():
    if name not in restored:
      raise ArtifactError(f"{path}: bucket {name!r} is listed in the manifest but missing from the checkpoint")
    a = np.asarray(restored[name])
    if list(a.shape) != list(b["shape"]) or a.dtype.name != b["dtype"]:
      raise ArtifactError(f"{path}: bucket {name!r} has shape {a.shape} {a.dtype}, manifest says {b['shape']} {b['dtype']}")
    if _sha256(a) != b["sha256"]:
      raise ArtifactError(f"{path}: bucket {name!r} does not match its SHA-256 in the manifest: the artifact was altered")
    buckets[name] = a
  return buckets, manifest


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
    if len(content) != rec.get("bytes") or hashlib.sha256(content).hexdigest() != rec.get("sha256"):
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
  """Size in bytes of the Orbax metadata file that carries the JSON manifest."""
  return os.path.getsize(pathlib.Path(path) / "_CHECKPOINT_METADATA")
