"""Causal decoder LMs in pure JAX, written once over :mod:`macjax.load.architectures` with per-family options.

One block, for every decoder family (LLaMA / Mistral / SmolLM, Qwen2/2.5/3, Gemma 2/3, Phi-3, GPT-2, Mixtral,
Qwen2-MoE):

.. math::

  x \\leftarrow x + N_{pa}\\big(W_o\\,\\mathrm{Attn}(\\mathrm{pos}(W_q h), \\mathrm{pos}(W_k h), W_v h)\\big),\\
    h = N_a(x) \\\\
  x \\leftarrow x + N_{pm}\\big(\\mathrm{MLP}(h)\\big),\\ h = N_m(x)

with the family's options (:class:`DecoderOptions`, read from ``config.json``):

* norms :math:`N`: RMSNorm :math:`g \\odot x/\\sqrt{\\overline{x^2}+\\epsilon}` (Gemma: :math:`(1+g)`), or LayerNorm
  with a bias (GPT-2); Gemma's *sandwich* norms :math:`N_{pa}, N_{pm}` after each sub-block (identity elsewhere);
* projections: separate q/k/v or one fused ``qkv`` (Phi-3, GPT-2 ``c_attn``), with biases where the checkpoint has
  them (Qwen2, GPT-2); QK-norm on each head (Qwen3, Gemma 3);
* positions: RoPE in Hugging Face's *rotate_half* convention (``default``, ``linear`` or ``llama3`` frequencies;
  a partial rotary dimension for Phi-3; Gemma 3's local base on sliding layers), or learned (GPT-2);
* attention: grouped-query, causal, optionally a sliding window per layer (Mistral, Gemma, Qwen2 ``layer_types``),
  scale :math:`d^{-1/2}` or Gemma's ``query_pre_attn_scalar^{-1/2}``, Gemma 2's logit soft-capping
  :math:`c\\tanh(z/c)`;
* MLP: gated :math:`W_d(\\sigma(W_g h)\\odot W_u h)` (SiLU, or tanh-GELU for Gemma), fused ``gate_up`` (Phi-3), plain
  :math:`W_d\\,\\mathrm{GELU}(W_u h + b)` (GPT-2), or a mixture of experts: router softmax, top-k, each token through
  its experts weighted by the (renormalised, for Mixtral) routing weights, plus Qwen2-MoE's sigmoid-gated shared
  expert. Experts are computed densely (every token through every expert, weights zero where not routed): exact,
  and fine at evaluation sizes;
* embeddings scaled by :math:`\\sqrt{H}` (Gemma); final norm; LM head (tied or not), Gemma 2's final soft-capping.

The blocks are stacked along a leading layer axis once (:func:`prepare`) and run with ``jax.lax.scan``; per-layer
differences (sliding or full attention) are scanned flags, so one block is compiled whatever the depth.

Example:
  >>> weights = prepare(model.params, model.layout.config)          # doctest: +SKIP
  >>> z = logits(weights, model.layout.config, tokens)               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError, ModelLoadError, NonFiniteError, ShapeError
from macjax.load import architectures, families


@dataclasses.dataclass(frozen=True)
class DecoderOptions:
  """The static (hashable) shape and options of a decoder, read from its HF config (module docstring)."""

  family: str
  hidden: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  vocab: int
  norm: str                       # "rms" | "layer"
  norm_eps: float
  norm_offset: float              # 1.0 for Gemma's (1 + g)
  act: str                        # "silu" | "gelu_tanh" | "gelu"
  positions: str                  # "rope" | "learned"
  inv_freq: tuple[float, ...]     # RoPE frequencies (global layers)
  local_inv_freq: tuple[float, ...]  # RoPE frequencies of sliding layers (Gemma 3), else = inv_freq
  rotary_dim: int
  attn_divisor: float            # scores are divided by it: √head_dim, or √query_pre_attn_scalar (Gemma)
  attn_softcap: float | None
  final_softcap: float | None
  embed_scale: float | None
  sliding_window: int | None
  sliding: tuple[bool, ...]       # per layer
  num_experts: int = 0
  top_k: int = 0
  norm_topk: bool = False


def _rope_params(config: Mapping[str, Any], layer_type: str | None) -> dict:
  rope = config.get("rope_parameters") or {}
  if layer_type is not None and isinstance(rope.get(layer_type), Mapping):
    rope = rope[layer_type]
  merged = dict(rope)
  scaling = config.get("rope_scaling") or {}
  if scaling and not merged.get("rope_type"):
    merged.update(scaling)
  if "rope_theta" not in merged and "rope_theta" in config:
    merged["rope_theta"] = config["rope_theta"]
  return merged


def _inv_freq(rope: Mapping[str, Any], rotary_dim: int, family: str) -> tuple[float, ...]:
  """RoPE frequencies of HF's ``default``, ``linear`` and ``llama3`` rope types."""
  theta = float(rope.get("rope_theta", 10000.0))
  kind = rope.get("rope_type", rope.get("type", "default")) or "default"
  inv = 1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))
  needs = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                             "original_max_position_embeddings")}.get(kind, ())
  missing = [k for k in needs if k not in rope]
  if missing:
    raise ConfigError(f"{family} config: rope type {kind!r} needs {missing} in its rope parameters")
  if kind == "linear":
    inv = inv / float(rope["factor"])
  elif kind == "llama3":
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old = float(rope["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    inv = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
  elif kind != "default":
    raise ConfigError(f"{family} config: rope type {kind!r} is not supported; expected 'default', 'linear' or "
                      "'llama3'")
  return tuple(float(x) for x in inv.astype(np.float32))


def _layer_types(config: Mapping[str, Any], n: int) -> tuple[str, ...]:
  types = config.get("layer_types")
  if types is not None:
    if len(types) != n:
      raise ConfigError(f"decoder config: layer_types has {len(types)} entries for {n} layers")
    return tuple(types)
  window = config.get("sliding_window")
  if window and config.get("use_sliding_window", True):  # Mistral, Mixtral, Phi-3: every layer
    return ("sliding_attention",) * n
  return ("full_attention",) * n


def _check_unsupported(family: str, config: Mapping[str, Any]) -> None:
  if family == "gpt2":
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
      if config.get(key):
        raise ConfigError(f"gpt2 config: {key}=True is not supported; expected False")
  if family == "llama" and config.get("mlp_bias"):
    raise ConfigError("llama config: mlp_bias=True is not supported; expected False")


def _act_of(family: str, config: Mapping[str, Any]) -> str:
  name = config.get("hidden_activation") or config.get("hidden_act") or config.get("activation_function") or "silu"
  acts = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
          "gelu": "gelu"}
  if name not in acts:
    raise ConfigError(f"{family} config: activation {name!r} is not supported; expected one of {sorted(acts)}")
  return acts[name]


@functools.lru_cache(maxsize=64)
def _options(config_json: str) -> DecoderOptions:
  config = json.loads(config_json)
  try:
    return _read_options(config)
  except ModelLoadError as e:  # a bad or missing config value: the config's fault, not a file's
    raise ConfigError(str(e)) from e


def _read_options(config: dict) -> DecoderOptions:
  arch = architectures.architecture_of(config, f"{config.get('model_type')} config")
  if arch.kind != "decoder":
    raise ConfigError(f"decoder: model family {arch.name!r} is not a causal decoder")
  family = arch.name
  _check_unsupported(family, config)
  d = architectures.dims_of(arch, config, f"{family} config")
  hd = d["HD"]
  gemma = family in ("gemma2", "gemma3")
  partial = float(_rope_params(config, None).get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
  rotary = int(hd * partial)
  if rotary % 2:
    raise ConfigError(f"{family} config: rotary dimension {rotary} must be even")
  types = _layer_types(config, d["L"])
  if family == "gpt2":
    inv = local = ()
  else:
    inv = _inv_freq(_rope_params(config, "full_attention"), rotary, family)
    local = _inv_freq(_rope_params(config, "sliding_attention"), rotary, family) if family == "gemma3" else inv
  scalar = config.get("query_pre_attn_scalar") if gemma else None
  experts = d.get("E", 0) if arch.experts else 0
  return DecoderOptions(
      family=family, hidden=d["H"], num_layers=d["L"], num_heads=d["heads"], num_kv_heads=d["kv_heads"],
      head_dim=hd, vocab=d["V"], norm="layer" if family == "gpt2" else "rms",
      norm_eps=float(config.get("layer_norm_epsilon") or config.get("rms_norm_eps") or 1e-6),
      norm_offset=1.0 if gemma else 0.0, act=_act_of(family, config),
      positions="learned" if family == "gpt2" else "rope", inv_freq=inv, local_inv_freq=local, rotary_dim=rotary,
      attn_divisor=float(np.sqrt(float(scalar) if scalar else hd)),
      attn_softcap=config.get("attn_logit_softcapping") if gemma else None,
      final_softcap=config.get("final_logit_softcapping") if gemma else None,
      embed_scale=float(np.float32(d["H"] ** 0.5)) if gemma else None,
      sliding_window=int(config["sliding_window"]) if "sliding_attention" in types else None,
      sliding=tuple(t == "sliding_attention" for t in types), num_experts=experts,
      top_k=int(config.get("num_experts_per_tok") or 0) if experts else 0,
      norm_topk=family == "mixtral" or bool(config.get("norm_topk_prob")))


def options(config: Mapping[str, Any]) -> DecoderOptions:
  """The :class:`DecoderOptions` of a HF config (cached).

  Raises:
    ConfigError: the config asks for something this forward does not compute (named), or is not a decoder's.
    ModelLoadError: a key the shapes need is missing or invalid.
  """
  return _options(json.dumps(config, sort_keys=True, default=str))


class DecoderWeights(NamedTuple):
  """A decoder's params rearranged for the scanned forward (a pytree of float32 arrays).

  Attributes:
    globals: ``{field: array}`` outside the blocks (``embed``, ``positions``, ``final_norm[_bias]``).
    blocks: ``{field: [num_layers, ...]}`` block tensors (``experts.{field}``: ``[num_layers, experts, ...]``).
    lm_head: ``[vocab, hidden]`` (the embeddings when tied).
  """

  globals: dict[str, jax.Array]
  blocks: dict[str, jax.Array]
  lm_head: jax.Array


def _spec(config: Mapping[str, Any], params: Mapping[str, Any]) -> families.FamilySpec:
  try:
    return families.family_spec(config, "decoder params", names=frozenset(params))
  except ModelLoadError as e:
    raise ConfigError(str(e)) from e


def _get(params: Mapping[str, Any], name: str, shape: tuple[int, ...], check_finite: bool) -> np.ndarray:
  if name not in params:
    raise ModelLoadError(f"decoder params: missing tensor {name!r} (expected shape {shape})")
  array = np.asarray(params[name], dtype=np.float32)
  if array.shape != tuple(shape):
    raise ShapeError(f"decoder params: tensor {name!r} has shape {array.shape}; expected {tuple(shape)}")
  if check_finite and not np.all(np.isfinite(array)):
    raise NonFiniteError(f"decoder params: tensor {name!r} {array.shape} holds NaN or infinity")
  return array


def _layer_fields(spec: families.FamilySpec, layer: int) -> dict[str, list]:
  """``{field: [(name, shape, expert)]}`` of block ``layer``'s tensors."""
  out: dict[str, list] = {}
  shapes = {**spec.optional, **spec.required}
  for name, (field, lay, expert) in spec.fields.items():
    if lay == layer:
      key = field if expert is None else f"experts.{field}"
      out.setdefault(key, []).append((name, shapes[name], expert))
  return out


def _block_arrays(params, spec, layer: int, check_finite: bool) -> dict[str, np.ndarray]:
  out = {}
  for field, entries in _layer_fields(spec, layer).items():
    arrays = [_get(params, n, s, check_finite) for n, s, _ in sorted(entries, key=lambda e: e[2] or 0)]
    out[field] = np.stack(arrays) if field.startswith("experts.") else arrays[0]
  return out


def prepare(params: Mapping[str, Any], config: Mapping[str, Any], *, check_finite: bool = True) -> DecoderWeights:
  """Checks the flat HF params against the config and stacks the blocks along a layer axis.

  Raises:
    ModelLoadError: a tensor is missing (or the LM head while the config says untied).
    ShapeError: a tensor's shape disagrees with the config. NonFiniteError: NaN or infinity.
    ConfigError: an unsupported option (see :func:`options`).
  """
  opts, spec = options(config), _spec(config, params)
  per_layer = [_block_arrays(params, spec, layer, check_finite) for layer in range(opts.num_layers)]
  blocks = {f: jnp.asarray(np.stack([p[f] for p in per_layer])) for f in per_layer[0]}
  glob = {}
  shapes = {**spec.optional, **spec.required}
  for name, (field, layer, _) in spec.fields.items():
    if layer is None and field != "lm_head":
      glob[field] = jnp.asarray(_get(params, name, shapes[name], check_finite))
  head = next(n for n, (f, l, _) in spec.fields.items() if f == "lm_head")
  if head in params:
    lm_head = jnp.asarray(_get(params, head, shapes[head], check_finite))
  elif head in spec.required:
    raise ModelLoadError(f"decoder params: no {head!r} while the config says tie_word_embeddings=False")
  else:
    lm_head = glob["embed"]
  return DecoderWeights(globals=glob, blocks=blocks, lm_head=lm_head)


# --------------------------------------------------------------------------------------------------------------
# The block.


def _norm(x, p, name, opts: DecoderOptions):
  if name not in p:
    return x
  if opts.norm == "layer":
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + opts.norm_eps) * p[name] + p[name + "_bias"]
  variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return (opts.norm_offset + p[name]) * (x * jax.lax.rsqrt(variance + opts.norm_eps))


def _linear(x, p, name):
  y = jnp.einsum("...i,oi->...o", x, p[name])
  return y + p[name + "_bias"] if name + "_bias" in p else y


def _act(x, opts: DecoderOptions):
  if opts.act == "silu":
    return jax.nn.silu(x)
  return jax.nn.gelu(x, approximate=opts.act == "gelu_tanh")


def inv_freq(rope: Mapping[str, Any], rotary_dim: int) -> tuple[float, ...]:
  """RoPE frequencies of HF rope parameters (``rope_type`` ``default``, ``linear`` or ``llama3``)."""
  return _inv_freq(rope, rotary_dim, "rope")


def default_inv_freq(theta: float, rotary_dim: int) -> tuple[float, ...]:
  """HF's default RoPE frequencies :math:`\theta^{-2j/d}`, :math:`j < d/2`."""
  return _inv_freq({"rope_theta": theta}, rotary_dim, "rope")


def rope_tables(seq_len: int, inv_freq: tuple[float, ...]) -> tuple[jax.Array, jax.Array]:
  """``cos``/``sin`` tables ``[seq_len, rotary_dim]`` (the *rotate_half* convention: halves repeat)."""
  angles = np.arange(seq_len, dtype=np.float32)[:, None] * np.asarray(inv_freq, np.float32)[None, :]
  angles = np.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin, rotary_dim: int | None = None):
  r""":math:`x\cos\phi + \mathrm{rotate\_half}(x)\sin\phi` on the first ``rotary_dim`` channels (all by
  default) of ``x[..., seq, heads, d]``, ``rotate_half([a, b]) = [-b, a]``; the rest pass through (Phi-3's partial
  rotary)."""
  rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
  rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
  half = rotary_dim // 2
  rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
  return jnp.concatenate([rot * cos[:, None, :] + rotated * sin[:, None, :], rest], axis=-1)


