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

from macjax import quantize, transforms
from macjax.errors import ConfigError
from macjax.transforms import registry

#: Per-matrix transforms a config can name, and the factory each name builds (the transforms package's table).
TRANSFORMS = registry.FACTORIES
_DTYPES = registry.DTYPES


def _options_of(factory: Callable) -> dict[str, inspect.Parameter]:
  return {n: p for n, p in inspect.signature(factory).parameters.items()
          if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _is_dtype_default(default: Any) -> bool:
  return any(default is d for d in _DTYPES.values())


#: Quantizers a config can name (``[quantize] method``), from :data:`macjax.quantize.QUANTIZERS`.
QUANTIZERS = dict(quantize.QUANTIZERS)
#: Options set by ``[quantize]``'s own keys, not by ``[quantize.options]``.
_QUANTIZER_OWN_KEYS = ("step", "group_size")


def check_options(where: str, what: str, factory: Callable, options: dict[str, Any],
                  reserved: tuple[str, ...] = ()) -> None:
  """Validates keyword options against ``factory``'s signature (names, and types against the defaults).

  Raises:
    ConfigError: naming ``where.key``, for an unknown or reserved key or a value of the wrong type.
  """
  allowed = {k: v for k, v in _options_of(factory).items() if k not in reserved}
  for key, value in options.items():
    if key in reserved:
      raise ConfigError(f"config key {where}.{key} is set by its own key, not here; allowed here: {sorted(allowed)}")
    if key not in allowed:
      raise ConfigError(f"unknown config key {where}.{key} for {what}; allowed: {sorted(allowed)}")
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


def check_transform(index: int, name: Any, options: dict[str, Any]) -> None:
  """Validates one chain member (name and options) without building it.

  Raises:
    ConfigError: unknown name, unknown option, or an option value of the wrong type.
  """
  where = f"transform[{index}]"
  if name not in TRANSFORMS:
    raise ConfigError(f"{where}.name = {name!r}; expected one of {sorted(TRANSFORMS)}")
  check_options(where, f"transform {name!r}", TRANSFORMS[name], options)


def check_quantizer(method: Any, options: dict[str, Any]) -> None:
  """Validates ``[quantize] method`` and ``[quantize.options]``."""
  if method not in QUANTIZERS:
    raise ConfigError(f"quantize.method = {method!r}; expected one of {sorted(QUANTIZERS)}")
  check_options("quantize.options", f"quantizer {method!r}", QUANTIZERS[method], options, _QUANTIZER_OWN_KEYS)


def build_quantizer(method: str, step: float, group_size: int, options: dict[str, Any], *,
                    gptq: dict[str, Any] | None = None) -> quantize.Quantizer:
  """Builds a quantizer from config values (``group_size`` 0 = one group per row), optionally wrapped in GPTQ
  error feedback (``gptq`` = its keyword options; its ``quantize`` then takes the Hessian ``H = XᵀX``)."""
  check_quantizer(method, options)
  try:
    q = QUANTIZERS[method](step=step, group_size=group_size or None, **options)
    if gptq is not None:
      q = quantize.gptq(q, **gptq)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"quantizer {method!r} with options {options}: {e}") from e
  return q


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


def changes_input_coordinates(name: str, options: dict[str, Any]) -> bool:
  """Whether a transform changes the coordinates of the layer's *inputs* (acts on the input side of ``W``)."""
  if name == "scaling":
    return True
  return options.get("side", "input") in ("input", "both")


def stats_kind(name: str, options: dict[str, Any]) -> str | None:
  """Which calibration statistic a transform's ``init`` takes: ``"second_moment"`` ((in, in) ``XᵀX/n``),
  ``"absmax"`` ((in,) ``max|X|``), or None."""
  if not needs_stats(name, options):
    return None
  return "absmax" if name == "scaling" else "second_moment"


def check_chain_stats(specs: list[tuple[str, dict[str, Any]]]) -> None:
  """Calibration statistics are measured in the layer's original input coordinates, so a member that needs them
  must not follow a member that changes those coordinates.

  Raises:
    ConfigError: naming both members.
  """
  changer = None
  for i, (name, options) in enumerate(specs):
    if needs_stats(name, options) and changer is not None:
      raise ConfigError(
          f"transform[{i}] ({name}) needs calibration statistics of the layer inputs, but transform[{changer[0]}] "
          f"({changer[1]}) changes the input coordinates before it; put transform[{i}] first, or make the earlier "
          "member act on the output side")
    if changer is None and changes_input_coordinates(name, options):
      changer = (i, name)
