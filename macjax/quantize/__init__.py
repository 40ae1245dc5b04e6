"""Quantizers: symmetric pairs ``quantize(W) -> (codes, meta)`` / ``dequantize(codes, meta) -> Ŵ``.

Each factory takes its hyper-parameters and returns a :class:`Quantizer`; ``meta`` is a typed ``NamedTuple``
pytree of arrays, so both functions jit and vmap over stacks of matrices.
"""

from __future__ import annotations

import inspect

from macjax.quantize import allocation
from macjax.quantize.base import Quantizer
from macjax.quantize.dead_zone import DeadZoneMeta, dead_zone
from macjax.quantize.gptq import gptq
from macjax.quantize.rdoq import rdoq
from macjax.quantize.trellis import trellis
from macjax.quantize.uniform import UniformMeta, uniform

# Factories by the name a config uses; gptq(base, ...) wraps any of them (its quantize also takes H = XᵀX).
QUANTIZERS = {"uniform": uniform, "dead_zone": dead_zone, "rdoq": rdoq, "trellis": trellis}


def make(method: str, **kwargs) -> Quantizer:
  """Builds a quantizer from a config: ``make("trellis", step=0.02, scope="absolute", lam=0.3)``.

  Raises:
    ConfigError: unknown ``method``, or a keyword the factory does not take (named, with the accepted ones);
      bad values raise the factory's own ConfigError.

  Example:
    >>> make("dead_zone", step=0.25, width=1.5).quantize_column is not None
    True
  """
  from macjax.errors import ConfigError
  if method not in QUANTIZERS:
    raise ConfigError(f"quantize: unknown method {method!r}, expected one of {sorted(QUANTIZERS)}")
  accepted = set(inspect.signature(QUANTIZERS[method]).parameters)
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ConfigError(f"quantize: method {method!r} takes no {unknown}; it takes {sorted(accepted)}")
  return QUANTIZERS[method](**kwargs)

__all__ = ["QUANTIZERS", "allocation", "make", "DeadZoneMeta", "Quantizer", "UniformMeta", "dead_zone", "gptq", "rdoq", "trellis",
           "uniform"]
