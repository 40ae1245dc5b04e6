"""Compress and decompress: the only module that knows the order of the stages.

Encoder:

1. the whole-model **plan** (:func:`macjax.pipeline.plan.make_plan`): rewrite, calibration, role-shared transform
   states, f_θ, allocation — only those the config asks for (the default config asks for none);
2. then one *unit* at a time — the shared states (``shared``), each transformer layer (``layer.NNNNN``), the
   tensors outside the blocks (``globals``) — every tensor of the unit through its chain of stages
   (:mod:`macjax.pipeline.stages`):

   * block matrices: **transform** (``[[transform]]``) → **residual** (``− f_θ(α)`` when a fit was kept) →
     **quantize** (``[quantize]``, GPTQ with the Hessian when asked) → **code** (``[coding]``);
   * other 2-D tensors (embeddings, LM head): quantize with ``[embeddings]``'s step → code, or **keep** as
     float16/float32; 1-D tensors (norms, biases): keep in ``[vectors]``'s dtype;

   and the unit's parts are handed to a sink (an :class:`~macjax.artifact.ArtifactWriter` on disk, or memory)
   before the next unit is read. A unit the sink already holds (a resumed run) is not encoded again.

The manifest records per tensor its unit, shape, treatment, coder header, the bits of each part, and the SHA-256 of
the encoder's reconstruction. The decoder runs the stages backwards from the parts alone
(``Ŵ = T⁻¹(f_θ(α) + r̂)``), one unit at a time, and checks each tensor against that hash, so "decode is
bit-identical to what the encoder reconstructed" is verified on every decode, not assumed (on the encoder's
backend; see the README for other backends).

Devices: the matrices of a unit (and, in the plan, the f_θ families) are spread over the given devices
(``jax.devices()`` by default), largest first, each on the device with the fewest weights assigned so far, and
encoded concurrently; every tensor's arithmetic is the same on each device of a kind, so the artifact does not
depend on the device count (tested with 8 host devices).

Example:
  >>> compressed = compress(load_model("minilm-l6"), PipelineConfig())  # doctest: +SKIP
  >>> params = decompress(compressed.units, compressed.manifest)  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from concurrent.futures.process import BrokenProcessPool
import dataclasses
import functools
import json
import multiprocessing
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import macjax
from macjax import artifact, fit
from macjax.errors import ArtifactError, ConfigError, MacjaxError
from macjax.load.lazy import check_finite_array, shape_of
from macjax.load.layout import Model, ModelLayout
from macjax.pipeline import stages
from macjax.pipeline.config import PipelineConfig, from_dict, to_dict
from macjax.pipeline.plan import STATE_GROUPS, Plan, fitter, make_plan
from macjax.pipeline.records import TensorRecord

SHARED_UNIT = "shared"
#: 2-D tensors outside the blocks (embeddings, LM head) with more weights than this are quantized and coded in row
#: blocks of at most this many weights (each with its own coding table), so that a 128k × 8k vocabulary does not
#: need several float32 copies of itself at once; smaller tensors (the default models' embeddings) are coded whole.
LARGE_TENSOR_ELEMENTS = 1 << 26
GLOBALS_UNIT = "globals"


def layer_unit(layer: int) -> str:
  """The unit name of transformer layer ``layer``."""
  return f"layer.{layer:05d}"


@dataclasses.dataclass
class Compressed:
  """The output of :func:`compress` (everything in memory).

  Attributes:
    units: ``{unit: {bucket: flat array}}`` (see :mod:`macjax.artifact.pack`).
    manifest: JSON-able description (config, layout, per-unit index and buckets, per-tensor records).
    assets: tokenizer files to store beside the buckets.
    reconstruction: the encoder's reconstruction of every tensor, HF names, float32.
    reference: the tensors that were compressed: the model's own, or the rewritten model's when a
      function-preserving rewrite ran first (weight errors are measured against these).
    timings: seconds spent per stage.
  """

  units: dict[str, dict[str, np.ndarray]]
  manifest: dict
  assets: dict[str, bytes]
  reconstruction: dict[str, np.ndarray]
  reference: Mapping[str, np.ndarray]
  timings: dict[str, float]


class MemorySink:
  """A sink that keeps the units in memory (what :func:`compress` uses; :class:`~macjax.artifact.ArtifactWriter`
  is the one on disk)."""

  resumed = False

  def __init__(self):
    self.units: dict[str, dict[str, np.ndarray]] = {}
    self._records: dict[str, dict] = {}

  def done_units(self) -> dict[str, dict]:
    return dict(self._records)

  def load_unit(self, unit: str, record: dict | None = None) -> dict[str, np.ndarray]:
    return self.units[unit]

  def write_unit(self, unit: str, buckets, index, records) -> dict:
    self.units[unit] = dict(buckets)
    self._records[unit] = {"buckets": artifact.bucket_table(buckets), "index": index, "tensors": records}
    return self._records[unit]


# ---------------------------------------------------------------------------------------------------------------
# The chains: which stages each kind of tensor goes through (the one place that knows the order).


@dataclasses.dataclass(frozen=True)
class Chains:
  """The stage chains of one config."""

  block: tuple[stages.Stage, ...]
  embedding: tuple[stages.Stage, ...]

  @staticmethod
  def of(config: PipelineConfig) -> "Chains":
    q, e = to_dict(config)["quantize"], to_dict(config)["embeddings"]
    gptq = ((("block_size", q["gptq_block_size"]), ("damp", q["gptq_damp"]), ("order", q["gptq_order"]),
             ("column_steps", q["gptq_column_steps"])) if q["gptq"] else None)
    options = tuple(sorted(q["options"].items()))
    block_q = stages.quantizer(q["method"], q["step"], q["group_size"], options, gptq)
    embed_q = stages.quantizer(q["method"], e["step"], e["group_size"], options, None)
    chain = stages.transform_chain(config.transform)
    block = ((stages.transform_stage(chain),) if chain is not None else ()) + (
        stages.residual_stage(q["options"].get("scope", "row"), q["group_size"] or None),
        stages.quantize_stage(block_q), stages.code_stage(config.coding))
    return Chains(block=block, embedding=(stages.quantize_stage(embed_q), stages.code_stage(config.coding)))

  def for_record(self, rec: TensorRecord) -> tuple[stages.Stage, ...]:
    if rec.group == "block":
      return self.block
    if rec.treatment == "quantize" and rec.blocks is not None:
      return (stages.row_blocks_stage(self.embedding, rec.block_rows),)
    if rec.treatment == "quantize":
      return self.embedding
    return (stages.keep_stage(rec.treatment),)


def units_of(layout: ModelLayout, names: Sequence[str]) -> list[tuple[str, list[str]]]:
  """The units of a model, in encoding order: each layer (its matrices in layout order, then its other tensors by
  name), then ``globals`` (every tensor outside the blocks, by name)."""
  per_layer: dict[int, list[str]] = {l: [] for l in range(layout.num_layers)}
  matrices = layout.matrix_names
  for m in layout.matrices:
    per_layer[m.layer].append(m.name)
  rest = []
  for name in sorted(names):
    if name in matrices:
      continue
    layer = layout.layer_of(name)
    (per_layer[layer] if layer is not None else rest).append(name)
  return [(layer_unit(l), per_layer[l]) for l in range(layout.num_layers)] + ([(GLOBALS_UNIT, rest)] if rest else [])


# ---------------------------------------------------------------------------------------------------------------
# Encoding.


Observer = Callable[[str, str, np.ndarray, np.ndarray], None]


@dataclasses.dataclass
class _Encoder:
  """Encodes the tensors of one model under one config and plan (one unit at a time)."""

  config: PipelineConfig
  plan: Plan
  chains: Chains
  devices: Sequence[Any]
  observe: Observer | None

  def __post_init__(self):
    self.layout = self.plan.model.layout
    self.info = {m.name: (i, m) for i, m in enumerate(self.layout.matrices)}
    self._load = [0] * len(self.devices)  # weights assigned to each device so far

  def placement(self, names: list[str]) -> dict[str, Any]:
    """Where each 2-D tensor of a unit runs: largest first, each on the device with the fewest elements assigned
    so far (over the whole run): a deterministic bin-packing that keeps every device busy."""
    params = self.plan.model.params
    sizes = {n: int(np.prod(shape_of(params, n), dtype=np.int64)) for n in names if len(shape_of(params, n)) == 2}
    out = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
      k = min(range(len(self.devices)), key=lambda i: (self._load[i], i))
      self._load[k] += sizes[name]
      out[name] = self.devices[k]
    return out

  def tensor(self, name: str, device, value: np.ndarray | None = None) -> tuple[np.ndarray, stages.Parts, dict]:
    """Encodes one tensor: the model's, or ``value`` in its place (a refit vector), compared with the model's."""
    a = np.asarray(self.plan.model.params[name])
    check_finite_array(name, a, "compress")
    reference = a if self.observe is not None else None
    if value is not None:
      a = np.asarray(value, np.float32).reshape(a.shape)
      check_finite_array(name, a, "compress (refit)")
    shape, e = a.shape, self.config.embeddings
    quantized = name in self.info or (a.ndim == 2 and e.treatment == "quantize")
    if quantized:  # the device copy is all the stages need (the host copy is dropped: one copy less at the peak)
      a = jax.device_put(jnp.asarray(a, jnp.float32), device)
    if name in self.info:
      index, info = self.info[name]
      W_hat, parts, rec = stages.encode_tensor(self.chains.block, a, self.plan.context(info, index, self.config.seed,
                                                                                        device))
      rec.update(group="block", role=info.role, layer=info.layer, treatment="quantize",
                 step_scale=float(self.plan.step_scales.get(name, 1.0)))
    else:
      ctx = stages.MatrixContext(name=name, shape=tuple(shape), device=device)
      if quantized:
        chain = self.chains.embedding
        if int(np.prod(shape)) > LARGE_TENSOR_ELEMENTS:  # coded in row blocks: bounded intermediates
          chain = (stages.row_blocks_stage(chain, max(1, LARGE_TENSOR_ELEMENTS // int(np.prod(shape[1:])))),)
        W_hat, parts, rec = stages.encode_tensor(chain, a, ctx)
        rec.update(group="other", treatment="quantize")
      else:
        dtype = e.treatment if len(shape) == 2 else self.config.vectors.dtype
        W_hat, parts, rec = stages.encode_tensor((stages.keep_stage(dtype),), a, ctx)
        rec.update(group="other" if len(shape) == 2 else "vector", treatment=dtype)
    del a
    if self.observe is not None:
      self.observe(name, rec["group"], np.asarray(reference, np.float32), W_hat)
    rec["sha256"] = stages.tensor_digest(W_hat)
    rec["shape"] = list(shape)
    return W_hat, parts, rec

  def _encode(self, names: list[str], where: dict, pool, values: Mapping[str, np.ndarray] | None = None) -> list:
    jobs = [(name, where.get(name), (values or {}).get(name)) for name in names]
    return list(pool.map(lambda job: self.tensor(*job), jobs)) if pool else [self.tensor(*j) for j in jobs]

  def unit(self, unit: str, names: list[str], pool, refit: Callable[[dict], dict] | None = None
           ) -> tuple[dict, dict, dict, dict]:
    """Encodes the tensors of one unit; returns its ``(buckets, index, records, reconstructions)``.

    With ``refit``, the unit's tensors other than its 1-D ones are encoded first, then ``refit({name: decoded
    tensor})`` returns new values for (some of) its 1-D tensors, which are encoded in place of the model's.
    """
    where = self.placement(names)
    if refit is None:
      results = self._encode(names, where, pool)
    else:
      vectors = [n for n in names if len(shape_of(self.plan.model.params, n)) == 1]
      first = [n for n in names if n not in vectors]
      done = dict(zip(first, self._encode(first, where, pool)))
      done.update(zip(vectors, self._encode(vectors, where, pool, refit({n: r[0] for n, r in done.items()}))))
      results = [done[n] for n in names]
    packer = artifact.Packer()
    records = {}
    for name, (_, parts, rec) in zip(names, results):
      for part, (kind, array) in parts.items():
        packer.add(name, part, kind, array)
      rec["unit"] = unit
      records[name] = TensorRecord.from_json(name, rec).to_json()  # checked as the decoder will check it
    buckets, index = packer.finish()
    return buckets, index, records, {name: W_hat for name, (W_hat, _, _) in zip(names, results)}


def _shared_unit(plan: Plan) -> tuple[dict, dict, dict]:
  packer = artifact.Packer()
  for name, parts in plan.parts.items():
    for part, (kind, array) in parts.items():
      packer.add(name, part, kind, array)
  buckets, index = packer.finish()
  return buckets, index, {n: dict(r, unit=SHARED_UNIT) for n, r in plan.records.items()}


def unit_names(model: Model, plan: Plan) -> list[str]:
  """Every unit of ``model`` under ``plan``, in encoding order."""
  return ([SHARED_UNIT] if plan.records else []) + [u for u, _ in units_of(plan.model.layout, list(plan.model.params))]


def encode_units(model: Model, config: PipelineConfig, sink, *, plan: Plan | None = None, stats: dict | None = None,
                 devices: Sequence[Any] | None = None, observe: Observer | None = None,
                 progress=None, process: tuple[int, int] = (0, 1)) -> tuple[dict, Plan, dict[str, float]]:
  """Encodes ``model`` into ``sink`` one unit at a time (units the sink already holds are skipped).

  Args:
    model: the model; its params may be lazy (:func:`macjax.load.open_model`): each unit reads only its tensors.
    config: the pipeline config.
    sink: :class:`MemorySink` or :class:`~macjax.artifact.ArtifactWriter`.
    plan: a plan made ahead (else made here, with ``stats``).
    devices: where to run (default ``jax.devices()``); the tensors of a unit are spread over them.
    observe: called as ``observe(name, group, reference, reconstruction)`` for every tensor encoded here.
    progress: a :class:`~macjax.pipeline.progress.Progress` (lines and a per-unit bar), or None.
    process: ``(index, count)``: this process encodes the units whose position in :func:`unit_names` is ``index``
      modulo ``count`` (processes that share the sink's folder split the work; each reads only its units' tensors).

  Returns:
    ``(records, plan, timings)``: the manifest record of every tensor this process encoded or found finished.

  Raises:
    NonFiniteError: a tensor holds NaN or inf (named). ConfigError: a stage cannot run on this model.
  """
  from macjax.pipeline.progress import Progress  # pylint: disable=g-import-not-at-top
  progress = progress or Progress()
  devices = list(jax.devices() if devices is None else devices)
  plan = plan or make_plan(model, config, stats=stats, say=progress.say, devices=devices, bar=progress.bar)
  timings = dict(plan.timings)
  encoder = _Encoder(config, plan, Chains.of(config), devices, observe)
  units = ([(SHARED_UNIT, None)] if plan.records else []) + units_of(plan.model.layout, list(plan.model.params))
  index, count = process
  if count > 1 and plan.sequential is not None:
    raise ConfigError("compress: sequential calibration runs layer after layer, so it cannot be split across "
                      f"{count} processes; set calibration.sequential = false or run one process")
  done = sink.done_units()
  records: dict[str, dict] = {}
  for unit in done:
    records.update(done[unit]["tensors"])
  todo = [(u, names) for k, (u, names) in enumerate(units) if u not in done and k % count == index]
  if done:
    first = todo[0][0] if todo else "the manifest"
    progress.say(f"resuming: {len(done)} of {len(units)} units already written ({', '.join(_span(done))}); "
                 f"continuing at {first}")
  if SHARED_UNIT in done and plan.records:
    _check_shared(plan, done[SHARED_UNIT])
  t0 = time.perf_counter()
  if plan.sequential is not None and any(_layer_of_unit(u) is not None for u, _ in todo):
    _replay(plan, config, sink, done, progress)
  workers = len(devices) if len(devices) > 1 else 0
  with concurrent.futures.ThreadPoolExecutor(workers) if workers else contextlib.nullcontext() as pool:
    for unit, names in progress.bar(todo, desc="compress", unit="unit"):
      layer = _layer_of_unit(unit)
      if unit == SHARED_UNIT:
        buckets, index, recs = _shared_unit(plan)
      elif plan.sequential is not None and layer is not None:
        buckets, index, recs = _sequential_unit(encoder, plan, config, unit, names, pool, progress)
      else:
        buckets, index, recs, _ = encoder.unit(unit, names, pool)
      sink.write_unit(unit, buckets, index, recs)
      records.update(recs)
  timings["quantize+code"] = time.perf_counter() - t0  # (the refit's time, "tune", included)
  if "tune" in plan.timings:
    timings["tune"] = plan.timings["tune"]
  return records, plan, timings


def _sequential_unit(encoder: "_Encoder", plan: Plan, config: PipelineConfig, unit: str, names: list[str], pool,
                     progress) -> tuple[dict, dict, dict]:
  """A layer under sequential calibration: its statistics on the carried inputs, its encoding (with the refit of
  its vectors when asked), then the carried inputs advanced through it as decoded."""
  layer = _layer_of_unit(unit)
  plan.stats = plan.sequential.statistics(layer, plan.model.params)  # this layer's only
  buckets, index, recs, recon = encoder.unit(unit, names, pool, _refit(plan, config, layer, progress))
  plan.sequential.advance(layer, recon, reference=plan.model.params)  # the next layer's inputs, as decoded
  return buckets, index, recs


def _refit(plan: Plan, config: PipelineConfig, layer: int, progress) -> Callable[[dict], dict] | None:
  """With ``calibration.tune_steps``: the refit of layer ``layer``'s vectors to the reference layer's output
  (:meth:`~macjax.calibrate.SequentialCalibration.tune`), for :meth:`_Encoder.unit`."""
  steps = config.calibration.tune_steps
  if not steps:
    return None

  def run(decoded: dict) -> dict:
    t0 = time.perf_counter()
    values, (before, after) = plan.sequential.tune(layer, plan.model.params, decoded, steps=steps,
                                                   lr=config.calibration.tune_lr)
    plan.timings["tune"] = plan.timings.get("tune", 0.0) + time.perf_counter() - t0
    if values:
      plan.tuning[str(layer)] = {"before": before, "after": after}
      progress.say(f"tune: layer {layer}: relative output error on the calibration text {before:.4g} → {after:.4g} "
                   f"({len(values)} vectors refit)")
    return values

  return run


def _check_shared(plan: Plan, record: dict) -> None:
  """A resumed run recomputes the plan: its shared states must be the ones the finished units were encoded with."""
  buckets, _, _ = _shared_unit(plan)
  if artifact.bucket_table(buckets) != record.get("buckets"):
    raise ArtifactError("resume: the whole-model plan (shared transform states, θ) computed now differs from the one "
                        "the finished units were encoded with (another machine or backend?); pass --restart")


def _layer_of_unit(unit: str) -> int | None:
  return int(unit.split(".", 1)[1]) if unit.startswith("layer.") else None


def _replay(plan: Plan, config: PipelineConfig, sink, done: dict, progress) -> None:
  """Sequential calibration's starting point: the embeddings, then every finished layer (a resumed run) replayed
  forward from its decoded weights, as read back from the sink."""
  plan.sequential.start(plan.model.params)
  layers = sorted(l for l in map(_layer_of_unit, done) if l is not None)
  if layers != list(range(len(layers))):
    raise ArtifactError(f"resume: the finished layers {layers} are not the first {len(layers)} layers; the unfinished "
                        "compression is inconsistent (restart it)")
  if not layers:
    return
  progress.say(f"resume: replaying layers 0–{layers[-1]} forward to rebuild the calibration inputs")
  decoder = _Decoder.from_plan(config, plan)
  for layer in layers:
    unit = layer_unit(layer)
    parts = artifact.unpack(sink.load_unit(unit, done[unit]), done[unit]["index"])
    decoded = {n: decoder.tensor(TensorRecord.from_json(n, r), parts.get(n, {}), True)
               for n, r in done[unit]["tensors"].items()}
    plan.sequential.advance(layer, decoded, reference=plan.model.params)


def _span(units: Mapping[str, Any]) -> list[str]:
  layers = sorted(int(u.split(".")[1]) for u in units if u.startswith("layer."))
  out = [u for u in (SHARED_UNIT,) if u in units]
  if layers:
    out.append(f"layers {layers[0]}–{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}")
  out += [u for u in (GLOBALS_UNIT,) if u in units]
  return out


def make_manifest(model: Model, config: PipelineConfig, plan: Plan, records: dict) -> dict:
  """The manifest of an encoded model (without the unit table, which the sink adds)."""
  return {
      "macjax_version": macjax.__version__,
      "source": model.source,
      "config": to_dict(config),
      "layout": plan.model.layout.to_json(),
      "tensors": records,
      "rewrite": plan.rewrite,
      "allocation": plan.allocation,
      "fit_decisions": plan.fit_decisions,
      "calibration": plan.calibration,
  }


def compress(model: Model, config: PipelineConfig, *, stats: dict | None = None,
             progress: Callable[[str], None] | None = None, devices: Sequence[Any] | None = None) -> Compressed:
  """Encodes every tensor of ``model`` under ``config`` in memory (stages in the module docstring's order).

  Args:
    model: the loaded model.
    config: the pipeline config.
    stats: precomputed calibration statistics (:func:`macjax.pipeline.plan.calibration_stats` of ``model``, or of
      the rewritten model when ``[rewrite]`` is on), to reuse one calibration pass across many configs.
    progress: called with a short line per stage.
    devices: where to run (default ``jax.devices()``).

  Returns:
    A :class:`Compressed` with the units and manifest to save and the encoder's reconstruction.

  Raises:
    NonFiniteError: a tensor holds NaN or inf.
    ConfigError: a stage cannot run on this model with this config (named in the message).
  """
  from macjax.pipeline.progress import Progress  # pylint: disable=g-import-not-at-top
  sink = MemorySink()
  recon: dict[str, np.ndarray] = {}
  records, plan, timings = encode_units(
      model, config, sink, stats=stats, devices=devices, progress=Progress(say=progress, bars=False),
      observe=lambda name, group, ref, rec: recon.__setitem__(name, rec))
  manifest = make_manifest(model, config, plan, records)
  manifest["units"] = {u: {"buckets": r["buckets"], "index": r["index"]} for u, r in sink.done_units().items()}
  return Compressed(units=sink.units, manifest=manifest, assets=dict(model.tokenizer_files), reconstruction=recon,
                    reference=plan.model.params, timings=timings)


def save(path, compressed: Compressed, *, overwrite: bool = False):
  """Writes an in-memory :class:`Compressed` as an artifact folder (:func:`macjax.artifact.save`)."""
  tensors = compressed.manifest["tensors"]
  units = {u: (buckets, compressed.manifest["units"][u]["index"],
               {n: r for n, r in tensors.items() if r.get("unit") == u})
           for u, buckets in compressed.units.items()}
  manifest = {k: v for k, v in compressed.manifest.items() if k != "units"}
  return artifact.save(path, units, manifest, assets=compressed.assets, overwrite=overwrite)


def unit_parts(units: Mapping[str, dict[str, np.ndarray]], manifest: dict, unit: str) -> dict[str, dict]:
  """``{tensor: {part: array}}`` of one unit held in memory."""
  return _unit_parts(manifest, unit, units[unit])


# ---------------------------------------------------------------------------------------------------------------
# Decoding.


def layout_from_json(d: dict) -> ModelLayout:
  """The model layout recorded in an artifact's manifest."""
  try:
    return ModelLayout.from_json(d)
  except ValueError as e:
    raise ArtifactError(f"artifact manifest: {e}") from e


def _config_of(manifest: dict) -> PipelineConfig:
  try:
    return from_dict(manifest["config"])
  except (ConfigError, KeyError, TypeError) as e:
    raise ArtifactError(f"artifact manifest: its config is not valid for this macjax ({e})") from e


@dataclasses.dataclass
class _Decoder:
  """Decodes the tensors of one artifact, one unit at a time."""

  config: PipelineConfig
  chains: Chains
  shared_states: dict[str, Any]
  predictions: dict[str, jax.Array]

  @classmethod
  def from_plan(cls, config: PipelineConfig, plan: Plan) -> "_Decoder":
    """The decoder of what ``plan`` encodes (its shared states and predictions, without reading them back)."""
    shared = {family: plan.states[name] for name, family in plan.shared_families.items()}
    return cls(config, Chains.of(config), shared, dict(plan.predictions))

  def tensor(self, rec: TensorRecord, parts: dict[str, np.ndarray], verify: bool) -> np.ndarray:
    ctx = stages.MatrixContext(name=rec.name, shape=rec.shape, role=rec.role,
                               transform_state=self.shared_states.get(rec.transform_shared),
                               transform_shared=rec.transform_shared, prediction=self.predictions.get(rec.name),
                               fit_role=rec.fit)
    try:
      W = stages.decode_tensor(self.chains.for_record(rec), parts, rec.to_json(), ctx)
    except (KeyError, ValueError, TypeError) as e:
      raise ArtifactError(f"artifact: tensor {rec.name} cannot be decoded ({type(e).__name__}: {e})") from e
    if W.shape != rec.shape:
      raise ArtifactError(f"artifact: tensor {rec.name} decoded to shape {W.shape}, manifest says {rec.shape}")
    if verify and stages.tensor_digest(W) != rec.sha256:
      raise ArtifactError(
          f"artifact: decoded tensor {rec.name} differs from the encoder's reconstruction (SHA-256 mismatch); the "
          "artifact is damaged, or it was decoded on a backend whose arithmetic differs from the encoder's")
    return W


def _unit_parts(manifest: dict, unit: str, buckets: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  try:
    index = manifest["units"][unit]["index"]
  except (KeyError, TypeError) as e:
    raise ArtifactError(f"artifact manifest: unit {unit!r} has no index") from e
  return artifact.unpack(buckets, index)


def _shared_decoding(manifest: dict, config: PipelineConfig, parts: dict) -> tuple[dict, dict]:
  """The role-shared transform states and the f_θ predictions, from the ``shared`` unit's parts."""
  tensors = manifest["tensors"]
  chain = stages.transform_chain(config.transform)
  states: dict[str, Any] = {}
  predictions: dict[str, jax.Array] = {}
  for name, rec in tensors.items():
    group = rec.get("group") if isinstance(rec, dict) else None
    if group == "transform":
      try:
        if chain is None:
          raise ValueError("the config has no [[transform]] chain")
        shape = tuple(int(s) for s in rec["pooled_shape"])
        states[rec.get("family", rec["role"])] = stages.leaves_from_parts(parts.get(name, {}), "transform", chain.state_structure(shape))
      except (KeyError, ValueError, TypeError, MacjaxError) as e:
        raise ArtifactError(f"artifact: the shared transform state {name} cannot be restored "
                            f"({type(e).__name__}: {e})") from e
    elif group == "fit":
      try:
        ff = fitter(tuple(sorted(rec["options"].items())))
        arrays = {k: parts[name][f"theta.{k}"] for k in rec["theta_keys"]}
        shape = tuple(int(s) for s in rec["shape"])
        theta = fit.from_numpy(arrays, ff.config, shape)
      except (KeyError, ValueError, TypeError, MacjaxError) as e:
        raise ArtifactError(f"artifact: θ of {name} cannot be restored ({type(e).__name__}: {e})") from e
      pred = ff.predict(theta, shape)
      members = rec.get("members") or [n for _, n in sorted(
          (r["layer"], n) for n, r in tensors.items() if isinstance(r, dict) and r.get("fit") == rec["role"])]
      if not isinstance(members, list) or len(members) != pred.shape[0]:
        raise ArtifactError(f"artifact: {name} lists {len(members) if isinstance(members, list) else members!r} "
                            f"members for a prediction of {pred.shape[0]}")
      for li, n in enumerate(members):
        predictions[str(n)] = pred[li]
  return states, predictions


#: Units with at least this many weights are decoded by worker processes when there are several CPUs: the entropy
#: coder holds Python's GIL, so threads would not decode in parallel. Smaller units are decoded in this process.
PROCESS_DECODE_MIN_WEIGHTS = 1 << 24


def _decode_in_worker(job: tuple) -> np.ndarray:
  """One tensor decoded in a worker process, from picklable pieces (config dict, record, parts, the shared state
  and prediction it needs as numpy)."""
  config_json, name, rec_json, parts, state, prediction, verify = job
  config = _worker_config(config_json)
  rec = TensorRecord.from_json(name, rec_json)
  decoder = _Decoder(config, _worker_chains(config_json), {rec.transform_shared: state} if state else {},
                     {name: prediction} if prediction is not None else {})
  return decoder.tensor(rec, parts, verify)


@functools.lru_cache(maxsize=4)
def _worker_config(config_json: str) -> PipelineConfig:
  return from_dict(json.loads(config_json))


@functools.lru_cache(maxsize=4)
def _worker_chains(config_json: str) -> Chains:
  return Chains.of(_worker_config(config_json))


def _as_numpy(tree):
  return None if tree is None else jax.tree_util.tree_map(np.asarray, tree)


def iter_decompress(manifest: dict, load_unit: Callable[[str], dict[str, np.ndarray]], *, verify: bool = True,
                    workers: int | None = None) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  """Decodes an artifact one unit at a time: yields ``(unit, {name: float32 array})``.

  Args:
    manifest: the artifact's manifest.
    load_unit: ``unit -> {bucket: array}`` (e.g. ``functools.partial(artifact.load_unit, path, manifest)``).
    verify: compare each decoded tensor's SHA-256 with the encoder's (raises on any difference).
    workers: tensors of a unit decoded at once (default: the CPU count); by worker processes for units of at
      least :data:`PROCESS_DECODE_MIN_WEIGHTS` weights, else by threads of this process. Either way the result
      is the same, bit for bit.

  Raises:
    ArtifactError: a part is missing or malformed, or a decoded tensor differs from the encoder's reconstruction.
  """
  config = _config_of(manifest)
  tensors = manifest.get("tensors")
  if not isinstance(tensors, dict) or not isinstance(manifest.get("units"), dict):
    raise ArtifactError("artifact manifest: no tensor or unit table")
  records = {n: TensorRecord.from_json(n, r) for n, r in tensors.items()
             if not (isinstance(r, dict) and r.get("group") in STATE_GROUPS)}
  for rec in records.values():
    if rec.unit not in manifest["units"]:
      raise ArtifactError(f"artifact manifest: tensor {rec.name} lives in unit {rec.unit!r}, which is not listed")
  shared_parts = (_unit_parts(manifest, SHARED_UNIT, load_unit(SHARED_UNIT))
                  if SHARED_UNIT in manifest["units"] else {})
  states, predictions = _shared_decoding(manifest, config, shared_parts)
  decoder = _Decoder(config, Chains.of(config), states, predictions)
  by_unit: dict[str, list[TensorRecord]] = {}
  for rec in records.values():
    by_unit.setdefault(rec.unit, []).append(rec)
  pools = _DecodePools(workers or len(os.sched_getaffinity(0)) or 1, decoder, json.dumps(to_dict(config), sort_keys=True), verify)
  pending: list[tuple[str, list[TensorRecord], list]] = []  # units submitted, oldest first (one decoded ahead)
  try:
    for unit in manifest["units"]:
      if unit == SHARED_UNIT or unit not in by_unit:
        continue
      parts = _unit_parts(manifest, unit, load_unit(unit))
      for rec in by_unit[unit]:
        if rec.name not in parts:
          raise ArtifactError(f"artifact: tensor {rec.name} has no stored parts")
      pending.append((unit, by_unit[unit], pools.submit(by_unit[unit], parts)))
      if len(pending) > 1:
        yield _collect(*pending.pop(0))
    while pending:
      yield _collect(*pending.pop(0))
  finally:
    for _, _, futures in pending:
      for f in futures:
        f.cancel()
    pools.shutdown()


class _DecodePools:
  """Threads of this process for small units; spawned worker processes (created on first use) for large ones."""

  def __init__(self, workers: int, decoder: _Decoder, config_json: str, verify: bool):
    self.workers, self.decoder, self.config_json, self.verify = workers, decoder, config_json, verify
    self.threads = concurrent.futures.ThreadPoolExecutor(workers)
    self.processes = None

  def submit(self, recs: list[TensorRecord], parts: dict[str, dict[str, np.ndarray]]) -> list:
    # Worker processes only on a CPU backend: spawned JAX processes would each claim a GPU's memory, and must decode
    # on the backend the encoder verified against.
    if (self.workers == 1 or jax.default_backend() != "cpu"
        or sum(r.size for r in recs) < PROCESS_DECODE_MIN_WEIGHTS):
      return [self.threads.submit(self.decoder.tensor, r, parts[r.name], self.verify) for r in recs]
    if self.processes is None:
      self.processes = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(
          "spawn"), initializer=_worker_init)
    states, predictions = self.decoder.shared_states, self.decoder.predictions
    return [self.processes.submit(_decode_in_worker, (
        self.config_json, r.name, r.to_json(), {k: np.asarray(v) for k, v in parts[r.name].items()},
        _as_numpy(states.get(r.transform_shared)), _as_numpy(predictions.get(r.name)), self.verify)) for r in recs]

  def shutdown(self) -> None:
    self.threads.shutdown(cancel_futures=True)
    if self.processes is not None:
      self.processes.shutdown(cancel_futures=True)


def _collect(unit: str, recs: list[TensorRecord], futures: list) -> tuple[str, dict[str, np.ndarray]]:
  try:
    return unit, {r.name: f.result() for r, f in zip(recs, futures)}
  except BrokenProcessPool as e:
    raise ArtifactError(f"decode: a worker process decoding unit {unit} died ({e}); decode with workers=1 to see "
                        "why") from e


def _worker_init() -> None:
  """Decode workers run on the host CPU (their parent only uses them on a CPU backend)."""
  jax.config.update("jax_platforms", "cpu")


def decompress(units: Mapping[str, dict[str, np.ndarray]], manifest: dict, *, verify: bool = True
               ) -> dict[str, np.ndarray]:
  """Decodes every tensor of an artifact held in memory: ``Ŵ = T⁻¹(f_θ(α) + r̂)`` for block matrices.

  Args:
    units, manifest: as returned by :func:`macjax.artifact.load` (or held in a :class:`Compressed`).
    verify: compare each decoded tensor's SHA-256 with the encoder's (raises on any difference).

  Returns:
    ``{HF name: float32 array}``, bit-identical to the encoder's reconstruction.

  Raises:
    ArtifactError: a part is missing or malformed, or a decoded tensor differs from the encoder's reconstruction.
  """
  def load(unit: str) -> dict[str, np.ndarray]:
    if unit not in units:
      raise ArtifactError(f"artifact: unit {unit!r} is listed in the manifest but not present")
    return units[unit]

  out: dict[str, np.ndarray] = {}
  for _, tensors in iter_decompress(manifest, load, verify=verify):
    out.update(tensors)
  return out
