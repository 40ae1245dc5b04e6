"""Calibration statistics: what the inputs of each transformer-block matrix look like on calibration text.

For each block matrix ``W: (out, in)`` and its input rows ``X: [n, in]`` on the calibration split
(:mod:`macjax.evaluate.text`, disjoint from the held-out split), :func:`input_statistics` returns an
:class:`InputStats` with the second moment ``S = XᵀX / n`` (``f32[in, in]``, float64 accumulation), the per-channel
absolute maximum ``max_t |X_tj|`` (``f32[in]``) and ``n``. Consumers: GPTQ (``H = XᵀX``, :func:`hessian`),
activation-aware PCA (``S``), SmoothQuant scaling (``absmax``), bit allocation (``diag S``, ``tr S``), and
output-space errors (:func:`output_energy`, :func:`relative_output_error`). :mod:`macjax.calibrate.probe`
measures sensitivity where it finally matters, at the model's output on calibration text (for bit allocation).
:class:`SequentialCalibration` measures each layer's statistics on the outputs of the layers already compressed,
holding one layer at a time.

Example:
  >>> from macjax.load import load_model                                            # doctest: +SKIP
  >>> from macjax.calibrate import input_statistics, hessian                        # doctest: +SKIP
  >>> stats = input_statistics(load_model("smollm2-135m"))                          # doctest: +SKIP
  >>> H = hessian(stats["model.layers.3.mlp.down_proj.weight"])                     # doctest: +SKIP
  >>> H.shape                                                                       # doctest: +SKIP
  (1536, 1536)
"""

from __future__ import annotations

from macjax.calibrate import probe
from macjax.calibrate.sensitivity import hessian, output_energy, relative_output_error
from macjax.calibrate.sequential import SequentialCalibration
from macjax.calibrate.statistics import (SITE_OF_FIELD, SITES, InputStats, accumulate_statistics, by_matrix,
                                         input_statistics)

__all__ = ["probe", "InputStats", "SequentialCalibration", "input_statistics", "accumulate_statistics", "by_matrix", "SITE_OF_FIELD",
           "SITES",            "hessian", "output_energy", "relative_output_error"]
