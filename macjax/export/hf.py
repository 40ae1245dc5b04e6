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

import json
import os
import pathlib
import shutil
import tempfile
import types
from typing import Mapping

import numpy as np
import safetensors.numpy

from macjax.errors import ConfigError, MacjaxError, ModelLoadError
from macjax.load import families, loader
from macjax.load.layout import ModelLayout

EXPORT_DTYPES = types.MappingProxyType({"float32": np.float32, "float16": np.float16})
RESERVED_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


class ExportError(MacjaxError):
  """A model cannot be exported: inconsistent params/layout, a bad tokenizer file name, an occupied out_dir."""


def _check_inputs(params: Mapping[str, np.ndarray], layout: ModelLayout, tokenizer_files: Mapping[str, bytes],
                  dtype: str) -> dict[str, np.ndarray]:
  if dtype not in EXPORT_DTYPES:
    raise ConfigError(f"export dtype {dtype!r} is not supported; expected one of {', '.join(EXPORT_DTYPES)}")
  arrays = {}
  for name, value in params.items():
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":  # ml_dtypes (e.g. from jax): widening to float32 is exact
      array = array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
      raise ExportError(f"param {name!r} has dtype {array.dtype}; expected a floating-point array")
    arrays[name] = array
  where = "export_hf params"
  try:
    spec = families.family_spec(layout.config, "layout.config", names=frozenset(arrays))
  except ModelLoadError as e:  # an unsupported model_type or a bad config value
    raise ExportError(str(e)) from e
  if spec.family != layout.family or spec.num_layers != layout.num_layers or spec.matrices != tuple(
      layout.matrices) or spec.name_prefix != layout.name_prefix:
    raise ExportError(f"layout (family {layout.family!r}, {layout.num_layers} layers, {len(layout.matrices)} "
                      f"matrices, name prefix {layout.name_prefix!r}) disagrees with its own config, which implies "
                      f"family {spec.family!r}, {spec.num_layers} layers, {len(spec.matrices)} matrices, name prefix "
                      f"{spec.name_prefix!r}")
  buffers = sorted(n for n in arrays if spec.is_buffer(n))
  if buffers:
    raise ExportError(f"{where}: {buffers[:3]} are derived buffers, not weights; drop them before export")
  try:
    families.check_tensors(arrays, spec, where)
  except ModelLoadError as e:  # a missing or unknown tensor: for export, an inconsistency of params and layout
    raise ExportError(str(e)) from e
  loader.check_finite(arrays, where)
  for name, blob in tokenizer_files.items():
    if pathlib.PurePath(name).name != name or name in ("", ".", "..") or name in RESERVED_FILES:
      raise ExportError(f"tokenizer file name {name!r} is not a plain file name other than "
                        f"{', '.join(RESERVED_FILES)}")
    if not isinstance(blob, (bytes, bytearray)):
      raise ExportError(f"tokenizer file {name!r} is a {type(blob).__name__}; expected bytes")
  with np.errstate(over="ignore"):  # an overflow is reported below, naming the tensor
    cast = {n: np.ascontiguousarray(a, dtype=EXPORT_DTYPES[dtype]) for n, a in arrays.items()}
  if any(a.dtype.itemsize > cast[n].dtype.itemsize for n, a in arrays.items()):
    loader.check_finite(cast, f"{where} cast to {dtype} (a value beyond the {dtype} range)")
  return cast


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


def export_hf(params: dict[str, np.ndarray], layout: ModelLayout, tokenizer_files: dict[str, bytes],
              out_dir: str | os.PathLike, *, dtype: str = "float32", overwrite: bool = False) -> pathlib.Path:
  """Write ``params`` as a Hugging Face model folder.

  Writes ``model.safetensors`` (``params`` cast to ``dtype``, metadata ``format=pt``), ``config.json``
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
  arrays = _check_inputs(params, layout, tokenizer_files, dtype)
  out = pathlib.Path(out_dir).expanduser().absolute()
  _prepare_out_dir(out, overwrite)
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
  except OSError as e:
    raise ExportError(f"out_dir {out}: cannot create a folder next to it ({e})") from e
  try:
    safetensors.numpy.save_file(arrays, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(_export_config(layout, dtype), indent=2) + "\n", encoding="utf-8")
    for name, blob in tokenizer_files.items():
      (tmp / name).write_bytes(bytes(blob))
    _prepare_out_dir(out, overwrite)  # again: another writer may have filled it meanwhile
    _move_into_place(tmp, out)
  except OSError as e:
    raise ExportError(f"out_dir {out}: writing failed, nothing was changed there ({e})") from e
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful move
  return out


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
