"""``W = f_θ(α) + r``: a small MLP over a family's coordinates, fitted across layers with optax under jit.

A *family* is the stack of one role's matrices across layers, ``f32[L, rows, cols]`` (all q's, all down's, …;
:meth:`macjax.load.layout.ModelLayout.by_role` lists them). ``f_θ`` maps the intrinsic coordinates
``α = (layer, row, tile)`` — Fourier features of the normalized coordinates plus optional learned per-layer,
per-row and per-tile embeddings — to ``tile`` weights of row ``row`` (``tile=1``: one weight; ``tile=cols``: a
whole row). One θ per family, fitted jointly across its layers; ``jax.vmap`` fits families of equal shape at once.

Typical use (the pipeline's side)::

    ff = functional_fit(width=64, depth=2, n_fourier=8, steps=2000, theta_dtype="float16")
    theta = ff.fit(Ws, key=jax.random.key(seed))        # stored θ: a flat {name: array} dict
    pred = ff.predict(theta, Ws.shape)                  # f32[L, rows, cols], from the *stored* θ
    residual = Ws - pred                                 # → quantizer and entropy coder
    bits = theta_bits(theta)                             # exact: Σ bytes of θ's arrays × 8
    arrays = to_numpy(theta)                             # save these (Orbax); metadata: asdict(ff.config)
    # decoder: ff = functional_fit(**config); theta = from_numpy(arrays, ff.config, shape)
    #          W_hat = ff.predict(theta, shape) + residual_hat   # same prediction, bit for bit, same backend

Why a pure-JAX pytree and not flax nnx / equinox: θ *is* what gets stored — a flat dict of (quantized) arrays
whose every byte is counted — and the decoder must rebuild ``f_θ`` from those arrays and the JSON config
alone. A dict of arrays is already a pytree (``vmap`` over families, ``optax`` updates, ``jax.tree.map``) and
already the artifact's format, with no module graph to split/merge, no ``nnx.State`` to flatten and no
dependency on a flax API that differs between the CPU and GPU images. The MLP itself is ten lines
(:mod:`macjax.fit.model`).

Modules: :mod:`~macjax.fit.config` (hyper-parameters, grid), :mod:`~macjax.fit.model` (``f_θ``),
:mod:`~macjax.fit.theta` (stored form, accounting), :mod:`~macjax.fit.functional` (the factory and its jitted
fit), :mod:`~macjax.fit.energy` (explained energy), :mod:`~macjax.fit.budget` (width for a bit budget).
"""

from __future__ import annotations

from macjax.fit.budget import width_for_budget
from macjax.fit.config import THETA_DTYPES, FitConfig, Grid
from macjax.fit.energy import ExplainedEnergy, explained_energy, gaussian_rate_gain
from macjax.fit.functional import FitProgress, FunctionalFit, functional_fit
from macjax.fit.theta import Theta, check_theta, from_numpy, spec_bits, theta_bits, theta_spec, to_numpy

__all__ = [
    "THETA_DTYPES", "ExplainedEnergy", "FitConfig", "FitProgress", "FunctionalFit", "Grid", "Theta",
    "check_theta", "explained_energy", "from_numpy", "functional_fit", "gaussian_rate_gain", "spec_bits",
    "theta_bits", "theta_spec", "to_numpy", "width_for_budget",
]
