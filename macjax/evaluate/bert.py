"""A BERT encoder forward in pure JAX, and sentence embeddings by mean pooling (sentence-transformers' MiniLM).

What it computes, for tokens ``t`` and attention mask ``m`` of shape ``[batch, seq]`` (HF ``BertModel``, float32):

.. math::

  x_0 = \\mathrm{LN}(E_w[t] + E_p[0..s-1] + E_{tt}[\\mathrm{type}]) \\\\
  x \\leftarrow \\mathrm{LN}\\big(x + W_{ao}\\,\\mathrm{Attn}(W_q x + b_q, W_k x + b_k, W_v x + b_v; m)
    + b_{ao}\\big) \\\\
  x \\leftarrow \\mathrm{LN}\\big(x + W_{out}\\,\\mathrm{GELU}(W_{in} x + b_{in}) + b_{out}\\big)

(post-LN blocks; :math:`\\mathrm{LN}(x) = \\gamma \\odot (x - \\mu)/\\sqrt{\\sigma^2 + \\epsilon} + \\beta`; exact
:math:`\\mathrm{GELU}(z) = z\\,\\Phi(z)` with the erf; attention scores of padded keys (``m = 0``) set to the float32
minimum before the softmax). The sentence embedding is the masked mean of the last hidden states,

.. math:: e_b = \\sum_s m_{bs} x_{bs} \\Big/ \\max\\big(\\textstyle\\sum_s m_{bs}, 10^{-9}\\big),

what sentence-transformers' ``Pooling(mean)`` computes; all-MiniLM-L6-v2's trailing ``Normalize`` only rescales
each embedding and leaves cosines unchanged, so it is not applied.

Layers are stacked along a leading axis (:func:`prepare_bert`) and run with ``jax.lax.scan``.

Example:
  >>> emb = bert_embeddings(model.params, model.layout.config, tokens, mask)   # doctest: +SKIP
  >>> emb.shape                                                                 # doctest: +SKIP
  (8, 384)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError, ModelLoadError, NonFiniteError, ShapeError

_LAYER_TENSORS = {
    # stacked field -> HF name suffix inside ``encoder.layer.N.``
    "q": "attention.self.query.weight", "q_bias": "attention.self.query.bias",
    "k": "attention.self.key.weight", "k_bias": "attention.self.key.bias",
    "v": "attention.self.value.weight", "v_bias": "attention.self.value.bias",
    "o": "attention.output.dense.weight", "o_bias": "attention.output.dense.bias",
    "attn_ln": "attention.output.LayerNorm.weight", "attn_ln_bias": "attention.output.LayerNorm.bias",
    "up": "intermediate.dense.weight", "up_bias": "intermediate.dense.bias",
    "down": "output.dense.weight", "down_bias": "output.dense.bias",
    "out_ln": "output.LayerNorm.weight", "out_ln_bias": "output.LayerNorm.bias",
}


@dataclasses.dataclass(frozen=True)
class BertDims:
  """Static constants of a BERT model, read from its HF config.

  Attributes:
    hidden: ``hidden_size``.
    intermediate: ``intermediate_size``.
    num_layers: ``num_hidden_layers``.
    num_heads: ``num_attention_heads``.
    vocab: ``vocab_size``.
    max_positions: ``max_position_embeddings``.
    type_vocab: ``type_vocab_size``.
    ln_eps: ``layer_norm_eps``.
  """

  hidden: int
  intermediate: int
  num_layers: int
  num_heads: int
  vocab: int
  max_positions: int
  type_vocab: int
  ln_eps: float

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "BertDims":
    """Reads and checks a HF BERT ``config.json`` dict.

    Raises:
      ConfigError: a key is missing, or the config asks for what this forward does not do (an activation other
        than exact GELU, non-absolute position embeddings, heads that do not divide the hidden size).
    """

    def need(key):
      if key not in config:
        raise ConfigError(f"BERT config: missing key {key!r}; found keys {sorted(config)}")
      return config[key]

    act = config.get("hidden_act", "gelu")
    if act != "gelu":
      raise ConfigError(f"BERT config: hidden_act={act!r} is not supported; expected 'gelu' (exact erf)")
    pos = config.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ConfigError(f"BERT config: position_embedding_type={pos!r} is not supported; expected 'absolute'")
    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    if hidden % heads:
      raise ConfigError(f"BERT config: hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
    return cls(
        hidden=hidden,
        intermediate=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        vocab=int(need("vocab_size")),
        max_positions=int(config.get("max_position_embeddings", 512)),
        type_vocab=int(config.get("type_vocab_size", 2)),
        ln_eps=float(config.get("layer_norm_eps", 1e-12)),
    )


class BertWeights(NamedTuple):
  """BERT params rearranged for the scanned forward (a pytree of float32 arrays).

  Attributes:
    word: ``[vocab, hidden]``; position: ``[max_positions, hidden]``; token_type: ``[type_vocab, hidden]``.
    emb_ln, emb_ln_bias: ``[hidden]`` the embeddings' LayerNorm.
    layers: ``{field: [num_layers, ...]}`` stacked layer tensors (HF ``(out, in)`` layout for matrices).
  """

  word: jax.Array
  position: jax.Array
  token_type: jax.Array
  emb_ln: jax.Array
  emb_ln_bias: jax.Array
  layers: dict[str, jax.Array]


def _prefix(params: Mapping[str, Any]) -> str:
  if "embeddings.word_embeddings.weight" in params:
    return ""
  if "bert.embeddings.word_embeddings.weight" in params:
    return "bert."
  raise ModelLoadError("BERT params: no 'embeddings.word_embeddings.weight' (nor with a 'bert.' prefix); "
                       f"found {len(params)} tensors, e.g. {sorted(params)[:3]}")


def prepare_bert(params: Mapping[str, Any], config: Mapping[str, Any], *, check_finite: bool = True) -> BertWeights:
  """Checks the flat HF BERT params against the config and stacks the layers.

  Args:
    params: ``{HF name: array}`` with MiniLM names (``embeddings.word_embeddings.weight``,
      ``encoder.layer.N.attention.self.query.weight``, ...), optionally all prefixed with ``bert.``.
      The pooler is not used.
    config: the HF ``config.json`` dict.
    check_finite: raise if a used tensor holds NaN or infinity.

  Returns:
    :class:`BertWeights`.

  Raises:
    ModelLoadError: a tensor is missing.  ShapeError: a shape disagrees with the config.
    NonFiniteError: NaN or infinity in a used tensor.

  Example:
    >>> weights = prepare_bert(model.params, model.layout.config)   # doctest: +SKIP
  """
  dims = BertDims.from_config(config)
  pre = _prefix(params)
  h, f = dims.hidden, dims.intermediate
  shapes = {
      "q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h), "up": (f, h), "down": (h, f),
      "up_bias": (f,),
  }
  used: dict[str, np.ndarray] = {}

  def get(name, shape):
    full = pre + name
    if full not in params:
      raise ModelLoadError(f"BERT params: missing tensor {full!r} (expected shape {shape})")
    array = np.asarray(params[full], dtype=np.float32)
    if array.shape != shape:
      raise ShapeError(f"BERT params: tensor {full!r} has shape {array.shape}; expected {shape}")
    used[full] = array
    return array

  layers = {}
  for field, suffix in _LAYER_TENSORS.items():
    shape = shapes.get(field, (h,))
    layers[field] = np.stack([get(f"encoder.layer.{i}.{suffix}", shape) for i in range(dims.num_layers)])
  word = get("embeddings.word_embeddings.weight", (dims.vocab, h))
  position = get("embeddings.position_embeddings.weight", (dims.max_positions, h))
  token_type = get("embeddings.token_type_embeddings.weight", (dims.type_vocab, h))
  emb_ln = get("embeddings.LayerNorm.weight", (h,))
  emb_ln_bias = get("embeddings.LayerNorm.bias", (h,))
  if check_finite:
    for name, array in used.items():
      if not np.all(np.isfinite(array)):
        raise NonFiniteError(f"BERT params: tensor {name!r} {array.shape} holds NaN or infinity")
  return BertWeights(
      word=jnp.asarray(word), position=jnp.asarray(position), token_type=jnp.asarray(token_type),
      emb_ln=jnp.asarray(emb_ln), emb_ln_bias=jnp.asarray(emb_ln_bias),
      layers={k: jnp.asarray(v) for k, v in layers.items()})


def layer_norm(x: jax.Array, gain: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """:math:`\\gamma \\odot (x - \\mu) / \\sqrt{\\sigma^2 + \\epsilon} + \\beta` over the last axis (biased variance).

  Example:
    >>> layer_norm(jnp.array([1.0, 3.0]), jnp.ones(2), jnp.zeros(2), 0.0)   # doctest: +SKIP
    Array([-1.,  1.], dtype=float32)
  """
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * gain + bias


def _dense(x, w, b):
  return jnp.einsum("bsi,oi->bso", x, w) + b


class BlockInputs(NamedTuple):
  """The inputs of a BERT layer's linear layers, each ``[batch, seq, features]`` (what multiplies ``Wᵀ``).

  Attributes:
    attn: the layer input ``x``, the input of ``query``, ``key`` and ``value`` (``hidden``).
    context: the attention context, heads concatenated, the input of ``attention.output.dense`` (``hidden``).
    mlp: the post-attention LayerNorm output, the input of ``intermediate.dense`` (``hidden``).
    act: :math:`\\mathrm{GELU}(W_{in} x + b_{in})`, the input of ``output.dense`` (``intermediate``).
  """

  attn: jax.Array
  context: jax.Array
  mlp: jax.Array
  act: jax.Array


def _layer_and_inputs(x, p, mask, dims: BertDims):
  batch, seq, _ = x.shape
  hd = dims.hidden // dims.num_heads
  split = lambda t: t.reshape(batch, seq, dims.num_heads, hd)
  q, k, v = (split(_dense(x, p[n], p[n + "_bias"])) for n in ("q", "k", "v"))
  scores = jnp.einsum("bqhd,bshd->bhqs", q, k) / np.sqrt(hd).astype(np.float32)
  scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
  context = jnp.einsum("bhqs,bshd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(batch, seq, dims.hidden)
  x1 = layer_norm(x + _dense(context, p["o"], p["o_bias"]), p["attn_ln"], p["attn_ln_bias"], dims.ln_eps)
  inner = jax.nn.gelu(_dense(x1, p["up"], p["up_bias"]), approximate=False)
  out = layer_norm(x1 + _dense(inner, p["down"], p["down_bias"]), p["out_ln"], p["out_ln_bias"], dims.ln_eps)
  return out, BlockInputs(attn=x, context=context, mlp=x1, act=inner)


def _layer(x, p, mask, dims: BertDims):
  return _layer_and_inputs(x, p, mask, dims)[0]


def _embed(weights: BertWeights, tokens, token_types, dims: BertDims):
  seq = tokens.shape[1]
  x = (jnp.take(weights.word, tokens, axis=0) + weights.position[:seq][None]
       + jnp.take(weights.token_type, token_types, axis=0))
  return layer_norm(x, weights.emb_ln, weights.emb_ln_bias, dims.ln_eps)


@functools.partial(jax.jit, static_argnames=("dims",))
def _hidden(weights: BertWeights, tokens, mask, token_types, dims: BertDims):
  x = _embed(weights, tokens, token_types, dims)
  x, _ = jax.lax.scan(lambda x, p: (_layer(x, p, mask, dims), None), x, weights.layers)
  return x


@jax.jit
def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked mean over the sequence: :math:`\\sum_s m_s x_s / \\max(\\sum_s m_s, 10^{-9})`.

  Args:
    hidden: ``[batch, seq, hidden]``.  mask: ``[batch, seq]`` (1 = token, 0 = padding).

  Example:
    >>> mean_pool(jnp.ones((1, 3, 2)), jnp.array([[1, 1, 0]]))   # doctest: +SKIP
    Array([[1., 1.]], dtype=float32)
  """
  m = mask.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


