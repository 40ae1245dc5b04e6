"""Compress and decompress: the only module that knows the order of the stages.

Encoder, for every tensor of a :class:`~macjax.load.layout.Model`:

* transformer-block matrices: ``quantize`` (config ``[quantize]``) → ``coding.encode`` of the integer codes;
* other 2-D tensors (embeddings, LM head): the same, with ``[embeddings]``'s step, or kept as float16/float32;
* 1-D tensors (norms, biases): kept in ``[vectors]``'s dtype.

Every part needed to decode (coded words, probability tables, quantizer side information, kept tensors, tokenizer
files) goes into the artifact: tensors' parts through :class:`~macjax.artifact.Packer` into the artifact; the manifest records per tensor its shape,
treatment, coder header, the bits of each part, and the SHA-256 of the encoder's reconstruction. The decoder
rebuilds each tensor from the parts alone and checks it against that hash, so "decode is bit-identical to what the
encoder reconstructed" is verified on every decode, not assumed.

Example:
  >>> compressed = compress(load_model("minilm-l6"), PipelineConfig())  # doctest: +SKIP
  >>> params = decompress(compressed.buckets, compressed.manifest)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import macjax
from macjax import artifact, coding, transforms
from macjax.errors import ArtifactError, ConfigError, NonFiniteError
from macjax.load.layout import Model, ModelLayout
from macjax.pipeline import components
from macjax.pipeline.config import PipelineConfig, from_dict, to_dict
from macjax.quantize.uniform import UniformMeta, uniform


@dataclasses.dataclass
class Compressed:
  """The output of :func:`compress`.

  Attributes:
    buckets: flat arrays to store (see :mod:`macjax.artifact.pack`).
    manifest: JSON-able description (config, layout, index, per-tensor headers and bit counts, hashes).
    assets: tokenizer files to store beside the buckets.
    reconstruction: the encoder's reconstruction of every tensor, HF names, float32.
    reference: the tensors that were compressed: the model's own, or the rewritten model's when a
      function-preserving rewrite ran first (weight errors are measured against these).
    timings: seconds spent per stage.
  """

  buckets: dict[str, np.ndarray]
  manifest: dict
  assets: dict[str, bytes]
  reconstruction: dict[str, np.ndarray]
  reference: dict[str, np.ndarray]
  timings: dict[str, float]


def tensor_digest(array: np.ndarray) -> str:
  """SHA-256 of a tensor's float32 bytes (C order): the bit-exactness witness stored in the manifest."""
  return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


@functools.lru_cache(maxsize=32)
def _quantizer(method: str, step: float, group_size: int):
  if method != "uniform":  # config validation already restricts this; guard against future drift
    raise ValueError(f"unknown quantizer {method!r}")
  q = uniform(step=step, group_size=group_size or None)
  # One compiled program per matrix shape, instead of op-by-op dispatch.
  return q._replace(quantize=jax.jit(q.quantize), dequantize=jax.jit(q.dequantize))


def _meta_to_parts(meta) -> dict[str, np.ndarray]:
  """Stores each field of a quantizer meta NamedTuple, as float16 where that is exact, else in its own dtype."""
  parts = {}
  for field in meta._fields:
    a = np.asarray(getattr(meta, field))
    if a.dtype == np.float32 and np.array_equal(a.astype(np.float16).astype(np.float32), a):
      a = a.astype(np.float16)
    parts[field] = a
  return parts


def _meta_from_parts(meta_cls, parts: dict[str, np.ndarray], dtypes: dict[str, str]):
  return meta_cls(**{f: jnp.asarray(parts[f].astype(dtypes[f])) for f in meta_cls._fields})


@jax.jit
def _all_finite(x):
  return jnp.all(jnp.isfinite(x))


def _check_finite(name: str, a: np.ndarray) -> None:
  if not bool(_all_finite(a)):
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    raise NonFiniteError(f"tensor {name} (shape {a.shape}) has {bad} NaN/inf values; expected finite weights")


@dataclasses.dataclass(frozen=True)
class _Chain:
  """The per-matrix transform chain, jitted once (one compile per matrix shape)."""

  t: transforms.WeightTransform

  @functools.cached_property
  def init(self):
    return jax.jit(lambda W, key: self.t.init(W, key=key))

  @functools.cached_property
  def apply(self):
    return jax.jit(self.t.apply)

  @functools.cached_property
  def inverse(self):
    return jax.jit(self.t.inverse)

  def state_structure(self, shape: tuple[int, int]):
    return jax.eval_shape(self.init, jax.ShapeDtypeStruct(shape, jnp.float32),
                          jax.ShapeDtypeStruct((2,), jnp.uint32))


@functools.lru_cache(maxsize=8)
def _chain(specs: tuple) -> _Chain | None:
  t = components.build_chain([(s.name, s.kwargs) for s in specs])
  return None if t is None else _Chain(t)


