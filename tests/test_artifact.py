"""Artifact store: round trips, byte accounting equals the bytes on disk, and damaged artifacts are refused."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from macjax import artifact
from macjax.errors import ArtifactError


ASSETS = {"tokenizer.json": b'{"x": 1}', "vocab.txt": b"a\nb\n"}


def _parts(seed=0):
  rng = np.random.default_rng(seed)
  return {
      ("a", "words", "codes"): rng.integers(0, 2**32, size=5000, dtype=np.uint32),
      ("a", "table", "tables"): rng.integers(0, 256, size=77, dtype=np.uint8),
      ("a", "meta.step", "scales"): rng.standard_normal((12, 3)).astype(np.float16),
      ("b", "raw", "raw"): rng.standard_normal(31).astype(np.float32),
      ("b", "scalar", "raw"): np.float32(2.5) * np.ones((), np.float32),
      ("b", "words", "codes"): rng.integers(0, 2**32, size=7, dtype=np.uint32),
  }


def _save(tmp_path, name="art", **kw):
  p = artifact.Packer()
  for (t, part, kind), a in _parts().items():
    p.add(t, part, kind, a)
  buckets, index = p.finish()
  path = artifact.save(tmp_path / name, buckets, {"index": index, "note": "test"}, assets=ASSETS, **kw)
  return path, buckets, index


def test_pack_unpack_round_trip():
  p = artifact.Packer()
  parts = _parts()
  for (t, part, kind), a in parts.items():
    p.add(t, part, kind, a)
  buckets, index = p.finish()
  assert len(buckets) == 4  # codes__uint32 shared by two tensors
  out = artifact.unpack(buckets, index)
  for (t, part, _), a in parts.items():
    np.testing.assert_array_equal(out[t][part], a)
    assert out[t][part].dtype == a.dtype


def test_pack_rejects_unknown_kind_and_duplicates():
  p = artifact.Packer()
  with pytest.raises(ValueError, match="unknown part kind"):
    p.add("t", "x", "nonsense", np.zeros(1))
  p.add("t", "x", "raw", np.zeros(1))
  with pytest.raises(ValueError, match="added twice"):
    p.add("t", "x", "raw", np.zeros(1))


def test_save_load_round_trip_bit_exact(tmp_path):
  path, buckets, index = _save(tmp_path)
  restored, manifest = artifact.load(path)
  assert manifest["note"] == "test" and manifest["format"] == artifact.FORMAT
  assert set(restored) == set(buckets)
  for k in buckets:
    assert restored[k].dtype == buckets[k].dtype
    np.testing.assert_array_equal(restored[k], buckets[k])
  assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
  assert artifact.load_assets(path, manifest) == ASSETS


def test_size_breakdown_equals_bytes_on_disk(tmp_path):
  path, buckets, _ = _save(tmp_path)
  sizes = artifact.size_breakdown(path)
  on_disk = sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())
  assert sizes["total"] == on_disk
  assert sizes["total"] == (sum(sizes[k] for k in artifact.KINDS) + sizes["assets"] + sizes["manifest"]
                            + sizes["container"])
  assert sizes["codes"] == sum(a.nbytes for k, a in buckets.items() if k.startswith("codes__"))
  assert sizes["assets"] == sum(len(b) for b in ASSETS.values())


def test_refuses_to_overwrite(tmp_path):
  path, _, _ = _save(tmp_path)
  with pytest.raises(ArtifactError, match="already exists"):
    _save(tmp_path)
  _save(tmp_path, overwrite=True)
  artifact.load(path)


def test_failed_save_leaves_nothing(tmp_path):
  with pytest.raises(ArtifactError, match="JSON"):
    artifact.save(tmp_path / "x", {"raw__float32": np.zeros(3, np.float32)}, {"bad": object()})
  assert list(tmp_path.iterdir()) == []


def _data_files(path):
  return sorted((f for f in pathlib.Path(path).rglob("*") if f.is_file() and "/d/" in str(f)),
                key=lambda f: f.stat().st_size)


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_damaged_data_is_refused(tmp_path, damage):
  path, _, _ = _save(tmp_path)
  target = _data_files(path)[-1]  # the largest chunk file holds the codes
  if damage == "flip_byte":
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
  elif damage == "truncate":
    with open(target, "r+b") as f:
      f.truncate(target.stat().st_size // 3)
  else:
    target.unlink()
  with pytest.raises(ArtifactError):
    artifact.load(path)


def test_altered_manifest_hash_is_refused(tmp_path):
  path, _, _ = _save(tmp_path)
  meta = pathlib.Path(path) / "_CHECKPOINT_METADATA"
  d = json.loads(meta.read_text())
  name = sorted(d["custom_metadata"]["buckets"])[0]
  d["custom_metadata"]["buckets"][name]["sha256"] = "0" * 64
  meta.write_text(json.dumps(d))
  with pytest.raises(ArtifactError, match="altered"):
    artifact.load(path)


@pytest.mark.parametrize("case", ["missing", "file", "empty_dir", "not_macjax", "future_version"])
def test_not_an_artifact(tmp_path, case):
  if case == "missing":
    path = tmp_path / "nope"
    match = "does not exist"
  elif case == "file":
    path = tmp_path / "f"
    path.write_text("x")
    match = "not a folder"
  elif case == "empty_dir":
    path = tmp_path / "d"
    path.mkdir()
    match = "not a macjax artifact"
  else:
    path, _, _ = _save(tmp_path)
    meta = pathlib.Path(path) / "_CHECKPOINT_METADATA"
    d = json.loads(meta.read_text())
    if case == "not_macjax":
      d["custom_metadata"] = {"something": "else"}
      match = "not a macjax artifact"
    else:
      d["custom_metadata"]["format_version"] = 999
      match = "version 999"
    meta.write_text(json.dumps(d))
  with pytest.raises(ArtifactError, match=match):
    artifact.load(path)
  with pytest.raises(ArtifactError):
    artifact.read_manifest(path)


@pytest.mark.parametrize("damage", ["altered", "missing"])
def test_damaged_asset_is_refused(tmp_path, damage):
  path, _, _ = _save(tmp_path)
  _, manifest = artifact.load(path)
  f = pathlib.Path(path) / "assets" / "vocab.txt"
  if damage == "altered":
    f.write_bytes(b"a\nc\n")
  else:
    f.unlink()
  with pytest.raises(ArtifactError, match="vocab.txt"):
    artifact.load_assets(path, manifest)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden"])
def test_asset_names_cannot_escape(tmp_path, name):
  with pytest.raises(ArtifactError, match="not allowed"):
    artifact.save(tmp_path / "x", {"raw__float32": np.zeros(3, np.float32)}, {}, assets={name: b"x"})
  assert not (tmp_path / "x").exists()
