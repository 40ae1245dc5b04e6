"""A LLaMA-family forward pass in pure JAX, reading the flat Hugging Face ``{name: array}`` params.

What it computes, for tokens ``t`` of shape ``[batch, seq]`` (HF ``LlamaForCausalLM`` in float32):

.. math::

  x_0 = E[t], \\qquad
  x \\leftarrow x + W_o\\,\\mathrm{Attn}(\\mathrm{RoPE}(W_q h), \\mathrm{RoPE}(W_k h), W_v h),\\
    h = \\mathrm{RMS}(x)\\odot g_1 \\\\
  x \\leftarrow x + W_{down}\\,(\\mathrm{SiLU}(W_{gate} h) \\odot W_{up} h),\\ h = \\mathrm{RMS}(x)\\odot g_2 \\\\
  \\mathrm{logits} = (\\mathrm{RMS}(x_L)\\odot g_f)\\, W_{lm}^\\top

with :math:`\\mathrm{RMS}(x) = x / \\sqrt{\\mathrm{mean}(x^2) + \\epsilon}`; RoPE in Hugging Face's *rotate_half*
convention (the two halves of each head, not interleaved pairs): with
:math:`\\omega_j = \\theta^{-2j/d}` for :math:`j < d/2` and angles :math:`\\phi = p\\,[\\omega, \\omega]`,
:math:`\\mathrm{RoPE}(q) = q \\cos\\phi + \\mathrm{rotate\\_half}(q) \\sin\\phi`,
:math:`\\mathrm{rotate\\_half}([a, b]) = [-b, a]`; grouped-query attention (``num_key_value_heads`` key/value heads,
each shared by ``num_attention_heads / num_key_value_heads`` query heads); a causal mask;
:math:`W_{lm} = E` when the params hold no ``lm_head.weight`` (tied embeddings).

The blocks are stacked along a leading layer axis once (:func:`prepare_llama`) and run with ``jax.lax.scan``, so
one block is compiled whatever the depth.

Example:
  >>> weights = prepare_llama(model.params, model.layout.config)     # doctest: +SKIP
  >>> logits = llama_logits(weights, model.layout.config, tokens)      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError, ModelLoadError, NonFiniteError, ShapeError

_BLOCK_TENSORS = {
    # stacked field -> HF name suffix inside ``model.layers.N.``
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
    "input_norm": "input_layernorm.weight",
    "post_norm": "post_attention_layernorm.weight",
}


@dataclasses.dataclass(frozen=True)
class LlamaDims:
  """The static (hashable) shape and constants of a LLaMA model, read from its HF config.

  Attributes:
    hidden: ``hidden_size``.
    intermediate: ``intermediate_size``.
    num_layers: ``num_hidden_layers``.
    num_heads: ``num_attention_heads``.
    num_kv_heads: ``num_key_value_heads`` (defaults to ``num_heads``).
    head_dim: ``head_dim`` (defaults to ``hidden // num_heads``).
    vocab: ``vocab_size``.
    rms_eps: ``rms_norm_eps``.
    rope_theta: the RoPE base ``rope_theta`` (top level, or in ``rope_parameters`` as transformers 5 writes it).
  """

  hidden: int
  intermediate: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  vocab: int
  rms_eps: float
  rope_theta: float

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "LlamaDims":
    """Reads and checks the fields of a HF LLaMA ``config.json`` dict.

    Raises:
      ConfigError: a required key is missing, or the config asks for something this forward does not do
        (RoPE scaling, attention/MLP biases, an activation other than SiLU, heads that do not divide).
    """

    def need(key):
      if key not in config:
        raise ConfigError(f"LLaMA config: missing key {key!r}; found keys {sorted(config)}")
      return config[key]

    hidden = int(need("hidden_size"))
    num_heads = int(need("num_attention_heads"))
    num_kv_heads = int(config.get("num_key_value_heads") or num_heads)
    head_dim = int(config.get("head_dim") or hidden // num_heads)
    rope = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", rope.get("rope_type", "default")))
    if rope_type not in (None, "default"):
      raise ConfigError(f"LLaMA config: rope type {rope_type!r} is not supported; expected 'default'")
    for key in ("attention_bias", "mlp_bias"):
      if config.get(key):
        raise ConfigError(f"LLaMA config: {key}=True is not supported; expected False")
    act = config.get("hidden_act", "silu")
    if act != "silu":
      raise ConfigError(f"LLaMA config: hidden_act={act!r} is not supported; expected 'silu'")
    if num_heads % num_kv_heads:
      raise ConfigError(
          f"LLaMA config: num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv_heads}")
    if head_dim % 2:
      raise ConfigError(f"LLaMA config: head_dim={head_dim} must be even for RoPE")
    return cls(
        hidden=hidden,
        intermediate=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        vocab=int(need("vocab_size")),
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
    )


class LlamaWeights(NamedTuple):
  """The params of a LLaMA model rearranged for the scanned forward (a pytree of float32 arrays).

  Attributes:
    embed: ``[vocab, hidden]`` token embeddings.
    blocks: ``{field: [num_layers, ...]}`` block tensors stacked along a leading layer axis, HF layout
      (``(out_features, in_features)``) for the matrices.
    final_norm: ``[hidden]`` the gain of the final RMSNorm.
    lm_head: ``[vocab, hidden]`` the output projection (``embed`` itself when tied).
  """

  embed: jax.Array
  blocks: dict[str, jax.Array]
  final_norm: jax.Array
  lm_head: jax.Array


def _get(params: Mapping[str, Any], name: str, shape: tuple[int, ...]) -> np.ndarray:
  if name not in params:
    raise ModelLoadError(f"LLaMA params: missing tensor {name!r} (expected shape {shape})")
  array = np.asarray(params[name], dtype=np.float32)
  if array.shape != shape:
    raise ShapeError(f"LLaMA params: tensor {name!r} has shape {array.shape}; expected {shape}")
  return array


def prepare_llama(params: Mapping[str, Any], config: Mapping[str, Any], *,
                  check_finite: bool = True) -> LlamaWeights:
  """Checks the flat HF params against the config and stacks the blocks along a layer axis.

  Args:
    params: ``{HF name: array}``: ``model.embed_tokens.weight``, ``model.layers.N.self_attn.{q,k,v,o}_proj.weight``,
      ``model.layers.N.mlp.{gate,up,down}_proj.weight``, ``model.layers.N.{input,post_attention}_layernorm.weight``,
      ``model.norm.weight``, and optionally ``lm_head.weight`` (else the embeddings are tied).
    config: the HF ``config.json`` dict.
    check_finite: raise :class:`~macjax.errors.NonFiniteError` if any used tensor holds NaN or infinity.

  Returns:
    A :class:`LlamaWeights` of float32 ``jax.Array``.

  Raises:
    ModelLoadError: a tensor is missing (or ``lm_head.weight`` is missing while the config says untied).
    ShapeError: a tensor's shape disagrees with the config.
    NonFiniteError: a tensor holds NaN or infinity.

  Example:
    >>> weights = prepare_llama(model.params, model.layout.config)   # doctest: +SKIP
    >>> weights.blocks["q"].shape                                    # doctest: +SKIP
    (30, 576, 576)
  """
  dims = LlamaDims.from_config(config)
  h, f, hd = dims.hidden, dims.intermediate, dims.head_dim
  shapes = {
      "q": (dims.num_heads * hd, h), "k": (dims.num_kv_heads * hd, h), "v": (dims.num_kv_heads * hd, h),
      "o": (h, dims.num_heads * hd), "gate": (f, h), "up": (f, h), "down": (h, f),
      "input_norm": (h,), "post_norm": (h,),
  }
  used: dict[str, np.ndarray] = {}
  blocks = {}
  for field, suffix in _BLOCK_TENSORS.items():
    per_layer = []
    for layer in range(dims.num_layers):
      name = f"model.layers.{layer}.{suffix}"
      used[name] = _get(params, name, shapes[field])
      per_layer.append(used[name])
    blocks[field] = np.stack(per_layer)
  used["model.embed_tokens.weight"] = _get(params, "model.embed_tokens.weight", (dims.vocab, h))
  used["model.norm.weight"] = _get(params, "model.norm.weight", (h,))
  if "lm_head.weight" in params:
    used["lm_head.weight"] = _get(params, "lm_head.weight", (dims.vocab, h))
  elif not config.get("tie_word_embeddings", True):
    raise ModelLoadError("LLaMA params: no 'lm_head.weight' while the config says tie_word_embeddings=False")
  if check_finite:
    for name, array in used.items():
      if not np.all(np.isfinite(array)):
        raise NonFiniteError(f"LLaMA params: tensor {name!r} {array.shape} holds NaN or infinity")
  embed = jnp.asarray(used["model.embed_tokens.weight"])
  lm_head = jnp.asarray(used["lm_head.weight"]) if "lm_head.weight" in used else embed
  return LlamaWeights(
      embed=embed,
      blocks={k: jnp.asarray(v) for k, v in blocks.items()},
      final_norm=jnp.asarray(used["model.norm.weight"]),
      lm_head=lm_head,
  )


def rms_norm(x: jax.Array, gain: jax.Array, eps: float) -> jax.Array:
  """RMSNorm: :math:`g \\odot x / \\sqrt{\\mathrm{mean}_i x_i^2 + \\epsilon}` over the last axis.

  Example:
    >>> rms_norm(jnp.array([3.0, 4.0]), jnp.ones(2), 0.0)   # doctest: +SKIP
    Array([0.8485, 1.1314], dtype=float32)
  """
  variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return gain * (x * jax.lax.rsqrt(variance + eps))


def rope_angles(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """``cos`` and ``sin`` tables ``[seq_len, head_dim]`` of HF's default RoPE.

  :math:`\\omega_j = \\theta^{-2j/d}`, angles :math:`p\\,[\\omega_0..\\omega_{d/2-1}, \\omega_0..\\omega_{d/2-1}]`
  for positions ``p = 0..seq_len-1`` (the two halves repeat: the *rotate_half* convention).

  Example:
    >>> cos, sin = rope_angles(8, 64, 1e4)   # doctest: +SKIP
  """
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  angles = np.arange(seq_len, dtype=np.float32)[:, None] * inv_freq[None, :]
  angles = np.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """:math:`x\\cos\\phi + \\mathrm{rotate\\_half}(x)\\sin\\phi`, ``rotate_half([a, b]) = [-b, a]``.

  Args:
    x: ``[..., seq, heads, head_dim]``.
    cos, sin: ``[seq, head_dim]`` from :func:`rope_angles`.
  """
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, None, :] + rotated * sin[:, None, :]


class BlockInputs(NamedTuple):
  """The inputs of a block's linear layers, each ``[batch, seq, features]`` (what multiplies ``Wᵀ``).

  Attributes:
    attn: :math:`\\mathrm{RMS}(x)\\odot g_1`, the input of ``q_proj``, ``k_proj`` and ``v_proj`` (``hidden``).
    context: the attention context, heads concatenated, the input of ``o_proj`` (``num_heads * head_dim``).
    mlp: :math:`\\mathrm{RMS}(x)\\odot g_2`, the input of ``gate_proj`` and ``up_proj`` (``hidden``).
    act: :math:`\\mathrm{SiLU}(W_{gate} h)\\odot W_{up} h`, the input of ``down_proj`` (``intermediate``).
  """

  attn: jax.Array
  context: jax.Array
  mlp: jax.Array
  act: jax.Array


def _block_and_inputs(x: jax.Array, p: dict[str, jax.Array], cos, sin,
                      dims: LlamaDims) -> tuple[jax.Array, BlockInputs]:
  batch, seq, _ = x.shape
  groups = dims.num_heads // dims.num_kv_heads
  h = rms_norm(x, p["input_norm"], dims.rms_eps)
  q = jnp.einsum("bsi,oi->bso", h, p["q"]).reshape(batch, seq, dims.num_kv_heads, groups, dims.head_dim)
  k = jnp.einsum("bsi,oi->bso", h, p["k"]).reshape(batch, seq, dims.num_kv_heads, dims.head_dim)
  v = jnp.einsum("bsi,oi->bso", h, p["v"]).reshape(batch, seq, dims.num_kv_heads, dims.head_dim)
  q = apply_rope(q.reshape(batch, seq, dims.num_heads, dims.head_dim), cos, sin)
  q = q.reshape(batch, seq, dims.num_kv_heads, groups, dims.head_dim)
  k = apply_rope(k, cos, sin)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k) / np.sqrt(dims.head_dim).astype(np.float32)
  causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
  scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
  weights = jax.nn.softmax(scores, axis=-1)
  context = jnp.einsum("bkgqs,bskd->bqkgd", weights, v).reshape(batch, seq, dims.num_heads * dims.head_dim)
  x = x + jnp.einsum("bsi,oi->bso", context, p["o"])
  h2 = rms_norm(x, p["post_norm"], dims.rms_eps)
  gate = jnp.einsum("bsi,oi->bso", h2, p["gate"])
  up = jnp.einsum("bsi,oi->bso", h2, p["up"])
  act = jax.nn.silu(gate) * up
  return x + jnp.einsum("bsi,oi->bso", act, p["down"]), BlockInputs(attn=h, context=context, mlp=h2, act=act)


def _block(x: jax.Array, p: dict[str, jax.Array], cos, sin, dims: LlamaDims) -> jax.Array:
  return _block_and_inputs(x, p, cos, sin, dims)[0]


@functools.partial(jax.jit, static_argnames=("dims",))
def _hidden(weights: LlamaWeights, tokens: jax.Array, dims: LlamaDims) -> jax.Array:
  cos, sin = rope_angles(tokens.shape[1], dims.head_dim, dims.rope_theta)
  x = jnp.take(weights.embed, tokens, axis=0)

  def step(x, p):
    return _block(x, p, cos, sin, dims), None

  x, _ = jax.lax.scan(step, x, weights.blocks)
  return rms_norm(x, weights.final_norm, dims.rms_eps)


@jax.jit
def _project(hidden: jax.Array, lm_head: jax.Array) -> jax.Array:
  return jnp.einsum("...i,vi->...v", hidden, lm_head)


ParamsLike = Union[Mapping[str, Any], LlamaWeights]


def _weights(params: ParamsLike, config: Mapping[str, Any]) -> LlamaWeights:
  return params if isinstance(params, LlamaWeights) else prepare_llama(params, config)


def _check_tokens(tokens: Any, vocab: int) -> jax.Array:
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
    raise ShapeError(f"LLaMA tokens: got {tokens.dtype}{list(tokens.shape)}; expected int32[batch, seq]")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
    raise ShapeError(f"LLaMA tokens: ids in [{tokens.min()}, {tokens.max()}]; expected ids in [0, {vocab})")
  return jnp.asarray(tokens, dtype=jnp.int32)


def llama_hidden(params: ParamsLike, config: Mapping[str, Any], tokens: Any) -> jax.Array:
  """Final hidden states (after the final RMSNorm), what ``LlamaModel(...).last_hidden_state`` returns.

  Args:
    params: the flat HF ``{name: array}`` dict, or :class:`LlamaWeights` from :func:`prepare_llama` (prepare once
      when calling many times: stacking the layers copies every block tensor).
    config: the HF ``config.json`` dict.
    tokens: ``int32[batch, seq]`` token ids.

  Returns:
    ``float32[batch, seq, hidden]``.

  Example:
    >>> h = llama_hidden(model.params, model.layout.config, np.array([[1, 2, 3]]))   # doctest: +SKIP
    >>> h.shape                                                                      # doctest: +SKIP
    (1, 3, 576)
  """
  dims = LlamaDims.from_config(config)
  return _hidden(_weights(params, config), _check_tokens(tokens, dims.vocab), dims)


def llama_logits(params: ParamsLike, config: Mapping[str, Any], tokens: Any) -> jax.Array:
  """Next-token logits :math:`\\mathrm{logits}_{b,s} = W_{lm}\\, h_{b,s}` of a LLaMA model.

  Holds ``batch * seq * vocab`` floats: for long inputs call :func:`llama_hidden` and project in chunks
  (what :class:`macjax.evaluate.Evaluator` does).

  Args:
    params: flat HF params or :class:`LlamaWeights`.
    config: the HF ``config.json`` dict.
    tokens: ``int32[batch, seq]``.

  Returns:
    ``float32[batch, seq, vocab]``.

  Example:
    >>> logits = llama_logits(model.params, model.layout.config, np.array([[1, 2, 3]]))   # doctest: +SKIP
    >>> logits.shape                                                                       # doctest: +SKIP
    (1, 3, 49152)
  """
  weights = _weights(params, config)
  return _project(llama_hidden(weights, config, tokens), weights.lm_head)


@functools.partial(jax.jit, static_argnames=("dims", "reduce"))
def _reduce_inputs(weights: LlamaWeights, tokens: jax.Array, dims: LlamaDims, reduce):
  cos, sin = rope_angles(tokens.shape[1], dims.head_dim, dims.rope_theta)
  x = jnp.take(weights.embed, tokens, axis=0)
  mask = jnp.ones(tokens.shape, dtype=bool)

  def step(x, p):
    x, inputs = _block_and_inputs(x, p, cos, sin, dims)
    return x, reduce(inputs, mask)

  _, per_layer = jax.lax.scan(step, x, weights.blocks)
  return per_layer


def reduce_block_inputs(params: ParamsLike, config: Mapping[str, Any], tokens: Any, reduce) -> Any:
  """Runs the blocks and reduces each block's linear-layer inputs inside the layer scan, never keeping them.

  For each layer ``l`` the block's :class:`BlockInputs` ``I_l`` (each ``[batch, seq, features]``) are passed to
  ``reduce(I_l, mask)`` (``mask``: ``bool[batch, seq]``, all true here: every token counts), and the results are
  stacked along a leading layer axis: only ``reduce``'s outputs outlive the layer, so memory is that of the forward
  plus ``num_layers`` reductions (e.g. ``XᵀX`` sums, what :mod:`macjax.calibrate` does).

  Args:
    params: flat HF params or :class:`LlamaWeights`.
    config: the HF ``config.json`` dict.
    tokens: ``int32[batch, seq]``.
    reduce: ``(BlockInputs, mask) -> pytree of arrays``, traced under ``jit``; a module-level function (it is a
      static argument, so one compiled program per function and token shape).

  Returns:
    ``reduce``'s pytree with each leaf stacked to ``[num_layers, ...]``.

  Example:
    >>> sq = lambda inputs, mask: jnp.sum(jnp.square(inputs.act))                         # doctest: +SKIP
    >>> reduce_block_inputs(model.params, model.layout.config, tokens, sq).shape          # doctest: +SKIP
    (30,)
  """
  dims = LlamaDims.from_config(config)
  return _reduce_inputs(_weights(params, config), _check_tokens(tokens, dims.vocab), dims, reduce)


# ---------------------------------------------------------------------------------------------------------------
# One block at a time (sequential calibration: the blocks are run one by one as they are compressed).


def layer_params(params: Mapping[str, Any], config: Mapping[str, Any], layer: int) -> dict[str, jax.Array]:
  """Block ``layer``'s tensors as the scanned forward's per-layer slice (``{field: array}``, float32, checked).

  Example:
    >>> p = layer_params(model.params, model.layout.config, 3)   # doctest: +SKIP
  """
  dims = LlamaDims.from_config(config)
  h, f, hd = dims.hidden, dims.intermediate, dims.head_dim
  shapes = {"q": (dims.num_heads * hd, h), "k": (dims.num_kv_heads * hd, h), "v": (dims.num_kv_heads * hd, h),
            "o": (h, dims.num_heads * hd), "gate": (f, h), "up": (f, h), "down": (h, f), "input_norm": (h,),
            "post_norm": (h,)}
  return {field: jnp.asarray(_get(params, f"model.layers.{layer}.{suffix}", shapes[field]))
          for field, suffix in _BLOCK_TENSORS.items()}


def embed(params: Mapping[str, Any], config: Mapping[str, Any], tokens: Any) -> jax.Array:
  """The blocks' input ``x_0 = E[t]``: ``float32[batch, seq, hidden]``."""
  dims = LlamaDims.from_config(config)
  E = _get(params, "model.embed_tokens.weight", (dims.vocab, dims.hidden))
  return jnp.take(jnp.asarray(E), _check_tokens(tokens, dims.vocab), axis=0)


@functools.partial(jax.jit, static_argnames=("dims", "reduce"))
def _layer_step(x: jax.Array, p: dict[str, jax.Array], dims: LlamaDims, reduce):
  cos, sin = rope_angles(x.shape[1], dims.head_dim, dims.rope_theta)
  out, inputs = _block_and_inputs(x, p, cos, sin, dims)
  return out, (reduce(inputs, jnp.ones(x.shape[:2], dtype=bool)) if reduce is not None else None)


def block_step(p: dict[str, jax.Array], config: Mapping[str, Any], x: jax.Array, reduce=None) -> tuple[jax.Array, Any]:
  """One block on ``x``: its output and, when ``reduce`` is given, ``reduce(BlockInputs, mask)`` of its linear
  layers' inputs (as :func:`reduce_block_inputs` does for every block at once).

  Example:
    >>> x1, _ = block_step(layer_params(params, config, 0), config, embed(params, config, tokens))  # doctest: +SKIP
  """
  return _layer_step(x, p, LlamaDims.from_config(config), reduce)
