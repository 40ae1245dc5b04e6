"""Quantizers: symmetric pairs ``quantize(W) -> (codes, meta)`` / ``dequantize(codes, meta) -> Ŵ``.

Each factory takes its hyper-parameters and returns a :class:`Quantizer`; ``meta`` is a typed ``NamedTuple``
pytree of arrays, so both functions jit and vmap over stacks of matrices.
"""

from __future__ import annotations

from macjax.quantize import allocation
from macjax.quantize.base import Quantizer
from macjax.quantize.dead_zone import DeadZoneMeta, dead_zone
from macjax.quantize.gptq import gptq
from macjax.quantize.rdoq import rdoq
from macjax.quantize.trellis import trellis
from macjax.quantize.uniform import UniformMeta, uniform

# Factories by the name a config uses; gptq(base, ...) wraps any of them (its quantize also takes H = XᵀX).
QUANTIZERS = {"uniform": uniform, "dead_zone": dead_zone, "rdoq": rdoq, "trellis": trellis}

__all__ = ["QUANTIZERS", "allocation", "DeadZoneMeta", "Quantizer", "UniformMeta", "dead_zone", "gptq", "rdoq", "trellis",
           "uniform"]