ParamsLike = Union[Mapping[str, Any], BertWeights]


def _inputs(tokens, mask, token_types, dims: BertDims):
  """Checked ``(tokens, bool mask, token types)``; traced arrays (inside ``jax.jit``) are checked for shape and
  dtype only: their values are not known there."""
  traced = any(isinstance(a, jax.core.Tracer) for a in (tokens, mask, token_types))
  xp = jnp if traced else np
  tokens = xp.asarray(tokens)
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ShapeError(f"BERT tokens: got {tokens.dtype}{list(tokens.shape)}; expected int32[batch, seq]")
  if tokens.shape[1] > dims.max_positions:
    raise ShapeError(f"BERT tokens: seq={tokens.shape[1]} exceeds max_position_embeddings={dims.max_positions}")
  if not traced and tokens.size and (tokens.min() < 0 or tokens.max() >= dims.vocab):
    raise ShapeError(f"BERT tokens: ids in [{tokens.min()}, {tokens.max()}]; expected [0, {dims.vocab})")
  mask = xp.ones(tokens.shape, bool) if mask is None else xp.asarray(mask)
  if mask.shape != tokens.shape:
    raise ShapeError(f"BERT attention mask: shape {mask.shape}; expected the tokens' shape {tokens.shape}")
  token_types = xp.zeros(tokens.shape, np.int32) if token_types is None else xp.asarray(token_types)
  if token_types.shape != tokens.shape:
    raise ShapeError(f"BERT token_type_ids: shape {token_types.shape}; expected {tokens.shape}")
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask != 0), jnp.asarray(token_types, jnp.int32)


