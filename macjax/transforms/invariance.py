"""Model-level computational invariance for the LLaMA family: rotations absorbed into the weights (0 bits).

A pre-RMSNorm transformer keeps its function when its residual stream is rotated, once the norms' gains are folded
into the linears that read the normalized stream (QuaRot, SliceGPT). With row vectors (``y = h Wᵀ``, HF layout):

1. **Fold the gains.** ``RMSNorm(x) ⊙ g`` feeds linears only, so ``W ← W diag(g)`` for q/k/v (input norm),
   gate/up (post-attention norm) and the LM head (final norm), and ``g ← 1``.
2. **Rotate the residual stream** by an orthogonal ``Q`` (``hidden × hidden``): ``x' = x Q``. Without gains,
   ``RMSNorm(x Q) = RMSNorm(x) Q`` (``‖x Q‖ = ‖x‖``), so every block sees its rotated input and writes a rotated
   output when ``E ← E Q`` (embeddings), ``W ← W Q`` for the readers (q, k, v, gate, up, LM head) and ``W ← Qᵀ W``
   for the writers (o_proj, down_proj): ``x' + c W_oᵀ Q = (x + c W_oᵀ) Q``.
3. **Rotate each value head** by an orthogonal ``R_j`` (``head_dim × head_dim``): ``W_v`` rows of KV head ``j`` ←
   ``R_jᵀ W_v^{(j)}``, and the ``o_proj`` columns of every query head that reads KV head ``j`` ← ``W_o^{(h)} R_j``:
   attention mixes value vectors linearly across positions, so the context of head ``h`` becomes ``c_h R_j`` and
   ``c_h R_j (W_o^{(h)} R_j)ᵀ = c_h W_o^{(h)ᵀ}``. (Query/key heads cannot take a general rotation: RoPE commutes only
   with rotations inside each of its 2-D frequency planes; not done here.)

``Q`` is a randomized Hadamard matrix (seeded), the identity, or any orthogonal matrix given (e.g.
:func:`residual_pca_basis` of a residual-stream covariance collected on calibration text); the ``R_j`` are
randomized Hadamard matrices. All of it is absorbed: the rotated model has the same tensors, names and shapes and
the rotations cost no bits — with one exception, **tied embeddings**. With ``lm_head = E``, the LM head must
become ``E diag(g_f) Q`` while the embeddings become ``E Q``; they differ unless ``g_f = 1``, so rotating the
stream of a tied model *unties* it: ``vocab × hidden`` extra weights (28.3M for SmolLM2-135M, 21% of the model),
which :class:`InvariantRewrite` reports as ``extra_params`` and which a compressor must store and count.
``residual="identity"`` keeps the model tied (the final norm's gain then stays unfolded) and still folds the block
norms and rotates the value/output heads.

BERT (post-LayerNorm) does not admit the residual-stream rotation: each block ends with
``x ← LN(x + f(x)) = γ ⊙ (x + f(x) − mean) / std + β``, and that output *is* the residual stream the next block
adds to. ``γ`` and ``β`` act on the stream itself, not only on a following linear, so they cannot be folded away;
``LN(y Q) = LN(y) Q`` needs ``Q`` to fix the all-ones vector (centering) and ``diag(γ) Q = Q diag(γ)`` — only
permutations within channels of equal ``γ`` (and sign flips, which ``β`` then breaks). What BERT does allow
exactly: per-head value/output rotations (as step 3) and per-head query/key rotations (it has no RoPE:
``(R q)·(R k) = q·k`` with the biases rotated too); the FFN's GELU allows only permutations.

Example:
  >>> rewrite = rotate_llama(params, config, key=jax.random.key(0), untie=True)          # doctest: +SKIP
  >>> jnp.allclose(llama_logits(rewrite.params, rewrite.config, t), llama_logits(params, config, t))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError, ModelLoadError, ShapeError
from macjax.transforms.base import SeedState, key_data
from macjax.transforms.hadamard import randomized_hadamard
from macjax.transforms.pca import principal_basis


@dataclasses.dataclass(frozen=True)
class InvariantRewrite:
  """A function-preserving rewrite of a LLaMA model.

  Attributes:
    params: ``{HF name: float32 array}``, the rotated model (same names; plus ``lm_head.weight`` when untied).
    config: the HF config, with ``tie_word_embeddings`` set to False when the rewrite untied the model.
    untied: whether the rewrite had to untie the LM head from the embeddings.
    extra_params: weights the rewrite adds to the model (``vocab × hidden`` when untied, else 0): a real cost.
    residual: ``"hadamard"``, ``"identity"`` or ``"given"``: the residual-stream rotation used.
    head_rotation: whether the value/output heads were rotated.
  """

  params: dict[str, np.ndarray]
  config: dict[str, Any]
  untied: bool
  extra_params: int
  residual: str
  head_rotation: bool


def residual_pca_basis(covariance: Any) -> np.ndarray:
  """The PCA basis (eigenvectors by decreasing variance, as columns) of a residual-stream covariance.

  Pass it as ``residual=`` to :func:`rotate_llama`: the rotated stream's coordinate ``j`` then carries the
  ``j``-th largest variance.

  Example:
    >>> residual_pca_basis(np.diag([1.0, 3.0])).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
  """
  C = np.asarray(covariance, np.float64)
  if C.ndim != 2 or C.shape[0] != C.shape[1]:
    raise ShapeError(f"residual_pca_basis: covariance has shape {C.shape}; expected (hidden, hidden)")
  return np.asarray(principal_basis(jnp.asarray(C, jnp.float32)), np.float64)


def _hadamard(key: jax.Array, n: int) -> np.ndarray:
  eye = jnp.eye(n, dtype=jnp.float32)
  return np.asarray(randomized_hadamard(side="input").apply(eye, SeedState(key)), np.float64)


def _need(params: Mapping[str, Any], name: str) -> np.ndarray:
  if name not in params:
    raise ModelLoadError(f"rotate_llama: missing tensor {name!r}")
  return np.array(params[name], np.float64, copy=True)  # never mutate the caller's arrays


def rotate_llama(params: Mapping[str, Any], config: Mapping[str, Any], *, key: jax.Array | None = None,
                 residual: str | Any = "hadamard", head_rotation: bool = True,
                 untie: bool = False) -> InvariantRewrite:
  """Folds the RMSNorm gains and rotates the residual stream and value heads of a LLaMA model (module docstring).

  The computation is done in float64 on the host and the result cast back to float32.

  Args:
    params: flat HF params (``model.embed_tokens.weight``, ``model.layers.N...``, ``model.norm.weight``, optional
      ``lm_head.weight``).
    config: the HF config dict (``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``,
      ``num_hidden_layers``, ``tie_word_embeddings``).
    key: seeds the Hadamard rotations (``fold_in(key, 0)`` for ``Q``, ``fold_in(key, 1 + j + layer·kv_heads)``
      for the value head ``j`` of a layer); needed unless ``residual`` is not ``"hadamard"`` and
      ``head_rotation`` is False.
    residual: ``"hadamard"``, ``"identity"``, or an orthogonal ``(hidden, hidden)`` array ``Q``.
    head_rotation: rotate every value head (and the matching o_proj columns) by a randomized Hadamard.
    untie: allow untying a tied model (required to rotate its residual stream; reported as ``extra_params``).

  Returns:
    An :class:`InvariantRewrite`.

  Raises:
    ConfigError: a tied model with a residual rotation and ``untie=False``; a bad ``residual``; a missing key.
    ShapeError: a given ``Q`` that is not an orthogonal ``(hidden, hidden)`` matrix.
    ModelLoadError: a missing tensor.
  """
  hidden = int(config["hidden_size"])
  n_layers = int(config["num_hidden_layers"])
  n_heads = int(config["num_attention_heads"])
  n_kv = int(config.get("num_key_value_heads") or n_heads)
  hd = int(config.get("head_dim") or hidden // n_heads)
  tied = "lm_head.weight" not in params
  if tied and not config.get("tie_word_embeddings", True):
    raise ModelLoadError("rotate_llama: no 'lm_head.weight' while the config says tie_word_embeddings=False")

  if isinstance(residual, str):
    if residual not in ("hadamard", "identity"):
      raise ConfigError(f"rotate_llama: residual={residual!r}; expected 'hadamard', 'identity' or an orthogonal "
                        f"({hidden}, {hidden}) array")
    kind = residual
  else:
    kind = "given"
  needs_key = kind == "hadamard" or head_rotation
  kd = key_data(key, "rotate_llama") if needs_key else None
  if kind == "hadamard":
    Q = _hadamard(jax.random.fold_in(kd, 0), hidden)
  elif kind == "identity":
    Q = None
  else:
    Q = np.asarray(residual, np.float64)
    if Q.shape != (hidden, hidden) or not np.allclose(Q.T @ Q, np.eye(hidden), atol=1e-4):
      raise ShapeError(f"rotate_llama: residual has shape {Q.shape}; expected an orthogonal ({hidden}, {hidden}) "
                       "matrix (QᵀQ = I to 1e-4)")
  if Q is not None and tied and not untie:
    raise ConfigError("rotate_llama: rotating the residual stream of a tied-embedding model unties the LM head "
                      "from the embeddings (lm_head = E·diag(g_final)·Q ≠ E·Q); pass untie=True and count the "
                      "extra vocab×hidden weights, or residual='identity' to stay tied")

  out = {k: np.asarray(v) for k, v in params.items()}
  new: dict[str, np.ndarray] = {}
  ones = np.ones((hidden,), np.float64)
  for layer in range(n_layers):
    p = f"model.layers.{layer}."
    g1 = _need(params, p + "input_layernorm.weight")
    g2 = _need(params, p + "post_attention_layernorm.weight")
    W = {r: _need(params, p + f"self_attn.{r}_proj.weight") for r in "qkvo"}
    W.update({r: _need(params, p + f"mlp.{r}_proj.weight") for r in ("gate", "up", "down")})
    for r in "qkv":
      W[r] = W[r] * g1[None, :]
    for r in ("gate", "up"):
      W[r] = W[r] * g2[None, :]
    if Q is not None:
      for r in ("q", "k", "v", "gate", "up"):
        W[r] = W[r] @ Q
      for r in ("o", "down"):
        W[r] = Q.T @ W[r]
    if head_rotation:
      groups = n_heads // n_kv
      for j in range(n_kv):
        R = _hadamard(jax.random.fold_in(kd, 1 + j + layer * n_kv), hd)
        rows = slice(j * hd, (j + 1) * hd)
        W["v"][rows] = R.T @ W["v"][rows]
        for h in range(j * groups, (j + 1) * groups):
          cols = slice(h * hd, (h + 1) * hd)
          W["o"][:, cols] = W["o"][:, cols] @ R
    for r in "qkvo":
      new[p + f"self_attn.{r}_proj.weight"] = W[r]
    for r in ("gate", "up", "down"):
      new[p + f"mlp.{r}_proj.weight"] = W[r]
    new[p + "input_layernorm.weight"] = ones
    new[p + "post_attention_layernorm.weight"] = ones

  E = _need(params, "model.embed_tokens.weight")
  g_f = _need(params, "model.norm.weight")
  untied = False
  if Q is not None:
    head = E if tied else _need(params, "lm_head.weight")
    new["lm_head.weight"] = (head * g_f[None, :]) @ Q
    new["model.embed_tokens.weight"] = E @ Q
    new["model.norm.weight"] = ones
    untied = tied
  elif not tied:
    new["lm_head.weight"] = _need(params, "lm_head.weight") * g_f[None, :]
    new["model.norm.weight"] = ones
  # tied and no residual rotation: the final gain stays (folding it would untie)

  for name, value in new.items():
    out[name] = np.asarray(value, np.float32)
  new_config = dict(config)
  if untied:
    new_config["tie_word_embeddings"] = False
  return InvariantRewrite(params=out, config=new_config, untied=untied,
                          extra_params=int(E.size) if untied else 0, residual=kind, head_rotation=head_rotation)
