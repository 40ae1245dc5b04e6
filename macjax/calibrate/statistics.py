"""Second moments and absolute maxima of the inputs of every transformer-block matrix, on calibration text.

For a block matrix ``W: (out, in)`` applied to token rows ``X: [n, in]`` (``Y = X Wᵀ``), this module accumulates

.. math::

  S = \\frac{1}{n} X^\\top X \\in \\mathbb{R}^{in \\times in}, \\qquad
  a_j = \\max_t |X_{tj}|, \\qquad n,

what GPTQ (``H = XᵀX = n S``), activation-aware PCA (the covariance ``S``, uncentred), SmoothQuant scaling
(``a``) and sensitivity-driven bit allocation (``diag S``, ``tr S``) consume. The inputs are those of the JAX
forwards of :mod:`macjax.evaluate` (``reduce_block_inputs``): per layer, four *sites*

==========  ==========================================  ==========================================
site        LLaMA                                       BERT
==========  ==========================================  ==========================================
``attn``    ``RMS(x)·g₁`` → q, k, v                     layer input ``x`` → query, key, value (q, k, v)
``context`` attention context, heads concatenated → o   attention context → attention.output.dense (o)
``mlp``     ``RMS(x)·g₂`` → gate, up                    post-attention LayerNorm → intermediate.dense (up)
``act``     ``SiLU(W_gate h)·(W_up h)`` → down          ``GELU(W_in x + b_in)`` → output.dense (down)
==========  ==========================================  ==========================================

Decoders whose matrices are fused (Phi-3's ``qkv``/``gate_up``, GPT-2's ``c_attn``/``c_fc``) read the same sites; a
router reads ``mlp``. In a mixture of experts each expert's gate/up read ``expert_mlp`` and its down ``expert_act``:
the rows of the tokens routed to that expert only (``n`` is their number; an expert no calibration token reached
gets an identity second moment at the scale of its layer's other experts), and Qwen2-MoE's shared expert's down
reads ``shared_act``.

The sums ``XᵀX`` are formed inside the ``jax.lax.scan`` over layers, one batch at a time, emitted as per-layer scan
outputs and added on the host in float64; activations are never kept. Padded positions (BERT) are masked out
of every statistic and of ``n``. Text comes from the *calibration* split of :mod:`macjax.evaluate.text`, disjoint
from the held-out split that :mod:`macjax.evaluate` scores.

Example:
  >>> from macjax.load import load_model                                   # doctest: +SKIP
  >>> model = load_model("minilm-l6")                                      # doctest: +SKIP
  >>> stats = input_statistics(model)                                      # doctest: +SKIP
  >>> s = stats["encoder.layer.0.attention.self.query.weight"]             # doctest: +SKIP
  >>> s.second_moment.shape, s.count                                       # doctest: +SKIP
  ((384, 384), 8439)
  >>> H = hessian(s)          # XᵀX, what macjax.quantize.gptq takes       # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError, NonFiniteError, ShapeError
from macjax.evaluate import bert, decoder, text
from macjax.load import architectures, families

#: Which input site feeds each matrix (by its field in :mod:`macjax.load.architectures`; module docstring).
SITE_OF_FIELD = {"q": "attn", "k": "attn", "v": "attn", "qkv": "attn", "o": "context", "gate": "mlp", "up": "mlp",
                 "gate_up": "mlp", "router": "mlp", "shared_gate": "mlp", "shared_up": "mlp", "down": "act",
                 "shared_down": "shared_act"}
#: The site of an expert's matrix, by field.
EXPERT_SITE_OF_FIELD = {"gate": "expert_mlp", "up": "expert_mlp", "down": "expert_act"}
#: The sites every block has, in the order of the forwards' ``BlockInputs`` fields.
SITES = ("attn", "context", "mlp", "act")

#: Defaults (see :func:`input_statistics` for what they cost).
DEFAULT_N_SEQ = 48
DEFAULT_SEQ_LEN = 256
DEFAULT_N_SENTENCES = 256
DEFAULT_BATCH_SIZE = 8
DEFAULT_SENTENCE_CHUNK = 64


class InputStats(NamedTuple):
  """Statistics of the token rows ``X: [n, in]`` that multiply one matrix (shared by matrices sharing an input).

  Attributes:
    second_moment: ``f32[in, in]``, :math:`S = X^\\top X / n` (uncentred; accumulated in float64, exactly
      symmetric, positive semi-definite up to float32 rounding).
    absmax: ``f32[in]``, :math:`a_j = \\max_t |X_{tj}|` (so :math:`a_j^2 \\ge S_{jj}`).
    count: ``n``, the number of token rows accumulated (padding excluded).
  """

  second_moment: np.ndarray
  absmax: np.ndarray
  count: int


def _moments(x, weight):
  """``(XᵀX, max_t |X_t|, n)`` of rows ``x[..., f]`` weighted by ``weight[...]`` (0 drops a row)."""
  xw = (x * weight[..., None]).reshape(-1, x.shape[-1])
  xtx = jnp.einsum("ti,tj->ij", xw, xw, precision=jax.lax.Precision.HIGHEST)
  return xtx, jnp.max(jnp.abs(xw), axis=0), jnp.sum(weight)


def block_moments(inputs, mask):
  """Per site: ``(XᵀX, max_t |X_t|, n)`` of one batch with padded rows zeroed (traced inside the layer scan);
  expert sites carry a leading expert axis."""
  weight = mask.astype(jnp.float32)
  out = {site: _moments(getattr(inputs, site), weight) for site in SITES}
  routed = getattr(inputs, "routed", None)
  if routed is not None:
    per_expert = routed * weight[None]
    out["expert_mlp"] = jax.vmap(lambda w: _moments(inputs.mlp, w))(per_expert)
    out["expert_act"] = jax.vmap(_moments)(inputs.expert_act, per_expert)
    if inputs.shared_act is not None:
      out["shared_act"] = _moments(inputs.shared_act, weight)
  return out


def _finish(site: str, layer: int, total: np.ndarray, amax: np.ndarray, n: float) -> InputStats:
  """One site's :class:`InputStats` from its float64 sums (symmetrised, divided by ``n``)."""
  second = ((total + total.T) * (0.5 / max(n, 1.0))).astype(np.float32)
  amax = amax.astype(np.float32)
  if not (np.all(np.isfinite(second)) and np.all(np.isfinite(amax))):
    raise NonFiniteError(f"calibrate: input statistics of site {site!r} in layer {layer} (second moment "
                         f"{second.shape}) hold NaN or infinity; expected finite activations")
  return InputStats(second_moment=second, absmax=amax, count=int(round(n)))


