"""Model-output curvature: each block matrix's input Hessian weighted by how much the model's output cares.

GPTQ minimizes a layer's output error ``‖X (W − Ŵ)ᵀ‖² = Σ_t δy_tᵀ δy_t`` (``δy_t = (W − Ŵ) x_t``): every calibration
token and every output channel counts the same. What the report measures is the KL divergence between the
reference and the compressed model's next-token distributions, whose second-order term for a perturbation ``δy_t``
of one linear layer's output is ``½ Σ_t δy_tᵀ G_t δy_t`` with ``G_t`` the Fisher information of the model's
predictions pulled back to that output, ``G_t = E[g_t g_tᵀ]``, ``g_t = ∂ log p(ŷ) / ∂y_t``, labels ``ŷ`` drawn from
the model itself (the true Fisher: the Hessian of the KL at the reference, not of the loss on the text's labels).
Replacing ``G_t`` by its trace times the identity (GuidedQuant's approximation, Kim et al. 2025, with one group of
output channels) turns the KL into GPTQ's objective with a token-weighted Hessian:

.. math::

  H^F = \\sum_t w_t\\, x_t x_t^\\top, \\qquad w_t = \\lVert g_t \\rVert^2,

one per matrix (q, k and v share their inputs but not their output gradients). Tokens whose outputs the model's
predictions depend on weigh more; tokens it ignores (an attention sink's huge activations, say) weigh less.

For an encoder the report's distortion is ``1 − cos`` between sentence embeddings; for unit embeddings
``e = u / ‖u‖`` it is ``½ ‖ê − e‖²``, whose curvature is the Gauss–Newton matrix ``J_tᵀ J_t`` (``J_t = ∂e/∂y_t``).
Its trace is ``E_v ‖J_tᵀ v‖²`` for ``v ∼ N(0, I)``, so ``g_t`` is the gradient of ``v · e`` with one random ``v`` per
sentence (Hutchinson's estimator, in place of the sampled labels).

The gradients come from one backward pass per batch of calibration windows (sentences): each tapped matrix gets a
zero per-token bias ``b_t`` added to its output (``y_t = W x_t + b_t``), and ``∂ log p / ∂b_t = g_t``; the inputs
``x_t`` are kept from the same forward. Padded positions get ``g_t = 0`` (nothing reads them). Mixture-of-experts
expert matrices and routers are not tapped (they keep the plain ``XᵀX``).

Example:
  >>> H = fisher_hessians(load_model("smollm2-135m"))                       # doctest: +SKIP
  >>> H["model.layers.0.self_attn.q_proj.weight"].hessian.shape             # doctest: +SKIP
  (576, 576)
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from macjax.calibrate import statistics
from macjax.errors import ConfigError, NonFiniteError
from macjax.evaluate import bert, decoder, metrics, text
from macjax.load import families

#: The fields whose outputs are tapped (dense matrices; the site their inputs come from).
TAPPED = {f: s for f, s in statistics.SITE_OF_FIELD.items() if f not in ("router", "shared_gate", "shared_up",
                                                                        "shared_down")}


class OutputStats(NamedTuple):
  """What :func:`fisher_hessians` measures for one matrix ``W: (out, in)`` (sums over tokens, divided by ``n``).

  Attributes:
    hessian: ``f32[in, in]``, ``H^F = Σ_t ‖g_t‖² x_t x_tᵀ / n`` (GPTQ's Hessian under the model's metric).
    row_weight: ``f32[out]``, ``Σ_t g_tk² ‖x_t‖² / n``: the trace of output channel ``k``'s own Hessian
      ``Σ_t g_tk² x_t x_tᵀ``, i.e. how much an error in row ``k`` costs at the model's output relative to the others.
  """

  hessian: np.ndarray
  row_weight: np.ndarray


def _keep_inputs(inputs, mask):  # a reduce for the layer scan: the dense sites' inputs themselves
  del mask
  return {site: getattr(inputs, site) for site in statistics.SITES}


def _with_taps(blocks: Mapping[str, jax.Array], taps: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """``blocks`` with each tapped field's bias replaced by bias + a per-token tap ``[layers, batch, seq, out]``."""
  out = dict(blocks)
  for f, t in taps.items():
    bias = blocks.get(f + "_bias")
    out[f + "_bias"] = t if bias is None else t + bias[:, None, None, :]
  return out


