"""The weight-transform interface and its compositions.

A :class:`WeightTransform` is a named tuple of four pure functions, in the style of optax's
``GradientTransformation`` and distrax's bijectors:

* ``init(W, *, key=None, stats=None) -> state`` fits the transform to a weight (a PCA basis, channel scales,
  a learned rotation) or records the seed it draws from;
* ``apply(W, state) -> W2`` maps the weight into the new coordinates;
* ``inverse(W2, state) -> W`` maps it back, ``inverse(apply(W, s), s) == W`` to float tolerance;
* ``state_bits(state) -> int`` is what the state costs to store in an artifact.

Conventions shared by every transform of :mod:`macjax.transforms`:

* ``W`` is one matrix ``(out_features, in_features)`` in Hugging Face layout. Leading axes ``(..., out, in)`` are
  allowed by ``apply``/``inverse`` and share one state; a *stack* with one state per layer is ``jax.vmap`` of
  ``init`` and ``apply`` (state arrays then carry the same leading axis).
* The state is a pytree of arrays only (a NamedTuple per transform); hyper-parameters live in the factory's closure.
  Nothing in the state is static: shapes of the state follow from the weight's shape and the hyper-parameters.
* Randomness comes from ``key`` (a ``jax.random`` key, legacy ``uint32[2]`` or typed); the state keeps the raw
  ``uint32[2]`` key data, so a seeded transform is re-derived on the decoder from a seed.
* ``state_bits`` is a plain Python ``int`` computed from the state's *shapes and dtypes* only, so it works on
  concrete arrays, on ``jax.ShapeDtypeStruct`` trees and outside ``jit``. A seed costs 0 bits (it travels in the
  artifact's header with the configuration); so does any state declared absorbed into the model (e.g. channel
  scales folded into a preceding norm, or a residual-stream basis folded into neighbouring weights). A stored
  array costs ``size * bits_per_entry`` of the dtype it is stored in (float16: 16 bits per entry): stacked states
  (from ``vmap``) therefore count every layer, and one state shared by a stack counts once.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from macjax import transforms as T
  >>> t = T.chain(T.randomized_hadamard(side="input"), T.pca(side="output"))
  >>> W = jax.random.normal(jax.random.key(0), (64, 96))
  >>> state = t.init(W, key=jax.random.key(1))
  >>> W2 = t.apply(W, state)
  >>> bool(jnp.allclose(t.inverse(W2, state), W, atol=1e-4)), t.state_bits(state)
  (True, 65536)
"""

from __future__ import annotations

import collections
import collections.abc
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from macjax.errors import ConfigError, MacjaxError, ShapeError

PyTree = Any
State = PyTree


class InitFn(Protocol):

  def __call__(self, W: jax.Array, *, key: jax.Array | None = None, stats: PyTree = None) -> State:
    ...


class WeightTransform(NamedTuple):
  """A change of coordinates for a weight matrix, as four pure functions.

  Attributes:
    init: ``init(W, *, key=None, stats=None) -> state``; fits the state (arrays only).
    apply: ``apply(W, state) -> W2``.
    inverse: ``inverse(W2, state) -> W`` with ``inverse(apply(W, s), s) ≈ W``.
    state_bits: ``state_bits(state) -> int``, the bits needed to store ``state`` (0 for seeds and absorbed states).
  """

  init: InitFn
  apply: Callable[[jax.Array, State], jax.Array]
  inverse: Callable[[jax.Array, State], jax.Array]
  state_bits: Callable[[State], int]


class EmptyState(NamedTuple):
  """The state of a transform with nothing to fit."""


class SeedState(NamedTuple):
  """The state of a transform drawn from a seed: the raw ``uint32[2]`` key data (0 bits: it is a seed)."""

  key: jax.Array


def identity() -> WeightTransform:
  """The identity change of coordinates, ``W2 = W`` (0 bits); the reference row of a diagnosis.

  Example:
    >>> t = identity()
    >>> t.apply(jnp.ones((2, 3)), t.init(jnp.ones((2, 3)))).shape
    (2, 3)
  """

  def init_fn(W, *, key=None, stats=None):
    del key, stats
    check_matrix(W, "identity.init")
    return EmptyState()

  def apply_fn(W, state):
    del state
    return W

  return WeightTransform(init_fn, apply_fn, apply_fn, lambda state: 0)


# ---------------------------------------------------------------------------------------------------------------------
# helpers shared by the transforms


def check_matrix(W: Any, where: str) -> None:
  """Raises :class:`ShapeError` unless ``W`` is an array of rank >= 2 with a floating dtype.

  Args:
    W: the weight, ``(..., out, in)``.
    where: the calling function, named in the message.
  """
  shape = getattr(W, "shape", None)
  dtype = getattr(W, "dtype", None)
  if shape is None or len(shape) < 2:
    raise ShapeError(f"{where}: weight W has shape {shape}; expected a matrix (out_features, in_features) "
                     "or a stack (..., out_features, in_features)")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ShapeError(f"{where}: weight W has dtype {dtype}; expected a floating dtype")


