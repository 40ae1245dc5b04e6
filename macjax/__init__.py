"""macjax: compress transformer weights in manifold-aligned coordinates, W = f_θ(α) + r, with honest bit counts.

Stages live in sub-packages named after the data flow: ``load``, ``diagnose``, ``transforms``, ``fit``,
``quantize``, ``coding``, ``artifact``, ``pipeline`` (the only one that knows the order), ``export``, ``evaluate``.
"""

__version__ = "0.1.0"
