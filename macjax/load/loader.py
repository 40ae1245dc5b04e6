"""``load_model`` / ``open_model``: an alias, a Hugging Face folder or a GGUF file -> a checked :class:`Model`.

Example:
  >>> model = load_model("minilm-l6")  # doctest: +SKIP
  >>> model.layout.family, model.layout.num_layers, len(model.layout.matrices)  # doctest: +SKIP
  ('bert', 6, 36)

``open_model`` gives the same model with its weights left on disk (read one tensor at a time on access).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import numpy as np

from macjax.errors import ModelLoadError, NonFiniteError, ShapeError
from macjax.load import families, gguf_file, hf_folder, registry
from macjax.load.layout import Model
from macjax.load.lazy import INTEGER_DTYPES, LazyTensors, shape_of


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


def check_params(params: Mapping[str, np.ndarray], config: Mapping[str, object], where: str
                 ) -> tuple[Mapping[str, np.ndarray], families.FamilySpec]:
  """Drop derived buffers, then check names, shapes and dtypes against the config's family (and finiteness, for
  params in memory; a :class:`LazyTensors` checks each tensor when it is read).

  Returns:
    ``(params without buffers, family spec)``; lazy params stay lazy (nothing is read).

  Raises:
    ModelLoadError, ShapeError, NonFiniteError: see :func:`families.check_tensors` and :func:`check_finite`.

  Example:
    >>> params, spec = check_params(params, config, "model/")  # doctest: +SKIP
  """
  spec = families.family_spec(config, where, names=frozenset(params))
  kept = [n for n in params if not spec.is_buffer(n)]
  lazy = isinstance(params, LazyTensors)
  params = params.select(kept) if lazy else {n: params[n] for n in kept}
  conv1d = [n for n in spec.conv1d if n in params]
  for name in conv1d:  # stored (in, out): presented (out, in) like every Linear weight
    stored = shape_of(params, name)
    if len(stored) != 2:
      raise ShapeError(f"{where}: Conv1D weight {name!r} has shape {tuple(stored)}; expected 2-D")
  if conv1d:
    params = params.transposed(conv1d) if lazy else {n: (np.ascontiguousarray(a.T) if n in spec.conv1d else a)
                                                     for n, a in params.items()}
  families.check_tensors(params, spec, where)
  for name in params:
    floating = params.dtype(name) not in INTEGER_DTYPES if lazy else params[name].dtype == np.float32
    if not floating:
      stored = params.dtype(name) if lazy else params[name].dtype
      raise ModelLoadError(f"{where}: tensor {name!r} has dtype {stored}; expected a floating-point weight")
  if not lazy:
    check_finite(params, where)
  return params, spec


def _tokenizer_problem(files: Mapping[str, bytes], where: str, vocab_size: Any) -> str | None:
  """Why ``tokenizer.json`` cannot be used (not UTF-8, not a tokenizer ``tokenizers`` can build, or ids beyond the
  model's embedding rows: another model's tokenizer, whose ids a gather would silently clamp), else None. The
  weights stay usable; what needs text refuses with this reason."""
  if "tokenizer.json" not in files:
    return None
  import tokenizers  # pylint: disable=g-import-not-at-top
  try:
    tok = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
  except Exception as e:  # pylint: disable=broad-except  (tokenizers raises a bare Exception)
    return f"{where}: tokenizer.json is not a tokenizer that `tokenizers` can build ({str(e)[:200]})"
  ids = max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
  if isinstance(vocab_size, int) and ids > vocab_size:
    return (f"{where}: tokenizer.json has token ids up to {ids - 1}, but the model's vocab_size is {vocab_size} "
            "(the tokenizer of another model?)")
  return None


def resolve_source(source: str) -> pathlib.Path:
  """The local path of a model alias or path (see :func:`load_model`)."""
  if registry.is_alias(source):
    return registry.resolve_alias(source)
  path = pathlib.Path(source).expanduser()
  if not path.exists():
    raise ModelLoadError(
        f"{source!r}: no such file or folder, and not a model alias; expected one of the aliases "
        f"{', '.join(sorted(registry.MODEL_ALIASES))}, a Hugging Face folder with config.json, or a .gguf file")
  return path


def open_model(source: str) -> Model:
  """Open a model without reading its weights: ``Model.params`` is a :class:`LazyTensors` over the files.

  What :func:`load_model` checks up front that needs no weight data (the family, every tensor's name, shape and
  stored dtype against the config) is checked here; each tensor is read (and checked finite) when it is accessed,
  so a pass over the model one layer at a time holds one layer. This is how ``macjax compress`` reads a model.

  Args:
    source: as for :func:`load_model`.

  Raises:
    ModelLoadError, ShapeError: as for :func:`load_model`; NonFiniteError is raised later, by the access that reads
    the bad tensor.

  Example:
    >>> model = open_model("smollm2-135m")  # doctest: +SKIP
    >>> model.params.shape("model.embed_tokens.weight")  # doctest: +SKIP
    (49152, 576)
  """
  source = os.fspath(source)
  path = resolve_source(source)
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
  if raw.tokenizer_error is None:
    raw.tokenizer_error = _tokenizer_problem(raw.tokenizer_files, where, raw.config.get("vocab_size"))
  return Model(params=params, layout=families.build_layout(spec, raw.config), source=source,
               tokenizer_files=raw.tokenizer_files,
               source_dtypes={n: raw.source_dtypes[n] for n in params if n in raw.source_dtypes},
               tokenizer_error=raw.tokenizer_error)


def load_model(source: str) -> Model:
  """Load a model as ``{HF name: float32 array}`` plus its layout and tokenizer files.

  Args:
    source: a model alias (:data:`registry.MODEL_ALIASES`: ``smollm2-135m``, ``minilm-l6``), a Hugging Face
      folder (``config.json`` + ``model.safetensors`` or ``model.safetensors.index.json``; model_type ``llama``
      or ``bert``), or a ``.gguf`` file of architecture ``llama`` (dequantized to float32).

  Returns:
    A :class:`Model` whose params are float32 numpy arrays in memory, in Hugging Face names and ``(out, in)``
    layout, checked against the config: every tensor present with the implied shape, all finite. Derived buffers
    (``rotary_emb.inv_freq``, ``embeddings.position_ids``) are dropped. (:func:`open_model` gives the same model
    without reading it into memory.)

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
  model = open_model(source)
  model.params = model.params.materialize()
  return model