def side_dim(W: Any, side: str) -> int:
  """The size of the axis a one-sided transform acts on: ``in`` for ``side="input"``, ``out`` for ``"output"``."""
  return int(W.shape[-1] if side == "input" else W.shape[-2])


def check_side(side: str, where: str, allowed: tuple[str, ...] = ("input", "output")) -> None:
  """Raises :class:`ConfigError` unless ``side`` is one of ``allowed``."""
  if side not in allowed:
    raise ConfigError(f"{where}: side={side!r}; expected one of {allowed}")


def key_data(key: Any, where: str) -> jax.Array:
  """The raw ``uint32[..., 2]`` data of a ``jax.random`` key (legacy or typed); :class:`ConfigError` if missing.

  Example:
    >>> key_data(jax.random.key(0), "demo").dtype
    dtype('uint32')
  """
  if key is None:
    raise ConfigError(f"{where}: key is None; expected a jax.random key (this transform is drawn from a seed)")
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  if key.dtype != jnp.uint32 or key.shape[-1:] != (2,):
    raise ConfigError(f"{where}: key has shape {key.shape} and dtype {key.dtype}; expected a jax.random key "
                      "(typed, or legacy uint32[2])")
  return key


def array_bits(x: Any) -> int:
  """Bits to store an array as it is: ``size * itemsize * 8`` (works on ``jax.ShapeDtypeStruct`` too).

  Example:
    >>> array_bits(jnp.zeros((4, 4), jnp.float16))
    256
  """
  return int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize * 8