class BlockInputs(NamedTuple):
  """The inputs of a block's linear layers (what multiplies ``Wᵀ``), each ``[batch, seq, features]``.

  Attributes:
    attn: input of q, k, v (or the fused qkv).
    context: the attention context, heads concatenated: input of o.
    mlp: input of gate, up (or gate_up), the router and a shared expert.
    act: input of down (dense MLPs; zeros of width 1 in a mixture of experts).
    routed: ``[experts, batch, seq]`` 1 where a token is routed to an expert (a mixture of experts), else None.
    expert_act: ``[experts, batch, seq, expert_intermediate]`` input of each expert's down, else None.
    shared_act: input of a shared expert's down (Qwen2-MoE), else None.
  """

  attn: jax.Array
  context: jax.Array
  mlp: jax.Array
  act: jax.Array
  routed: Any = None
  expert_act: Any = None
  shared_act: Any = None


def _qkv(h, p, opts: DecoderOptions):
  if "qkv" in p:
    qkv = _linear(h, p, "qkv")
    qo, kvo = opts.num_heads * opts.head_dim, opts.num_kv_heads * opts.head_dim
    return qkv[..., :qo], qkv[..., qo:qo + kvo], qkv[..., qo + kvo:]
  return _linear(h, p, "q"), _linear(h, p, "k"), _linear(h, p, "v")


