"""Model quality: JAX forwards (every decoder family, BERT), held-out text, and the metrics every compression result is judged by.

Entry points:
  * :func:`quality` — one call: reference vs candidate params on the same held-out batches.
  * :class:`Evaluator` — build once from the reference (runs it once and caches what the comparison needs), then
    call it on many candidates.

Causal LMs (``layout.kind == "decoder"``: LLaMA, Qwen2, Gemma, Phi-3, GPT-2, Mixtral ...) are scored by perplexity on held-out text and the per-token
:math:`\\mathrm{KL}(p_{ref}\\,\\|\\,p_{cand})` of next-token distributions; encoders (``"bert"``) by the cosine between
reference and candidate sentence embeddings. The defaults were sized to take well under a minute per candidate on a
2-core CPU for the default models (``macjax compress`` reports the evaluation's wall time in its per-stage timings).

Example:
  >>> from macjax.load import load_model                                            # doctest: +SKIP
  >>> ref = load_model("smollm2-135m")                                             # doctest: +SKIP
  >>> ev = Evaluator(ref)                                                           # doctest: +SKIP
  >>> ev(compressed_params)["perplexity_rel_change"]                               # doctest: +SKIP
  0.031
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError
from macjax.evaluate import bert, decoder, metrics, text
from macjax.evaluate.bert import bert_embeddings, bert_hidden, prepare_bert
from macjax.evaluate.metrics import (aggregate_rel_weight_error, embedding_cosine, kl_divergence, perplexity,
                                     rel_weight_error)

__all__ = [
    "Evaluator", "quality", "bert_embeddings", "bert_hidden", "prepare_bert", "perplexity", "kl_divergence",
    "embedding_cosine", "rel_weight_error", "aggregate_rel_weight_error", "text", "metrics", "decoder", "bert",
]

#: Default sizes (see :class:`Evaluator` for what they cost).
DEFAULT_N_SEQ = 24
DEFAULT_SEQ_LEN = 256
DEFAULT_N_SENTENCES = 256


@functools.partial(jax.jit, static_argnames=("cap",))
def _head_stats(h_ref, head_ref, h_cand, head_cand, targets, cap=None):
  """Per token: reference NLL, candidate NLL, KL(ref || cand); logits live only inside this call.

  With :math:`z = W h` and :math:`\\ell = \\log\\sum_v e^{z_v}` for each model,
  :math:`\\mathrm{KL}(p\\|q) = \\sum_v p_v (z^p_v - z^q_v) - \\ell^p + \\ell^q`: one exp per logit of each
  model (the matmuls dominate), and exactly 0 when the two logit rows are equal (both models' logits go through
  one stacked reduction, so equal rows round alike).
  """
  z = jnp.stack([jnp.einsum("ti,vi->tv", h_ref, head_ref), jnp.einsum("ti,vi->tv", h_cand, head_cand)])
  z = decoder.softcap(z, cap)
  m = jnp.max(z, axis=-1, keepdims=True)
  e = jnp.exp(z - m)
  s = jnp.sum(e, axis=-1)
  lse = jnp.log(s) + m[..., 0]
  kl = jnp.maximum(jnp.sum(e[0] * (z[0] - z[1]), axis=-1) / s[0] - lse[0] + lse[1], 0.0)
  nll = lse - jnp.take_along_axis(z, jnp.broadcast_to(targets[None, :, None], (2, targets.shape[0], 1)), -1)[..., 0]
  return nll[0], nll[1], kl


@functools.partial(jax.jit, static_argnames=("cap",))
def _head_nll(h, head, targets, cap=None):
  return metrics.token_nll(decoder.softcap(jnp.einsum("ti,vi->tv", h, head), cap), targets)


def _stderr_of_mean(per_group: np.ndarray) -> float:
  n = per_group.shape[0]
  return float(np.std(per_group, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


class Evaluator:
  """Reference side of :func:`quality`, computed once and reused for any number of candidates.

  For a LLaMA model it tokenizes ``n_seq`` held-out windows of ``seq_len`` tokens (:func:`text.token_windows`),
  runs the reference once and caches its final hidden states (``n_seq * seq_len * hidden`` floats: 14 MB for
  SmolLM2 at the defaults) and its LM head. A call runs the candidate's trunk, then, ``head_chunk`` tokens at a
  time, projects both hidden states through their LM heads and reduces the two ``[head_chunk, vocab]`` logit
  blocks to per-token NLLs and KL at once: no more than one chunk of logits ever exists, and KL is exact (the
  reference logits are recomputed from the cached hidden states, a ~20% cost next to a full reference forward).

  For a BERT model it builds ``n_sentences`` held-out passages (:func:`text.sentences`), sorts them by length into
  chunks padded to a multiple of 32 tokens (a handful of compiled shapes), and caches the reference embeddings.

  Sizes and costs. Causal LMs: ``n_seq · (seq_len − 1)`` scored predictions from windows spread over the held-out
  works (6120 at the defaults ``n_seq=24, seq_len=256``); the build runs the reference once, each call runs the
  candidate's trunk once, so a call costs about one forward over the windows (linear in ``n_seq``). Encoders:
  ``n_sentences`` passages; one forward per call. ``macjax compress`` reports the evaluation's wall time.

  Statistical resolution: ``perplexity_rel_change_stderr`` and ``kl_stderr`` (``cosine_mean_stderr``) are standard
  errors over per-window (per-passage) means of the paired differences, so they shrink as ``1/sqrt(n_seq)``; they
  cover the choice of text only. Near the reference, ``kl`` is the steadier signal: small weight noise can lower
  the loss on some text, so ``perplexity_rel_change`` scatters more than ``kl`` between draws of the same noise.

  Args:
    reference: the reference :class:`~macjax.load.layout.Model` (its params, layout.config, tokenizer files).
    n_seq: held-out windows (LLaMA).
    seq_len: tokens per window (LLaMA); ``seq_len - 1`` next-token predictions are scored per window.
    n_sentences: held-out passages (BERT).
    batch_size: windows per trunk call (LLaMA).
    sentence_chunk: sentences per forward call (BERT).
    head_chunk: tokens per LM-head block (bounds the memory: two ``head_chunk x vocab`` float32 blocks).
    split: the text scored: ``"heldout"`` (quality claims), ``"prose"`` (quality on another domain, which no
      recipe is calibrated on) or ``"calibration"`` (for choices the encoder makes, e.g.
      :mod:`macjax.calibrate.probe`, so that held-out text never steers compression).

  Example:
    >>> ev = Evaluator(load_model("minilm-l6"), n_sentences=64)   # doctest: +SKIP
    >>> ev(candidate_params)                                      # doctest: +SKIP
    {'cosine_mean': 0.991, 'cosine_min': 0.97, 'cosine_mean_stderr': 0.0004, 'sentences': 64}
  """

  def __init__(self, reference, *, n_seq: int = DEFAULT_N_SEQ, seq_len: int = DEFAULT_SEQ_LEN,
               n_sentences: int = DEFAULT_N_SENTENCES, batch_size: int = 4, head_chunk: int = 256,
               sentence_chunk: int = 32, split: str = "heldout"):
    if split not in text.SPLITS:
      raise ConfigError(f"evaluate: split must be one of {text.SPLITS}, got {split!r}")
    self.split = split
    self.family = reference.layout.family
    self.kind = reference.layout.kind
    self.config = dict(reference.layout.config)
    self.batch_size = int(batch_size)
    self.head_chunk = int(head_chunk)
    self.sentence_chunk = int(sentence_chunk)
    if min(self.batch_size, self.head_chunk, self.sentence_chunk) < 1:
      raise ConfigError(f"evaluate: batch_size={batch_size}, head_chunk={head_chunk}, sentence_chunk={sentence_chunk}; "
                        "expected all >= 1")
    tokenizer = text.tokenizer_for(reference)
    if self.kind == "decoder":
      self.cap = decoder.options(self.config).final_softcap
      self.tokens = text.token_windows(tokenizer, split, n_seq=n_seq, seq_len=seq_len)
      weights = decoder.prepare(reference.params, self.config)
      self._ref_head = weights.lm_head
      self._ref_hidden = self._decoder_trunk(weights)
    else:
      self.sentences = text.sentences(split, n_sentences)
      tokens, mask = text.sentence_batch(tokenizer, self.sentences)
      self._bert_chunks = self._bucket(tokens, mask)
      self._ref_embeddings = self._bert_embed(prepare_bert(reference.params, self.config))

  # Decoders ------------------------------------------------------------------------------------------------

  def _decoder_trunk(self, weights) -> np.ndarray:
    out = []
    for start in range(0, self.tokens.shape[0], self.batch_size):
      out.append(np.asarray(decoder.hidden_states(weights, self.config,
                                                  self.tokens[start:start + self.batch_size])))
    return np.concatenate(out)

  def _decoder_stats(self, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token ``[n_seq, seq_len - 1]`` reference NLL, candidate NLL and KL."""
    hidden = self._decoder_trunk(weights)
    n_seq, seq_len, dim = hidden.shape
    h_ref = self._ref_hidden[:, :-1].reshape(-1, dim)
    h_cand = hidden[:, :-1].reshape(-1, dim)
    targets = self.tokens[:, 1:].reshape(-1)
    outs = ([], [], [])
    total = targets.shape[0]
    for start in range(0, total, self.head_chunk):
      stop = min(start + self.head_chunk, total)
      pad = self.head_chunk - (stop - start)  # one compiled shape: pad the last chunk, drop the padding after
      sl = lambda a: np.pad(a[start:stop], [(0, pad)] + [(0, 0)] * (a.ndim - 1))
      res = _head_stats(sl(h_ref), self._ref_head, sl(h_cand), weights.lm_head, sl(targets), cap=self.cap)
      for acc, r in zip(outs, res):
        acc.append(np.asarray(r)[:stop - start])
    return tuple(np.concatenate(acc).reshape(n_seq, seq_len - 1) for acc in outs)

  def _decoder_quality(self, params) -> dict[str, Any]:
    nll_ref, nll, kl = self._decoder_stats(decoder.prepare(params, self.config))
    ppl_ref = math.exp(float(np.mean(nll_ref, dtype=np.float64)))
    ppl = math.exp(float(np.mean(nll, dtype=np.float64)))
    delta = float(np.mean(nll - nll_ref, dtype=np.float64))
    return {
        "perplexity_reference": ppl_ref,
        "perplexity": ppl,
        "perplexity_rel_change": ppl / ppl_ref - 1.0,
        # delta method on exp(mean Δnll) - 1, with the mean's standard error over windows
        "perplexity_rel_change_stderr": math.exp(delta) * _stderr_of_mean(np.mean(nll - nll_ref, axis=1)),
        "kl": float(np.mean(kl, dtype=np.float64)),
        "kl_stderr": _stderr_of_mean(np.mean(kl, axis=1)),
        "tokens": int(nll.size),
    }

  # BERT ----------------------------------------------------------------------------------------------------

  def _bucket(self, tokens: np.ndarray, mask: np.ndarray, multiple: int = 32):
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    chunks = []
    for start in range(0, len(order), self.sentence_chunk):
      idx = order[start:start + self.sentence_chunk]
      width = int(-(-lengths[idx].max() // multiple) * multiple)
      t = np.zeros((len(idx), width), np.int32)
      m = np.zeros((len(idx), width), np.int32)
      n = min(width, tokens.shape[1])
      t[:, :n], m[:, :n] = tokens[idx, :n], mask[idx, :n]
      chunks.append((idx, t, m))
    return chunks

  def _bert_embed(self, weights) -> np.ndarray:
    out = np.zeros((len(self.sentences), weights.word.shape[1]), np.float32)
    for idx, t, m in self._bert_chunks:
      out[idx] = np.asarray(bert_embeddings(weights, self.config, t, m))
    return out

  def _bert_quality(self, params) -> dict[str, Any]:
    emb = self._bert_embed(prepare_bert(params, self.config))
    cos = np.asarray(metrics.cosine_similarity(self._ref_embeddings, emb), np.float64)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "cosine_mean_stderr": _stderr_of_mean(cos), "sentences": int(cos.size)}

  # ---------------------------------------------------------------------------------------------------------

  @functools.cached_property
  def reference_perplexity(self) -> float:
    """Perplexity of the reference on the held-out windows (decoders only), from the cached hidden states."""
    if self.kind != "decoder":
      raise ConfigError(f"evaluate: reference_perplexity is defined for decoders; this {self.family!r} model is "
                        "an encoder")
    dim = self._ref_hidden.shape[-1]
    h = self._ref_hidden[:, :-1].reshape(-1, dim)
    targets = self.tokens[:, 1:].reshape(-1)
    total = 0.0
    for start in range(0, len(targets), self.head_chunk):
      stop = min(start + self.head_chunk, len(targets))
      pad = self.head_chunk - (stop - start)
      nll = _head_nll(np.pad(h[start:stop], [(0, pad), (0, 0)]), self._ref_head, np.pad(targets[start:stop], (0, pad)),
                      cap=self.cap)
      total += float(np.sum(np.asarray(nll, np.float64)[:stop - start]))
    return math.exp(total / len(targets))

  def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
    """Scores candidate params (same names and shapes as the reference's) against the cached reference.

    Returns:
      LLaMA: ``perplexity_reference``, ``perplexity``, ``perplexity_rel_change`` (:math:`ppl/ppl_{ref} - 1`),
      ``perplexity_rel_change_stderr``, ``kl`` (mean nats/token), ``kl_stderr``, ``tokens`` (scored predictions).
      BERT: ``cosine_mean``, ``cosine_min``, ``cosine_mean_stderr``, ``sentences``.

    Raises:
      ModelLoadError / ShapeError / NonFiniteError: a tensor is missing, misshapen, or not finite.
    """
    if self.kind == "decoder":
      return self._decoder_quality(params)
    return self._bert_quality(params)


def quality(reference, params: Mapping[str, Any], *, n_seq: int = DEFAULT_N_SEQ, seq_len: int = DEFAULT_SEQ_LEN,
            n_sentences: int = DEFAULT_N_SENTENCES, split: str = "heldout") -> dict[str, Any]:
  """Runs reference and candidate on the same held-out batches and compares them.

  Equivalent to ``Evaluator(reference, ...)(params)``; build an :class:`Evaluator` instead to score many candidates
  against one reference. For a causal LM:

  .. math::

    \\mathrm{ppl} = \\exp\\Big(\\frac{1}{N}\\sum_t -\\log q(y_t \\mid y_{<t})\\Big), \\qquad
    \\mathrm{kl} = \\frac{1}{N}\\sum_t \\mathrm{KL}\\big(p(\\cdot \\mid y_{<t})\\,\\|\\,q(\\cdot \\mid y_{<t})\\big)

  over ``N = n_seq * (seq_len - 1)`` held-out predictions; for an encoder, cosines between the reference's and the
  candidate's mean-pooled embeddings of ``n_sentences`` held-out passages.

  Args:
    reference: the reference :class:`~macjax.load.layout.Model`.
    params: the candidate ``{HF name: array}`` (e.g. decompressed weights).
    n_seq, seq_len: held-out windows for causal LMs (defaults 24 x 256; see :class:`Evaluator`).
    n_sentences: held-out passages for encoders (default 256).
    split: the text scored (:data:`macjax.evaluate.text.SPLITS`): ``"heldout"`` plays, or ``"prose"`` of another
      domain.

  Returns:
    See :meth:`Evaluator.__call__`.

  Example:
    >>> quality(ref, ref.params)["kl"]   # doctest: +SKIP
    0.0
  """
  return Evaluator(reference, n_seq=n_seq, seq_len=seq_len, n_sentences=n_sentences, split=split)(params)
