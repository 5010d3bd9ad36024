"""Tiny random DeepSeek-VL models for tests, and the original-layout view of their weights."""

from __future__ import annotations

import torch

from transformers_dsvl import DeepSeekVLConfig, DeepSeekVLForConditionalGeneration

IMAGE_TOKEN_ID = 5
VOCAB_SIZE = 300


def tiny_config(variant: str = "tiny-hybrid", **overrides) -> DeepSeekVLConfig:
    overrides.setdefault("text_config", {})
    overrides["text_config"] = {"vocab_size": VOCAB_SIZE, **overrides["text_config"]}
    overrides.setdefault("image_token_id", IMAGE_TOKEN_ID)
    return DeepSeekVLConfig.from_preset(variant, **overrides)


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Give every parameter random values, so that no branch hides behind a zero or identity initialisation
    (the SAM global-feature alpha starts at 0, LayerNorms at identity, relative positions near 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * scale
            if name.endswith("norm.weight") or "layer_norm" in name or "layernorm" in name:
                param.copy_(1.0 + noise)
            else:
                param.copy_(noise)
    return model


def tiny_model(variant: str = "tiny-hybrid", seed: int = 0, attn_implementation: str = "eager", **overrides):
    config = tiny_config(variant, **overrides)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = DeepSeekVLForConditionalGeneration(config)
    return randomize_(model, seed).eval()


def pixel_kwargs(config: DeepSeekVLConfig, images: torch.Tensor) -> dict:
    return {"high_res_pixel_values": images} if config.is_hybrid else {"pixel_values": images}


def random_images(config: DeepSeekVLConfig, count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, config.image_size, config.image_size, generator=generator)


def prompt_ids(config: DeepSeekVLConfig, text_before, num_images: int = 0, text_after=(), bos: int = 0):
    """BOS + text + (num_image_tokens image ids per image) + text, as the processor expands placeholders."""
    ids = [bos, *text_before]
    for _ in range(num_images):
        ids += [config.image_token_id] * config.num_image_tokens
    return ids + list(text_after)


def left_pad(sequences: list[list[int]], pad_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (length - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask


def to_original_state_dict(model: DeepSeekVLForConditionalGeneration) -> dict[str, torch.Tensor]:
    """Our weights under the original checkpoint's names (written independently of the package's converter)."""
    config = model.config
    low = "vision_model.vision_tower_low.vision_tower." if config.is_hybrid else "vision_model.vision_tower."
    high = "vision_model.vision_tower_high.vision_tower."
    original: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.vision_model."):
            rest = name[len("model.vision_model."):]
            if rest == "embeddings.position_embedding.weight":
                original[low + "pos_embed"] = tensor.unsqueeze(0)
            elif rest.startswith("embeddings.patch_embedding."):
                original[low + "patch_embed.proj." + rest.split(".")[-1]] = tensor
            elif rest.startswith("post_layernorm."):
                original[low + "norm." + rest.split(".")[-1]] = tensor
            else:
                _, _, index, module, *tail = rest.split(".")
                block = f"{low}blocks.{index}."
                if module == "self_attn" and tail[0] in ("q_proj", "k_proj", "v_proj"):
                    qkv_parts.setdefault(f"{block}attn.qkv.{tail[1]}", {})[tail[0]] = tensor
                elif module == "self_attn":
                    original[f"{block}attn.proj.{tail[1]}"] = tensor
                elif module in ("layer_norm1", "layer_norm2"):
                    original[f"{block}norm{module[-1]}.{tail[0]}"] = tensor
                else:
                    original[block + ".".join([module, *tail])] = tensor
        elif name.startswith("model.high_res_vision_model."):
            rest = name[len("model.high_res_vision_model."):]
            rest = rest.replace("patch_embed.projection.", "patch_embed.proj.").replace("global_neck.", "neck_hd.")
            rest = rest.replace("layers.", "blocks.").replace("layer_norm1", "norm1").replace("layer_norm2", "norm2")
            for ours, theirs in (("conv1", "0"), ("norm1", "1"), ("conv2", "2"), ("norm2", "3")):
                if rest.startswith(("neck.", "neck_hd.")):
                    rest = rest.replace(f".{ours}.", f".{theirs}.")
            if rest == "global_alpha":
                rest = "hd_alpha_downsamples"
            original[high + rest] = tensor
        elif name.startswith("model.aligner."):
            original["aligner." + name[len("model.aligner."):]] = tensor
        elif name.startswith("model.language_model."):
            original["language_model.model." + name[len("model.language_model."):]] = tensor
        elif name == "lm_head.weight":
            original["language_model.lm_head.weight"] = tensor
        else:
            raise KeyError(name)
    for fused_name, parts in qkv_parts.items():
        original[fused_name] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return original


def reference_config(config: DeepSeekVLConfig) -> dict:
    cfg = {"siglip_heads": config.vision_config.num_attention_heads, "low_res_size": config.vision_config.image_size}
    if config.is_hybrid:
        sam = config.high_res_vision_config
        cfg.update(sam_heads=sam.num_attention_heads, window_size=sam.window_size,
                   global_attn_indexes=sam.global_attn_indexes, resize_size=sam.resize_size,
                   hd_layer=sam.global_feature_layer)
    return cfg
