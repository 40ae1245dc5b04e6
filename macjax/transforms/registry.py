"""Build transforms from plain data (a pipeline config's ``[[transforms]]`` tables): names → factories.

A *spec* is a mapping ``{"kind": <name>, <hyper-parameter>: <value>, ...}``, optionally with ``"name"`` (the
member's name in a :func:`~macjax.transforms.base.named_chain`). A list of specs is a chain: a
:func:`~macjax.transforms.base.named_chain` when every spec has a ``name``, else a
:func:`~macjax.transforms.base.chain`. Dtypes may be given as strings (``"float16"``). Unknown kinds and keys are
errors naming the spec's index, never ignored.

Example:
  >>> t = from_spec([{"kind": "hadamard", "side": "input"}, {"kind": "pca", "side": "output",
  ...                                                          "storage_dtype": "bfloat16"}])
  >>> isinstance(t, WeightTransform)
  True
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp

from macjax.errors import ConfigError
from macjax.transforms.base import WeightTransform, chain, identity, named_chain
from macjax.transforms.hadamard import randomized_hadamard
from macjax.transforms.learned import learned_rotation
from macjax.transforms.orthogonal import random_orthogonal
from macjax.transforms.pca import pca
from macjax.transforms.scaling import channel_scaling

FACTORIES: Mapping[str, Callable[..., WeightTransform]] = {
    "identity": identity,
    "hadamard": randomized_hadamard,
    "orthogonal": random_orthogonal,
    "pca": pca,
    "scaling": channel_scaling,
    "learned": learned_rotation,
}

#: Storage dtypes a config may name as strings.
DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}


def _one(spec: Any, where: str) -> WeightTransform:
  if not isinstance(spec, Mapping):
    raise ConfigError(f"{where}: a {type(spec).__name__}; expected a mapping with a 'kind' key")
  kind = spec.get("kind")
  if kind not in FACTORIES:
    raise ConfigError(f"{where}: kind={kind!r}; expected one of {sorted(FACTORIES)}")
  factory = FACTORIES[kind]
  kwargs = {k: v for k, v in spec.items() if k not in ("kind", "name")}
  allowed = set(inspect.signature(factory).parameters)
  unknown = sorted(set(kwargs) - allowed)
  if unknown:
    raise ConfigError(f"{where} ({kind}): unknown keys {unknown}; expected some of {sorted(allowed)}")
  if isinstance(kwargs.get("storage_dtype"), str):
    if kwargs["storage_dtype"] not in DTYPES:
      raise ConfigError(f"{where} ({kind}): storage_dtype={kwargs['storage_dtype']!r}; expected one of "
                        f"{sorted(DTYPES)}")
    kwargs["storage_dtype"] = DTYPES[kwargs["storage_dtype"]]
  try:
    return factory(**kwargs)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from e


def from_spec(spec: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> WeightTransform:
  """A transform (or a chain) from a spec or a list of specs (see the module docstring).

  Raises:
    ConfigError: naming the index of a spec with an unknown kind, an unknown key or a bad value, or a list that
      names some members but not all.

  Example:
    >>> from_spec({"kind": "scaling", "alpha": 0.5, "power_of_two": True}).state_bits  # doctest: +ELLIPSIS
    <function ...>
  """
  if isinstance(spec, Mapping):
    return _one(spec, "transform spec")
  if not isinstance(spec, Sequence) or isinstance(spec, str) or not spec:
    raise ConfigError(f"transform spec: a {type(spec).__name__}; expected a mapping or a non-empty list of mappings")
  members = [_one(s, f"transform spec {i}") for i, s in enumerate(spec)]
  names = [s.get("name") for s in spec]
  if all(n is not None for n in names):
    return named_chain(*zip(names, members))
  if any(n is not None for n in names):
    missing = [i for i, n in enumerate(names) if n is None]
    raise ConfigError(f"transform spec: members {missing} have no 'name' while others do; name all or none")
  return chain(*members)