def _matrix_key(seed: int, index: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def _encode_quantized(name: str, W: np.ndarray, quantizer, coding_model: str, packer: artifact.Packer, *,
                      chain: _Chain | None = None, key: jax.Array | None = None) -> tuple[np.ndarray, dict]:
  W = jnp.asarray(W, jnp.float32)
  transform_bits = 0
  if chain is not None:
    state = chain.init(W, key)
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
    for i, leaf in enumerate(leaves):
      packer.add(name, f"transform.{i}", "transform", leaf)
    transform_bits = int(sum(leaf.nbytes for leaf in leaves) * 8)
    W = chain.apply(W, state)
  codes, meta = quantizer.quantize(W)
  W_hat = quantizer.dequantize(codes, meta)
  if chain is not None:
    W_hat = chain.inverse(W_hat, state)
  W_hat = np.asarray(W_hat, dtype=np.float32)
  codes = np.asarray(codes, dtype=np.int32)
  coded = coding.encode(codes, model=coding_model)
  packer.add(name, "words", "codes", coded.words)
  packer.add(name, "table", "tables", coded.table)
  meta_parts = _meta_to_parts(meta)
  for field, a in meta_parts.items():
    packer.add(name, f"meta.{field}", "scales", a)
  record = {
      "coder": coded.header,
      "meta_dtypes": {f: np.asarray(getattr(meta, f)).dtype.name for f in meta._fields},
      "bits": {
          "codes": int(coded.words.nbytes * 8),
          "tables": int(coded.table.nbytes * 8),
          "scales": int(sum(a.nbytes for a in meta_parts.values()) * 8),
          "transform": transform_bits,
          "raw": 0,
      },
      "information_bits": float(coding.information_bits(codes, coded)),
  }
  return W_hat, record


def _encode_raw(name: str, a: np.ndarray, dtype: str, packer: artifact.Packer) -> tuple[np.ndarray, dict]:
  stored = a.astype(dtype)
  packer.add(name, "raw", "raw", stored)
  return stored.astype(np.float32), {"bits": {"raw": int(stored.nbytes * 8)}}


def rewrite_model(model: Model, config: PipelineConfig) -> tuple[Model, dict]:
  """Applies the config's function-preserving model rewrite (LLaMA: fold norms, rotate the residual stream and value
  heads); returns the rewritten model and a record of what it cost (e.g. untied LM-head weights).

  Raises:
    ConfigError: the model's family has no such rewrite, or a tied model would need ``rewrite.untie``.
  """
  if model.layout.family != "llama":
    raise ConfigError(f"rewrite: the computational-invariance rewrite is implemented for the LLaMA family; "
                      f"{model.source} is {model.layout.family} (BERT's post-LayerNorm blocks re-normalize the "
                      "residual stream after each sub-layer, so a residual rotation cannot be absorbed)")
  rw = transforms.rotate_llama(model.params, model.layout.config, key=jax.random.PRNGKey(config.seed),
                               residual=config.rewrite.residual, head_rotation=config.rewrite.head_rotation,
                               untie=config.rewrite.untie)
  layout = dataclasses.replace(model.layout, config=dict(rw.config))
  rewritten = dataclasses.replace(model, params=dict(rw.params), layout=layout)
  return rewritten, {"residual": rw.residual, "head_rotation": rw.head_rotation, "untied": rw.untied,
                     "extra_params": int(rw.extra_params)}


def layout_from_json(d: dict) -> ModelLayout:
  """The model layout recorded in an artifact's manifest."""
  try:
    return ModelLayout.from_json(d)
  except ValueError as e:
    raise ArtifactError(f"artifact manifest: {e}") from e


def compress(model: Model, config: PipelineConfig, *,
             progress: Callable[[str], None] | None = None) -> Compressed:
  """Encodes every tensor of ``model`` under ``config``.

  Args:
    model: the loaded model.
    config: the pipeline config.
    progress: called with a short line per stage (for the CLI).

  Returns:
    A :class:`Compressed` with the buckets and manifest to save and the encoder's reconstruction.

  Raises:
    NonFiniteError: a tensor holds NaN or inf.
  """
  say = progress or (lambda _: None)
  timings: dict[str, float] = {}
  t0 = time.perf_counter()
  for name, a in model.params.items():
    _check_finite(name, a)
  timings["validate"] = time.perf_counter() - t0

  rewrite_record = None
  if config.rewrite.active:
    t0 = time.perf_counter()
    say(f"rewrite: residual rotation {config.rewrite.residual}, head rotation {config.rewrite.head_rotation}")
    model, rewrite_record = rewrite_model(model, config)
    timings["rewrite"] = time.perf_counter() - t0

  chain = _chain(config.transform)
  block_index = {m.name: i for i, m in enumerate(model.layout.matrices)}
  block = {m.name: m for m in model.layout.matrices}
  q_block = _quantizer(config.quantize.method, config.quantize.step, config.quantize.group_size)
  q_embed = _quantizer(config.quantize.method, config.embeddings.step, config.embeddings.group_size)
  packer = artifact.Packer()
  records: dict[str, dict] = {}
  recon: dict[str, np.ndarray] = {}

  t0 = time.perf_counter()
  say(f"quantize + entropy-code {len(block)} block matrices")
  for name in sorted(model.params, key=lambda n: (n not in block, n)):
    a = model.params[name]
    if name in block:
      W_hat, rec = _encode_quantized(name, a, q_block, config.coding.model, packer, chain=chain,
                                     key=_matrix_key(config.seed, block_index[name]))
      rec.update(group="block", role=block[name].role, layer=block[name].layer, treatment="quantize")
    elif a.ndim == 2 and config.embeddings.treatment == "quantize":
      W_hat, rec = _encode_quantized(name, a, q_embed, config.coding.model, packer)
      rec.update(group="other", treatment="quantize")
    elif a.ndim == 2:
      W_hat, rec = _encode_raw(name, a, config.embeddings.treatment, packer)
      rec.update(group="other", treatment=config.embeddings.treatment)
    else:
      W_hat, rec = _encode_raw(name, a, config.vectors.dtype, packer)
      rec.update(group="vector", treatment=config.vectors.dtype)
    rec["shape"] = list(a.shape)
    rec["sha256"] = tensor_digest(W_hat)
    records[name] = rec
    recon[name] = W_hat.reshape(a.shape)
  timings["quantize+code"] = time.perf_counter() - t0

  buckets, index = packer.finish()
  manifest = {
      "macjax_version": macjax.__version__,
      "source": model.source,
      "config": to_dict(config),
      "layout": model.layout.to_json(),
      "tensors": records,
      "index": index,
      "rewrite": rewrite_record,
  }
  return Compressed(buckets=buckets, manifest=manifest, assets=dict(model.tokenizer_files), reconstruction=recon,
                    reference=model.params, timings=timings)


def decompress(buckets: dict[str, np.ndarray], manifest: dict, *, verify: bool = True) -> dict[str, np.ndarray]:
  """Decodes every tensor from an artifact's buckets and manifest.

  Args:
    buckets, manifest: as returned by :func:`macjax.artifact.load` (or held in a :class:`Compressed`).
    verify: compare each decoded tensor's SHA-256 with the encoder's (raises on any difference).

  Returns:
    ``{HF name: float32 array}``, bit-identical to the encoder's reconstruction.

  Raises:
    ArtifactError: a part is missing or malformed, or a decoded tensor differs from the encoder's reconstruction.
  """
  parts = artifact.unpack(buckets, manifest["index"])
  cfg = manifest["config"]
  try:
    chain = _chain(from_dict(cfg).transform)
  except ConfigError as e:
    raise ArtifactError(f"artifact manifest: its config is not valid for this macjax ({e})") from e
  out: dict[str, np.ndarray] = {}
  for name, rec in manifest["tensors"].items():
    p = parts.get(name)
    if p is None:
      raise ArtifactError(f"artifact: tensor {name} has no stored parts")
    shape = tuple(rec["shape"])
    try:
      if rec["treatment"] == "quantize":
        section = cfg["quantize"] if rec["group"] == "block" else cfg["embeddings"]
        q = _quantizer(cfg["quantize"]["method"], section["step"], section["group_size"])
        header = rec["coder"]
        codes = coding.decode(coding.CodedTensor(words=p["words"], table=p["table"], header=header))
        meta_parts = {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith("meta.")}
        meta = _meta_from_parts(UniformMeta, meta_parts, rec["meta_dtypes"])
        W = q.dequantize(jnp.asarray(codes), meta)
        if rec["group"] == "block" and chain is not None:
          structure = chain.state_structure(shape)
          leaves = [p[f"transform.{i}"] for i in range(len(jax.tree_util.tree_leaves(structure)))]
          state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(structure), leaves)
          W = chain.inverse(W, state)
        W = np.asarray(W, dtype=np.float32)
      else:
        W = p["raw"].astype(np.float32)
    except (KeyError, ValueError, TypeError) as e:
      raise ArtifactError(f"artifact: tensor {name} cannot be decoded ({type(e).__name__}: {e})") from e
    if W.shape != shape:
      raise ArtifactError(f"artifact: tensor {name} decoded to shape {W.shape}, manifest says {shape}")
    if verify and tensor_digest(W) != rec["sha256"]:
      raise ArtifactError(
          f"artifact: decoded tensor {name} differs from the encoder's reconstruction (SHA-256 mismatch); the "
          "artifact is damaged, or it was decoded on a backend whose arithmetic differs from the encoder's")
    out[name] = W
  return out
