"""Artifact store: round trips, byte accounting equals the bytes on disk, and damaged artifacts are refused."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from macjax import artifact
from macjax.artifact import store
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


def _units():
  """Two units of parts, as the pipeline writes them: ``{unit: (buckets, index, records)}``."""
  out = {}
  for u, unit in enumerate(("layer.00000", "globals")):
    p = artifact.Packer()
    for (t, part, kind), a in _parts(seed=u).items():
      p.add(f"{unit}/{t}", part, kind, a)
    buckets, index = p.finish()
    out[unit] = (buckets, index, {f"{unit}/a": {"unit": unit}})
  return out


def _save(tmp_path, name="art", **kw):
  units = _units()
  path = artifact.save(tmp_path / name, units, {"note": "test"}, assets=ASSETS, **kw)
  return path, {u: b for u, (b, _, _) in units.items()}, {u: i for u, (_, i, _) in units.items()}


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
  path, units, index = _save(tmp_path)
  restored, manifest = artifact.load(path)
  assert manifest["note"] == "test" and manifest["format"] == artifact.FORMAT
  assert set(restored) == set(units)
  for u, buckets in units.items():
    assert manifest["units"][u]["index"] == index[u]
    assert set(restored[u]) == set(buckets)
    for k in buckets:
      assert restored[u][k].dtype == buckets[k].dtype
      np.testing.assert_array_equal(restored[u][k], buckets[k])
  assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
  assert artifact.load_assets(path, manifest) == ASSETS


def test_size_breakdown_equals_bytes_on_disk(tmp_path):
  path, units, _ = _save(tmp_path)
  sizes = artifact.size_breakdown(path)
  on_disk = sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())
  assert sizes["total"] == on_disk
  assert sizes["total"] == (sum(sizes[k] for k in artifact.KINDS) + sizes["assets"] + sizes["manifest"]
                            + sizes["container"])
  assert sizes["codes"] == sum(a.nbytes for b in units.values() for k, a in b.items() if k.startswith("codes__"))
  assert sizes["assets"] == sum(len(b) for b in ASSETS.values())


def test_refuses_to_overwrite(tmp_path):
  path, _, _ = _save(tmp_path)
  with pytest.raises(ArtifactError, match="already exists"):
    _save(tmp_path)
  _save(tmp_path, overwrite=True)
  artifact.load(path)


def test_failed_save_leaves_nothing_that_looks_finished(tmp_path):
  with pytest.raises(ArtifactError, match="JSON"):
    artifact.save(tmp_path / "x", _units(), {"bad": object()})
  assert not (tmp_path / "x").exists()
  with pytest.raises(ArtifactError, match="does not exist.*unfinished compression"):
    artifact.read_manifest(tmp_path / "x")


def _data_files(path):
  return sorted((f for f in pathlib.Path(path).rglob("*") if f.is_file() and "/d/" in str(f)),
                key=lambda f: f.stat().st_size)


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_damaged_data_is_refused(tmp_path, damage):
  path, _, _ = _save(tmp_path)
  target = _data_files(path / "units" / "globals")[-1]  # the largest chunk file holds the codes
  if damage == "flip_byte":
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
  elif damage == "truncate":
    with open(target, "r+b") as f:
      f.truncate(target.stat().st_size // 3)
  else:
    target.unlink()
  with pytest.raises(ArtifactError, match="globals"):
    artifact.load(path)
  manifest = artifact.read_manifest(path)
  assert artifact.load_unit(path, manifest, "layer.00000")  # the other unit is intact and loads alone


def test_altered_manifest_hash_is_refused(tmp_path):
  path, _, _ = _save(tmp_path)
  meta = pathlib.Path(path) / "manifest.json"
  d = json.loads(meta.read_text())
  name = sorted(d["units"]["globals"]["buckets"])[0]
  d["units"]["globals"]["buckets"][name]["sha256"] = "0" * 64
  meta.write_text(json.dumps(d))
  with pytest.raises(ArtifactError, match="does not match its checksum: it was damaged or edited"):
    artifact.load(path)
  meta.write_text(json.dumps(store.seal(d)))  # a hostile edit recomputes the manifest's checksum: the bucket's holds
  with pytest.raises(ArtifactError, match="altered"):
    artifact.load(path)


@pytest.mark.parametrize("case", ["missing", "file", "empty_dir", "not_macjax", "future_version", "format_1"])
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
  elif case == "format_1":  # an Orbax checkpoint at the top, as format 1 wrote it
    path = tmp_path / "old"
    path.mkdir()
    (path / "_CHECKPOINT_METADATA").write_text("{}")
    match = "format 1.*reads format 3"
  else:
    path, _, _ = _save(tmp_path)
    meta = pathlib.Path(path) / "manifest.json"
    d = json.loads(meta.read_text())
    if case == "not_macjax":
      d = {"something": "else"}
      match = "not a macjax artifact"
    else:
      d["format_version"] = 999
      match = "format 999"
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
    artifact.save(tmp_path / "x", _units(), {}, assets={name: b"x"})
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("unit", ["../x", "Layer", "a/b", "", "x" * 65])
def test_unit_names_cannot_escape(tmp_path, unit):
  w = artifact.ArtifactWriter(tmp_path / "x", {"run": 1})
  with pytest.raises(ArtifactError, match="unit name"):
    w.write_unit(unit, {"raw__float32": np.zeros(3, np.float32)}, {}, {})
  w.close()


def _write(writer, units):
  for unit, (buckets, index, records) in units.items():
    writer.write_unit(unit, buckets, index, records)


def test_writer_resumes_with_the_same_fingerprint_and_refuses_another(tmp_path):
  units = _units()
  first = artifact.ArtifactWriter(tmp_path / "a", {"run": 1})
  assert not first.resumed
  first.write_unit("layer.00000", *units["layer.00000"])
  with pytest.raises(ArtifactError, match="another process is writing"):
    artifact.ArtifactWriter(tmp_path / "a", {"run": 1})
  with pytest.raises(ArtifactError, match="another process is writing"):
    artifact.ArtifactWriter(tmp_path / "a", {"run": 2}, restart=True)  # nor may another run wipe it meanwhile
  first.close()  # as if the run were killed here
  assert not (tmp_path / "a").exists()
  with pytest.raises(ArtifactError, match=r"another run.*differs in: run.*--restart"):
    artifact.ArtifactWriter(tmp_path / "a", {"run": 2})
  again = artifact.ArtifactWriter(tmp_path / "a", {"run": 1})
  assert again.resumed and list(again.done_units()) == ["layer.00000"]
  again.write_unit("globals", *units["globals"])
  path = again.finish({"note": "resumed"}, assets=ASSETS)
  restored, manifest = artifact.load(path)
  whole, _, _ = _save(tmp_path, "whole")
  assert artifact.read_manifest(whole)["units"] == manifest["units"]  # the same buckets as one uninterrupted save
  # no partial folder left (only the hidden lock files beside the artifacts, which are never deleted)
  assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["a", "whole"]


def test_writer_restart_discards_an_unfinished_run(tmp_path):
  units = _units()
  w = artifact.ArtifactWriter(tmp_path / "a", {"run": 1})
  w.write_unit("layer.00000", *units["layer.00000"])
  w.close()
  w = artifact.ArtifactWriter(tmp_path / "a", {"run": 2}, restart=True)
  assert not w.resumed and w.done_units() == {}
  w.close()


def test_unit_without_its_record_is_not_finished(tmp_path):
  """A kill between the Orbax save of a unit and its record leaves a unit that a resume encodes again."""
  units = _units()
  w = artifact.ArtifactWriter(tmp_path / "a", {"run": 1})
  w.write_unit("layer.00000", *units["layer.00000"])
  w.close()
  (artifact.partial_path(tmp_path / "a") / "units" / "layer.00000.json").unlink()
  w = artifact.ArtifactWriter(tmp_path / "a", {"run": 1})
  assert w.resumed and w.done_units() == {}
  _write(w, units)
  artifact.load(w.finish({}))


def test_helpers_join_only_a_running_primary_with_the_same_process_count(tmp_path):
  """A partial folder left by a killed run is not joined until a primary holds the lock and announces the run; a
  helper started with another --process-count is refused."""
  w = artifact.ArtifactWriter(tmp_path / "a", {"run": 1}, processes=2)
  w.close()  # killed: its fingerprint and run file stay, nobody holds the lock
  with pytest.raises(ArtifactError, match="no primary process prepared"):
    artifact.ArtifactWriter(tmp_path / "a", {"run": 1}, helper=True, processes=2, wait_s=0.5)
  primary = artifact.ArtifactWriter(tmp_path / "a", {"run": 1}, processes=2)
  with pytest.raises(ArtifactError, match="same --process-count"):
    artifact.ArtifactWriter(tmp_path / "a", {"run": 1}, helper=True, processes=3, wait_s=0.5)
  helper = artifact.ArtifactWriter(tmp_path / "a", {"run": 1}, helper=True, processes=2, wait_s=0.5)
  units = _units()
  helper.write_unit("globals", *units["globals"])
  primary.write_unit("layer.00000", *units["layer.00000"])
  primary.wait_for(["layer.00000", "globals"], wait_s=1)
  with pytest.raises(ArtifactError, match="only the primary"):
    helper.finish({})
  artifact.load(primary.finish({}))


@pytest.mark.parametrize("edit, pattern, in_memory", [
    (lambda b: b.update(shape=[2**50]), r"shape\[0\] is 1125899906842624; expected an int in", "claims"),
    (lambda b: b.update(shape=[2**35]), r"claims", "claims"),  # within the manifest's bounds, not the disk's
    (lambda b: b.update(shape=[4, 4]), r"shape is \[4, 4\]; expected a list of 1 ints", "malformed bucket table"),
    (lambda b: b.update(dtype="object"), r"dtype is 'object'; expected one of", "malformed bucket table"),
], ids=["allocation-bomb", "more-than-on-disk", "not-flat", "object-dtype"])
def test_bucket_table_is_checked_before_anything_is_allocated(tmp_path, edit, pattern, in_memory):
  """Opening the artifact validates the manifest (macjax.artifact.validate); a unit loaded with a manifest given in
  memory is checked again by load_unit, against the bytes on disk."""
  path, _, _ = _save(tmp_path)
  meta = pathlib.Path(path) / "manifest.json"
  d = json.loads(meta.read_text())
  edit(d["units"]["globals"]["buckets"][sorted(d["units"]["globals"]["buckets"])[0]])
  meta.write_text(json.dumps(store.seal(d)))
  with pytest.raises(ArtifactError, match=pattern):
    artifact.load(path)
  with pytest.raises(ArtifactError, match=in_memory):
    artifact.load_unit(path, d, "globals")
