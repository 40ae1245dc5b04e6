"""Export weights as a Hugging Face model folder that ``transformers`` and :func:`macjax.load.load_model` load.

Example:
  >>> from macjax.export import export_hf
  >>> export_hf(model.params, model.layout, model.tokenizer_files, "out/model")  # doctest: +SKIP
  PosixPath('out/model')
"""

from __future__ import annotations

from macjax.export.hf import EXPORT_DTYPES, ExportError, export_hf, export_hf_stream

__all__ = ["EXPORT_DTYPES", "ExportError", "export_hf", "export_hf_stream"]
