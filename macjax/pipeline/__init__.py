"""The pipeline: typed config, compress / decompress (the only place that knows the stage order), jobs, reports."""

from macjax.pipeline.codec import Compressed, compress, decompress
from macjax.pipeline.config import PipelineConfig

__all__ = ["Compressed", "PipelineConfig", "compress", "decompress"]
