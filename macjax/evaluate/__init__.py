"""Model quality: JAX forwards (LLaMA, BERT), held-out text, and the metrics every compression result is judged by.

Entry points:
  * :func:`quality` — one call: reference vs candidate params on the same held-out batches.
  * :class:`Evaluator` — build once from the reference (runs it once and caches what the comparison needs), then
    call it on many candidates.

Causal LMs (``family == "llama"``) are scored by perplexity on held-out text and the per-token
:math:`\\mathrm{KL}(p_{ref}\\,\\|\\,p_{cand})` of next-token distributions; encoders (``"bert"``) by the cosine between
reference and candidate sentence embeddings. The defaults were sized on the 2-core development CPU (see
:class:`Evaluator` for the measured times).

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
from macjax.evaluate import bert, llama, metrics, text
from macjax.evaluate.bert import bert_embeddings, bert_hidden, prepare_bert
from macjax.evaluate.llama import llama_hidden, llama_logits, prepare_llama
from macjax.evaluate.metrics import (aggregate_rel_weight_error, embedding_cosine, kl_divergence, perplexity,
                                     rel_weight_error)

__all__ = [
    "Evaluator", "quality", "llama_logits", "llama_hidden", "prepare_llama", "bert_embeddings", "bert_hidden",
    "prepare_bert", "perplexity", "kl_divergence", "embedding_cosine", "rel_weight_error",
    "aggregate_rel_weight_error", "text", "metrics", "llama", "bert",
]

#: Default sizes (see :class:`Evaluator` for what they cost).
DEFAULT_N_SEQ = 24
DEFAULT_SEQ_LEN = 256
DEFAULT_N_SENTENCES = 256


@jax.jit
def _head_stats(h_ref, head_ref, h_cand, head_cand, targets):
  """Per token: reference NLL, candidate NLL, KL(ref || cand); logits live only inside this call."""
  log_p = jax.nn.log_softmax(jnp.einsum("ti,vi->tv", h_ref, head_ref), axis=-1)
  log_q = jax.nn.log_softmax(jnp.einsum("ti,vi->tv", h_cand, head_cand), axis=-1)
  nll_p = -jnp.take_along_axis(log_p, targets[:, None], axis=-1)[:, 0]
  nll_q = -jnp.take_along_axis(log_q, targets[:, None], axis=-1)[:, 0]
  kl = jnp.maximum(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1), 0.0)
  return nll_p, nll_q, kl


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

  Measured on the 2-core development CPU (shared), SmolLM2-135M: ``n_seq=24, seq_len=256`` (6120 scored tokens)
  — building the evaluator (reference pass) ~16 s, each candidate ~30 s, so one :func:`quality` call ~46 s plus
  ~6 s of first compile. The reference perplexity there is ~30 and the standard error of the perplexity's relative
  change between two models (from per-window means) is reported as ``perplexity_rel_change_stderr`` — typically
  a few tenths of a percent for a +5% change, well below the effects being compared. MiniLM:
  ``n_sentences=256`` — build ~2 s, each candidate ~2 s, first compile ~3 s.

  Args:
    reference: the reference :class:`~macjax.load.layout.Model` (its params, layout.config, tokenizer files).
    n_seq: held-out windows (LLaMA).
    seq_len: tokens per window (LLaMA); ``seq_len - 1`` next-token predictions are scored per window.
    n_sentences: held-out passages (BERT).
    batch_size: windows per trunk call (LLaMA).
    sentence_chunk: sentences per forward call (BERT).
    head_chunk: tokens per LM-head block (bounds the memory: two ``head_chunk x vocab`` float32 blocks).

  Example:
    >>> ev = Evaluator(load_model("minilm-l6"), n_sentences=64)   # doctest: +SKIP
    >>> ev(candidate_params)                                      # doctest: +SKIP
    {'cosine_mean': 0.991, 'cosine_min': 0.97, 'cosine_mean_stderr': 0.0004, 'sentences': 64}
  """

  def __init__(self, reference, *, n_seq: int = DEFAULT_N_SEQ, seq_len: int = DEFAULT_SEQ_LEN,
               n_sentences: int = DEFAULT_N_SENTENCES, batch_size: int = 4, head_chunk: int = 256,
               sentence_chunk: int = 32):
    self.family = reference.layout.family
    self.config = dict(reference.layout.config)
    self.batch_size = int(batch_size)
    self.head_chunk = int(head_chunk)
    self.sentence_chunk = int(sentence_chunk)
    if min(self.batch_size, self.head_chunk, self.sentence_chunk) < 1:
      raise ConfigError(f"evaluate: batch_size={batch_size}, head_chunk={head_chunk}, sentence_chunk={sentence_chunk}; "
                        "expected all >= 1")
    tokenizer = text.tokenizer_for(reference)
    if self.family == "llama":
      self.tokens = text.token_windows(tokenizer, "heldout", n_seq=n_seq, seq_len=seq_len)
      weights = prepare_llama(reference.params, self.config)
      self._ref_head = weights.lm_head
      self._ref_hidden = self._llama_trunk(weights)
    elif self.family == "bert":
      self.sentences = text.sentences("heldout", n_sentences)
      tokens, mask = text.sentence_batch(tokenizer, self.sentences)
      self._bert_chunks = self._bucket(tokens, mask)
      self._ref_embeddings = self._bert_embed(prepare_bert(reference.params, self.config))
    else:
      raise ConfigError(f"evaluate: model family {self.family!r} is not supported; expected 'llama' or 'bert'")

  # LLaMA ---------------------------------------------------------------------------------------------------

  def _llama_trunk(self, weights) -> np.ndarray:
    out = []
    for start in range(0, self.tokens.shape[0], self.batch_size):
      out.append(np.asarray(llama_hidden(weights, self.config, self.tokens[start:start + self.batch_size])))
    return np.concatenate(out)

  def _llama_stats(self, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token ``[n_seq, seq_len - 1]`` reference NLL, candidate NLL and KL."""
    hidden = self._llama_trunk(weights)
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
      res = _head_stats(sl(h_ref), self._ref_head, sl(h_cand), weights.lm_head, sl(targets))
      for acc, r in zip(outs, res):
        acc.append(np.asarray(r)[:stop - start])
    return tuple(np.concatenate(acc).reshape(n_seq, seq_len - 1) for acc in outs)

  def _llama_quality(self, params) -> dict[str, Any]:
    nll_ref, nll, kl = self._llama_stats(prepare_llama(params, self.config))
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
    """Perplexity of the reference on the held-out windows (LLaMA only)."""
    if self.family != "llama":
      raise ConfigError(f"evaluate: reference_perplexity is defined for 'llama' models; this one is {self.family!r}")
    h = self._ref_hidden[:, :-1].reshape(-1, self._ref_hidden.shape[-1])
    targets = self.tokens[:, 1:].reshape(-1)
    total = 0.0
    for start in range(0, len(targets), self.head_chunk):
      logits = jnp.einsum("ti,vi->tv", h[start:start + self.head_chunk], self._ref_head)
      total += float(jnp.sum(metrics.token_nll(logits, targets[start:start + self.head_chunk])))
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
    if self.family == "llama":
      return self._llama_quality(params)
    return self._bert_quality(params)


def quality(reference, params: Mapping[str, Any], *, n_seq: int = DEFAULT_N_SEQ, seq_len: int = DEFAULT_SEQ_LEN,
            n_sentences: int = DEFAULT_N_SENTENCES) -> dict[str, Any]:
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
    n_seq, seq_len: held-out windows for causal LMs (defaults 24 x 256: ~46 s per call for SmolLM2 on 2 CPU cores).
    n_sentences: held-out passages for encoders (default 256: ~5 s per call for MiniLM).

  Returns:
    See :meth:`Evaluator.__call__`.

  Example:
    >>> quality(ref, ref.params)["kl"]   # doctest: +SKIP
    0.0
  """
  return Evaluator(reference, n_seq=n_seq, seq_len=seq_len, n_sentences=n_sentences)(params)