def finish_layer(site: str, layer: int, total: np.ndarray, amax: np.ndarray, n) -> Any:
  """A layer's statistics of ``site``: an :class:`InputStats`, or a list of them per expert (expert sites)."""
  if np.ndim(n) == 0:
    return _finish(site, layer, total, amax, float(n))
  return [_finish(site, layer, t, a, float(c)) for t, a, c in zip(total, amax, n)]


def accumulate_statistics(family: str, params: Any, config: Mapping[str, Any],
                          batches: Iterable[tuple[Any, Optional[Any]]]) -> dict[str, list[InputStats]]:
  """Accumulates per-layer, per-site input statistics over token batches.

  Args:
    family: the layout's family (``"llama"``, ``"bert"`` ...) or kind (``"decoder"``, ``"encoder"``).
    params: flat HF params, or the prepared weights (:func:`~macjax.evaluate.decoder.prepare` /
      :func:`~macjax.evaluate.bert.prepare_bert`).
    config: the HF ``config.json`` dict.
    batches: ``(tokens int32[batch, seq], mask [batch, seq] or None)`` pairs; a ``None`` mask counts every
      token (LLaMA takes no mask: every position of a causal window is a real token).

  Returns:
    ``{site: [InputStats of layer 0, layer 1, ...]}`` for the sites :data:`SITES`.

  Raises:
    ConfigError: unknown family, no batches, or no unmasked token at all.
    ShapeError: bad tokens/mask (from the forwards).
    NonFiniteError: a statistic came out NaN or infinite (the model overflowed on this text).

  Example:
    >>> per_site = accumulate_statistics("decoder", params, config, [(tokens, None)])   # doctest: +SKIP
    >>> per_site["act"][0].second_moment.shape                                         # doctest: +SKIP
    (1536, 1536)
  """
  family = architectures.BY_NAME[family].kind if family in architectures.BY_NAME else family
  if family == "decoder":
    params = params if isinstance(params, decoder.DecoderWeights) else decoder.prepare(params, config)
  elif family == "encoder":
    params = params if isinstance(params, bert.BertWeights) else bert.prepare_bert(params, config)
  else:
    raise ConfigError(f"calibrate: model kind {family!r} is not supported; expected 'decoder' or 'encoder'")
  sums: dict[str, list] = {}
  any_token = False
  for tokens, mask in batches:
    if family == "decoder":
      if mask is not None and not np.all(np.asarray(mask)):
        raise ShapeError("calibrate: a decoder batch came with a mask holding zeros; expected None or all ones "
                         "(causal windows have no padding)")
      per_layer = decoder.reduce_block_inputs(params, config, tokens, block_moments)
    else:
      per_layer = bert.reduce_block_inputs(params, config, tokens, block_moments, mask)
    any_token |= bool(np.asarray(tokens).size if mask is None else np.count_nonzero(np.asarray(mask)))
    for site, (xtx, amax, n) in per_layer.items():
      xtx, amax, n = np.asarray(xtx), np.asarray(amax), np.asarray(n, np.float64)
      if site not in sums:
        sums[site] = [xtx.astype(np.float64), amax.copy(), n]
      else:
        np.add(sums[site][0], xtx, out=sums[site][0])
        np.maximum(sums[site][1], amax, out=sums[site][1])
        sums[site][2] = sums[site][2] + n
      del xtx
  if not sums:
    raise ConfigError("calibrate: no batches given; expected at least one (tokens, mask) pair")
  if not any_token:
    raise ConfigError("calibrate: every token of every batch is masked out; expected some real tokens")
  out: dict[str, list] = {}
  for site in list(sums):
    total, amax, n = sums.pop(site)
    out[site] = [finish_layer(site, layer, total[layer], amax[layer], n[layer]) for layer in range(len(total))]
  return out


