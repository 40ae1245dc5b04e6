"""``load_model``: an alias, a Hugging Face folder or a GGUF file -> a checked :class:`Model`.

Example:
  >>> model = load_model("minilm-l6")  # doctest: +SKIP
  >>> model.layout.family, model.layout.num_layers, len(model.layout.matrices)  # doctest: +SKIP
  ('bert', 6, 36)
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping

import numpy as np

from macjax.errors import ModelLoadError, NonFiniteError
from macjax.load import families, gguf_file, hf_folder, registry
from macjax.load.layout import Model


def check_finite(params: Mapping[str, np.ndarray], where: str) -> None:
  """Raise :class:`NonFiniteError` naming the first tensor that holds a NaN or an infinity.

  Example:
    >>> check_finite({"w": np.ones(3, np.float32)}, "x")
  """
  for name, array in params.items():
    finite = np.isfinite(array)
    if not finite.all():
      bad = np.argwhere(~finite)
      raise NonFiniteError(f"{where}: tensor {name!r} (shape {array.shape}) has {len(bad)} NaN/inf value(s), "
                           f"first at index {tuple(int(i) for i in bad[0])}; expected finite weights")


def check_params(params: dict[str, np.ndarray], config: Mapping[str, object], where: str
                 ) -> tuple[dict[str, np.ndarray], families.FamilySpec]:
  """Drop derived buffers, then check names, shapes, dtypes and finiteness against the config's family.

  Returns:
    ``(params without buffers, family spec)``.

  Raises:
    ModelLoadError, ShapeError, NonFiniteError: see :func:`families.check_tensors` and :func:`check_finite`.

  Example:
    >>> params, spec = check_params(params, config, "model/")  # doctest: +SKIP
  """
  spec = families.family_spec(config, where, names=frozenset(params))
  params = {n: a for n, a in params.items() if not spec.is_buffer(n)}
  families.check_tensors(params, spec, where)
  for name, array in params.items():
    if array.dtype != np.float32:
      raise ModelLoadError(f"{where}: tensor {name!r} has dtype {array.dtype}; expected a floating-point weight")
  check_finite(params, where)
  return params, spec


def _resolve(source: str) -> pathlib.Path:
  if registry.is_alias(source):
    return registry.resolve_alias(source)
  path = pathlib.Path(source).expanduser()
  if not path.exists():
    raise ModelLoadError(
        f"{source!r}: no such file or folder, and not a model alias; expected one of the aliases "
        f"{', '.join(sorted(registry.MODEL_ALIASES))}, a Hugging Face folder with config.json, or a .gguf file")
  return path


def load_model(source: str) -> Model:
  """Load a model as ``{HF name: float32 array}`` plus its layout and tokenizer files.

  Args:
    source: a model alias (:data:`registry.MODEL_ALIASES`: ``smollm2-135m``, ``minilm-l6``), a Hugging Face
      folder (``config.json`` + ``model.safetensors`` or ``model.safetensors.index.json``; model_type ``llama``
      or ``bert``), or a ``.gguf`` file of architecture ``llama`` (dequantized to float32).

  Returns:
    A :class:`Model` whose params are float32 numpy arrays in Hugging Face names and ``(out, in)`` layout,
    checked against the config: every tensor present with the implied shape, all finite. Derived buffers
    (``rotary_emb.inv_freq``, ``embeddings.position_ids``) are dropped.

  Raises:
    ModelLoadError: a missing path, an unrecognised path, an unsupported model type or architecture, a missing or
      unexpected tensor, a truncated or corrupt file.
    ShapeError: a tensor's shape disagrees with the config.
    NonFiniteError: a weight holds NaN or infinity.

  Example:
    >>> model = load_model("smollm2-135m")  # doctest: +SKIP
    >>> len(model.layout.matrices), model.layout.matrices[0].name  # doctest: +SKIP
    (210, 'model.layers.0.self_attn.q_proj.weight')
  """
  source = os.fspath(source)
  path = _resolve(source)
  where = str(path)
  if path.is_dir():
    if not (path / "config.json").is_file():
      raise ModelLoadError(f"{where}: a folder without config.json; expected a Hugging Face model folder "
                           "(config.json + model.safetensors)")
    raw = hf_folder.read_hf_folder(path)
  elif path.suffix.lower() == ".gguf":
    raw = gguf_file.read_gguf(path)
  else:
    raise ModelLoadError(f"{where}: neither a folder with config.json nor a .gguf file")
  params, spec = check_params(raw.params, raw.config, where)
  return Model(params=params, layout=families.build_layout(spec, raw.config), source=source,
               tokenizer_files=raw.tokenizer_files,
               source_dtypes={n: raw.source_dtypes[n] for n in params if n in raw.source_dtypes})
