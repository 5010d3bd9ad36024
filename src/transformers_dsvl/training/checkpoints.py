"""Loading the checkpoint a stage starts from, and saving checkpoints that other tools can load.

A saved checkpoint carries the model and processor code (`trust_remote_code=True`), so `trl sft`, `AutoProcessor`
and `AutoModelForImageTextToText` load it in a process that never imports this package.
"""

from __future__ import annotations

import os

from ..modeling_dsvl import DeepSeekVLForConditionalGeneration
from ..processing_dsvl import DeepSeekVLProcessor


def save_checkpoint(model, processor, output_dir: str | os.PathLike) -> str:
    """Save `model` and `processor` to `output_dir` as a self-contained remote-code checkpoint (the package's auto
    registration makes `save_pretrained` write `auto_map` and copy the model and processor code)."""
    output_dir = str(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)
    return output_dir


def load_model(path: str, dtype=None, quantization_config=None, attn_implementation: str | None = None):
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return DeepSeekVLForConditionalGeneration.from_pretrained(path, **kwargs)


def load_processor(path: str) -> DeepSeekVLProcessor:
    return DeepSeekVLProcessor.from_pretrained(path)


__all__ = ["load_model", "load_processor", "save_checkpoint"]