def length_buckets(tokens: np.ndarray, mask: np.ndarray, chunk: int, multiple: int = 32):
  """Sentences sorted by length, in chunks of ``chunk`` padded to a multiple of ``multiple`` (few compiled shapes)."""
  lengths = mask.sum(axis=1)
  order = np.argsort(lengths, kind="stable")
  for start in range(0, len(order), chunk):
    idx = order[start:start + chunk]
    width = min(int(-(-lengths[idx].max() // multiple) * multiple), tokens.shape[1])
    yield tokens[idx, :width], mask[idx, :width]


def input_statistics(model, *, n_seq: int = DEFAULT_N_SEQ, seq_len: int = DEFAULT_SEQ_LEN,
                     n_sentences: int = DEFAULT_N_SENTENCES, batch_size: int = DEFAULT_BATCH_SIZE,
                     sentence_chunk: int = DEFAULT_SENTENCE_CHUNK,
                     params: Optional[Mapping[str, Any]] = None) -> dict[str, InputStats]:
  """Input statistics (:class:`InputStats`) of every transformer-block matrix of ``model`` on calibration text.

  LLaMA: ``n_seq`` windows of ``seq_len`` contiguous tokens of the calibration works
  (:func:`macjax.evaluate.text.token_windows`), ``batch_size`` windows per forward; ``n = n_seq · seq_len``.
  BERT: ``n_sentences`` calibration passages (:func:`macjax.evaluate.text.sentences`) with ``[CLS] … [SEP]``,
  sorted by length into chunks of ``sentence_chunk``; ``n`` = their tokens, padding excluded.

  Cost: one forward over the calibration text plus the ``XᵀX`` products (``L · Σ_sites in²`` multiply-adds per
  token), both linear in the number of tokens; ``macjax compress`` reports the calibration's wall time.

  Memory: one batch's per-layer sums in float32 plus their float64 accumulators, ``12 · L · Σ_sites in²`` bytes
  (1.2 GB for SmolLM2, 200 MB for MiniLM), then the float32 results (``4 · L · Σ_sites in²``).

  Args:
    model: a :class:`~macjax.load.layout.Model` (its layout, config and tokenizer files are used).
    n_seq, seq_len: calibration windows (LLaMA).
    n_sentences: calibration passages (BERT).
    batch_size: windows per forward call (LLaMA).
    sentence_chunk: passages per forward call (BERT).
    params: weights to run instead of ``model.params`` (same names and shapes), e.g. after a transform.

  Returns:
    ``{name: InputStats}`` for every name in ``model.layout.matrices``; matrices that share an input (q/k/v;
    gate/up) map to the *same* :class:`InputStats` object.

  Raises:
    ConfigError: bad sizes or family; ShapeError: a matrix's ``in`` dimension disagrees with its site's
    statistics; NonFiniteError: non-finite statistics; ModelLoadError: no tokenizer or text package.

  Example:
    >>> stats = input_statistics(load_model("smollm2-135m"))                       # doctest: +SKIP
    >>> q, k = (f"model.layers.0.self_attn.{r}_proj.weight" for r in "qk")             # doctest: +SKIP
    >>> stats[q] is stats[k], stats[q].second_moment.shape                            # doctest: +SKIP
    (True, (576, 576))
  """
  layout = model.layout
  config = dict(layout.config)
  params = model.params if params is None else params
  if min(n_seq, seq_len, n_sentences, batch_size, sentence_chunk) < 1:
    raise ConfigError(f"calibrate: n_seq={n_seq}, seq_len={seq_len}, n_sentences={n_sentences}, "
                      f"batch_size={batch_size}, sentence_chunk={sentence_chunk}; expected all >= 1")
  tokenizer = text.tokenizer_for(model)
  if layout.kind == "decoder":
    windows = text.token_windows(tokenizer, "calibration", n_seq=n_seq, seq_len=seq_len)
    batches = ((windows[i:i + batch_size], None) for i in range(0, n_seq, batch_size))
  else:
    tokens, mask = text.sentence_batch(tokenizer, text.sentences("calibration", n_sentences))
    batches = length_buckets(tokens, mask, sentence_chunk)
  per_site = accumulate_statistics(layout.kind, params, config, batches)
  return by_matrix(layout, per_site)


def site_of(fields, info) -> str:
  """The input site of a block matrix (``fields``: the family spec's ``name -> (field, layer, expert)``)."""
  field = fields[info.name][0] if info.name in fields else info.role
  table = SITE_OF_FIELD if info.expert is None else EXPERT_SITE_OF_FIELD
  if field not in table:
    raise ConfigError(f"calibrate: matrix {info.name!r} (field {field!r}) has no input site; expected one of "
                      f"{sorted(table)}")
  return table[field]


def _unreached_expert(stats: list, e: int) -> InputStats:
  """An expert no calibration token was routed to: an identity second moment at its siblings' mean scale."""
  reached = [s for s in stats if s.count > 0]
  scale = float(np.mean([np.mean(np.diag(s.second_moment)) for s in reached])) if reached else 1.0
  size = stats[e].second_moment.shape[0]
  return InputStats(np.eye(size, dtype=np.float32) * np.float32(scale or 1.0), np.full(size, np.sqrt(scale or 1.0),
                    np.float32), 0)


def by_matrix(layout, per_site: Mapping[str, Any]) -> dict[str, InputStats]:
  """``{matrix name: InputStats}`` from per-site, per-layer statistics, checking each matrix's ``in`` dimension.

  ``per_site[site]`` is a list over layers, or a ``{layer: stats}`` dict (one layer at a time); expert sites hold a
  list per expert. Matrices of one layer that share a site get the same object.

  Raises:
    ConfigError: a matrix with no site, or a layer missing from ``per_site``.
    ShapeError: a matrix's ``in_features`` differs from its statistics' size.

  Example:
    >>> stats = by_matrix(model.layout, accumulate_statistics("encoder", p, cfg, batches))   # doctest: +SKIP
  """
  fields = families.family_spec(layout.config, "layout.config", name_prefix=layout.name_prefix).fields
  out = {}
  for info in layout.matrices:
    site = site_of(fields, info)
    layers = per_site.get(site, [])
    layers = layers if isinstance(layers, Mapping) else dict(enumerate(layers))
    if info.layer not in layers:
      raise ConfigError(f"calibrate: no statistics for site {site!r} of layer {info.layer} (matrix {info.name!r})")
    stats = layers[info.layer]
    if info.expert is not None:
      stats = stats[info.expert] if stats[info.expert].count > 0 else _unreached_expert(stats, info.expert)
    if stats.second_moment.shape != (info.shape[1], info.shape[1]):
      raise ShapeError(f"calibrate: matrix {info.name!r} {info.shape} takes {info.shape[1]} inputs, but site "
                       f"{site!r} of layer {info.layer} has statistics of shape {stats.second_moment.shape}")
    out[info.name] = stats
  return out