def apply_on_side(W: jax.Array, side: str, right_fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """Applies a map ``X -> X @ M`` (given as ``right_fn``, acting on the last axis) to one side of ``W``.

  ``side="input"`` gives ``W @ M``; ``side="output"`` gives ``M^T @ W`` (the rows of ``W`` are mixed), so that
  with an orthogonal ``M`` both sides use the same convention: coefficients of ``W`` in the basis ``M``'s columns.
  """
  if side == "input":
    return right_fn(W)
  return jnp.swapaxes(right_fn(jnp.swapaxes(W, -1, -2)), -1, -2)


# ---------------------------------------------------------------------------------------------------------------------
# compositions


def seeded_rotation(name: str, side: str, rotated: Callable[..., jax.Array]) -> WeightTransform:
  """A rotation drawn from a seed: the state is the key (:class:`SeedState`, 0 bits to store).

  Args:
    name: the factory's name, for error messages.
    side: ``"input"``, ``"output"`` or ``"both"``.
    rotated: ``rotated(W, key, *, sides, inverse) -> W2`` applying the rotation(s) drawn from ``key`` on ``sides``
      (its inverse when ``inverse``).

  Returns:
    A :class:`WeightTransform`.
  """
  check_side(side, name, ("input", "output", "both"))
  sides = ("input", "output") if side == "both" else (side,)

  def init_fn(W, *, key=None, stats=None):
    del stats
    check_matrix(W, f"{name}.init")
    return SeedState(key_data(key, f"{name}.init"))

  def apply_fn(W, state):
    return rotated(W, state.key, sides=sides, inverse=False)

  def inverse_fn(W2, state):
    return rotated(W2, state.key, sides=sides, inverse=True)

  return WeightTransform(init_fn, apply_fn, inverse_fn, lambda state: 0)


def _is_transform(t: Any) -> bool:
  return isinstance(t, WeightTransform) and all(callable(f) for f in t)


def _split_keys(key: Any, n: int) -> list[Any]:
  if key is None:
    return [None] * n
  return list(jax.random.split(key, n))


def _member_stats(stats: Any, keys: list[Any], where: str) -> list[Any]:
  """Per-member statistics: None for all, or one entry per member (a sequence for chain, a mapping for named)."""
  if stats is None:
    return [None] * len(keys)
  if isinstance(keys[0], str):
    if not isinstance(stats, collections.abc.Mapping):
      raise ConfigError(f"{where}: stats has type {type(stats).__name__}; expected None or a mapping from member "
                        f"name to that member's stats (names {keys})")
    unknown = sorted(set(stats) - set(keys))
    if unknown:
      raise ConfigError(f"{where}: stats names unknown members {unknown}; expected a subset of {keys}")
    return [stats.get(k) for k in keys]
  if not isinstance(stats, (tuple, list)) or len(stats) != len(keys):
    found = f"a sequence of length {len(stats)}" if isinstance(stats, (tuple, list)) else type(stats).__name__
    raise ConfigError(f"{where}: stats is {found}; expected None or one entry per member ({len(keys)}), "
                      "None where a member takes none")
  return list(stats)


def _compose(labels: list[Any], members: list[WeightTransform], where: str, wrap: Callable[[list[Any]], State]):
  n = len(members)

  def init_fn(W, *, key=None, stats=None):
    check_matrix(W, f"{where}.init")
    keys = _split_keys(key, n)
    member_stats = _member_stats(stats, labels, f"{where}.init")
    states = []
    for label, t, k, s in zip(labels, members, keys, member_stats):
      try:
        st = t.init(W, key=k, stats=s)
      except MacjaxError as e:
        raise type(e)(f"{where} member {label!r}: {e}") from e
      states.append(st)
      W = t.apply(W, st)
    return wrap(states)

  def unwrap(state):
    if isinstance(labels[0], str):
      return [state[k] for k in labels]
    return list(state)

  def apply_fn(W, state):
    for t, st in zip(members, unwrap(state)):
      W = t.apply(W, st)
    return W

  def inverse_fn(W2, state):
    for t, st in reversed(list(zip(members, unwrap(state)))):
      W2 = t.inverse(W2, st)
    return W2

  def state_bits_fn(state):
    return int(sum(t.state_bits(st) for t, st in zip(members, unwrap(state))))

  return WeightTransform(init_fn, apply_fn, inverse_fn, state_bits_fn)


def chain(*transforms: WeightTransform) -> WeightTransform:
  """Composes transforms: ``apply`` runs them in order, ``inverse`` in reverse order.

  For members ``t_1 … t_n`` with states ``s_i``: ``apply(W) = t_n(… t_1(W))``, ``inverse = t_1^{-1} ∘ … ∘ t_n^{-1}``,
  ``state_bits = Σ_i bits(s_i)``. ``init`` fits each member on the output of the previous one and splits ``key``
  into ``n`` keys (member ``i`` gets the ``i``-th). ``stats`` is ``None`` or a sequence with one entry per member
  (``None`` where unused), each in that member's own input coordinates. The state is the tuple of member states.

  Args:
    *transforms: at least one :class:`WeightTransform`.

  Returns:
    A :class:`WeightTransform`.

  Raises:
    ConfigError: at build time, naming the index of a member that is not a :class:`WeightTransform`.

  Example:
    >>> t = chain(identity(), identity())
    >>> t.init(jnp.ones((2, 2)))
    (EmptyState(), EmptyState())
  """
  if not transforms:
    raise ConfigError("chain: got no member; expected at least one WeightTransform")
  for i, t in enumerate(transforms):
    if not _is_transform(t):
      raise ConfigError(f"chain: member {i} is a {type(t).__name__}; expected a WeightTransform "
                        "(a factory's result, e.g. randomized_hadamard(), not the factory itself)")
  return _compose(list(range(len(transforms))), list(transforms), "chain", tuple)


def named_chain(*named: tuple[str, WeightTransform]) -> WeightTransform:
  """Like :func:`chain`, with each member named; the state is a dict ``{name: member state}`` in chain order.

  ``stats`` for ``init`` is ``None`` or a mapping ``{name: member stats}`` (absent names get ``None``).

  Args:
    *named: ``(name, transform)`` pairs; names are unique non-empty strings.

  Returns:
    A :class:`WeightTransform`.

  Raises:
    ConfigError: at build time, naming the index (and name) of a malformed pair, a repeated name, or a member that
      is not a :class:`WeightTransform`.

  Example:
    >>> t = named_chain(("a", identity()), ("b", identity()))
    >>> list(t.init(jnp.ones((2, 2))))
    ['a', 'b']
  """
  if not named:
    raise ConfigError("named_chain: got no member; expected at least one (name, WeightTransform) pair")
  seen: dict[str, int] = {}
  for i, pair in enumerate(named):
    if not (isinstance(pair, tuple) and len(pair) == 2):
      raise ConfigError(f"named_chain: member {i} is {type(pair).__name__} {pair!r:.60}; expected a "
                        "(name, WeightTransform) pair")
    name, t = pair
    if not isinstance(name, str) or not name:
      raise ConfigError(f"named_chain: member {i} has name {name!r}; expected a non-empty string")
    if name in seen:
      raise ConfigError(f"named_chain: member {i} repeats the name {name!r} of member {seen[name]}; "
                        "expected unique names")
    seen[name] = i
    if not _is_transform(t):
      raise ConfigError(f"named_chain: member {i} ({name!r}) is a {type(t).__name__}; expected a WeightTransform")
  names = [n for n, _ in named]
  return _compose(names, [t for _, t in named], "named_chain", lambda states: dict(zip(names, states)))