def _attention(h, p, rope, sliding, opts: DecoderOptions):
  batch, seq, _ = h.shape
  q, k, v = _qkv(h, p, opts)
  q = q.reshape(batch, seq, opts.num_heads, opts.head_dim)
  k = k.reshape(batch, seq, opts.num_kv_heads, opts.head_dim)
  v = v.reshape(batch, seq, opts.num_kv_heads, opts.head_dim)
  if "q_norm" in p:
    q, k = _norm(q, p, "q_norm", opts), _norm(k, p, "k_norm", opts)
  if opts.positions == "rope":
    cos, sin = rope
    q, k = apply_rope(q, cos, sin, opts.rotary_dim), apply_rope(k, cos, sin, opts.rotary_dim)
  groups = opts.num_heads // opts.num_kv_heads
  q = q.reshape(batch, seq, opts.num_kv_heads, groups, opts.head_dim)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k) / np.float32(opts.attn_divisor)
  if opts.attn_softcap:
    scores = opts.attn_softcap * jnp.tanh(scores / opts.attn_softcap)
  i, j = np.arange(seq)[:, None], np.arange(seq)[None, :]
  visible = jnp.asarray(j <= i)
  if opts.sliding_window:
    visible = visible & (~sliding | jnp.asarray(i - j < opts.sliding_window))
  scores = jnp.where(visible, scores, jnp.finfo(scores.dtype).min)
  weights = jax.nn.softmax(scores, axis=-1)
  context = jnp.einsum("bkgqs,bskd->bqkgd", weights, v).reshape(batch, seq, opts.num_heads * opts.head_dim)
  return _linear(context, p, "o"), context


