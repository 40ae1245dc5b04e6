"""Typed manifest records: what the manifest says about each tensor, checked when it is read.

The manifest's ``tensors`` table maps a name to a JSON object. :class:`TensorRecord` is its typed form for the
tensors of the model (state records — θ of f_θ, role-shared transforms — stay plain dicts, read by the plan's
decoder); :meth:`TensorRecord.from_json` refuses a record whose fields are missing or of the wrong type, naming the
tensor and the field, before anything is allocated for it.

Example:
  >>> r = TensorRecord(name="w", unit="globals", group="vector", treatment="float32", shape=(3,), sha256="0" * 64,
  ...                  bits={"raw": 96})
  >>> TensorRecord.from_json("w", r.to_json()) == r
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from macjax.artifact.validate import MAX_ELEMENTS  # noqa: F401  (one bound for every reader)
from macjax.errors import ArtifactError

GROUPS = ("block", "other", "vector")


@dataclasses.dataclass(frozen=True)
class TensorRecord:
  """One tensor of the model in the manifest.

  Attributes:
    name: the tensor's Hugging Face name.
    unit: the artifact unit holding its parts.
    group: ``block`` (a transformer-block matrix), ``other`` (other 2-D tensors: embeddings, LM head) or
      ``vector`` (1-D tensors: norms, biases).
    treatment: ``quantize`` (quantized and entropy coded) or the dtype it is kept in (``float16``, ``float32``).
    shape: the tensor's shape.
    sha256: SHA-256 of the encoder's float32 reconstruction (the decoder's result must match it).
    bits: stored bits per kind (``codes``, ``tables``, ``scales``, ``transform``, ``raw``).
    role, layer: for block matrices.
    step_scale: the allocated step multiplier (block matrices).
    coder: the entropy coder's header (quantized tensors).
    information_bits: Shannon information of the codes under the stored model (quantized tensors).
    transform_shared: the role whose shared transform state applies, if any.
    fit: the role whose f_θ prediction was subtracted, if any.
    block_rows, blocks: a tensor coded in row blocks (:func:`~macjax.pipeline.stages.row_blocks_stage`): rows per
      block and each block's record (its coder header); ``coder`` is then None.
  """

  name: str
  unit: str
  group: str
  treatment: str
  shape: tuple[int, ...]
  sha256: str
  bits: Mapping[str, int]
  role: str | None = None
  layer: int | None = None
  step_scale: float | None = None
  coder: Mapping[str, Any] | None = None
  information_bits: float | None = None
  transform_shared: str | None = None
  fit: str | None = None
  block_rows: int | None = None
  blocks: tuple | None = None

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  def to_json(self) -> dict:
    """The manifest's JSON object (``None`` fields left out; ``name`` is the table's key)."""
    d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "name"}
    d["shape"] = list(self.shape)
    d["bits"] = dict(self.bits)
    if self.blocks is not None:
      d["blocks"] = [dict(b) for b in self.blocks]
    return d

  @classmethod
  def from_json(cls, name: str, d: Any) -> "TensorRecord":
    """Parses and checks one record.

    Raises:
      ArtifactError: naming the tensor and the field that is missing or malformed.
    """
    def bad(field: str, want: str):
      return ArtifactError(f"artifact manifest: tensor {name}: field {field!r} is "
                           f"{d.get(field, '<missing>')!r} (expected {want})")

    if not isinstance(d, dict):
      raise ArtifactError(f"artifact manifest: tensor {name}: the record is not a JSON object")
    for field in ("unit", "group", "treatment", "sha256"):
      if not isinstance(d.get(field), str):
        raise bad(field, "a string")
    if d["group"] not in GROUPS:
      raise bad("group", f"one of {GROUPS}")
    if d["treatment"] not in ("quantize", "float16", "float32"):
      raise bad("treatment", "quantize, float16 or float32")
    shape = d.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        or int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS):
      raise bad("shape", f"a list of one or two non-negative ints with at most {MAX_ELEMENTS} elements")
    bits = d.get("bits")
    if not isinstance(bits, dict) or not all(isinstance(v, int) and v >= 0 for v in bits.values()):
      raise bad("bits", "an object of non-negative ints")
    blocks = d.get("blocks")
    if blocks is not None:
      rows = shape[0] if shape else 0
      block_rows = d.get("block_rows")
      if not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1:
        raise bad("block_rows", "a positive int")
      if (not isinstance(blocks, list) or len(blocks) != -(-rows // block_rows)
          or not all(isinstance(b, dict) and isinstance(b.get("coder"), dict) for b in blocks)):
        raise bad("blocks", f"{-(-rows // block_rows)} block records with a coder header each")
    elif d["treatment"] == "quantize" and not isinstance(d.get("coder"), dict):
      raise bad("coder", "the coder's header object")
    if d["group"] == "block" and (not isinstance(d.get("role"), str) or not isinstance(d.get("layer"), int)):
      raise bad("role/layer", "a role string and a layer int")
    for field in ("transform_shared", "fit"):
      if d.get(field) is not None and not isinstance(d[field], str):
        raise bad(field, "a role string")
    return cls(name=name, unit=d["unit"], group=d["group"], treatment=d["treatment"], shape=tuple(shape),
               sha256=d["sha256"], bits=dict(bits), role=d.get("role"), layer=d.get("layer"),
               step_scale=d.get("step_scale"), coder=d.get("coder"), information_bits=d.get("information_bits"),
               transform_shared=d.get("transform_shared"), fit=d.get("fit"), block_rows=d.get("block_rows"),
               blocks=tuple(blocks) if blocks is not None else None)
