"""Every field of a manifest checked before any of it is used: types, bounds, and references between tables.

:func:`check_manifest` runs when an artifact is opened (:func:`macjax.artifact.read_manifest`), before a unit is
restored or an array allocated, so that a damaged or hostile manifest ends in one :class:`ArtifactError` naming the
table, entry and field — not in a ``TypeError`` deep in a reader, or an allocation the numbers in it asked for.
What each field means: ``docs/FORMAT.md``.

Example:
  >>> check_manifest({"units": {}, "tensors": {}, "assets": {}}, "x")
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from macjax.artifact.store import BUCKET_DTYPES
from macjax.errors import ArtifactError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Elements of one bucket, part or tensor at most (2^40).
MAX_ELEMENTS = 1 << 40
_STATE_GROUPS = ("fit", "transform")


def _fail(where: str, what: str, value: Any, want: str) -> ArtifactError:
  shown = repr(value)
  return ArtifactError(f"{where}: manifest {what} is {shown[:80]}{'…' if len(shown) > 80 else ''}; expected {want}")


def _int(v: Any, where: str, what: str, lo: int = 0, hi: int = MAX_ELEMENTS) -> int:
  if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
    raise _fail(where, what, v, f"an int in [{lo}, {hi}]")
  return v


def _number(v: Any, where: str, what: str) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    raise _fail(where, what, v, "a finite number")
  return float(v)


def _dict(v: Any, where: str, what: str) -> dict:
  if not isinstance(v, dict):
    raise _fail(where, what, v, "an object")
  return v


def _shape(v: Any, where: str, what: str, ndim: tuple[int, ...] = (1, 2, 3, 4)) -> tuple[int, ...]:
  if not isinstance(v, list) or len(v) not in ndim:
    raise _fail(where, what, v, f"a list of {' or '.join(map(str, ndim))} ints")
  dims = tuple(_int(d, where, f"{what}[{i}]") for i, d in enumerate(v))
  if math.prod(dims) > MAX_ELEMENTS:
    raise _fail(where, what, v, f"at most {MAX_ELEMENTS} elements")
  return dims


def _sha(v: Any, where: str, what: str) -> None:
  if not isinstance(v, str) or not _HEX64.match(v):
    raise _fail(where, what, v, "a SHA-256 in hex")


def _check_unit(name: str, unit: Any, where: str) -> None:
  unit = _dict(unit, where, f"unit {name!r}")
  buckets = _dict(unit.get("buckets"), where, f"unit {name!r} buckets")
  sizes = {}
  for b, entry in buckets.items():
    what = f"unit {name!r} bucket {b!r}"
    entry = _dict(entry, where, what)
    sizes[b] = _shape(entry.get("shape"), where, f"{what} shape", ndim=(1,))[0]
    if entry.get("dtype") not in BUCKET_DTYPES:
      raise _fail(where, f"{what} dtype", entry.get("dtype"), f"one of {BUCKET_DTYPES}")
    _sha(entry.get("sha256"), where, f"{what} sha256")
  for tensor, parts in _dict(unit.get("index"), where, f"unit {name!r} index").items():
    for part, loc in _dict(parts, where, f"unit {name!r} index of {tensor!r}").items():
      what = f"unit {name!r} part {tensor}/{part}"
      loc = _dict(loc, where, what)
      if not isinstance(loc.get("bucket"), str) or loc["bucket"] not in sizes:
        raise _fail(where, f"{what} bucket", loc.get("bucket"), f"one of the unit's buckets {sorted(sizes)}")
      offset, size = _int(loc.get("offset"), where, f"{what} offset"), _int(loc.get("size"), where, f"{what} size")
      if math.prod(_shape(loc.get("shape"), where, f"{what} shape", ndim=(0, 1, 2, 3, 4))) != size:
        raise _fail(where, f"{what} shape", loc.get("shape"), f"{size} elements (its size)")
      if offset + size > sizes[loc["bucket"]]:
        raise _fail(where, f"{what} span", [offset, offset + size], f"inside bucket {loc['bucket']!r} of "
                    f"{sizes[loc['bucket']]} elements")


def _check_bits(bits: Any, where: str, what: str) -> None:
  for k, v in _dict(bits, where, f"{what} bits").items():
    _int(v, where, f"{what} bits[{k!r}]", hi=1 << 62)


def _check_coder(coder: Any, size: int, where: str, what: str) -> None:
  coder = _dict(coder, where, f"{what} coder")
  shape = _shape(coder.get("shape"), where, f"{what} coder shape")
  if math.prod(shape) > size:
    raise _fail(where, f"{what} coder shape", coder.get("shape"), f"at most the tensor's {size} elements")


def _check_tensor(name: str, rec: Any, units: Mapping, where: str) -> None:
  what = f"tensor {name!r}"
  rec = _dict(rec, where, what)
  _check_bits(rec.get("bits"), where, what)
  if rec.get("group") in _STATE_GROUPS:
    if not isinstance(rec.get("role"), str):
      raise _fail(where, f"{what} role", rec.get("role"), "a role name")
    members = rec.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
      raise _fail(where, f"{what} members", members, "a list of tensor names")
    key, ndim = ("shape", (3,)) if rec["group"] == "fit" else ("pooled_shape", (2,))
    _shape(rec.get(key), where, f"{what} {key}", ndim=ndim)
    return
  from macjax.pipeline.records import TensorRecord  # pylint: disable=g-import-not-at-top
  parsed = TensorRecord.from_json(name, rec)
  if parsed.unit not in units:
    raise _fail(where, f"{what} unit", parsed.unit, f"one of the units {sorted(units)[:4]}…")
  if "information_bits" in rec and _number(rec["information_bits"], where, f"{what} information_bits") < 0:
    raise _fail(where, f"{what} information_bits", rec["information_bits"], "a non-negative number")
  if "step_scale" in rec:
    _number(rec["step_scale"], where, f"{what} step_scale")
  if parsed.coder is not None:
    _check_coder(parsed.coder, parsed.size, where, what)
  for i, block in enumerate(parsed.blocks or ()):
    _check_coder(block["coder"], parsed.size, where, f"{what} block {i}")


def check_manifest(manifest: Any, where: str) -> None:
  """Raises :class:`ArtifactError` at the first field of ``manifest`` that is missing, mistyped, out of bounds or
  refers to something that is not there (module docstring)."""
  manifest = _dict(manifest, where, "top level")
  units = _dict(manifest.get("units"), where, "units")
  for name, unit in units.items():
    _check_unit(name, unit, where)
  tensors = _dict(manifest.get("tensors", {}), where, "tensors")
  for name, rec in tensors.items():
    _check_tensor(name, rec, units, where)
  if tensors:  # every stored tensor has its record (a deleted record would silently drop the tensor)
    for unit_name, unit in units.items():
      for tensor in unit["index"]:
        if tensor not in tensors:
          raise _fail(where, f"unit {unit_name!r} index", tensor, "a tensor with a record in the tensors table")
  for name, rec in _dict(manifest.get("assets", {}), where, "assets").items():
    rec = _dict(rec, where, f"asset {name!r}")
    _int(rec.get("bytes"), where, f"asset {name!r} bytes", hi=1 << 40)
    _sha(rec.get("sha256"), where, f"asset {name!r} sha256")
  if "config" in manifest:
    _dict(manifest["config"], where, "config")
  if "layout" in manifest:
    _check_shapes(manifest["layout"], tensors, where)


def _check_shapes(layout: Any, tensors: Mapping, where: str) -> None:
  """The layout parses, and every tensor of the model it describes has the shape its config implies."""
  from macjax.errors import MacjaxError  # pylint: disable=g-import-not-at-top
  from macjax.load import families  # pylint: disable=g-import-not-at-top
  from macjax.load.layout import ModelLayout  # pylint: disable=g-import-not-at-top
  try:
    layout = ModelLayout.from_json(_dict(layout, where, "layout"))
    spec = families.family_spec(layout.config, "manifest layout config", name_prefix=layout.name_prefix)
  except (ValueError, MacjaxError) as e:
    raise ArtifactError(f"{where}: manifest layout: {e}") from e
  for name, rec in tensors.items():
    expected = spec.expected_shape(name)
    if expected is not None and rec.get("group") not in _STATE_GROUPS and tuple(rec["shape"]) != tuple(expected):
      raise _fail(where, f"tensor {name!r} shape", rec["shape"], f"{list(expected)}, what the model's config implies")