def bert_hidden(params: ParamsLike, config: Mapping[str, Any], tokens: Any, mask: Any = None,
                token_types: Optional[Any] = None) -> jax.Array:
  """Last hidden states of a BERT encoder, what ``BertModel(...).last_hidden_state`` returns.

  Args:
    params: flat HF params, or :class:`BertWeights` from :func:`prepare_bert` (prepare once for many calls).
    config: the HF ``config.json`` dict.
    tokens: ``int32[batch, seq]``.
    mask: ``[batch, seq]`` attention mask (1 = token, 0 = padding); all ones if omitted.
    token_types: ``int32[batch, seq]`` segment ids; zeros if omitted.

  Returns:
    ``float32[batch, seq, hidden]``.

  Example:
    >>> h = bert_hidden(model.params, model.layout.config, np.array([[101, 7592, 102]]))   # doctest: +SKIP
  """
  dims = BertDims.from_config(config)
  weights = params if isinstance(params, BertWeights) else prepare_bert(params, config)
  return _hidden(weights, *_inputs(tokens, mask, token_types, dims), dims)


def bert_embeddings(params: ParamsLike, config: Mapping[str, Any], tokens: Any, mask: Any = None,
                    token_types: Optional[Any] = None) -> jax.Array:
  """Sentence embeddings: the masked mean (:func:`mean_pool`) of :func:`bert_hidden`.

  Returns:
    ``float32[batch, hidden]`` (not normalized; cosines do not need it).

  Example:
    >>> e = bert_embeddings(model.params, model.layout.config, tokens, mask)   # doctest: +SKIP
    >>> e.shape                                                                 # doctest: +SKIP
    (2, 384)
  """
  dims = BertDims.from_config(config)
  tokens, mask, token_types = _inputs(tokens, mask, token_types, dims)
  weights = params if isinstance(params, BertWeights) else prepare_bert(params, config)
  return mean_pool(_hidden(weights, tokens, mask, token_types, dims), mask)


