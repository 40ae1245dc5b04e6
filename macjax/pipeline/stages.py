"""The per-tensor encoder as a chain of stages, each a pair of pure functions (in the style of optax / distrax).

A :class:`Stage` maps a value one step down the encoder and back::

    encode(x, ctx) -> (y, ctx', parts, record)       decode(y, parts, record, ctx) -> x̂

* ``ctx`` (:class:`MatrixContext`) carries what the whole-model plan knows about this tensor (its role, PRNG key,
  calibration Hessian, a role-shared transform state, the f_θ prediction, the allocated step multiplier, the device
  it runs on). A stage may pass an updated context down (the transform stage moves the Hessian into its
  coordinates; the residual stage scales the steps), so no stage knows another's business.
* ``parts`` are the arrays the decoder needs, ``{part name: (kind, array)}``; the kind is the row of the bit
  accounting they are counted in (:data:`macjax.artifact.KINDS`).
* ``record`` holds the JSON facts the decoder needs (the coder's header ...).

A *chain* is a tuple of stages. :func:`encode_tensor` runs it forwards, then gets the encoder's reconstruction by
running the decoders backwards from the last lossy stage, reading the stored parts exactly as the decoder will (so
the SHA-256 it records is the decoder's result, not an in-memory shortcut); :func:`decode_tensor` runs the decoders
from the parts alone, the deepest (last) stage reading its own parts (``y = None``).

The chains themselves — which stages, in which order — are built by :mod:`macjax.pipeline.compression`, the one
module that knows the order.

Example:
  >>> chain = (quantize_stage(quantizer("uniform", 0.1, 0, (), None)), code_stage(CodingConfig()))  # doctest: +SKIP
  >>> W_hat, parts, record = encode_tensor(chain, W, MatrixContext.plain("w", W.shape))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from macjax import coding
from macjax.errors import ArtifactError, ConfigError, MacjaxError
from macjax.pipeline import components
from macjax.pipeline.config import CodingConfig
from macjax.quantize.uniform import group_view

Parts = dict[str, tuple[str, np.ndarray]]


class MatrixContext(NamedTuple):
  """What the plan knows about one tensor, handed down the chain (arrays or None; see the module docstring).

  Attributes:
    name: the tensor's Hugging Face name.
    shape: its shape.
    role: its role (``q``, ``up`` ...) for block matrices, else None.
    key: its PRNG key (transforms that draw randomness).
    stats: calibration statistics of its inputs (:class:`~macjax.calibrate.InputStats`), or None.
    hessian: the GPTQ Hessian in the coordinates of the value at this point of the chain, or None.
    transform_state: a transform state fitted by the plan (shared by a role, or fitted ahead for the
      allocation / f_θ), or None to fit it in the transform stage.
    transform_shared: the role whose shared ``transform:{role}`` record holds the state (then it is not stored
      with the tensor), or None.
    prediction: ``f_θ(α)`` for this matrix in the transformed coordinates, or None.
    fit_role: the role whose ``fit:{role}`` record holds θ, or None.
    step_scale: the multiplier of the quantizer's steps (allocation; the residual stage multiplies it further).
    device: the device the tensor's arrays are placed on, or None for JAX's default.
  """

  name: str
  shape: tuple[int, ...]
  role: str | None = None
  key: Any = None
  stats: Any = None
  hessian: Any = None
  transform_state: Any = None
  transform_shared: str | None = None
  prediction: Any = None
  fit_role: str | None = None
  step_scale: Any = 1.0
  device: Any = None


class Stage(NamedTuple):
  """One step of the per-tensor encoder (see the module docstring).

  Attributes:
    name: what the stage is, for messages.
    encode: ``(x, ctx) -> (y, ctx, parts, record)``.
    decode: ``(y, parts, record, ctx) -> x``; ``y`` is None for the deepest stage of a decode, which reads its
      parts.
    lossless: ``decode(encode(x)) == x`` exactly (entropy coding): the encoder's reconstruction skips it.
  """

  name: str
  encode: Callable[..., tuple[Any, MatrixContext, Parts, dict]]
  decode: Callable[..., Any]
  lossless: bool = False


def tensor_digest(array: np.ndarray) -> str:
  """SHA-256 of a tensor's float32 bytes (C order): the bit-exactness witness stored in the manifest."""
  return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def bits_of(parts: Parts) -> dict[str, int]:
  """Bits stored per kind: ``8 · Σ nbytes`` of the parts of each kind."""
  out: dict[str, int] = {}
  for kind, array in parts.values():
    out[kind] = out.get(kind, 0) + int(array.nbytes) * 8
  return out


