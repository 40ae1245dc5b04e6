"""θ: the parameters of ``f_θ``, in their training form (float32) and their stored form (what is counted).

Training form — a flat ``{name: f32 array}`` dict:

* ``embed.layer`` ``[L, layer_embed]``, ``embed.row`` ``[rows, row_embed]``, ``embed.col`` ``[n_tiles, col_embed]``
  (each only when its size is > 0);
* ``dense_k.w`` ``[in, out]`` and ``dense_k.b`` ``[out]`` for ``k = 0 … depth`` (the last one maps ``width`` to
  ``tile``);
* ``out_scale`` ``[]`` — the RMS of the family, ``σ = sqrt(mean W²)``; the MLP fits ``W / σ``. It is set from
  the data, never trained.

Stored form (:data:`Theta`) — the same flat dict, every tensor but ``out_scale`` cast to ``theta_dtype``; for
``int8`` each tensor ``x`` becomes codes ``q = round(x / s)`` (``int8``, ``|q| ≤ 127``) plus ``name.scale`` =
``s = max|x| / 127`` (float32, ``s = 1`` for an all-zero tensor); ``bfloat16`` is stored as its raw bits in
``uint16`` arrays (numpy's own file format and some serializers do not know bfloat16; uint16 goes anywhere).
``out_scale`` stays float32. The stored form is
a flat dict of arrays: it is saved as is (numpy arrays, no pickle), and its bits are exactly
``Σ size · itemsize · 8`` (:func:`theta_bits`). Both encoder and decoder predict from the stored form, through
:func:`dequantize`, so they compute the same numbers.

A stack of ``F`` families fitted with ``vmap`` has the same keys with a leading axis ``F`` on every array.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from macjax.errors import ArtifactError, NonFiniteError, ShapeError
from macjax.fit.config import FitConfig, Grid

Theta = dict  # {name: array}: the stored form of θ, see the module docstring.

_FLOAT_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                 "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_STORED_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                  "bfloat16": np.dtype(np.uint16), "int8": np.dtype(np.int8)}
_INT8_MAX = 127


def param_shapes(cfg: FitConfig, grid: Grid) -> dict[str, tuple[int, ...]]:
  """Shapes of the training form of θ for one family (see the module docstring), in a fixed order.

  Example:
    >>> cfg = FitConfig(width=8, depth=1, n_fourier=0)
    >>> param_shapes(cfg, cfg.grid((2, 4, 4)))["dense_1.w"]
    (8, 1)
  """
  shapes: dict[str, tuple[int, ...]] = {}
  for name, count, size in (("layer", grid.layers, cfg.layer_embed), ("row", grid.rows, cfg.row_embed),
                            ("col", grid.n_tiles, cfg.col_embed)):
    if size:
      shapes[f"embed.{name}"] = (count, size)
  widths = [cfg.in_features] + [cfg.width] * cfg.depth + [grid.tile]
  for k, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
    shapes[f"dense_{k}.w"] = (fan_in, fan_out)
    shapes[f"dense_{k}.b"] = (fan_out,)
  shapes["out_scale"] = ()
  return shapes


def init_params(cfg: FitConfig, grid: Grid, *, key: jax.Array) -> dict[str, jax.Array]:
  """Initial training form of θ: embeddings ``N(0, 1)``, hidden layers He-normal, last layer and biases zero.

  The zero last layer makes the initial prediction exactly 0 (nothing explained, nothing made worse);
  ``out_scale`` starts at 1 and is set from the data by the fit.

  Example:
    >>> cfg = FitConfig(width=8, depth=1, n_fourier=2)
    >>> p = init_params(cfg, cfg.grid((2, 4, 4)), key=jax.random.key(0))
    >>> float(jnp.abs(p["dense_1.w"]).sum())
    0.0
  """
  shapes = param_shapes(cfg, grid)
  last = f"dense_{cfg.depth}.w"
  drawn = [n for n in shapes if n.startswith("embed.") or (n.endswith(".w") and n != last)]
  sizes = [int(np.prod(shapes[n])) for n in drawn]
  # One draw sliced into tensors: a single random kernel compiles much faster than one per tensor.
  normal = jax.random.normal(key, (sum(sizes),), jnp.float32)
  offsets = np.cumsum([0] + sizes)
  params = {}
  for name, shape in shapes.items():
    if name in drawn:
      k = drawn.index(name)
      x = normal[offsets[k]:offsets[k + 1]].reshape(shape)
      params[name] = x if name.startswith("embed.") else x * np.float32(np.sqrt(2.0 / shape[0]))
    elif name == "out_scale":
      params[name] = jnp.ones((), jnp.float32)
    else:
      params[name] = jnp.zeros(shape, jnp.float32)
  return params


def _stored_dtype(theta_dtype: str) -> np.dtype:
  return _STORED_DTYPES[theta_dtype]


def theta_spec(cfg: FitConfig, grid: Grid) -> dict[str, jax.ShapeDtypeStruct]:
  """The abstract stored form of θ for one family: what a restore must be checked (or an Orbax restore run) against.

  Example:
    >>> cfg = FitConfig(width=8, depth=1, n_fourier=0, theta_dtype="int8")
    >>> spec = theta_spec(cfg, cfg.grid((2, 4, 4)))
    >>> spec["dense_0.w"].dtype, spec["dense_0.w.scale"].shape
    (dtype('int8'), ())
  """
  spec = {}
  dtype = _stored_dtype(cfg.theta_dtype)
  for name, shape in param_shapes(cfg, grid).items():
    if name == "out_scale":
      spec[name] = jax.ShapeDtypeStruct((), np.float32)
      continue
    spec[name] = jax.ShapeDtypeStruct(shape, dtype)
    if cfg.theta_dtype == "int8":
      spec[f"{name}.scale"] = jax.ShapeDtypeStruct((), np.float32)
  return spec


def quantize(params: Mapping[str, jax.Array], cfg: FitConfig) -> Theta:
  """Stored form of θ from its training form, for one family (``jax.vmap`` it over a stack).

  Math: float dtypes round to nearest; ``int8``: ``s = max|x| / 127`` (``1`` if ``x = 0``), ``q = round(x / s)``.

  Raises:
    NonFiniteError: a tensor of θ is NaN/inf, or overflows ``float16``.

  Example:
    >>> cfg = FitConfig(theta_dtype="int8")
    >>> t = quantize({"dense_0.w": jnp.array([0.5, -1.0]), "out_scale": jnp.float32(2.0)}, cfg)
    >>> t["dense_0.w"].tolist(), round(float(t["dense_0.w.scale"]) * 127, 6)
    ([64, -127], 1.0)
  """
  theta = {}
  for name, x in params.items():
    x = jnp.asarray(x, jnp.float32)
    if name == "out_scale":
      theta[name] = x
    elif cfg.theta_dtype == "int8":
      amax = jnp.max(jnp.abs(x))
      scale = jnp.where(amax > 0, amax / _INT8_MAX, 1.0).astype(jnp.float32)
      theta[name] = jnp.clip(jnp.round(x / scale), -_INT8_MAX, _INT8_MAX).astype(jnp.int8)
      theta[f"{name}.scale"] = scale
    elif cfg.theta_dtype == "bfloat16":
      theta[name] = jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)
    else:
      theta[name] = x.astype(_FLOAT_DTYPES[cfg.theta_dtype])
  return theta


def dequantize(theta: Mapping[str, jax.Array], cfg: FitConfig) -> dict[str, jax.Array]:
  """Training form (float32) of θ from its stored form, for one family (``jax.vmap`` it over a stack).

  Example:
    >>> cfg = FitConfig(theta_dtype="int8")
    >>> t = {"dense_0.w": jnp.array([64, -127], jnp.int8), "dense_0.w.scale": jnp.float32(1 / 127),
    ...      "out_scale": jnp.float32(2.0)}
    >>> [round(float(x), 3) for x in dequantize(t, cfg)["dense_0.w"]]
    [0.504, -1.0]
  """
  params = {}
  for name, x in theta.items():
    if name.endswith(".scale"):
      continue
    x = jnp.asarray(x)
    if cfg.theta_dtype == "int8" and name != "out_scale":
      params[name] = x.astype(jnp.float32) * jnp.asarray(theta[f"{name}.scale"], jnp.float32)
    elif cfg.theta_dtype == "bfloat16" and name != "out_scale":
      params[name] = jax.lax.bitcast_convert_type(x, jnp.bfloat16).astype(jnp.float32)
    else:
      params[name] = x.astype(jnp.float32)
  return params


def check_theta(theta: Mapping[str, object], spec: Mapping[str, jax.ShapeDtypeStruct], *,
                name: str = "theta", batch: tuple[int, ...] = (), finite: bool = True) -> None:
  """Checks a (restored) stored θ against its abstract form: same keys, shapes (after ``batch``), dtypes, finite.

  ``finite=False`` skips the value check (it reads the arrays, which a ``jit`` tracer cannot).

  Raises:
    ArtifactError: a key is missing or unexpected.
    ShapeError: an array has another shape or dtype than the spec says.
    NonFiniteError: an array holds NaN/inf.
  """
  missing, extra = sorted(set(spec) - set(theta)), sorted(set(theta) - set(spec))
  if missing or extra:
    raise ArtifactError(f"{name}: keys missing {missing}, unexpected {extra}; expected exactly {sorted(spec)}")
  for key, want in spec.items():
    value = theta[key]
    shape, dtype = tuple(np.shape(value)), np.dtype(getattr(value, "dtype", np.asarray(value).dtype))
    if shape != batch + tuple(want.shape) or dtype != np.dtype(want.dtype):
      raise ShapeError(f"{name}[{key!r}]: {dtype.name}{list(shape)}; "
                       f"expected {np.dtype(want.dtype).name}{list(batch + tuple(want.shape))}")
    if finite and dtype.kind == "f" and not bool(np.all(np.isfinite(np.asarray(value, np.float32)))):
      raise NonFiniteError(f"{name}[{key!r}]: holds NaN or infinity; expected finite values")


def theta_bits(theta: Mapping[str, object]) -> int:
  """Exact storage size of a stored θ in bits: ``Σ_arrays size · itemsize · 8`` (every array, scales included).

  Example:
    >>> theta_bits({"w": np.zeros((3, 4), np.float16), "out_scale": np.float32(1)})
    224
  """
  return int(sum(np.asarray(v).size * np.asarray(v).dtype.itemsize * 8 for v in theta.values()))


def spec_bits(spec: Mapping[str, jax.ShapeDtypeStruct]) -> int:
  """Storage size in bits that a θ of this abstract form will have (equal to :func:`theta_bits` of it)."""
  return int(sum(int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize * 8 for s in spec.values()))


def to_numpy(theta: Mapping[str, object]) -> dict[str, np.ndarray]:
  """θ as a flat dict of numpy arrays (what the artifact module saves); values and dtypes unchanged.

  Raises:
    NonFiniteError: a float16 tensor overflowed (|x| > 65504) or θ holds NaN.
  """
  out = {name: np.asarray(value) for name, value in theta.items()}
  for name, value in out.items():
    if value.dtype.kind == "f" and not np.all(np.isfinite(value.astype(np.float32))):
      raise NonFiniteError(f"theta[{name!r}]: {value.dtype.name}{list(value.shape)} holds NaN or infinity "
                           "(float16 overflow?); expected finite values")
  return out


def from_numpy(arrays: Mapping[str, np.ndarray], cfg: FitConfig, shape: tuple[int, ...], *,
               batch: tuple[int, ...] = ()) -> Theta:
  """Stored θ from a flat dict of numpy arrays (as restored), checked against the spec of ``cfg`` and ``shape``.

  Example:
    >>> cfg = FitConfig(width=4, depth=1, n_fourier=0)
    >>> t = quantize(init_params(cfg, cfg.grid((2, 3, 3)), key=jax.random.key(0)), cfg)
    >>> sorted(from_numpy(to_numpy(t), cfg, (2, 3, 3))) == sorted(t)
    True
  """
  check_theta(arrays, theta_spec(cfg, cfg.grid(shape)), batch=batch)
  return {name: jnp.asarray(np.asarray(value)) for name, value in arrays.items()}