def _dense_mlp(h, p, opts: DecoderOptions):
  if "gate_up" in p:
    gu = _linear(h, p, "gate_up")
    half = gu.shape[-1] // 2
    act = _act(gu[..., :half], opts) * gu[..., half:]
  elif "gate" in p:
    act = _act(_linear(h, p, "gate"), opts) * _linear(h, p, "up")
  else:
    act = _act(_linear(h, p, "up"), opts)
  return _linear(act, p, "down"), act


def _moe_mlp(h, p, opts: DecoderOptions):
  probs = jax.nn.softmax(jnp.einsum("bsi,ei->bse", h, p["router"]), axis=-1)
  top, idx = jax.lax.top_k(probs, opts.top_k)
  if opts.norm_topk:
    top = top / jnp.sum(top, axis=-1, keepdims=True)
  weights = jnp.sum(jax.nn.one_hot(idx, opts.num_experts, dtype=h.dtype) * top[..., None], axis=-2)  # [b, s, E]
  gate = jnp.einsum("bsi,eoi->ebso", h, p["experts.gate"])
  up = jnp.einsum("bsi,eoi->ebso", h, p["experts.up"])
  expert_act = _act(gate, opts) * up
  out = jnp.einsum("ebso,eio->bsi", expert_act * jnp.moveaxis(weights, -1, 0)[..., None], p["experts.down"])
  routed = jnp.moveaxis(weights > 0, -1, 0).astype(h.dtype)
  shared_act = None
  if "shared_gate" in p:
    shared_act = _act(_linear(h, p, "shared_gate"), opts) * _linear(h, p, "shared_up")
    shared = jnp.einsum("bsi,oi->bso", shared_act, p["shared_down"])
    out = out + jax.nn.sigmoid(jnp.einsum("bsi,oi->bso", h, p["shared_expert_gate"])) * shared
  return out, routed, expert_act, shared_act


