"""Names in configs → library objects: the one table from config words to transforms and quantizers.

Options of a transform are validated against its factory's keyword-only signature: an unknown option, or a value
whose type differs from the default's, is a :class:`~macjax.errors.ConfigError` naming the transform's index in
the chain, the option, and what is allowed.

Example:
  >>> t = build_chain([("hadamard", {"side": "input"})])
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import jax.numpy as jnp

from macjax import transforms
from macjax.errors import ConfigError

#: Per-matrix transforms a config can name, and the factory each name builds.
TRANSFORMS: dict[str, Callable[..., transforms.WeightTransform]] = {
    "hadamard": transforms.randomized_hadamard,
    "orthogonal": transforms.random_orthogonal,
    "pca": transforms.pca,
    "scaling": transforms.channel_scaling,
    "learned": transforms.learned_rotation,
}

_DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}


def _options_of(factory: Callable) -> dict[str, inspect.Parameter]:
  return {n: p for n, p in inspect.signature(factory).parameters.items()
          if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _is_dtype_default(default: Any) -> bool:
  return any(default is d for d in _DTYPES.values())


def check_transform(index: int, name: Any, options: dict[str, Any]) -> None:
  """Validates one chain member (name and options) without building it.

  Raises:
    ConfigError: unknown name, unknown option, or an option value of the wrong type.
  """
  where = f"transform[{index}]"
  if name not in TRANSFORMS:
    raise ConfigError(f"{where}.name = {name!r}; expected one of {sorted(TRANSFORMS)}")
  allowed = _options_of(TRANSFORMS[name])
  for key, value in options.items():
    if key not in allowed:
      raise ConfigError(f"unknown config key {where}.{key} for transform {name!r}; allowed: {sorted(allowed)}")
    default = allowed[key].default
    if _is_dtype_default(default):
      if value not in _DTYPES:
        raise ConfigError(f"{where}.{key} = {value!r}; expected one of {sorted(_DTYPES)}")
    elif default is None or default is inspect.Parameter.empty:
      continue  # typed None defaults (e.g. block_size) take ints; the factory validates further
    elif isinstance(default, bool):
      if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} = {value!r}; expected a bool")
    elif isinstance(default, (int, float)):
      if isinstance(value, bool) or not isinstance(value, (int, float)) or (
          isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int)):
        raise ConfigError(f"{where}.{key} = {value!r}; expected {type(default).__name__}")
    elif isinstance(default, str) and not isinstance(value, str):
      raise ConfigError(f"{where}.{key} = {value!r}; expected a string")


def build_transform(name: str, options: dict[str, Any]) -> transforms.WeightTransform:
  """Builds one transform from its config name and options."""
  allowed = _options_of(TRANSFORMS[name])
  kwargs = {k: (_DTYPES[v] if _is_dtype_default(allowed[k].default) else v) for k, v in options.items()}
  try:
    return TRANSFORMS[name](**kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"transform {name!r} with options {options}: {e}") from e


def build_chain(specs: Iterable[tuple[str, dict[str, Any]]]) -> transforms.WeightTransform | None:
  """A :func:`~macjax.transforms.named_chain` of the specs (members named ``"<index>:<name>"``), or None if empty."""
  specs = list(specs)
  if not specs:
    return None
  for i, (name, options) in enumerate(specs):
    check_transform(i, name, options)
  return transforms.named_chain(*[(f"{i}:{name}", build_transform(name, options))
                                  for i, (name, options) in enumerate(specs)])


def needs_stats(name: str, options: dict[str, Any]) -> bool:
  """Whether a transform's ``init`` needs calibration statistics of the layer's inputs."""
  if name == "scaling":
    return True
  if name == "pca":
    return options.get("source", "weight") != "weight"
  if name == "learned":
    return options.get("objective", "kurtosis") == "rate_distortion"
  return False
