"""DeepSeek-VL as a Hugging Face Transformers model package."""

from .allocator import keep_freed_memory
from .auto_registration import register_auto_classes
from .configuration_dsvl import PRESETS, DeepSeekVLConfig, DeepSeekVLSamVisionConfig
from .cpu_kernels import (
    disable_fused_cpu_kernels,
    enable_fused_cpu_kernels,
    fused_cpu_kernels_enabled,
)
from .image_processing_dsvl import DeepSeekVLImageProcessor
from .modeling_dsvl import (
    DeepSeekVLForConditionalGeneration,
    DeepSeekVLForSequenceClassification,
    DeepSeekVLModel,
    DeepSeekVLPreTrainedModel,
)
from .processing_dsvl import DeepSeekVLProcessor

register_auto_classes()

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "DeepSeekVLConfig",
    "DeepSeekVLSamVisionConfig",
    "DeepSeekVLPreTrainedModel",
    "DeepSeekVLModel",
    "DeepSeekVLForConditionalGeneration",
    "DeepSeekVLForSequenceClassification",
    "DeepSeekVLImageProcessor",
    "DeepSeekVLProcessor",
    "keep_freed_memory",
    "enable_fused_cpu_kernels",
    "disable_fused_cpu_kernels",
    "fused_cpu_kernels_enabled",
]