def encode_tensor(chain: tuple[Stage, ...], x, ctx: MatrixContext) -> tuple[np.ndarray, Parts, dict]:
  """Runs ``chain`` on ``x``; returns the encoder's reconstruction (float32, what the decoder will produce), the
  parts to store, and the tensor's record (the stages' records, plus ``bits`` per kind)."""
  parts: Parts = {}
  record: dict = {}
  contexts = []
  last = max((i for i, s in enumerate(chain) if not s.lossless), default=len(chain) - 1)
  y = None  # the last lossy stage's output: the reconstruction starts there (intermediates are not kept)
  for i, stage in enumerate(chain):
    contexts.append(ctx)
    x, ctx, p, r = stage.encode(x, ctx)
    parts.update(p)
    record.update(r)
    if i == last:
      y = x
  del x
  stored = {name: array for name, (_, array) in parts.items()}
  for i in range(last, -1, -1):
    y = chain[i].decode(y, stored, record, contexts[i])
  record["bits"] = bits_of(parts)
  return np.asarray(y, np.float32).reshape(contexts[0].shape), parts, record


def decode_tensor(chain: tuple[Stage, ...], parts: dict[str, np.ndarray], record: dict,
                  ctx: MatrixContext) -> np.ndarray:
  """Runs ``chain``'s decoders backwards from the stored parts alone; float32 in the tensor's shape."""
  y = None
  for stage in reversed(chain):
    y = stage.decode(y, parts, record, ctx)
  return np.asarray(y, np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Storing pytrees (transform states, quantizer meta) as parts.


def _compact(a: np.ndarray) -> np.ndarray:
  """float32 → float16 when that is lossless (quantizer steps are float16-representable by construction)."""
  if a.dtype == np.float32 and np.array_equal(a.astype(np.float16).astype(np.float32), a):
    return a.astype(np.float16)
  return a


def leaves_parts(prefix: str, kind: str, tree) -> Parts:
  """The leaves of a pytree as parts ``{prefix}.{i}`` (float32 leaves stored as float16 when exact)."""
  return {f"{prefix}.{i}": (kind, _compact(np.asarray(x))) for i, x in enumerate(jax.tree_util.tree_leaves(tree))}


def leaves_from_parts(parts: dict[str, np.ndarray], prefix: str, structure):
  """Inverse of :func:`leaves_parts` against an abstract ``structure`` (shapes and dtypes checked).

  Raises:
    ArtifactError: a leaf is missing or has another shape or dtype.
  """
  leaves_s = jax.tree_util.tree_leaves(structure)
  leaves = []
  for i, s in enumerate(leaves_s):
    a = parts.get(f"{prefix}.{i}")
    if a is not None and a.dtype == np.float16 and s.dtype == np.float32:
      a = a.astype(np.float32)  # stored compactly by _compact, exactly
    if a is None or a.shape != s.shape or a.dtype != s.dtype:
      raise ArtifactError(f"artifact: {prefix} leaf {i} of {len(leaves_s)} is missing or is not {s.shape} {s.dtype}")
    leaves.append(jnp.asarray(a))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(structure), leaves)


# ---------------------------------------------------------------------------------------------------------------
# The transform chain and the quantizers, jitted once per config (cached, so decoding many tensors compiles once
# per shape).


