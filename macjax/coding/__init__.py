"""Entropy coding of integer codes on the host with ``constriction`` (ANS), models stored with the data.

Public API: :class:`CodedTensor`, :func:`encode`, :func:`decode`, :func:`information_bits` (JAX), and
:func:`coded_bits` (the bits each part occupies).
"""

from __future__ import annotations

from macjax.coding.codec import CodedTensor, coded_bits, decode, encode, information_bits, model_weights

__all__ = ["CodedTensor", "coded_bits", "decode", "encode", "information_bits", "model_weights"]
