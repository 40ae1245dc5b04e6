"""PCA / KLT alignment (seed note §6.1–6.2): rotate one side of ``W`` onto the eigenvectors of a covariance.

For the chosen side of dimension ``d`` (``side="input"``: the ``in_features`` axis, whose samples are the rows of
``W``; ``"output"``: the ``out_features`` axis, whose samples are the columns) and a covariance ``C ∈ R^{d×d}``:

* ``source="weight"``: the weight's own (uncentred) second moment, ``C = Wᵀ W / out`` for the input side,
  ``C = W Wᵀ / in`` for the output side — the KLT of the weight's rows (columns), which concentrates their energy
  in the first coordinates (*alignment as concentration*);
* ``source="activations"``: ``C = stats``, the covariance of the layer's inputs (``Xᵀ X / n`` from calibration
  tokens) — the directions the inputs actually excite, so the coefficient ``j`` of ``W2 = W V`` meets an input
  variance ``λ_j`` (*alignment as low-sensitivity directions*: distortion in coefficient ``j`` costs ``λ_j``).

``C = V Λ Vᵀ`` with ``λ_1 ≥ … ≥ λ_d``; the sign of each eigenvector is fixed so that its largest-magnitude entry is
positive (a deterministic basis). ``apply`` gives ``W2 = W V`` (input) or ``Vᵀ W`` (output); ``inverse`` multiplies
by the transpose.

Scopes (seed note §6.2): ``"matrix"`` (one ``d×d`` basis), ``"head"`` (one ``b×b`` basis per attention head,
``b = head_dim`` given as ``block_size``; q/k/v heads lie on the output side, o_proj's on the input side) and
``"group"`` (one per contiguous channel group / FFN block of ``block_size`` channels): block-diagonal ``V`` built
from the diagonal ``b×b`` blocks of ``C``.

Storage and cost. The basis is stored in ``storage_dtype`` (default float16) and costs
``n_blocks · b² · bits(storage_dtype)`` bits — ``d²·16`` for one float16 ``d×d`` basis — unless ``absorbed=True``
(the basis is folded into neighbouring weights of the model, as a residual-stream basis can be: 0 bits). Both
``apply`` and ``inverse`` use ``orthonormalize(stored basis)`` (QR with ``diag(R) > 0``), so what the decoder can
rebuild from the stored bits is exactly orthogonal and the round trip is exact to float32 precision.
Sharing: ``init`` on a stack ``(L, out, in)`` fits one basis to the summed covariance of all ``L`` matrices (counted
once); ``jax.vmap(init)`` fits one basis per matrix (counted ``L`` times).

Example:
  >>> import jax, jax.numpy as jnp
  >>> W = jax.random.normal(jax.random.key(0), (64, 32)) * jnp.linspace(0.1, 2, 32)
  >>> t = pca(side="input")
  >>> s = t.init(W)
  >>> W2 = t.apply(W, s)
  >>> energy = jnp.sum(W2**2, axis=0)
  >>> bool(energy[0] > energy[-1]), t.state_bits(s)
  (True, 16384)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from macjax.errors import ConfigError, ShapeError
from macjax.transforms import base

_HIGHEST = jax.lax.Precision.HIGHEST
SCOPES = ("matrix", "head", "group")
SOURCES = ("weight", "activations")


class PCAState(NamedTuple):
  """A stored basis.

  Attributes:
    basis: ``(n_blocks, b, b)`` in the storage dtype; column ``j`` of block ``k`` is the ``j``-th principal direction
      of channels ``k·b … k·b + b - 1`` (``n_blocks = 1``, ``b = d`` for scope ``"matrix"``).
  """

  basis: jax.Array


def orthonormalize(V: jax.Array) -> jax.Array:
  """The orthogonal factor ``Q`` of ``V = Q R`` with ``diag(R) > 0`` (batched over leading axes).

  For ``V`` already orthogonal up to rounding (a float16-stored basis) ``Q ≈ V``; ``Q`` depends only on ``V``, so
  encoder and decoder rebuild the same orthogonal matrix from the stored bits.

  Example:
    >>> Q = orthonormalize(jnp.eye(3, dtype=jnp.float16).astype(jnp.float32) * 1.001)
    >>> bool(jnp.allclose(Q, jnp.eye(3)))
    True
  """
  Q, R = jnp.linalg.qr(V)
  signs = jnp.where(jnp.diagonal(R, axis1=-2, axis2=-1) < 0, -1.0, 1.0).astype(V.dtype)
  return Q * signs[..., None, :]


def principal_basis(C: jax.Array) -> jax.Array:
  """Eigenvectors of symmetric ``C`` (batched) as columns, by decreasing eigenvalue, largest entry of each positive.

  Example:
    >>> principal_basis(jnp.diag(jnp.array([1., 3., 2.]))).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
  """
  _, V = jnp.linalg.eigh(C)
  V = V[..., ::-1]
  idx = jnp.argmax(jnp.abs(V), axis=-2)
  pivot = jnp.take_along_axis(V, idx[..., None, :], axis=-2)
  return V * jnp.where(pivot < 0, -1.0, 1.0).astype(V.dtype)


def block_diagonal(C: jax.Array, b: int) -> jax.Array:
  """The ``n = d/b`` diagonal ``b×b`` blocks of ``C ∈ R^{d×d}``, shape ``(n, b, b)``."""
  n = C.shape[-1] // b
  blocks = C.reshape(n, b, n, b)
  k = jnp.arange(n)
  return blocks[k, :, k, :]  # advanced indices split by a slice: their axis comes first


@functools.partial(jax.jit, static_argnames=("side", "transpose"))
def _rotated(W, basis, *, side, transpose):
  """``W V`` / ``Vᵀ W`` with ``V = orthonormalize(basis)`` block-diagonal (``transpose``: ``Vᵀ``); jitted per shape."""
  n, b = basis.shape[-3], basis.shape[-1]
  V = orthonormalize(basis.astype(W.dtype))
  if transpose:
    V = jnp.swapaxes(V, -1, -2)

  def right(X):
    Y = jnp.einsum("...nb,nbc->...nc", X.reshape(X.shape[:-1] + (n, b)), V, precision=_HIGHEST)
    return Y.reshape(X.shape)

  return base.apply_on_side(W, side, right)


def pca(*, side: str = "input", scope: str = "matrix", block_size: int | None = None, source: str = "weight",
        storage_dtype=jnp.float16, absorbed: bool = False) -> base.WeightTransform:
  """PCA/KLT alignment of one side of ``W`` (see the module docstring for the maths).

  Args:
    side: ``"input"`` or ``"output"``.
    scope: ``"matrix"``, ``"head"`` (``block_size`` = head_dim) or ``"group"`` (``block_size`` = group size).
    block_size: required for ``"head"``/``"group"``, must divide the side's dimension; not allowed for ``"matrix"``.
    source: ``"weight"`` (the weight's own second moment) or ``"activations"`` (``init``'s ``stats`` is the
      ``d×d`` covariance of the side's activations, e.g. ``Xᵀ X / n`` of the layer's inputs for the input side).
    storage_dtype: the dtype the basis is stored (and counted) in.
    absorbed: the basis is folded into the model elsewhere, so it costs 0 bits here.

  Returns:
    A :class:`base.WeightTransform` with state :class:`PCAState`.

  Example:
    >>> t = pca(side="output", scope="head", block_size=8)
    >>> W = jax.random.normal(jax.random.key(0), (32, 16))
    >>> s = t.init(W)
    >>> s.basis.shape, t.state_bits(s)  # 4 heads of 8: 4·8·8·16 bits
    ((4, 8, 8), 4096)
  """
  base.check_side(side, "pca")
  if scope not in SCOPES:
    raise ConfigError(f"pca: scope={scope!r}; expected one of {SCOPES}")
  if source not in SOURCES:
    raise ConfigError(f"pca: source={source!r}; expected one of {SOURCES}")
  if scope == "matrix" and block_size is not None:
    raise ConfigError(f"pca: block_size={block_size} with scope='matrix'; expected None (the whole side)")
  if scope != "matrix" and (not isinstance(block_size, int) or block_size < 1):
    raise ConfigError(f"pca: scope={scope!r} needs block_size (head_dim or group size) as a positive int, "
                      f"got {block_size!r}")
  if not jnp.issubdtype(storage_dtype, jnp.floating):
    raise ConfigError(f"pca: storage_dtype={storage_dtype!r}; expected a floating dtype")

  def _block(d, where, shape):
    b = d if block_size is None else block_size
    if d % b:
      raise ShapeError(f"{where}: weight W of shape {shape} has {side} dimension {d}, not a multiple of "
                       f"block_size {b} (scope {scope!r})")
    return b

  def init_fn(W, *, key=None, stats=None):
    del key
    base.check_matrix(W, "pca.init")
    d = base.side_dim(W, side)
    b = _block(d, "pca.init", W.shape)
    n = d // b
    if source == "weight":
      X = W if side == "input" else jnp.swapaxes(W, -1, -2)  # samples along -2, features along -1
      X = X.reshape((-1, n, b))
      C = jnp.einsum("snb,snc->nbc", X, X, precision=_HIGHEST) / X.shape[0]
    else:
      if stats is None:
        raise ConfigError("pca.init: source='activations' needs stats, the (d, d) activation covariance; got None")
      if getattr(stats, "shape", None) != (d, d):
        raise ShapeError(f"pca.init: stats has shape {getattr(stats, 'shape', None)}; expected the ({d}, {d}) "
                         f"covariance of the {side} side of W {W.shape}")
      C = block_diagonal(jnp.asarray(stats, jnp.float32), b)
    return PCAState(principal_basis(C.astype(jnp.float32)).astype(storage_dtype))

  def _rotate(W, state, transpose):
    d = base.side_dim(W, side)
    n, b = state.basis.shape[-3], state.basis.shape[-1]
    if n * b != d:
      raise ShapeError(f"pca.apply: weight W of shape {W.shape} has {side} dimension {d}; the state's basis "
                       f"{state.basis.shape} covers {n * b}")
    return _rotated(W, state.basis, side=side, transpose=transpose)

  def state_bits_fn(state):
    return 0 if absorbed else base.array_bits(state.basis)

  return base.WeightTransform(init_fn, lambda W, s: _rotate(W, s, False), lambda W2, s: _rotate(W2, s, True),
                              state_bits_fn)
