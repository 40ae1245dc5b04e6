"""Sequential calibration: each layer's input statistics measured on the outputs of the layers already compressed.

Whole-model calibration (:func:`~macjax.calibrate.input_statistics`) runs the *reference* model, so every layer's
statistics describe inputs that the compressed model never produces, and it holds the whole model. Here the
calibration text's hidden states are carried from layer to layer as the layers are compressed (GPTQ's and
llm-compressor's sequential scheme):

1. ``x₀`` = the embeddings of the calibration tokens (:meth:`SequentialCalibration.start`);
2. for layer ``ℓ``: :meth:`~SequentialCalibration.statistics` runs block ``ℓ`` with its *reference* weights on the
   carried ``x_ℓ`` and reduces its linear layers' inputs to :class:`~macjax.calibrate.InputStats` (so GPTQ and
   activation-aware transforms see the errors the earlier layers made); the layer is compressed;
   :meth:`~SequentialCalibration.advance` runs block ``ℓ`` with its *decoded* weights to get ``x_{ℓ+1}``;
3. with ``reference=True`` the *reference* model's hidden states are carried beside them, and
   :meth:`~SequentialCalibration.tune` refits block ``ℓ``'s vectors (norms, biases) between its encoding and its
   advance, so that the decoded block on ``x_ℓ`` reproduces the reference block on the reference states
   (:mod:`macjax.calibrate.tuning`).

Only one layer's activations are alive at a time (``n_seq · seq_len · hidden`` floats, on the host between
layers; twice that when the reference stream is carried), and only the layer being compressed is read. With ``offload="disk"`` they wait in ``.npy`` files of a
temporary folder instead (``$TMPDIR``; removed when the calibration is dropped) and one batch is in memory at a
time: for calibration sets larger than RAM (a 70B model's 128 × 2048 tokens × 8192 channels is 8.6 GB in float32).
The numbers are the same either way. A resumed compression rebuilds ``x_ℓ`` by replaying the
finished layers forward from their decoded weights (GPTQModel's resume).

Example:
  >>> seq = SequentialCalibration(model, n_seq=8)                       # doctest: +SKIP
  >>> seq.start(model.params)                                           # doctest: +SKIP
  >>> stats = seq.statistics(0, model.params)  # {matrix name: InputStats} of layer 0   # doctest: +SKIP
  >>> seq.advance(0, decoded_layer_0)                                   # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import tempfile
from typing import Any, Iterator, Mapping

import numpy as np

from macjax.calibrate import statistics, tuning
from macjax.errors import ConfigError, NonFiniteError
from macjax.evaluate import bert, decoder, text

_FORWARDS = {"decoder": decoder, "encoder": bert}


class _Carried:
  """The carried hidden states, one array per calibration batch: in memory, or in ``.npy`` files on disk."""

  def __init__(self, offload: str):
    if offload not in ("memory", "disk"):
      raise ConfigError(f"calibrate: offload {offload!r}; expected 'memory' or 'disk'")
    self._arrays: list[np.ndarray] = []
    self._folder = tempfile.TemporaryDirectory(prefix="macjax-calibration-") if offload == "disk" else None

  def _file(self, i: int) -> pathlib.Path:
    return pathlib.Path(self._folder.name) / f"batch-{i:05d}.npy"

  def put(self, i: int, x) -> None:
    x = np.asarray(x, np.float32)
    if self._folder is None:
      self._arrays[i:i + 1] = [x]
      return
    tmp = self._file(i).with_suffix(".tmp.npy")
    np.save(tmp, x)
    os.replace(tmp, self._file(i))

  def get(self, i: int) -> np.ndarray:
    return self._arrays[i] if self._folder is None else np.load(self._file(i))

  def each(self, n: int) -> Iterator[np.ndarray]:
    return (self.get(i) for i in range(n))


class SequentialCalibration:
  """Calibration hidden states carried through the layers (see the module docstring).

  Args:
    model: the :class:`~macjax.load.layout.Model` (its layout, config and tokenizer files; weights are passed to
      each call, so lazy params stay on disk).
    n_seq, seq_len, batch_size: calibration windows (causal LMs), as :func:`~macjax.calibrate.input_statistics`.
    n_sentences, sentence_chunk: calibration passages (encoders).
    offload: where the carried hidden states wait between layers: ``"memory"`` or ``"disk"`` (module docstring).
    reference: also carry the *reference* model's hidden states (twice the activations), which :meth:`tune` needs.

  Raises:
    ConfigError: an unsupported family, non-positive sizes or an unknown offload.
  """

  def __init__(self, model, *, n_seq: int = statistics.DEFAULT_N_SEQ, seq_len: int = statistics.DEFAULT_SEQ_LEN,
               n_sentences: int = statistics.DEFAULT_N_SENTENCES, batch_size: int = statistics.DEFAULT_BATCH_SIZE,
               sentence_chunk: int = statistics.DEFAULT_SENTENCE_CHUNK, offload: str = "memory",
               reference: bool = False):
    layout = model.layout
    if min(n_seq, seq_len, n_sentences, batch_size, sentence_chunk) < 1:
      raise ConfigError(f"calibrate: n_seq={n_seq}, seq_len={seq_len}, n_sentences={n_sentences}, "
                        f"batch_size={batch_size}, sentence_chunk={sentence_chunk}; expected all >= 1")
    self.layout, self.config = layout, dict(layout.config)
    self.forward = _FORWARDS[layout.kind]
    tokenizer = text.tokenizer_for(model)
    if layout.kind == "decoder":
      windows = text.token_windows(tokenizer, "calibration", n_seq=n_seq, seq_len=seq_len)
      self.batches = [(windows[i:i + batch_size], None) for i in range(0, n_seq, batch_size)]
    else:
      tokens, mask = text.sentence_batch(tokenizer, text.sentences("calibration", n_sentences))
      self.batches = list(statistics.length_buckets(tokens, mask, sentence_chunk))
    self.count = int(sum(np.asarray(t).size if m is None else np.count_nonzero(m) for t, m in self.batches))
    self.hidden: _Carried | None = None
    self.carry_reference = bool(reference)
    self.reference: _Carried | None = None  # the reference model's states entering layer ``reference_layer``
    self.reference_layer = 0
    self._refits: dict[Any, tuning.Refit] = {}
    self.offload = offload
    _Carried(offload)  # checks the option now rather than at start
    self.layer = 0

  def _kwargs(self, mask, layer: int | None = None) -> dict:
    if self.layout.kind == "decoder":
      return {} if layer is None else {"layer": layer}
    return {"mask": mask}

  def start(self, params: Mapping[str, Any]) -> None:
    """``x₀``: the embeddings of the calibration tokens (reads only the embedding tensors of ``params``)."""
    self.hidden = _Carried(self.offload)
    self.reference = _Carried(self.offload) if self.carry_reference else None
    for i, (t, m) in enumerate(self.batches):
      x = self.forward.embed(params, self.config, t, **self._kwargs(m))
      self.hidden.put(i, x)
      if self.reference is not None:
        self.reference.put(i, x)
    self.layer = self.reference_layer = 0

  def _check_layer(self, layer: int) -> None:
    if self.hidden is None:
      raise ConfigError("calibrate: SequentialCalibration.start must run before the layers")
    if layer != self.layer:
      raise ConfigError(f"calibrate: the carried inputs are those of layer {self.layer}, not {layer}; layers must "
                        "be calibrated and advanced in order")

  def statistics(self, layer: int, params: Mapping[str, Any]) -> dict[str, statistics.InputStats]:
    """``{matrix name: InputStats}`` of layer ``layer``'s matrices: block ``layer`` run with ``params`` (its
    reference weights) on the carried inputs.

    Raises:
      ConfigError: layers out of order. NonFiniteError: the statistics overflowed.
    """
    self._check_layer(layer)
    p = self.forward.layer_params(params, self.config, layer)
    sums: dict[str, list] = {}
    for x, (_, mask) in zip(self.hidden.each(len(self.batches)), self.batches):
      _, moments = self.forward.block_step(p, self.config, x, statistics.block_moments, **self._kwargs(mask, layer))
      for site, (xtx, amax, n) in moments.items():
        xtx, amax, n = np.asarray(xtx, np.float64), np.asarray(amax), np.asarray(n, np.float64)
        if site in sums:
          sums[site][0] += xtx
          np.maximum(sums[site][1], amax, out=sums[site][1])
          sums[site][2] = sums[site][2] + n
        else:
          sums[site] = [xtx, amax.copy(), n]
    per_site = {site: {layer: statistics.finish_layer(site, layer, *sums[site])} for site in sums}
    layer_only = dataclasses.replace(self.layout, matrices=tuple(m for m in self.layout.matrices if m.layer == layer))
    return statistics.by_matrix(layer_only, per_site)

  def _advance_reference(self, layer: int, params: Mapping[str, Any]) -> None:
    """The reference stream through block ``layer`` with ``params`` (reference weights), once."""
    if self.reference is None or self.reference_layer > layer:
      return
    if self.reference_layer != layer:
      raise ConfigError(f"calibrate: the reference stream holds the inputs of layer {self.reference_layer}, not "
                        f"{layer}; pass the reference weights to every advance")
    self._through(self.reference, layer, params)
    self.reference_layer = layer + 1

  def tune(self, layer: int, params: Mapping[str, Any], decoded: Mapping[str, Any], *, steps: int, lr: float
           ) -> tuple[dict[str, np.ndarray], tuple[float, float]]:
    """Refits layer ``layer``'s 1-D tensors (:mod:`macjax.calibrate.tuning`): the layer with its ``decoded``
    matrices on the carried compressed-model inputs, against the reference layer (``params``) on the carried
    reference inputs.

    Args:
      layer: the layer being compressed (its statistics taken, not yet advanced).
      params: the reference weights (the layer's are read).
      decoded: ``{name: array}`` the layer's decoded tensors (at least its matrices).
      steps, lr: Adam's steps and learning rate.

    Returns:
      ``({HF name: refit vector}, (relative error before, after))``.

    Raises:
      ConfigError: layers out of order, or built without ``reference=True``.
    """
    self._check_layer(layer)
    if not self.carry_reference:
      raise ConfigError("calibrate: tune needs the reference stream; build SequentialCalibration(reference=True)")
    self._advance_reference(layer, params)  # the reference stream now holds this layer's targets
    names = self.forward.layer_names(params, self.config, layer)
    p = self.forward.layer_params(collections.ChainMap(dict(decoded), params), self.config, layer)
    free = [f for f, a in p.items() if a.ndim == 1]
    if not free:
      return {}, (float("nan"), float("nan"))
    tuned, losses = self._refit(layer)(p, free, _Pairs(self.hidden, self.reference, self.batches), steps=steps, lr=lr)
    return {names[f]: tuned[f] for f in free}, losses

  def _refit(self, layer: int) -> tuning.Refit:
    """The refit of block ``layer``'s forward: one for all layers of an encoder (the mask is an argument), one per
    kind of attention window for a decoder (all a layer changes in its forward)."""
    key = None if self.layout.kind != "decoder" else bool(decoder.options(self.config).sliding[layer])
    if key not in self._refits:
      kwargs = (lambda mask: self._kwargs(mask)) if key is None else (lambda mask: self._kwargs(mask, layer))
      self._refits[key] = tuning.Refit(lambda q, x, mask: self.forward.block_step(q, self.config, x,
                                                                                  **kwargs(mask))[0])
    return self._refits[key]

  def advance(self, layer: int, params: Mapping[str, Any], reference: Mapping[str, Any] | None = None) -> None:
    """Replaces the carried inputs by block ``layer``'s outputs with ``params`` (its decoded weights); with
    ``reference`` (the reference weights), the reference stream too when it is carried and :meth:`tune` has not
    advanced it already."""
    self._check_layer(layer)
    if self.carry_reference and reference is None:
      raise ConfigError("calibrate: this calibration carries the reference stream; advance(layer, decoded, "
                        "reference=reference weights)")
    if reference is not None:
      self._advance_reference(layer, reference)
    self._through(self.hidden, layer, params)
    self.layer = layer + 1

  def _through(self, carried: _Carried, layer: int, params: Mapping[str, Any]) -> None:
    """Replaces every batch of ``carried`` by block ``layer``'s output on it with ``params``."""
    p = self.forward.layer_params(params, self.config, layer)
    for i, (_, mask) in enumerate(self.batches):
      carried.put(i, self.forward.block_step(p, self.config, carried.get(i), **self._kwargs(mask, layer))[0])


class _Pairs:
  """``(compressed-model input, mask, reference target)`` per calibration batch, read when asked (so a disk
  offload keeps one batch in memory)."""

  def __init__(self, hidden: _Carried, reference: _Carried, batches: list):
    self.hidden, self.reference, self.batches = hidden, reference, batches

  def __len__(self) -> int:
    return len(self.batches)

  def __getitem__(self, i: int):
    mask = self.batches[i][1]
    return self.hidden.get(i), (None if mask is None else np.asarray(mask)), self.reference.get(i)