@dataclasses.dataclass(frozen=True)
class TransformChain:
  """The per-matrix transform chain of ``[[transform]]``, jitted (one compile per matrix shape)."""

  t: Any
  specs: tuple

  @functools.cached_property
  def init(self):
    return jax.jit(lambda W, key, stats: self.t.init(W, key=key, stats=stats))

  @functools.cached_property
  def apply(self):
    return jax.jit(self.t.apply)

  @functools.cached_property
  def inverse(self):
    return jax.jit(self.t.inverse)

  def stats_for(self, input_stats) -> dict[str, Any] | None:
    """The ``stats`` mapping of the named chain for one matrix, from its :class:`InputStats` (or None)."""
    out = {}
    for i, spec in enumerate(self.specs):
      kind = components.stats_kind(spec.name, spec.kwargs)
      if kind is not None:
        out[f"{i}:{spec.name}"] = jnp.asarray(getattr(input_stats, kind), jnp.float32)
    return out or None

  def needs_stats(self) -> bool:
    return any(components.stats_kind(s.name, s.kwargs) for s in self.specs)

  def state_structure(self, shape: tuple[int, int]):
    """The abstract state of a ``shape`` matrix (what the decoder restores the stored leaves against)."""
    d = shape[1]
    stats = {}
    for i, spec in enumerate(self.specs):
      kind = components.stats_kind(spec.name, spec.kwargs)
      if kind is not None:
        stats[f"{i}:{spec.name}"] = jax.ShapeDtypeStruct((d, d) if kind == "second_moment" else (d,), jnp.float32)
    return jax.eval_shape(self.init, jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct((2,), jnp.uint32),
                          stats or None)

  def input_side_only(self) -> bool:
    return all(s.kwargs.get("side", "input") == "input" for s in self.specs)


@functools.lru_cache(maxsize=8)
def transform_chain(specs: tuple) -> TransformChain | None:
  """The jitted chain of ``[[transform]]`` specs, or None for an empty chain."""
  t = components.build_chain([(s.name, s.kwargs) for s in specs])
  return None if t is None else TransformChain(t, specs)


@dataclasses.dataclass(frozen=True)
class JittedQuantizer:
  """A jitted quantizer and how to rebuild its meta's structure for a matrix shape."""

  quantize: Callable
  dequantize: Callable
  gptq: bool

  def meta_structure(self, shape: tuple[int, int]):
    W = jax.ShapeDtypeStruct(shape, jnp.float32)
    args = (W, jax.ShapeDtypeStruct((shape[1], shape[1]), jnp.float32)) if self.gptq else (W,)
    return jax.eval_shape(self.quantize, *args, 1.0)[1]


@functools.lru_cache(maxsize=32)
def quantizer(method: str, step: float, group_size: int, options: tuple, gptq: tuple | None) -> JittedQuantizer:
  """The jitted quantizer of config values (``options``/``gptq`` as sorted item tuples, so that it is cached)."""
  q = components.build_quantizer(method, step, group_size, dict(options), gptq=dict(gptq) if gptq else None)
  return JittedQuantizer(jax.jit(q.quantize), jax.jit(q.dequantize), gptq is not None)


# ---------------------------------------------------------------------------------------------------------------
# The stages.


def transform_stage(chain: TransformChain) -> Stage:
  """``W → T(W)`` with the matrix's own fitted state (stored as ``transform.i`` parts) or its role's shared one;
  a Hessian in the context is moved into the new input coordinates, ``A⁻¹ H A⁻ᵀ``."""

  def encode(W, ctx: MatrixContext):
    state = ctx.transform_state
    if state is None:
      try:
        state = chain.init(W, ctx.key, chain.stats_for(ctx.stats) if ctx.stats is not None else None)
      except MacjaxError as e:
        raise type(e)(f"transform of {ctx.name}: {e}") from e
    parts, record = {}, {}
    if ctx.transform_shared is not None:
      record["transform_shared"] = ctx.transform_shared
    else:
      parts = leaves_parts("transform", "transform", state)
    H = ctx.hessian
    if H is not None:
      A_inv = chain.inverse(jnp.eye(W.shape[1], dtype=jnp.float32), state)
      H = A_inv @ H @ A_inv.T
    return chain.apply(W, state), ctx._replace(hessian=H, transform_state=state), parts, record

  def decode(y, parts, record, ctx: MatrixContext):
    state = ctx.transform_state
    if state is None:
      if "transform_shared" in record:
        raise ArtifactError(f"artifact: tensor {ctx.name} uses the shared transform state "
                            f"transform:{record['transform_shared']}, which the artifact does not hold")
      state = leaves_from_parts(parts, "transform", chain.state_structure(ctx.shape))
    return chain.inverse(y, state)

  return Stage("transform", encode, decode)