def _block_and_inputs(x, p, rope, sliding, opts: DecoderOptions) -> tuple[jax.Array, BlockInputs]:
  h = _norm(x, p, "attn_norm", opts)
  attn, context = _attention(h, p, rope, sliding, opts)
  x = x + _norm(attn, p, "post_attn_norm", opts)
  h2 = _norm(x, p, "mlp_norm", opts)
  if opts.num_experts:
    mlp, routed, expert_act, shared_act = _moe_mlp(h2, p, opts)
    inputs = BlockInputs(h, context, h2, jnp.zeros(h2.shape[:2] + (1,), h2.dtype), routed, expert_act, shared_act)
  else:
    mlp, act = _dense_mlp(h2, p, opts)
    inputs = BlockInputs(h, context, h2, act)
  return x + _norm(mlp, p, "post_mlp_norm", opts), inputs


def _ropes(seq: int, opts: DecoderOptions):
  if opts.positions != "rope":
    return None, None
  return rope_tables(seq, opts.inv_freq), rope_tables(seq, opts.local_inv_freq)


def _select_rope(ropes, sliding):
  full, local = ropes
  if full is None:
    return None
  return tuple(jnp.where(sliding, lo, fu) for fu, lo in zip(full, local))


def _embed(glob, tokens, opts: DecoderOptions):
  x = jnp.take(glob["embed"], tokens, axis=0)
  if opts.embed_scale:
    x = x * np.float32(opts.embed_scale)
  if opts.positions == "learned":
    x = x + glob["positions"][: tokens.shape[1]][None]
  return x


