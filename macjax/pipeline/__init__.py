"""The pipeline: typed config, the whole-model plan, per-tensor stages, compress / decompress (the only place that
knows the stage order), jobs, reports."""

from macjax.pipeline.compression import Compressed, compress, decompress, iter_decompress
from macjax.pipeline.config import PipelineConfig

__all__ = ["Compressed", "PipelineConfig", "compress", "decompress", "iter_decompress"]
