"""Quantizers: symmetric pairs ``quantize(W) -> (codes, meta)`` / ``dequantize(codes, meta) -> Ŵ``.

Each factory takes its hyper-parameters and returns a :class:`Quantizer`; ``meta`` is a typed ``NamedTuple``
pytree of arrays, so both functions jit and vmap over stacks of matrices.
"""

from __future__ import annotations

from macjax.quantize.base import Quantizer
from macjax.quantize.uniform import UniformMeta, uniform

__all__ = ["Quantizer", "UniformMeta", "uniform"]
