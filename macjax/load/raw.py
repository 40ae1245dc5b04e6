"""What a file reader returns, before the family checks of :mod:`macjax.load.loader`.

Example:
  >>> raw = RawCheckpoint(params={}, config={"model_type": "bert"}, tokenizer_files={}, source_dtypes={})
  >>> raw.config["model_type"]
  'bert'
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class RawCheckpoint:
  """The unchecked contents of a checkpoint.

  Attributes:
    params: tensor name (Hugging Face naming) -> array; floats already float32, integer buffers as stored.
    config: the Hugging Face ``config.json`` dict.
    tokenizer_files: file name -> bytes.
    source_dtypes: tensor name -> how the file stored it (``"F32"``, ``"BF16"``, ``"Q4_1"`` ...).
    tokenizer_error: why there are no tokenizer files (a GGUF tokenizer this toolkit cannot rebuild), else None.
  """

  params: dict[str, np.ndarray]
  config: dict
  tokenizer_files: dict[str, bytes]
  source_dtypes: dict[str, str]
  tokenizer_error: str | None = None
