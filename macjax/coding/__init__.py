"""Entropy coding of integer codes on the host with ``constriction`` (ANS), models stored with the data.

Public API: :class:`CodedTensor`, :func:`encode`, :func:`decode`, :func:`information_bits` (JAX), and
:func:`coded_bits` (the bits each part occupies); :mod:`macjax.coding.rate` holds the differentiable JAX rate
estimates; :mod:`macjax.coding.models` the model kinds (histogram, discrete Laplace/Gaussian/logistic);
:mod:`macjax.coding.contexts` the row × column context classes of the ``classed`` model.
"""

from __future__ import annotations

from macjax.coding import contexts, rate
from macjax.coding.codec import (ENCODE_MODELS, CodedTensor, coded_bits, decode, encode, information_bits,
                                 model_weights)

__all__ = ["ENCODE_MODELS", "CodedTensor", "coded_bits", "contexts", "decode", "encode", "information_bits",
           "model_weights", "rate"]