def _final(x, glob, opts: DecoderOptions):
  return _norm(x, {"final_norm": glob["final_norm"], "final_norm_bias": glob.get("final_norm_bias")}, "final_norm",
               opts)


@functools.partial(jax.jit, static_argnames=("opts", "reduce"))
def _run(weights: DecoderWeights, tokens: jax.Array, opts: DecoderOptions, reduce=None):
  ropes = _ropes(tokens.shape[1], opts)
  x = _embed(weights.globals, tokens, opts)
  mask = jnp.ones(tokens.shape, dtype=bool)

  def step(x, scanned):
    p, sliding = scanned
    x, inputs = _block_and_inputs(x, p, _select_rope(ropes, sliding), sliding, opts)
    return x, (reduce(inputs, mask) if reduce is not None else None)

  x, per_layer = jax.lax.scan(step, x, (weights.blocks, jnp.asarray(opts.sliding)))
  return _final(x, weights.globals, opts), per_layer


def softcap(z: jax.Array, cap: float | None) -> jax.Array:
  """Gemma 2's final logit soft-capping :math:`c\\tanh(z/c)` (identity when ``cap`` is None)."""
  return z if not cap else cap * jnp.tanh(z / cap)


ParamsLike = Union[Mapping[str, Any], DecoderWeights]


def _weights(params: ParamsLike, config: Mapping[str, Any]) -> DecoderWeights:
  return params if isinstance(params, DecoderWeights) else prepare(params, config)


def check_tokens(tokens: Any, vocab: int) -> jax.Array:
  """``tokens`` as ``int32[batch, seq]`` ids in ``[0, vocab)``, else :class:`ShapeError` (traced tokens, inside
  ``jax.jit``, are checked for shape and dtype only: their values are not known there)."""
  if isinstance(tokens, jax.core.Tracer):
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ShapeError(f"decoder tokens: got {tokens.dtype}{list(tokens.shape)}; expected int32[batch, seq]")
    return tokens.astype(jnp.int32)
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
    raise ShapeError(f"decoder tokens: got {tokens.dtype}{list(tokens.shape)}; expected int32[batch, seq]")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
    raise ShapeError(f"decoder tokens: ids in [{tokens.min()}, {tokens.max()}]; expected ids in [0, {vocab})")
  return jnp.asarray(tokens, dtype=jnp.int32)


def _check_length(tokens: jax.Array, opts: DecoderOptions, config: Mapping[str, Any]) -> None:
  if opts.positions == "learned" and tokens.shape[1] > int(config.get("n_positions") or 0):
    raise ShapeError(f"decoder tokens: {tokens.shape[1]} positions; this {opts.family} model has "
                     f"{config.get('n_positions')} learned positions")


def hidden_states(params: ParamsLike, config: Mapping[str, Any], tokens: Any) -> jax.Array:
  """Final hidden states (after the final norm), ``float32[batch, seq, hidden]``: what the HF base model's
  ``last_hidden_state`` is.

  Args:
    params: the flat HF ``{name: array}`` dict, or :class:`DecoderWeights` from :func:`prepare` (prepare once
      when calling many times).
    config: the HF ``config.json`` dict.
    tokens: ``int32[batch, seq]`` token ids.
  """
  opts = options(config)
  tokens = check_tokens(tokens, opts.vocab)
  _check_length(tokens, opts, config)
  return _run(_weights(params, config), tokens, opts)[0]