@functools.partial(jax.jit, static_argnames=("dims", "reduce"))
def _reduce_inputs(weights: BertWeights, tokens, mask, token_types, dims: BertDims, reduce):
  return _hidden_and_inputs(weights, tokens, mask, token_types, dims, reduce)[1]


def _hidden_and_inputs(weights: BertWeights, tokens, mask, token_types, dims: BertDims, reduce):
  x = _embed(weights, tokens, token_types, dims)

  def step(x, p):
    x, inputs = _layer_and_inputs(x, p, mask, dims)
    return x, reduce(inputs, mask)

  return jax.lax.scan(step, x, weights.layers)


def hidden_and_inputs(params: ParamsLike, config: Mapping[str, Any], tokens: Any, reduce, mask: Any = None,
                      token_types: Optional[Any] = None) -> tuple[jax.Array, Any, jax.Array]:
  """:func:`bert_hidden` and, per layer, ``reduce(BlockInputs, mask)`` stacked to ``[num_layers, ...]`` (as
  :func:`reduce_block_inputs`), from one forward, traceable: what a gradient through the encoder that also needs
  its linear layers' inputs takes (:mod:`macjax.calibrate.fisher`). ``mask`` is returned checked, as a bool
  array: ``(hidden, per_layer, mask)``."""
  dims = BertDims.from_config(config)
  weights = params if isinstance(params, BertWeights) else prepare_bert(params, config)
  tokens, mask, token_types = _inputs(tokens, mask, token_types, dims)
  return (*_hidden_and_inputs(weights, tokens, mask, token_types, dims, reduce), mask)