def output_gradients(weights: decoder.DecoderWeights, tokens: jax.Array, key: jax.Array,
                     config: Mapping[str, Any], fields: tuple[str, ...]) -> tuple[dict, dict]:
  """One forward/backward over a batch of windows (traceable): ``({field: g f32[layers, batch, seq, out]},
  {site: x f32[layers, batch, seq, in]})`` with ``g_t = ∂ log p(ŷ) / ∂y_t`` at each tapped field's output, labels
  ``ŷ`` drawn from the model's own next-token distributions with ``key``, and ``x`` the inputs of each site.
  (``Σ_t g_t x_tᵀ`` is the gradient of ``log p(ŷ)`` with respect to that field's weights.)"""
  batch, seq = tokens.shape
  taps = {f: jnp.zeros((weights.blocks[f].shape[0], batch, seq, weights.blocks[f].shape[1]), jnp.float32)
          for f in fields}

  def log_likelihood(taps):
    w = weights._replace(blocks=_with_taps(weights.blocks, taps))
    h, inputs = decoder.hidden_states_and_inputs(w, config, tokens, _keep_inputs)
    z = decoder.project(weights, config, h)
    labels = jax.random.categorical(key, jax.lax.stop_gradient(z))
    return -jnp.sum(metrics.token_nll(z, labels)), inputs

  return jax.grad(log_likelihood, has_aux=True)(taps)


def embedding_gradients(weights: bert.BertWeights, tokens: jax.Array, mask: jax.Array, key: jax.Array,
                        config: Mapping[str, Any], fields: tuple[str, ...]) -> tuple[dict, dict]:
  """The encoder's :func:`output_gradients`: ``g_t = ∂(v · e)/∂y_t`` with ``e`` each sentence's unit mean-pooled
  embedding and ``v ∼ N(0, I)`` drawn per sentence with ``key`` (``E_v[g_t g_tᵀ] = J_tᵀ J_t``)."""
  batch, seq = tokens.shape
  taps = {f: jnp.zeros((weights.layers[f].shape[0], batch, seq, weights.layers[f].shape[1]), jnp.float32)
          for f in fields}

  def projection(taps):
    w = weights._replace(layers=_with_taps(weights.layers, taps))
    h, inputs, m = bert.hidden_and_inputs(w, config, tokens, _keep_inputs, mask)
    e = bert.mean_pool(h, m)
    e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    return jnp.sum(jax.random.normal(key, e.shape) * e), inputs

  return jax.grad(projection, has_aux=True)(taps)


def _weighted_moments(grads, inputs, fields) -> dict[str, tuple[jax.Array, jax.Array]]:
  """``{field: (f32[layers, in, in], f32[layers, out])}``: ``Σ_t ‖g_t‖² x_t x_tᵀ`` and, per output channel,
  ``Σ_t g_tk² ‖x_t‖²`` (traced)."""
  out = {}
  for f in fields:
    x = inputs[TAPPED[f]]
    g2 = jnp.square(grads[f])
    xw = x * jnp.sqrt(jnp.sum(g2, axis=-1))[..., None]
    out[f] = (jnp.einsum("lbti,lbtj->lij", xw, xw, precision=jax.lax.Precision.HIGHEST),
              jnp.einsum("lbto,lbt->lo", g2, jnp.sum(jnp.square(x), axis=-1), precision=jax.lax.Precision.HIGHEST))
  return out


def _decoder_sums(model, config, n_seq: int, seq_len: int, batch_size: int, seed: int):
  weights = decoder.prepare(model.params, config)
  fields = tuple(f for f in TAPPED if f in weights.blocks and weights.blocks[f].ndim == 3)
  windows = text.token_windows(text.tokenizer_for(model), "calibration", n_seq=n_seq, seq_len=seq_len)
  step = jax.jit(lambda w, t, k: _weighted_moments(*output_gradients(w, t, k, config, fields), fields))
  for i in range(0, len(windows), batch_size):
    yield step(weights, jnp.asarray(windows[i:i + batch_size]), jax.random.fold_in(jax.random.PRNGKey(seed), i)), \
        windows[i:i + batch_size].size


