"""Write a Hugging Face model folder: ``model.safetensors`` + ``config.json`` + tokenizer files.

The folder is what ``transformers`` loads with ``AutoModel*.from_pretrained`` (for a GGUF-sourced LLaMA: exactly the
tensors ``LlamaForCausalLM`` expects; tied embeddings mean no ``lm_head.weight``) and what
:func:`macjax.load.load_model` reads back bit for bit. Everything is written into a temporary sibling folder that is
renamed into place at the end, so a failure never leaves a half-written folder that looks valid.

Example:
  >>> from macjax.load import load_model
  >>> model = load_model("minilm-l6")  # doctest: +SKIP
  >>> out = export_hf(model.params, model.layout, model.tokenizer_files, "/tmp/minilm-copy")  # doctest: +SKIP
  >>> sorted(p.name for p in out.iterdir())[:2]  # doctest: +SKIP
  ['config.json', 'model.safetensors']
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shutil
import tempfile
import types
from typing import Iterator, Mapping

import numpy as np
import safetensors.numpy

from macjax.errors import ConfigError, MacjaxError, ModelLoadError
from macjax.load import families, loader
from macjax.load.layout import ModelLayout

EXPORT_DTYPES = types.MappingProxyType({"float32": np.float32, "float16": np.float16})
RESERVED_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
#: Shards of at most this many bytes of tensors (one shard is buffered in memory while it is written).
DEFAULT_SHARD_BYTES = 1 << 30


class ExportError(MacjaxError):
  """A model cannot be exported: inconsistent params/layout, a bad tokenizer file name, an occupied out_dir."""


def _check_dtype(dtype: str) -> None:
  if dtype not in EXPORT_DTYPES:
    raise ConfigError(f"export dtype {dtype!r} is not supported; expected one of {', '.join(EXPORT_DTYPES)}")


def _spec_of(layout: ModelLayout, names: frozenset[str] | None) -> families.FamilySpec:
  """The family spec of ``layout.config``, checked against the layout itself."""
  try:
    spec = families.family_spec(layout.config, "layout.config", names=names,
                                name_prefix=layout.name_prefix if names is None else None)
  except ModelLoadError as e:  # an unsupported model_type or a bad config value
    raise ExportError(str(e)) from e
  if spec.family != layout.family or spec.num_layers != layout.num_layers or spec.matrices != tuple(
      layout.matrices) or spec.name_prefix != layout.name_prefix:
    raise ExportError(f"layout (family {layout.family!r}, {layout.num_layers} layers, {len(layout.matrices)} "
                      f"matrices, name prefix {layout.name_prefix!r}) disagrees with its own config, which implies "
                      f"family {spec.family!r}, {spec.num_layers} layers, {len(spec.matrices)} matrices, name prefix "
                      f"{spec.name_prefix!r}")
  return spec


def _check_tokenizer_files(tokenizer_files: Mapping[str, bytes]) -> None:
  for name, blob in tokenizer_files.items():
    if pathlib.PurePath(name).name != name or name in ("", ".", "..") or name in RESERVED_FILES or (
        name.startswith("model-") and name.endswith(".safetensors")):
      raise ExportError(f"tokenizer file name {name!r} is not a plain file name other than "
                        f"{', '.join(RESERVED_FILES)}")
    if not isinstance(blob, (bytes, bytearray)):
      raise ExportError(f"tokenizer file {name!r} is a {type(blob).__name__}; expected bytes")


def _check_tensor(name: str, value, spec: families.FamilySpec, dtype: str) -> np.ndarray:
  """One tensor checked against the spec (floating, known, its shape, finite) and cast to ``dtype``."""
  where = "export_hf params"
  array = np.asarray(value)
  if array.dtype.name == "bfloat16":  # ml_dtypes (e.g. from jax): widening to float32 is exact
    array = array.astype(np.float32)
  if not np.issubdtype(array.dtype, np.floating):
    raise ExportError(f"param {name!r} has dtype {array.dtype}; expected a floating-point array")
  if spec.is_buffer(name):
    raise ExportError(f"{where}: {name!r} is a derived buffer, not a weight; drop it before export")
  try:
    families.check_tensor(name, array.shape, spec, where)
  except ModelLoadError as e:  # an unknown tensor inside the base model: params and layout disagree
    raise ExportError(str(e)) from e
  loader.check_finite({name: array}, where)
  with np.errstate(over="ignore"):  # an overflow is reported below, naming the tensor
    cast = np.ascontiguousarray(array, dtype=EXPORT_DTYPES[dtype])
  if array.dtype.itemsize > cast.dtype.itemsize:
    loader.check_finite({name: cast}, f"{where} cast to {dtype} (a value beyond the {dtype} range)")
  if name in spec.conv1d:  # held (out, in) like every Linear weight; GPT-2's Conv1D stores (in, out)
    cast = np.ascontiguousarray(cast.T)
  return cast


def _check_missing(names: frozenset[str], spec: families.FamilySpec) -> None:
  try:
    families.check_required(names, spec, "export_hf params")
  except ModelLoadError as e:
    raise ExportError(str(e)) from e


def _export_config(layout: ModelLayout, dtype: str) -> dict[str, object]:
  config = dict(layout.config)
  # Record the dtype where the config already names one, or where it is not transformers' default (float32).
  for key in ("torch_dtype", "dtype"):
    if key in config or (key == "torch_dtype" and dtype != "float32"):
      config[key] = dtype
  return config


def _prepare_out_dir(out: pathlib.Path, overwrite: bool) -> None:
  if out.exists() and not out.is_dir():
    raise ExportError(f"out_dir {out} exists and is not a folder")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise ExportError(f"out_dir {out} is not empty; pass overwrite=True to replace it")


def export_hf(params: Mapping[str, np.ndarray], layout: ModelLayout, tokenizer_files: Mapping[str, bytes],
              out_dir: str | os.PathLike, *, dtype: str = "float32", overwrite: bool = False,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> pathlib.Path:
  """Write ``params`` as a Hugging Face model folder.

  Writes ``model.safetensors`` (or, above ``max_shard_bytes``, shards ``model-0000k-of-0000n.safetensors`` with
  ``model.safetensors.index.json``; ``params`` cast to ``dtype``, metadata ``format=pt``), ``config.json``
  (``layout.config``, with ``torch_dtype`` set to ``dtype`` where it is recorded or not float32) and every
  tokenizer file unchanged. Before writing, ``params`` are checked against ``layout``: every tensor the config
  implies, with its shape (``(out, in)`` for matrices), nothing unknown inside the base model, all finite.

  Args:
    params: ``{HF name: array}`` (numpy or anything ``np.asarray`` takes), e.g. ``Model.params`` or decoded weights.
    layout: the model's :class:`ModelLayout`.
    tokenizer_files: file name -> bytes, e.g. ``Model.tokenizer_files``.
    out_dir: the folder to create (parents are created).
    dtype: ``"float32"`` (bit-exact) or ``"float16"``.
    overwrite: replace a non-empty ``out_dir``; otherwise it is refused.
    max_shard_bytes: the most bytes of tensors per safetensors file.

  Returns:
    The path of the written folder.

  Raises:
    ExportError: params disagree with the layout, a bad tokenizer file name, or a non-empty ``out_dir`` without
      ``overwrite``.
    ShapeError: a tensor's shape disagrees with the layout's config.
    NonFiniteError: a tensor holds NaN or infinity.
    ConfigError: an unsupported ``dtype``.

  Example:
    >>> out = export_hf(model.params, model.layout, model.tokenizer_files, "out/smollm2")  # doctest: +SKIP
    >>> load_model(str(out)).params.keys() == model.params.keys()  # doctest: +SKIP
    True
  """
  _check_dtype(dtype)
  spec = _spec_of(layout, frozenset(params))
  _check_missing(frozenset(params), spec)
  return export_hf_stream(iter(params.items()), layout, tokenizer_files, out_dir, dtype=dtype, overwrite=overwrite,
                          max_shard_bytes=max_shard_bytes, _spec=spec)


def export_hf_stream(tensors: Iterator[tuple[str, np.ndarray]], layout: ModelLayout,
                     tokenizer_files: Mapping[str, bytes], out_dir: str | os.PathLike, *, dtype: str = "float32",
                     overwrite: bool = False, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                     _spec: families.FamilySpec | None = None) -> pathlib.Path:
  """:func:`export_hf` from an iterator of ``(name, array)``: each tensor is checked, cast and buffered until its
  shard is full, then written by a background thread while the next shard fills, so at most two shards
  (``max_shard_bytes`` each) of the model are in memory. Everything is written to a
  temporary sibling folder and moved into place at the end: an error or a kill midway leaves nothing that looks
  like a model folder.

  Raises:
    As :func:`export_hf` (a missing tensor is found when the iterator ends).
  """
  _check_dtype(dtype)
  spec = _spec or _spec_of(layout, None)
  _check_tokenizer_files(tokenizer_files)
  if max_shard_bytes < 1:
    raise ConfigError(f"max_shard_bytes = {max_shard_bytes}; expected a positive number of bytes")
  out = pathlib.Path(out_dir).expanduser().absolute()
  _prepare_out_dir(out, overwrite)
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
  except OSError as e:
    raise ExportError(f"out_dir {out}: cannot create a folder next to it ({e})") from e
  try:
    _write_shards(tensors, spec, dtype, tmp, max_shard_bytes)
    (tmp / "config.json").write_text(json.dumps(_export_config(layout, dtype), indent=2) + "\n", encoding="utf-8")
    for name, blob in tokenizer_files.items():
      (tmp / name).write_bytes(bytes(blob))
    _prepare_out_dir(out, overwrite)  # again: another writer may have filled it meanwhile
    _move_into_place(tmp, out)
  except (OSError, safetensors.SafetensorError) as e:  # e.g. a full disk (safetensors reports it as its own error)
    raise ExportError(f"out_dir {out}: writing failed, nothing was changed there ({e})") from e
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful move
  return out


def _write_shards(tensors: Iterator[tuple[str, np.ndarray]], spec: families.FamilySpec, dtype: str,
                  folder: pathlib.Path, max_shard_bytes: int) -> None:
  """Checks and writes the tensors as shards (renamed to Hugging Face's ``-of-`` names, or to
  ``model.safetensors`` when there is one), plus the index when there are several."""
  shards: list[list[str]] = []
  pending: dict[str, np.ndarray] = {}
  seen: set[str] = set()
  total = 0
  writing: list[concurrent.futures.Future] = []  # the shard being written (one at a time, beside the next's filling)

  def flush(pool):
    nonlocal pending
    if pending:
      for f in writing:
        f.result()
      file = folder / f"shard-{len(shards):05d}.safetensors"
      writing[:] = [pool.submit(safetensors.numpy.save_file, pending, file, metadata={"format": "pt"})]
      shards.append(list(pending))
      pending = {}

  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # save_file releases the GIL: writing overlaps decoding
    for name, value in tensors:
      if name in seen:
        raise ExportError(f"export_hf params: tensor {name!r} given twice")
      seen.add(name)
      cast = _check_tensor(name, value, spec, dtype)
      if pending and sum(a.nbytes for a in pending.values()) + cast.nbytes > max_shard_bytes:
        flush(pool)
      pending[name] = cast
      total += cast.nbytes
    _check_missing(frozenset(seen), spec)
    flush(pool)
    for f in writing:
      f.result()
  if len(shards) <= 1:
    if shards:
      (folder / "shard-00000.safetensors").rename(folder / "model.safetensors")
    return
  weight_map = {}
  for k, names in enumerate(shards):
    file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    (folder / f"shard-{k:05d}.safetensors").rename(folder / file)
    weight_map.update({n: file for n in names})
  index = {"metadata": {"total_size": int(total)}, "weight_map": dict(sorted(weight_map.items()))}
  (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _move_into_place(tmp: pathlib.Path, out: pathlib.Path) -> None:
  """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and restored if the rename fails."""
  if not out.exists():
    os.replace(tmp, out)
    return
  old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
  try:
    os.replace(out, old / out.name)
    try:
      os.replace(tmp, out)
    except BaseException:
      os.replace(old / out.name, out)
      raise
  finally:
    shutil.rmtree(old, ignore_errors=True)
