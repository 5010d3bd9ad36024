"""Registers DeepSeek-VL with transformers' Auto classes (runs on `import transformers_dsvl`)."""

import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForSequenceClassification,
    AutoProcessor,
)

from .configuration_dsvl import DeepSeekVLConfig, DeepSeekVLSamVisionConfig
from .image_processing_dsvl import DeepSeekVLImageProcessor
from .modeling_dsvl import DeepSeekVLForConditionalGeneration, DeepSeekVLForSequenceClassification, DeepSeekVLModel
from .processing_dsvl import DeepSeekVLProcessor


def register_auto_classes() -> None:
    AutoConfig.register(DeepSeekVLConfig.model_type, DeepSeekVLConfig, exist_ok=True)
    AutoConfig.register(DeepSeekVLSamVisionConfig.model_type, DeepSeekVLSamVisionConfig, exist_ok=True)
    AutoModel.register(DeepSeekVLConfig, DeepSeekVLModel, exist_ok=True)
    AutoModelForImageTextToText.register(DeepSeekVLConfig, DeepSeekVLForConditionalGeneration, exist_ok=True)
    AutoModelForSequenceClassification.register(DeepSeekVLConfig, DeepSeekVLForSequenceClassification, exist_ok=True)
    # A slow (PIL/NumPy) image processor: the original resizes with PIL bicubic, which no torch kernel reproduces.
    AutoImageProcessor.register(DeepSeekVLConfig, slow_image_processor_class=DeepSeekVLImageProcessor, exist_ok=True)
    AutoProcessor.register(DeepSeekVLConfig, DeepSeekVLProcessor, exist_ok=True)
    vision2seq = getattr(transformers, "AutoModelForVision2Seq", None)  # removed in transformers 5
    if vision2seq is not None:
        vision2seq.register(DeepSeekVLConfig, DeepSeekVLForConditionalGeneration, exist_ok=True)

    # save_pretrained then copies the code files and writes auto_map, so checkpoints load with trust_remote_code.
    DeepSeekVLConfig.register_for_auto_class()
    DeepSeekVLModel.register_for_auto_class("AutoModel")
    DeepSeekVLForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    DeepSeekVLForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    DeepSeekVLImageProcessor.register_for_auto_class("AutoImageProcessor")
    DeepSeekVLProcessor.register_for_auto_class("AutoProcessor")
