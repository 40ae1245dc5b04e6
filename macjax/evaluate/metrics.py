"""Quality metrics: perplexity, KL divergence between next-token distributions, embedding cosine, weight error.

All take arrays (numpy or JAX) and return JAX scalars or arrays; the token-level ones also have a ``*_sum`` /
per-token form so that callers can accumulate over chunks without holding every logit.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ShapeError


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood :math:`-\\log p(y_t) = \\log\\sum_v e^{z_{t,v}} - z_{t,y_t}`.

  Args:
    logits: ``[..., vocab]`` unnormalized log-probabilities ``z``.
    targets: ``int[...]`` target ids ``y``.

  Returns:
    ``float32[...]``, in nats.

  Example:
    >>> token_nll(jnp.zeros((2, 4)), jnp.array([0, 3]))   # doctest: +SKIP
    Array([1.3863, 1.3863], dtype=float32)    # log 4
  """
  logits = jnp.asarray(logits, jnp.float32)
  picked = jnp.take_along_axis(logits, jnp.asarray(targets)[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - picked


def perplexity(logits: jax.Array, targets: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Perplexity :math:`\\exp\\big(\\frac{1}{N}\\sum_t -\\log p(y_t)\\big)` over the (masked) tokens.

  ``logits[..., t, :]`` must already be the prediction *for* ``targets[..., t]`` (shift before calling:
  ``perplexity(logits[:, :-1], tokens[:, 1:])``). A uniform predictor over ``V`` ids has perplexity ``V``.

  Args:
    logits: ``[..., vocab]``.
    targets: ``int[...]``.
    mask: optional ``[...]`` weights (1 = count the token).

  Example:
    >>> perplexity(jnp.zeros((1, 5, 10)), jnp.zeros((1, 5), jnp.int32))   # doctest: +SKIP
    Array(10., dtype=float32)
  """
  nll = token_nll(logits, targets)
  mask = jnp.ones_like(nll) if mask is None else jnp.asarray(mask, nll.dtype)
  return jnp.exp(jnp.sum(nll * mask) / jnp.sum(mask))


def token_kl(reference_logits: jax.Array, candidate_logits: jax.Array) -> jax.Array:
  """Per-token :math:`\\mathrm{KL}(p\\,\\|\\,q) = \\sum_v p_v (\\log p_v - \\log q_v)`, in nats.

  ``p = softmax(reference_logits)``, ``q = softmax(candidate_logits)`` over the last axis. Exactly 0 for equal
  inputs and never negative up to rounding (clipped at 0).

  Example:
    >>> token_kl(jnp.zeros((3, 8)), jnp.zeros((3, 8)))   # doctest: +SKIP
    Array([0., 0., 0.], dtype=float32)
  """
  log_p = jax.nn.log_softmax(jnp.asarray(reference_logits, jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(jnp.asarray(candidate_logits, jnp.float32), axis=-1)
  return jnp.maximum(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1), 0.0)


def kl_divergence(reference_logits: jax.Array, candidate_logits: jax.Array,
                  mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean per-token :math:`\\mathrm{KL}(p_{ref}\\,\\|\\,p_{cand})` over the (masked) positions, in nats/token.

  .. math:: \\frac{1}{N}\\sum_t \\sum_v p_{t,v}\\,\\big(\\log p_{t,v} - \\log q_{t,v}\\big)

  The reference is the first argument: it weighs the tokens the reference model believes in.

  Example:
    >>> kl_divergence(jnp.zeros((4, 8)), jnp.zeros((4, 8)))   # doctest: +SKIP
    Array(0., dtype=float32)
  """
  if np.shape(reference_logits) != np.shape(candidate_logits):
    raise ShapeError(f"kl_divergence: reference logits {np.shape(reference_logits)} vs candidate "
                     f"{np.shape(candidate_logits)}; expected equal shapes")
  kl = token_kl(reference_logits, candidate_logits)
  mask = jnp.ones_like(kl) if mask is None else jnp.asarray(mask, kl.dtype)
  return jnp.sum(kl * mask) / jnp.sum(mask)


class CosineStats(NamedTuple):
  """Mean and minimum of per-example cosine similarities."""

  mean: jax.Array
  min: jax.Array


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise :math:`\\cos(a_i, b_i) = a_i\\cdot b_i / (\\|a_i\\|\\,\\|b_i\\|)` for ``[n, d]`` inputs.

  Norms are floored at 1e-12 (a zero row gives cosine 0).

  Example:
    >>> cosine_similarity(jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 1.0]]))   # doctest: +SKIP
    Array([0.7071], dtype=float32)
  """
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  if a.shape != b.shape or a.ndim != 2:
    raise ShapeError(f"cosine_similarity: shapes {a.shape} and {b.shape}; expected equal [n, d]")
  norms = jnp.maximum(jnp.linalg.norm(a, axis=-1), 1e-12) * jnp.maximum(jnp.linalg.norm(b, axis=-1), 1e-12)
  return jnp.sum(a * b, axis=-1) / norms


def embedding_cosine(reference: jax.Array, candidate: jax.Array) -> CosineStats:
  """Mean and min over sentences of :func:`cosine_similarity` between reference and candidate embeddings.

  Example:
    >>> e = jnp.ones((3, 4))
    >>> embedding_cosine(e, e).mean   # doctest: +SKIP
    Array(1., dtype=float32)
  """
  cos = cosine_similarity(reference, candidate)
  return CosineStats(mean=jnp.mean(cos), min=jnp.min(cos))


def _check_pair(name: str, w: Any, w_hat: Any) -> tuple[np.ndarray, np.ndarray]:
  w = np.asarray(w, np.float64)
  w_hat = np.asarray(w_hat, np.float64)
  if w.shape != w_hat.shape:
    raise ShapeError(f"rel_weight_error: {name} has shape {w.shape} but its reconstruction {w_hat.shape}")
  return w, w_hat


def rel_weight_error(w: Any, w_hat: Any) -> float:
  """Relative Frobenius error :math:`\\|W - \\hat W\\|_F / \\|W\\|_F` (float64 on the host).

  Example:
    >>> rel_weight_error(np.ones((2, 2)), np.zeros((2, 2)))
    1.0
  """
  w, w_hat = _check_pair("W", w, w_hat)
  return float(np.linalg.norm(w - w_hat) / np.linalg.norm(w))


def aggregate_rel_weight_error(reference: Mapping[str, Any], candidate: Mapping[str, Any],
                               names: Optional[Iterable[str]] = None) -> float:
  """Energy-weighted relative error over many matrices.

  .. math:: \\sqrt{\\textstyle\\sum_i \\|W_i - \\hat W_i\\|_F^2} \\Big/ \\sqrt{\\textstyle\\sum_i \\|W_i\\|_F^2}

  Large matrices weigh in proportion to their energy, as if all of them were one concatenated tensor.

  Args:
    reference: ``{name: W}``.
    candidate: ``{name: W_hat}``.
    names: which names to include; defaults to every name of ``reference``.

  Raises:
    ShapeError: a name is missing from ``candidate`` or its shape differs.

  Example:
    >>> aggregate_rel_weight_error({"a": np.ones(3), "b": np.ones(1)}, {"a": np.ones(3), "b": np.zeros(1)})
    0.5
  """
  names = list(reference) if names is None else list(names)
  err2 = ref2 = 0.0
  for name in names:
    if name not in candidate:
      raise ShapeError(f"aggregate_rel_weight_error: tensor {name!r} is missing from the candidate")
    w, w_hat = _check_pair(repr(name), reference[name], candidate[name])
    err2 += float(np.sum(np.square(w - w_hat)))
    ref2 += float(np.sum(np.square(w)))
  return float(np.sqrt(err2) / np.sqrt(ref2))
