"""LoRA and QLoRA for stage 3 through peft: adapter targets by parameter group, 4-bit loading, merge-and-save.

Targets (Linear layers only; `lm_head` never, since TRL computes the loss from `lm_head.weight` directly):

| group | modules |
|---|---|
| `language_model` (default) | `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj` of every decoder layer |
| `low_res_vision` | SigLIP `q_proj`, `k_proj`, `v_proj`, `out_proj`, `fc1`, `fc2` |
| `high_res_vision` | SAM `qkv`, `proj`, `lin1`, `lin2` |
| `aligner` | every Linear of the aligner |

QLoRA (`load_in_4bit`) quantises the language model only (NF4, double quantisation, bf16 compute); the vision towers,
the aligner and `lm_head` stay in full precision. It needs a CUDA GPU and `bitsandbytes` and is not tested on the
CPU machines this package is developed on.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .config import LoraSettings

_GROUP_PATTERNS = {
    "language_model": r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
    "low_res_vision": r"model\.vision_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])",
    "high_res_vision": r"model\.high_res_vision_model\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.lin[12])",
}
# Modules that stay unquantised under QLoRA (bitsandbytes matches these names anywhere in a module path).
QLORA_SKIP_MODULES = ["vision_model", "high_res_vision_model", "aligner", "lm_head"]


def lora_target_pattern(model: nn.Module, target_groups) -> str:
    """A regular expression matching (with `re.fullmatch`, as peft does) exactly the Linear modules to adapt."""
    patterns = [_GROUP_PATTERNS[group] for group in target_groups if group != "aligner"]
    if "aligner" in target_groups:
        aligner_linears = [
            re.escape(name) for name, module in model.named_modules()
            if name.startswith("model.aligner.") and isinstance(module, nn.Linear)
        ]
        patterns.extend(aligner_linears)
    if not patterns:
        raise ValueError(f"No LoRA target modules for groups {list(target_groups)}.")
    pattern = "(" + "|".join(patterns) + ")"
    matched = [name for name, module in model.named_modules() if re.fullmatch(pattern, name)]
    if not matched:
        raise ValueError(
            f"The LoRA target groups {list(target_groups)} match no module of this model. Fix: check the groups "
            "(e.g. 'high_res_vision' needs the hybrid model)."
        )
    return pattern


def build_lora_config(model: nn.Module, settings: LoraSettings):
    """`peft.LoraConfig` for `settings` on `model` (a `DeepSeekVLForConditionalGeneration`)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_pattern(model, settings.target_groups),
        modules_to_save=list(settings.modules_to_save) or None,
        bias="none",
    )


def qlora_quantization_config():
    """4-bit NF4 quantisation of the language model for QLoRA (CUDA + bitsandbytes only)."""
    from transformers import BitsAndBytesConfig

    check_qlora_available()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=QLORA_SKIP_MODULES,
    )


def check_qlora_available() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            "QLoRA (lora.load_in_4bit) needs bitsandbytes. Fix: pip install bitsandbytes (on a machine with a CUDA "
            "GPU), or set load_in_4bit: false for plain LoRA."
        ) from error
    if not torch.cuda.is_available():
        raise RuntimeError(
            "QLoRA (lora.load_in_4bit) runs on CUDA GPUs only; no GPU is visible. Fix: run on a GPU machine, or set "
            "load_in_4bit: false for plain LoRA."
        )


def prepare_for_qlora(model: nn.Module, gradient_checkpointing: bool) -> nn.Module:
    """peft's preparation of a 4-bit model for training (float32 norms, input gradients for checkpointing)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge the adapters into the base weights and return the plain `DeepSeekVLForConditionalGeneration`."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(f"merge_lora expects a peft PeftModel, got {type(model).__name__}.")
    if getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        raise ValueError(
            "Cannot merge adapters into a 4-bit base model. Fix: save the adapters, load the base checkpoint in full "
            "precision and use merge_lora_checkpoint(base_path, adapter_path, output_dir)."
        )
    return model.merge_and_unload()


def merge_lora_checkpoint(base_model_path: str, adapter_path: str, output_dir: str, dtype=None) -> str:
    """Merge a saved adapter into a full-precision copy of its base checkpoint and save a plain checkpoint."""
    from peft import PeftModel

    from ..modeling_dsvl import DeepSeekVLForConditionalGeneration
    from ..processing_dsvl import DeepSeekVLProcessor
    from .checkpoints import save_checkpoint

    base = DeepSeekVLForConditionalGeneration.from_pretrained(base_model_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter_path).merge_and_unload()
    save_checkpoint(merged, DeepSeekVLProcessor.from_pretrained(adapter_path), output_dir)
    return output_dir


__all__ = [
    "QLORA_SKIP_MODULES",
    "build_lora_config",
    "check_qlora_available",
    "lora_target_pattern",
    "merge_lora",
    "merge_lora_checkpoint",
    "prepare_for_qlora",
    "qlora_quantization_config",
]