def reduce_block_inputs(params: ParamsLike, config: Mapping[str, Any], tokens: Any, reduce, mask: Any = None,
                        token_types: Optional[Any] = None) -> Any:
  """Runs the layers and reduces each layer's linear-layer inputs inside the layer scan, never keeping them.

  For each layer ``l`` the layer's :class:`BlockInputs` ``I_l`` (each ``[batch, seq, features]``, padded positions
  included) are passed to ``reduce(I_l, mask)`` (``mask``: ``bool[batch, seq]``, true on real tokens: a reduction
  over tokens should weight by it), and the results are stacked along a leading layer axis; only ``reduce``'s
  outputs outlive the layer.

  Args:
    params: flat HF params or :class:`BertWeights`.
    config: the HF ``config.json`` dict.
    tokens: ``int32[batch, seq]``.
    reduce: ``(BlockInputs, mask) -> pytree of arrays``, traced under ``jit``; a module-level function (it is a
      static argument, so one compiled program per function and token shape).
    mask: ``[batch, seq]`` attention mask (1 = token, 0 = padding); all ones if omitted.
    token_types: ``int32[batch, seq]`` segment ids; zeros if omitted.

  Returns:
    ``reduce``'s pytree with each leaf stacked to ``[num_layers, ...]``.

  Example:
    >>> count = lambda inputs, mask: jnp.sum(mask)                                        # doctest: +SKIP
    >>> reduce_block_inputs(model.params, model.layout.config, tokens, count, mask).shape  # doctest: +SKIP
    (6,)
  """
  dims = BertDims.from_config(config)
  weights = params if isinstance(params, BertWeights) else prepare_bert(params, config)
  return _reduce_inputs(weights, *_inputs(tokens, mask, token_types, dims), dims, reduce)


# ---------------------------------------------------------------------------------------------------------------
# One layer at a time (sequential calibration: the layers are run one by one as they are compressed).


def layer_params(params: Mapping[str, Any], config: Mapping[str, Any], layer: int) -> dict[str, jax.Array]:
  """Layer ``layer``'s tensors as the scanned forward's per-layer slice (``{field: array}``, float32, checked)."""
  dims = BertDims.from_config(config)
  pre = "bert." if any(n.startswith("bert.encoder.") for n in params) else ""  # (the layer's tensors alone will do)
  h, f = dims.hidden, dims.intermediate
  shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h), "up": (f, h), "down": (h, f), "up_bias": (f,)}
  out = {}
  for field, suffix in _LAYER_TENSORS.items():
    name, shape = f"{pre}encoder.layer.{layer}.{suffix}", shapes.get(field, (h,))
    if name not in params:
      raise ModelLoadError(f"BERT params: missing tensor {name!r} (expected shape {shape})")
    array = np.asarray(params[name], dtype=np.float32)
    if array.shape != shape:
      raise ShapeError(f"BERT params: tensor {name!r} has shape {array.shape}; expected {shape}")
    out[field] = jnp.asarray(array)
  return out


def layer_names(params: Mapping[str, Any], config: Mapping[str, Any], layer: int) -> dict[str, str]:
  """``{field: HF name}`` of layer ``layer``'s tensors (the fields of :func:`layer_params`)."""
  pre = "bert." if any(n.startswith("bert.encoder.") for n in params) else ""
  return {field: f"{pre}encoder.layer.{layer}.{suffix}" for field, suffix in _LAYER_TENSORS.items()}


def embed(params: Mapping[str, Any], config: Mapping[str, Any], tokens: Any, mask: Any = None,
          token_types: Optional[Any] = None) -> jax.Array:
  """The layers' input: word + position + token-type embeddings, LayerNorm-ed; ``float32[batch, seq, hidden]``."""
  dims = BertDims.from_config(config)
  pre = _prefix(params)
  get = lambda n: jnp.asarray(np.asarray(params[pre + n], np.float32))
  weights = BertWeights(word=get("embeddings.word_embeddings.weight"), position=get("embeddings.position_embeddings.weight"),
                        token_type=get("embeddings.token_type_embeddings.weight"), emb_ln=get("embeddings.LayerNorm.weight"),
                        emb_ln_bias=get("embeddings.LayerNorm.bias"), layers={})
  tokens, _, token_types = _inputs(tokens, mask, token_types, dims)
  return _embed(weights, tokens, token_types, dims)


@functools.partial(jax.jit, static_argnames=("dims", "reduce"))
def _layer_step(x, p, mask, dims: BertDims, reduce):
  out, inputs = _layer_and_inputs(x, p, mask, dims)
  return out, (reduce(inputs, mask) if reduce is not None else None)


def block_step(p: dict[str, jax.Array], config: Mapping[str, Any], x: jax.Array, reduce=None,
               mask: Any = None) -> tuple[jax.Array, Any]:
  """One layer on ``x`` (``mask``: ``[batch, seq]``, 1 = token): its output and, when ``reduce`` is given,
  ``reduce(BlockInputs, mask)`` of its linear layers' inputs."""
  mask = jnp.ones(x.shape[:2], bool) if mask is None else jnp.asarray(mask) != 0
  return _layer_step(x, p, mask, BertDims.from_config(config), reduce)