def hidden_states_and_inputs(params: ParamsLike, config: Mapping[str, Any], tokens: Any,
                             reduce) -> tuple[jax.Array, Any]:
  """:func:`hidden_states` and, per layer, ``reduce(BlockInputs, mask)`` stacked to ``[num_layers, ...]`` (as
  :func:`reduce_block_inputs`), from one forward: what a gradient through the model that also needs its linear
  layers' inputs takes (:mod:`macjax.calibrate.fisher`)."""
  opts = options(config)
  tokens = check_tokens(tokens, opts.vocab)
  _check_length(tokens, opts, config)
  return _run(_weights(params, config), tokens, opts, reduce)


def logits(params: ParamsLike, config: Mapping[str, Any], tokens: Any) -> jax.Array:
  """Next-token logits ``float32[batch, seq, vocab]`` (soft-capped for Gemma 2). Holds ``batch·seq·vocab`` floats:
  for long inputs take :func:`hidden_states` and project in chunks (what :class:`macjax.evaluate.Evaluator` does)."""
  weights = _weights(params, config)
  return project(weights, config, hidden_states(weights, config, tokens))


def project(weights: DecoderWeights, config: Mapping[str, Any], hidden: jax.Array) -> jax.Array:
  """Final hidden states ``[..., hidden]`` → next-token logits ``[..., vocab]`` (the LM head, soft-capped for
  Gemma 2); traceable."""
  return softcap(jnp.einsum("...i,vi->...v", hidden, weights.lm_head), options(config).final_softcap)


def reduce_block_inputs(params: ParamsLike, config: Mapping[str, Any], tokens: Any, reduce) -> Any:
  """Runs the blocks and reduces each block's :class:`BlockInputs` inside the layer scan, never keeping them:
  ``reduce(inputs, mask)`` (``mask`` all true: every token counts) per layer, stacked to ``[num_layers, ...]``.
  ``reduce`` is a static argument (a module-level function: one compiled program per function and shape)."""
  opts = options(config)
  tokens = check_tokens(tokens, opts.vocab)
  _check_length(tokens, opts, config)
  return _run(_weights(params, config), tokens, opts, reduce)[1]


# --------------------------------------------------------------------------------------------------------------
# One block at a time (sequential calibration: the blocks are run one by one as they are compressed).


def layer_params(params: Mapping[str, Any], config: Mapping[str, Any], layer: int) -> dict[str, jax.Array]:
  """Block ``layer``'s tensors as the scanned forward's per-layer slice (``{field: array}``, float32, checked)."""
  options(config)
  spec = _spec(config, params)
  return {f: jnp.asarray(a) for f, a in _block_arrays(params, spec, layer, True).items()}


def layer_names(params: Mapping[str, Any], config: Mapping[str, Any], layer: int) -> dict[str, str]:
  """``{field: HF name}`` of block ``layer``'s tensors outside the experts (the fields of :func:`layer_params`)."""
  options(config)
  return {f: entries[0][0] for f, entries in _layer_fields(_spec(config, params), layer).items()
          if not f.startswith("experts.")}


def embed(params: Mapping[str, Any], config: Mapping[str, Any], tokens: Any) -> jax.Array:
  """The blocks' input ``x_0`` (scaled embeddings, plus learned positions): ``float32[batch, seq, hidden]``."""
  opts, spec = options(config), _spec(config, params)
  shapes = {**spec.optional, **spec.required}
  glob = {f: jnp.asarray(_get(params, n, shapes[n], True)) for n, (f, l, _) in spec.fields.items()
          if l is None and f in ("embed", "positions")}
  tokens = check_tokens(tokens, opts.vocab)
  _check_length(tokens, opts, config)
  return _embed(glob, tokens, opts)


@functools.partial(jax.jit, static_argnames=("opts", "reduce"))
def _layer_step(x, p, sliding, opts: DecoderOptions, reduce):
  out, inputs = _block_and_inputs(x, p, _select_rope(_ropes(x.shape[1], opts), sliding), sliding, opts)
  return out, (reduce(inputs, jnp.ones(x.shape[:2], dtype=bool)) if reduce is not None else None)


def block_step(p: dict[str, jax.Array], config: Mapping[str, Any], x: jax.Array, reduce=None, *,
               layer: int = 0) -> tuple[jax.Array, Any]:
  """Block ``layer`` (its params ``p`` from :func:`layer_params`) on ``x``: its output and, when ``reduce`` is
  given, ``reduce(BlockInputs, mask)`` of its linear layers' inputs."""
  opts = options(config)
  return _layer_step(x, p, jnp.asarray(opts.sliding[layer]), opts, reduce)
