"""Properties every weight transform must have: exact inverse, norm preservation (rotations), jit == eager,
vmap == loop, honest state bits; and the build-time validation of chains.

Tolerances (float32): ``max|inverse(apply(W)) - W| <= 1e-4 · max|W|`` for every transform (measured ~1e-6 for the
rotations; the PCA basis is re-orthonormalized from its float16 storage, the scales are divided back); jit vs eager
and vmap vs loop agree to ``1e-5`` relative (XLA may fuse differently).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macjax import transforms as T
from macjax.errors import ConfigError, MacjaxError, ShapeError

INV_TOL = 1e-4
EXACT_TOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Case:
  make: Callable[[], T.WeightTransform]
  side: str  # which side's dimension the test varies: "input", "output" or "both"
  orthogonal: bool  # preserves the Frobenius norm
  stats: Callable[[jax.Array, jax.Array], Any] = lambda W, key: None
  bits: Callable[[tuple[int, int]], int] | None = None  # expected state_bits for one (out, in) matrix
  dims: tuple[int, ...] = (77,)  # dimensions of the varied side (the other side is small); 77 is odd
  jit_dims: tuple[int, ...] = (77,)
  # init is an optimization through rounding (straight-through): vmap's different float order may move a coefficient
  # across a rounding boundary and take another path, so vmap(init) is compared to a loop only through apply/inverse
  discontinuous_fit: bool = False
  vmap: bool = True  # in the (compile-heavy) vmap test


def _act_cov(W, key):
  X = jax.random.normal(key, (64, W.shape[-1])) * jnp.linspace(0.1, 3.0, W.shape[-1])
  return X.T @ X / X.shape[0]


def _act_absmax(W, key):
  X = jax.random.normal(key, (64, W.shape[-1])) * jnp.linspace(0.1, 3.0, W.shape[-1])
  return jnp.max(jnp.abs(X), axis=0)


# Hadamard paths by dimension: 384 (MiniLM hidden), 576 (SmolLM2 hidden), 1536 (both FFNs), 100 (Paley II),
# 385 (odd: fallback). The other transforms have no dimension-specific path: small sizes, one odd.
HAD_DIMS = (384, 576, 1536, 100, 385)
HAD_JIT = (576, 30)

CASES = {
    "identity": Case(T.identity, "input", True, bits=lambda s: 0),
    "hadamard-in": Case(lambda: T.randomized_hadamard(side="input"), "input", True, bits=lambda s: 0,
                        dims=HAD_DIMS, jit_dims=HAD_JIT),
    "hadamard-out": Case(lambda: T.randomized_hadamard(side="output"), "output", True, bits=lambda s: 0,
                         dims=(384, 1536, 385), jit_dims=(576,)),
    "hadamard-both": Case(lambda: T.randomized_hadamard(side="both"), "both", True, bits=lambda s: 0,
                          dims=(576, 385), jit_dims=(30,)),
    "orthogonal-in": Case(lambda: T.random_orthogonal(side="input"), "input", True, bits=lambda s: 0),
    "orthogonal-both": Case(lambda: T.random_orthogonal(side="both"), "both", True, bits=lambda s: 0),
    # a float16 basis: d·d·16 bits (d = in for the input side, out for the output side)
    "pca-in": Case(lambda: T.pca(side="input"), "input", True, bits=lambda s: s[1] * s[1] * 16),
    "pca-out-f32": Case(lambda: T.pca(side="output", storage_dtype=jnp.float32), "output", True,
                        bits=lambda s: s[0] * s[0] * 32),
    "pca-head": Case(lambda: T.pca(side="output", scope="head", block_size=16), "output", True,
                     bits=lambda s: s[0] * 16 * 16, dims=(576,), jit_dims=(64,)),
    "pca-group-act": Case(lambda: T.pca(side="input", scope="group", block_size=16, source="activations"), "input",
                          True, stats=_act_cov, bits=lambda s: s[1] * 16 * 16, dims=(384,), jit_dims=(64,)),
    "pca-absorbed": Case(lambda: T.pca(side="input", absorbed=True), "input", True, bits=lambda s: 0, dims=(),
                         jit_dims=(), vmap=False),
    "scaling": Case(lambda: T.channel_scaling(alpha=0.5), "input", False, stats=_act_absmax,
                    bits=lambda s: s[1] * 16),
    "scaling-pow2": Case(lambda: T.channel_scaling(alpha=0.8, power_of_two=True), "input", False, stats=_act_absmax,
                         bits=lambda s: s[1] * 8),
    # stored skew parameters: d(d-1)/2 float16 entries
    "learned-kurtosis": Case(lambda: T.learned_rotation(objective="kurtosis", steps=5, init="identity"), "input",
                             True, bits=lambda s: s[1] * (s[1] - 1) // 2 * 16, dims=(64,), jit_dims=(32,)),
    "learned-rd-out": Case(lambda: T.learned_rotation(side="output", objective="rate_distortion", steps=5), "output",
                           True, stats=lambda W, key: _act_cov(W, key), bits=lambda s: s[0] * (s[0] - 1) // 2 * 16,
                           dims=(40,), jit_dims=(), discontinuous_fit=True, vmap=False),
    "scaling-absorbed": Case(lambda: T.channel_scaling(absorbed=True), "input", False, stats=_act_absmax,
                             bits=lambda s: 0, dims=(), jit_dims=(), vmap=False),
}


def _params(attr):
  return [pytest.param(name, d, id=f"{name}-d{d}") for name, c in CASES.items() for d in getattr(c, attr)]


def _weight(case: Case, d: int, key=0, lead=()):
  other = 8
  shape = {"input": (other, d), "output": (d, other), "both": (d, 12)}[case.side]
  W = jax.random.normal(jax.random.key(key), lead + shape)
  # heavy-tailed columns, as real weights have, so that alignment and scaling have something to act on
  return W * (1.0 + 4.0 * (jnp.arange(shape[-1]) % 17 == 0))


def _init(case, W, seed=1):
  key = jax.random.key(seed)
  return case.make().init(W, key=key, stats=case.stats(W, jax.random.key(seed + 100)))


def _close(a, b, tol):
  scale = max(float(jnp.max(jnp.abs(b))), 1e-30)
  return float(jnp.max(jnp.abs(a - b))) <= tol * scale


@pytest.mark.parametrize("name,d", _params("dims"))
def test_inverse_of_apply_is_identity(name, d):
  case = CASES[name]
  t = case.make()
  W = _weight(case, d)
  state = _init(case, W)
  W2 = t.apply(W, state)
  assert W2.shape == W.shape and W2.dtype == W.dtype
  assert _close(t.inverse(W2, state), W, INV_TOL)
  if case.orthogonal:
    np.testing.assert_allclose(float(jnp.linalg.norm(W2)), float(jnp.linalg.norm(W)), rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_state_bits(name):
  case = CASES[name]
  t = case.make()
  W = _weight(case, 96)
  state = _init(case, W)
  assert t.state_bits(state) == case.bits(W.shape)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  assert t.state_bits(abstract) == t.state_bits(state)


@pytest.mark.parametrize("name,d", _params("jit_dims"))
def test_jit_equals_eager(name, d):
  case = CASES[name]
  t = case.make()
  W = _weight(case, d)
  state = _init(case, W)
  jit_state = jax.jit(lambda W, k, s: t.init(W, key=k, stats=s))(W, jax.random.key(1),
                                                                   case.stats(W, jax.random.key(101)))
  for a, b in zip(jax.tree.leaves(jit_state), jax.tree.leaves(state)):
    if case.discontinuous_fit:
      break
    assert _close(a.astype(jnp.float32), b.astype(jnp.float32), 1e-3)
  assert _close(jax.jit(t.apply)(W, state), t.apply(W, state), EXACT_TOL)
  W2 = t.apply(W, state)
  assert _close(jax.jit(t.inverse)(W2, state), t.inverse(W2, state), EXACT_TOL)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.vmap])
def test_vmap_equals_loop(name):
  case = CASES[name]
  t = case.make()
  L = 3
  Ws = _weight(case, 48, lead=(L,))
  keys = jax.random.split(jax.random.key(1), L)
  stats = [case.stats(Ws[i], jax.random.key(100 + i)) for i in range(L)]
  stacked_stats = None if stats[0] is None else jax.tree.map(lambda *xs: jnp.stack(xs), *stats)
  states = jax.vmap(lambda W, k, s: t.init(W, key=k, stats=s))(Ws, keys, stacked_stats)
  W2s = jax.vmap(t.apply)(Ws, states)
  back = jax.vmap(t.inverse)(W2s, states)
  for i in range(L):
    st = t.init(Ws[i], key=keys[i], stats=stats[i])
    if case.discontinuous_fit:
      st = jax.tree.map(lambda x: x[i], states)
    assert _close(W2s[i], t.apply(Ws[i], st), 1e-4)
    assert _close(back[i], Ws[i], INV_TOL)
  one_bits = t.state_bits(t.init(Ws[0], key=keys[0], stats=stats[0]))
  assert t.state_bits(states) == L * one_bits  # a stack of per-layer states counts every layer


def test_seeded_rotations_depend_on_the_key_only():
  t = T.randomized_hadamard(side="input")
  W = jax.random.normal(jax.random.key(0), (4, 384))
  a = t.apply(W, t.init(W, key=jax.random.key(5)))
  b = t.apply(W, t.init(W * 2, key=jax.random.key(5)))
  c = t.apply(W, t.init(W, key=jax.random.key(6)))
  legacy = t.apply(W, t.init(W, key=jax.random.PRNGKey(5)))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, legacy)
  assert not np.allclose(a, c)


def test_seeded_transform_without_key_raises_naming_it():
  with pytest.raises(ConfigError, match="randomized_hadamard.init: key is None"):
    T.randomized_hadamard().init(jnp.ones((4, 4)))


@pytest.mark.parametrize("bad", [jnp.ones((4,)), jnp.ones((4, 4), jnp.int32), np.float32(1.0)],
                         ids=["vector", "int", "scalar"])
def test_bad_weight_raises_shape_error(bad):
  with pytest.raises(ShapeError, match="weight W"):
    T.random_orthogonal().init(bad, key=jax.random.key(0))


def test_bad_side_raises():
  with pytest.raises(ConfigError, match="side='rows'"):
    T.randomized_hadamard(side="rows")


# ---------------------------------------------------------------------------------------------------------------------
# chains


def test_chain_applies_in_order_and_inverts_in_reverse():
  h, o = T.randomized_hadamard(side="input"), T.random_orthogonal(side="output")
  t = T.chain(h, o)
  W = jax.random.normal(jax.random.key(0), (12, 20))
  state = t.init(W, key=jax.random.key(1))
  assert isinstance(state, tuple) and len(state) == 2
  manual = o.apply(h.apply(W, state[0]), state[1])
  np.testing.assert_allclose(t.apply(W, state), manual, rtol=1e-6, atol=1e-6)
  assert _close(t.inverse(t.apply(W, state), state), W, INV_TOL)
  assert t.state_bits(state) == 0


def test_named_chain_state_is_a_dict_by_name():
  t = T.named_chain(("rot", T.randomized_hadamard()), ("id", T.identity()))
  W = jax.random.normal(jax.random.key(0), (4, 12))
  state = t.init(W, key=jax.random.key(1))
  assert list(state) == ["rot", "id"]
  assert _close(jax.jit(t.inverse)(jax.jit(t.apply)(W, state), state), W, INV_TOL)


@pytest.mark.parametrize("members,match", [
    ((), "got no member"),
    ((T.identity(), T.randomized_hadamard), "member 1 is a function"),
    ((T.identity(), 3), "member 1 is a int"),
], ids=["empty", "factory-not-called", "not-a-transform"])
def test_chain_validates_members_at_build_time(members, match):
  with pytest.raises(ConfigError, match=match):
    T.chain(*members)


@pytest.mark.parametrize("members,match", [
    ((("a", T.identity()), ("a", T.identity())), "member 1 repeats the name 'a' of member 0"),
    ((("a", T.identity()), ("", T.identity())), "member 1 has name ''"),
    ((("a", T.identity()), T.identity()), "member 1 is WeightTransform"),
    ((("a", T.identity()), ("b", "hadamard")), r"member 1 \('b'\) is a str"),
], ids=["duplicate", "empty-name", "not-a-pair", "not-a-transform"])
def test_named_chain_validates_members_at_build_time(members, match):
  with pytest.raises(ConfigError, match=match):
    T.named_chain(*members)


def test_chain_init_errors_name_the_member():
  t = T.chain(T.identity(), T.randomized_hadamard())
  with pytest.raises(MacjaxError, match="chain member 1: randomized_hadamard.init: key is None"):
    t.init(jnp.ones((4, 4)))


def test_chain_stats_must_be_per_member():
  t = T.chain(T.identity(), T.identity())
  with pytest.raises(ConfigError, match="one entry per member"):
    t.init(jnp.ones((4, 4)), stats=jnp.ones((4, 4)))
  tn = T.named_chain(("a", T.identity()))
  with pytest.raises(ConfigError, match=r"unknown members \['b'\]"):
    tn.init(jnp.ones((4, 4)), stats={"b": 1})


# ---------------------------------------------------------------------------------------------------------------------
# specs (what a pipeline config names)


def test_from_spec_builds_chains():
  t = T.from_spec([{"kind": "hadamard", "side": "input", "name": "rot"},
                   {"kind": "pca", "side": "output", "storage_dtype": "float32", "name": "align"}])
  W = jax.random.normal(jax.random.key(0), (16, 12))
  state = t.init(W, key=jax.random.key(1))
  assert list(state) == ["rot", "align"] and state["align"].basis.dtype == jnp.float32
  assert t.state_bits(state) == 16 * 16 * 32
  assert _close(t.inverse(t.apply(W, state), state), W, INV_TOL)
  assert isinstance(T.from_spec([{"kind": "identity"}, {"kind": "orthogonal"}]).init(W, key=jax.random.key(0)), tuple)


@pytest.mark.parametrize("spec,match", [
    ({"kind": "dct"}, "kind='dct'"),
    ([{"kind": "pca"}, {"kind": "pca", "blocksize": 4}], r"transform spec 1 \(pca\): unknown keys \['blocksize'\]"),
    ([{"kind": "pca", "scope": "head"}], "transform spec 0: pca: scope='head' needs block_size"),
    ([{"kind": "pca", "name": "a"}, {"kind": "identity"}], r"members \[1\] have no 'name'"),
    ({"kind": "pca", "storage_dtype": "float8"}, "storage_dtype='float8'"),
    ([], "non-empty list"),
], ids=["unknown-kind", "unknown-key", "bad-value", "partly-named", "bad-dtype", "empty"])
def test_from_spec_errors(spec, match):
  with pytest.raises(ConfigError, match=match):
    T.from_spec(spec)
