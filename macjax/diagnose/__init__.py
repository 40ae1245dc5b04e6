"""Statistics of weights in some coordinates: kurtosis, max/RMS, effective rank, top-k energy, entropy at a step.

Functions of one matrix; ``jax.vmap`` them over a stack of layers. See :mod:`macjax.diagnose.stats` for the maths.
:mod:`macjax.diagnose.bound` gives the Shannon lower bound on the bits of a set of matrices at a weight error (host
numpy), the yardstick for how much any coder could still gain.
"""

from __future__ import annotations

from macjax.diagnose.bound import differential_entropy, shannon_lower_bound
from macjax.diagnose.stats import (MatrixStats, code_entropy, effective_rank, kurtosis, matrix_stats, max_to_rms,
                                   participation_ratio, stats_by_coordinates, top_energy_ratio)

__all__ = [
    "MatrixStats",
    "code_entropy",
    "differential_entropy",
    "effective_rank",
    "kurtosis",
    "matrix_stats",
    "max_to_rms",
    "participation_ratio",
    "shannon_lower_bound",
    "stats_by_coordinates",
    "top_energy_ratio",
]
