"""The quantizer interface: a symmetric pair of pure functions, in the style of HQQ's core.

A quantizer maps one weight matrix to integer codes plus a typed metadata pytree (scales, zero points, ...), and back.
Hyper-parameters live in the factory's closure; the metadata holds arrays only, so both functions can be
``jax.jit``-ed and ``jax.vmap``-ed over a stack of matrices.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Quantizer(NamedTuple):
  """A pair ``quantize(W) -> (codes, meta)`` / ``dequantize(codes, meta) -> Ŵ``.

  Attributes:
    quantize: ``(W: f32[rows, cols]) -> (codes: int32[rows, cols], meta)``, where ``meta`` is a ``NamedTuple``
      pytree of arrays (e.g. :class:`macjax.quantize.uniform.UniformMeta`). The grid quantizers (uniform,
      dead_zone, rdoq, trellis) also take ``step_scale`` (a float or traced scalar, default 1) multiplying their
      step, so per-matrix bit allocation (:mod:`macjax.quantize.allocation`) needs no recompilation.
    dequantize: ``(codes, meta) -> f32[rows, cols]``; deterministic, so the decoder reconstructs exactly what
      the encoder reconstructed on the same backend.
    quantize_column: optional ``(w: f32[rows], meta, j: int32 scalar, cols: int) -> (codes: int32[rows],
      ŵ: f32[rows])``: quantizes column ``j`` of a ``cols``-column matrix on the grid fixed by ``meta`` (from an
      earlier ``quantize``). Error-feedback methods (:func:`macjax.quantize.gptq.gptq`) need it; ``None`` when the
      quantizer cannot quantize a column on its own.

  Example:
    >>> import jax.numpy as jnp
    >>> from macjax.quantize import uniform
    >>> q = uniform(step=1 / 8)
    >>> codes, meta = q.quantize(jnp.ones((2, 4)))
    >>> q.dequantize(codes, meta).shape
    (2, 4)
  """

  quantize: Callable[..., tuple[Any, Any]]
  dequantize: Callable[..., Any]
  quantize_column: Callable[..., tuple[Any, Any]] | None = None
