"""Load a checkpoint (Hugging Face safetensors folder or GGUF file, or a model alias) into a :class:`Model`.

Example:
  >>> from macjax.load import load_model
  >>> model = load_model("minilm-l6")  # doctest: +SKIP
  >>> model.layout.by_role("q")[0].shape  # doctest: +SKIP
  (384, 384)
"""

from __future__ import annotations

from macjax.load.layout import FAMILIES, MATRIX_ROLES, MatrixInfo, Model, ModelLayout
from macjax.load.lazy import LazyTensors
from macjax.load.loader import check_finite, check_params, load_model, open_model
from macjax.load.registry import MODEL_ALIASES

__all__ = ["FAMILIES", "MATRIX_ROLES", "MODEL_ALIASES", "LazyTensors", "MatrixInfo", "Model", "ModelLayout",
           "check_finite", "check_params", "load_model", "open_model"]
