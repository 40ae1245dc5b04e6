"""Hyper-parameters of ``f_θ`` and of its fit, validated once when they are built.

Everything here is static (Python numbers and strings): it lives in the closure of
:func:`macjax.fit.functional_fit` and travels as JSON metadata in an artifact (``dataclasses.asdict``); nothing
here is fitted. The fitted values are the arrays of ``θ`` (:mod:`macjax.fit.theta`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from macjax.errors import ConfigError, ShapeError

THETA_DTYPES = ("float32", "float16", "bfloat16", "int8")


class Grid(NamedTuple):
  """The static coordinate grid of one family ``f32[layers, rows, cols]`` cut into row tiles.

  ``f_θ`` is evaluated at the coordinates ``α = (l, i, t)`` — layer ``l < layers``, row (output channel)
  ``i < rows``, tile ``t < n_tiles`` — and returns the ``tile`` weights ``W[l, i, t·tile : (t+1)·tile]``.
  ``tile = 1`` is element-wise, ``tile = cols`` is row-wise.

  Attributes:
    layers: number of matrices in the family (``L``).
    rows: output features of each matrix.
    n_tiles: ``cols // tile``.
    tile: weights per evaluation of ``f_θ``.
  """

  layers: int
  rows: int
  n_tiles: int
  tile: int

  @property
  def cols(self) -> int:
    return self.n_tiles * self.tile

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.layers, self.rows, self.cols)

  @property
  def n_coords(self) -> int:
    return self.layers * self.rows * self.n_tiles


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Hyper-parameters of ``f_θ`` (model size, hence θ's bits) and of its optax fit.

  Attributes:
    width: hidden width of the MLP.
    depth: number of hidden layers (``0`` makes ``f_θ`` linear in its features).
    n_fourier: Fourier frequencies per coordinate axis (features ``sin, cos`` of each; ``0`` for none).
    tile: weights predicted per coordinate (``1`` element-wise; ``cols`` row-wise); must divide ``cols``.
    layer_embed: size of a learned embedding per layer (``0`` for none).
    row_embed: size of a learned embedding per row (output channel), shared across layers.
    col_embed: size of a learned embedding per tile position (input channel group), shared across layers.
    theta_dtype: how θ is stored: ``float32``, ``float16``, ``bfloat16`` or ``int8`` (symmetric, one float32
      scale per tensor).
    steps: optimizer steps (the budget).
    batch: coordinates sampled per step.
    lr: peak learning rate of adam (linear warm-up, then cosine decay to ``lr * final_lr_ratio``).
    warmup: fraction of ``steps`` spent warming up.
    final_lr_ratio: learning rate at the end of the schedule, relative to ``lr``.
    chunk: steps per scanned chunk; progress is reported and ``loss_target`` is checked between chunks.
    loss_target: stop a family once its mean minibatch loss over a chunk — the fraction of the energy left
      unexplained, ``‖W − f_θ‖² / ‖W‖²`` — is at most this; ``None`` runs all ``steps``.
    predict_chunk: coordinates evaluated at once by ``predict`` (memory bound, no effect on the values).
  """

  width: int = 64
  depth: int = 2
  n_fourier: int = 8
  tile: int = 1
  layer_embed: int = 0
  row_embed: int = 0
  col_embed: int = 0
  theta_dtype: str = "float16"
  steps: int = 2000
  batch: int = 4096
  lr: float = 3e-3
  warmup: float = 0.05
  final_lr_ratio: float = 0.01
  chunk: int = 250
  loss_target: float | None = None
  predict_chunk: int = 16384

  def __post_init__(self):
    positive = ("width", "tile", "steps", "batch", "chunk", "predict_chunk")
    non_negative = ("depth", "n_fourier", "layer_embed", "row_embed", "col_embed")
    for name in positive + non_negative:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"fit config: {name}={value!r} has type {type(value).__name__}; expected an int")
      if value < (1 if name in positive else 0):
        raise ConfigError(f"fit config: {name}={value}; expected {'>= 1' if name in positive else '>= 0'}")
    if self.theta_dtype not in THETA_DTYPES:
      raise ConfigError(f"fit config: theta_dtype={self.theta_dtype!r}; expected one of {THETA_DTYPES}")
    for name in ("lr", "warmup", "final_lr_ratio"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"fit config: {name}={value!r}; expected a finite number >= 0")
    if self.lr == 0 or self.warmup >= 1:
      raise ConfigError(f"fit config: lr={self.lr}, warmup={self.warmup}; expected lr > 0 and warmup < 1")
    if self.loss_target is not None and (not isinstance(self.loss_target, (int, float)) or self.loss_target < 0):
      raise ConfigError(f"fit config: loss_target={self.loss_target!r}; expected None or a number >= 0")

  def grid(self, shape: tuple[int, ...], *, name: str = "Ws") -> Grid:
    """The coordinate grid of a family of shape ``(L, rows, cols)``.

    Raises:
      ShapeError: ``shape`` is not 3-D with positive sizes, or ``tile`` does not divide ``cols``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
      raise ShapeError(f"{name}: shape {shape}; expected (layers, rows, cols) with positive sizes")
    layers, rows, cols = shape
    if cols % self.tile:
      raise ShapeError(f"{name}: shape {shape} has cols={cols}, not a multiple of tile={self.tile}")
    return Grid(layers, rows, cols // self.tile, self.tile)

  @property
  def in_features(self) -> int:
    """Input size of the MLP: 3 normalized coordinates, ``2·n_fourier`` Fourier features per axis, embeddings."""
    return 3 + 6 * self.n_fourier + self.layer_embed + self.row_embed + self.col_embed