@functools.partial(jax.jit, static_argnames=("group_size",))
def _residual_step_scale(W: jax.Array, R: jax.Array, group_size: int | None) -> jax.Array:
  rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(group_view(x, group_size)), axis=-1))
  return rms(W) / jnp.maximum(rms(R), 1e-30)


def residual_step_scale(scope: str, group_size: int | None, W: jax.Array, R: jax.Array):
  """Multiplier of a quantizer's steps on the residual ``R = W − f_θ(α)`` so that they are the steps ``W`` itself
  would get (per row/group ``RMS(W)/RMS(R)``, per matrix, or 1 for absolute steps): equal distortion, the fit's
  gain shows up as rate."""
  if scope == "row":
    return _residual_step_scale(W, R, group_size)
  if scope == "matrix":
    return jnp.sqrt(jnp.mean(W**2)) / jnp.maximum(jnp.sqrt(jnp.mean(R**2)), 1e-30)
  return 1.0  # absolute steps do not depend on the input


def residual_stage(scope: str, group_size: int | None) -> Stage:
  """``W' → W' − f_θ(α)`` when the context holds a prediction (the steps scaled by :func:`residual_step_scale`);
  the identity otherwise."""

  def encode(x, ctx: MatrixContext):
    if ctx.prediction is None:
      return x, ctx, {}, {}
    r = x - ctx.prediction
    scale = residual_step_scale(scope, group_size, x, r) * ctx.step_scale
    return r, ctx._replace(step_scale=scale), {}, {"fit": ctx.fit_role}

  def decode(y, parts, record, ctx: MatrixContext):
    if "fit" not in record:
      return y
    if ctx.prediction is None:
      raise ArtifactError(f"artifact: tensor {ctx.name} is a residual of f_θ '{record['fit']}', whose θ record "
                          f"fit:{record['fit']} the artifact does not hold")
    return ctx.prediction + y

  return Stage("residual", encode, decode)


def quantize_stage(q: JittedQuantizer) -> Stage:
  """``x → (codes, meta)`` with the context's step multiplier (and Hessian, behind GPTQ); meta stored as
  ``meta.i`` parts of kind ``scales``."""

  def encode(x, ctx: MatrixContext):
    if q.gptq:
      if ctx.hessian is None:
        raise ConfigError(f"quantize {ctx.name}: GPTQ needs the calibration Hessian of its inputs")
      codes, meta = q.quantize(x, ctx.hessian, ctx.step_scale)
    else:
      codes, meta = q.quantize(x, ctx.step_scale)
    return codes, ctx, leaves_parts("meta", "scales", meta), {}

  def decode(codes, parts, record, ctx: MatrixContext):
    if codes is None:
      raise ArtifactError(f"artifact: tensor {ctx.name}: the quantize stage cannot decode without codes")
    meta = leaves_from_parts(parts, "meta", q.meta_structure(ctx.shape))
    return q.dequantize(jnp.asarray(codes), meta)

  return Stage("quantize", encode, decode)


