"""Changes of coordinates for weight matrices: ``WeightTransform(init, apply, inverse, state_bits)`` factories.

Rotations flatten (randomized Hadamard, random orthogonal, learned rotations); alignments concentrate (PCA/KLT at
several scopes, activation-aware channel scaling). Every transform works on one ``(out, in)`` matrix, ``vmap``s over a
stack of layers, composes with :func:`chain` / :func:`named_chain`, and says what its state costs to store.
See :mod:`macjax.transforms.base` for the conventions.
"""

from __future__ import annotations

from macjax.transforms.base import (EmptyState, SeedState, WeightTransform, chain, identity, named_chain)
from macjax.transforms.hadamard import hadamard_matrix, hadamard_plan, randomized_hadamard
from macjax.transforms.invariance import InvariantRewrite, residual_pca_basis, rotate_llama
from macjax.transforms.learned import (LearnedRotationState, cayley, learned_rotation, rotation_objective,
                                      soft_code_entropy)
from macjax.transforms.orthogonal import random_orthogonal, random_orthogonal_matrix
from macjax.transforms.pca import PCAState, orthonormalize, pca, principal_basis
from macjax.transforms.registry import FACTORIES, from_spec
from macjax.transforms.scaling import ScaleState, channel_scaling, smoothquant_scales

__all__ = [
    "EmptyState",
    "FACTORIES",
    "from_spec",
    "InvariantRewrite",
    "residual_pca_basis",
    "rotate_llama",
    "LearnedRotationState",
    "cayley",
    "learned_rotation",
    "rotation_objective",
    "soft_code_entropy",
    "PCAState",
    "ScaleState",
    "channel_scaling",
    "orthonormalize",
    "pca",
    "principal_basis",
    "smoothquant_scales",
    "SeedState",
    "WeightTransform",
    "chain",
    "hadamard_matrix",
    "hadamard_plan",
    "identity",
    "named_chain",
    "random_orthogonal",
    "random_orthogonal_matrix",
    "randomized_hadamard",
]