def _encoder_sums(model, config, n_sentences: int, chunk: int, seed: int):
  weights = bert.prepare_bert(model.params, config)
  fields = tuple(f for f in TAPPED if f in weights.layers and weights.layers[f].ndim == 3)
  tokens, mask = text.sentence_batch(text.tokenizer_for(model), text.sentences("calibration", n_sentences))
  step = jax.jit(lambda w, t, m, k: _weighted_moments(*embedding_gradients(w, t, m, k, config, fields), fields))
  for i, (t, m) in enumerate(statistics.length_buckets(tokens, mask, chunk)):
    yield step(weights, jnp.asarray(t), jnp.asarray(m), jax.random.fold_in(jax.random.PRNGKey(seed), i)), \
        int(np.count_nonzero(m))


def fisher_hessians(model, *, n_seq: int = statistics.DEFAULT_N_SEQ, seq_len: int = statistics.DEFAULT_SEQ_LEN,
                    n_sentences: int = statistics.DEFAULT_N_SENTENCES, batch_size: int = 4,
                    sentence_chunk: int = 32, seed: int = 0) -> dict[str, OutputStats]:
  """Output-weighted Hessians ``H^F`` (module docstring) of every tapped block matrix.

  Args:
    model: a loaded :class:`~macjax.load.layout.Model` with its tokenizer (a causal decoder or a BERT encoder).
    n_seq, seq_len: a decoder's calibration windows (the same as :func:`~macjax.calibrate.input_statistics`'s).
    n_sentences: an encoder's calibration passages (the same).
    batch_size: windows per forward/backward (memory: ``batch · seq · vocab`` logits and their gradient).
    sentence_chunk: passages per forward/backward (encoders).
    seed: the key of the sampled labels (projections).

  Returns:
    ``{matrix name: OutputStats}`` (``H^F`` and each row's weight), normalized by the number of (unpadded) tokens;
    matrices that are not tapped (experts, routers, shared experts) are absent.

  Raises:
    ConfigError: a model kind other than decoder / encoder, or bad sizes.
    NonFiniteError: a Hessian came out NaN or infinite.
  """
  layout = model.layout
  if min(n_seq, seq_len, n_sentences, batch_size, sentence_chunk) < 1:
    raise ConfigError(f"calibrate: n_seq={n_seq}, seq_len={seq_len}, n_sentences={n_sentences}, batch_size="
                      f"{batch_size}, sentence_chunk={sentence_chunk}; expected all >= 1")
  config = dict(layout.config)
  if layout.kind == "decoder":
    batches = _decoder_sums(model, config, n_seq, seq_len, batch_size, seed)
  elif layout.kind == "encoder":
    batches = _encoder_sums(model, config, n_sentences, sentence_chunk, seed)
  else:
    raise ConfigError(f"calibrate: output-weighted (Fisher) Hessians of a {layout.kind!r}; expected a decoder "
                      "or an encoder")
  sums: dict[str, list[np.ndarray]] = {}
  n = 0
  for moments, count in batches:
    n += count
    for f, parts in moments.items():
      parts = [np.asarray(p, np.float64) for p in parts]
      sums[f] = parts if f not in sums else [a + p for a, p in zip(sums[f], parts)]
  return _by_matrix(layout, sums, float(n))


def _by_matrix(layout, sums: Mapping[str, list[np.ndarray]], n: float) -> dict[str, OutputStats]:
  spec = families.family_spec(layout.config, "layout.config", name_prefix=layout.name_prefix)
  out = {}
  for info in layout.matrices:
    field, layer, expert = spec.fields.get(info.name, (None, None, None))
    if expert is not None or field not in sums:
      continue
    h, r = sums[field][0][layer], sums[field][1][layer]
    h = ((h + h.T) * (0.5 / n)).astype(np.float32)
    r = (r / n).astype(np.float32)
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(r))):
      raise NonFiniteError(f"calibrate: the output-weighted Hessian of {info.name} holds NaN or infinity")
    out[info.name] = OutputStats(h, r)
  return out