def code_stage(cfg: CodingConfig) -> Stage:
  """Integer codes → an entropy-coded stream (``words``, kind ``codes``) and its stored model (``table``, kind
  ``tables``); the record holds the coder's header and the codes' Shannon information under that model."""

  def encode(codes, ctx: MatrixContext):
    codes = np.asarray(codes, np.int32)
    coded = coding.encode(codes, model=cfg.model, classes=cfg.class_grid() if codes.ndim >= 1 else None)
    record = {"coder": coded.header, "information_bits": float(coding.information_bits(codes, coded))}
    return codes, ctx, {"words": ("codes", coded.words), "table": ("tables", coded.table)}, record

  def decode(y, parts, record, ctx: MatrixContext):
    if y is not None:
      return y
    try:
      return coding.decode(coding.CodedTensor(words=parts["words"], table=parts["table"], header=record["coder"]))
    except KeyError as e:
      raise ArtifactError(f"artifact: tensor {ctx.name} lacks its coded {e} part or header") from e

  return Stage("code", encode, decode, lossless=True)


def keep_stage(dtype: str) -> Stage:
  """The tensor kept as it is in ``dtype`` (``float16`` or ``float32``), one ``raw`` part."""

  def encode(a, ctx: MatrixContext):
    stored = np.asarray(a).astype(dtype)
    return stored, ctx, {"raw": ("raw", stored)}, {}

  def decode(y, parts, record, ctx: MatrixContext):
    stored = parts.get("raw") if y is None else y
    if stored is None:
      raise ArtifactError(f"artifact: tensor {ctx.name} lacks its raw part")
    return np.asarray(stored).astype(np.float32)

  return Stage("keep", encode, decode)


def row_blocks_stage(chain: tuple[Stage, ...], block_rows: int) -> Stage:
  """A 2-D tensor encoded in blocks of ``block_rows`` rows, each block through ``chain`` on its own (its parts
  prefixed ``b{k}.``, its record in ``blocks[k]``): for tensors too large to quantize and code at once (a 128k × 8k
  embedding), so that one block's intermediates are alive at a time beside the tensor and its reconstruction.
  Only for chains whose steps are per row (the quantizers' per-row steps, per-tensor coding tables per block)."""
  if block_rows < 1:
    raise ConfigError(f"row blocks: block_rows = {block_rows}; expected >= 1")

  def spans(rows: int):
    return [(lo, min(rows, lo + block_rows)) for lo in range(0, rows, block_rows)]

  def sub_context(ctx: MatrixContext, lo: int, hi: int) -> MatrixContext:
    return ctx._replace(name=f"{ctx.name}[rows {lo}:{hi}]", shape=(hi - lo, *ctx.shape[1:]))

  def encode(x, ctx: MatrixContext):
    out = np.empty(ctx.shape, np.float32)
    parts: Parts = {}
    blocks = []
    for k, (lo, hi) in enumerate(spans(ctx.shape[0])):
      W_hat, p, r = encode_tensor(chain, x[lo:hi], sub_context(ctx, lo, hi))
      out[lo:hi] = W_hat
      parts.update({f"b{k}.{name}": part for name, part in p.items()})
      blocks.append(r)
    info = sum(float(r.get("information_bits", 0.0)) for r in blocks)
    return out, ctx, parts, {"block_rows": int(block_rows), "blocks": blocks, "information_bits": info}

  def decode(y, parts, record, ctx: MatrixContext):
    if y is not None:
      return y
    blocks = record.get("blocks")
    if not isinstance(blocks, list) or len(blocks) != len(spans(ctx.shape[0])):
      raise ArtifactError(f"artifact: tensor {ctx.name} lists {len(blocks or [])} row blocks of {block_rows} rows; "
                          f"its {ctx.shape[0]} rows need {len(spans(ctx.shape[0]))}")
    out = np.empty(ctx.shape, np.float32)
    for k, (lo, hi) in enumerate(spans(ctx.shape[0])):
      prefix = f"b{k}."
      sub = {name[len(prefix):]: a for name, a in parts.items() if name.startswith(prefix)}
      out[lo:hi] = decode_tensor(chain, sub, blocks[k], sub_context(ctx, lo, hi)).reshape(hi - lo, *ctx.shape[1:])
    return out

  return Stage("row_blocks", encode, decode)
