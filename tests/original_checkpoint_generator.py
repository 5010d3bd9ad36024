"""Checkpoints in the ORIGINAL deepseek-ai DeepSeek-VL format (`MultiModalityCausalLM`), tiny or full size, with random
weights, for the conversion tests and the memory benchmark.

Written independently of the package's converter: tensor names and shapes follow the original modules (timm SigLIP
ViT with its attention-pool head, segment-anything SAM with `neck` / `neck_hd` / `downsamples`, `MlpProjector`,
transformers `LlamaForCausalLM`) in the order of the original state dict, as listed in
`original_checkpoint_layout.json` (`test_conversion_original.py` checks that the published sizes reproduce that
file's 529 / 775 names and shapes exactly). The checkpoint directory also gets the original's `config.json`,
`preprocessor_config.json`, `processor_config.json` and a small byte-level BPE tokenizer saved the way the original
repositories store theirs (LlamaTokenizerFast, BOS/EOS, `<image_placeholder>`, no pad token).

Usage: `write_original_checkpoint(directory, variant="1.3b" | "7b", size="tiny" | "published", dtype=...,
num_shards=...)`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
IMAGE = "<image_placeholder>"

SINGLE_SIGLIP = "vision_model.vision_tower."
LOW_SIGLIP = "vision_model.vision_tower_low.vision_tower."
HIGH_SAM = "vision_model.vision_tower_high.vision_tower."

TOKENIZER_CORPUS = [
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.",
    "User: <image_placeholder>Describe each stage of this image.\n\nAssistant: A dog.",
    "User: What is it?\n\nAssistant: It is a cat sitting on a red chair. Color? Describe this image.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
] * 4


@dataclass(frozen=True)
class OriginalSizes:
    """Sizes of an original-format checkpoint. SigLIP `siglip_layers` is the tower's table depth; the checkpoint
    holds `siglip_layers + siglip_select_layer + 1` blocks, as the original's builder keeps."""

    siglip_width: int = 1024
    siglip_layers: int = 24
    siglip_heads: int = 16
    siglip_patch: int = 16
    siglip_image: int = 384
    siglip_mlp_ratio: float = 4
    siglip_select_layer: int = -1
    sam_width: int = 768
    sam_layers: int = 12
    sam_heads: int = 12
    sam_patch: int = 16
    sam_image: int = 1024
    sam_window: int = 14
    sam_global: tuple[int, ...] = (2, 5, 8, 11)
    sam_neck: int = 256
    sam_downsample: tuple[int, ...] = (512, 1024)
    sam_mlp_ratio: float = 4
    unused_norm_dim: int = 1024  # `output_dim` of HybridVisionTower's unused LayerNorms
    lm_hidden: int = 2048
    lm_layers: int = 24
    lm_heads: int = 16
    lm_kv_heads: int = 16
    lm_intermediate: int = 5632
    lm_vocab: int = 102400
    lm_max_positions: int = 16384
    aligner_depth: int = 2
    tokenizer_vocab: int = 300

    @property
    def siglip_blocks(self) -> int:
        s = self.siglip_select_layer
        return min(self.siglip_layers, self.siglip_layers + s + 1) if s <= 0 else min(self.siglip_layers, s)

    @property
    def siglip_mlp(self) -> int:
        return int(self.siglip_width * self.siglip_mlp_ratio)

    @property
    def num_image_tokens(self) -> int:
        return (self.siglip_image // self.siglip_patch) ** 2


PUBLISHED_SIZES = {
    "1.3b": OriginalSizes(),
    "7b": OriginalSizes(lm_hidden=4096, lm_layers=30, lm_heads=32, lm_kv_heads=32, lm_intermediate=11008),
}
TINY_SIZES = {
    "1.3b": OriginalSizes(
        siglip_width=32, siglip_layers=2, siglip_heads=2, siglip_patch=8, siglip_image=32,
        lm_hidden=64, lm_layers=2, lm_heads=4, lm_kv_heads=4, lm_intermediate=128, lm_vocab=320, lm_max_positions=512,
        unused_norm_dim=32,
    ),
    "7b": OriginalSizes(
        siglip_width=32, siglip_layers=2, siglip_heads=2, siglip_patch=8, siglip_image=32,
        sam_width=32, sam_layers=4, sam_heads=2, sam_patch=16, sam_image=128, sam_window=3, sam_global=(1, 3),
        sam_neck=16, sam_downsample=(24, 32), unused_norm_dim=32,
        lm_hidden=64, lm_layers=2, lm_heads=4, lm_kv_heads=4, lm_intermediate=128, lm_vocab=320, lm_max_positions=512,
    ),
}

# The published config.json files (original_checkpoint_layout.json, variants.*.config_json).
PUBLISHED_CONFIGS = {
    "1.3b": {
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {"depth": 2, "input_dim": 1024, "n_embed": 2048, "projector_type": "mlp_gelu"}},
        "architectures": ["MultiModalityCausalLM"],
        "language_config": {"hidden_size": 2048, "intermediate_size": 5632, "max_position_embeddings": 16384,
                            "model_type": "llama", "num_attention_heads": 16, "num_hidden_layers": 24,
                            "num_key_value_heads": 16, "torch_dtype": "float16", "vocab_size": 102400},
        "model_type": "multi_modality",
        "torch_dtype": "float16",
        "transformers_version": "4.38.2",
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                          "params": {"image_size": 384, "model_name": "siglip_large_patch16_384",
                                     "pixel_mean": SIGLIP_MEAN, "pixel_std": SIGLIP_STD, "select_feature": "same",
                                     "select_layer": -1}},
    },
    "7b": {
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {"depth": 2, "input_dim": 1024, "n_embed": 4096,
                                      "projector_type": "low_high_hybrid_split_mlp_gelu"}},
        "architectures": ["MultiModalityCausalLM"],
        "language_config": {"max_position_embeddings": 16384, "model_type": "llama", "num_hidden_layers": 30,
                            "torch_dtype": "bfloat16", "vocab_size": 102400},
        "model_type": "multi_modality",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.38.2",
        "vision_config": {
            "cls": "HybridVisionTower", "model_type": "vision",
            "params": {
                "concat_type": "tuple", "freeze_high": True, "freeze_low": True,
                "high_res_cfg": {"ckpt_path": "", "image_size": 1024, "model_name": "sam_b_downsample",
                                 "output_dim": 1024, "pixel_mean": CLIP_MEAN, "pixel_std": CLIP_STD,
                                 "select_feature": "same", "select_layer": -1},
                "low_res_cfg": {"ckpt_path": "", "image_size": 384, "model_name": "siglip_large_patch16_384",
                                "output_dim": 1024, "pixel_mean": SIGLIP_MEAN, "pixel_std": SIGLIP_STD,
                                "select_feature": "same", "select_layer": -1},
            },
        },
    },
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def original_config_json(variant: str, sizes: OriginalSizes, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The original config.json for `sizes`: the published file when the sizes are the published ones, otherwise the
    published structure with explicit size params under the original's field names."""
    config = json.loads(json.dumps(PUBLISHED_CONFIGS[variant]))
    config["torch_dtype"] = config["language_config"]["torch_dtype"] = _dtype_name(dtype)
    if sizes == PUBLISHED_SIZES[variant]:
        return config
    config["language_config"].update(
        hidden_size=sizes.lm_hidden, intermediate_size=sizes.lm_intermediate, num_hidden_layers=sizes.lm_layers,
        num_attention_heads=sizes.lm_heads, num_key_value_heads=sizes.lm_kv_heads, vocab_size=sizes.lm_vocab,
        max_position_embeddings=sizes.lm_max_positions,
    )
    config["aligner_config"]["params"].update(input_dim=sizes.siglip_width, n_embed=sizes.lm_hidden,
                                              depth=sizes.aligner_depth)
    siglip = dict(width=sizes.siglip_width, layers=sizes.siglip_layers, heads=sizes.siglip_heads,
                  patch_size=sizes.siglip_patch, mlp_ratio=sizes.siglip_mlp_ratio, image_size=sizes.siglip_image,
                  select_layer=sizes.siglip_select_layer)
    if variant == "1.3b":
        config["vision_config"]["params"].update(siglip)
    else:
        params = config["vision_config"]["params"]
        params["low_res_cfg"].update(siglip, output_dim=sizes.unused_norm_dim)
        params["high_res_cfg"].update(
            width=sizes.sam_width, layers=sizes.sam_layers, heads=sizes.sam_heads, patch_size=sizes.sam_patch,
            window_size=sizes.sam_window, global_attn_indexes=list(sizes.sam_global),
            downsample_channels=list(sizes.sam_downsample), prompt_embed_dim=sizes.sam_neck,
            mlp_ratio=sizes.sam_mlp_ratio, image_size=sizes.sam_image, output_dim=sizes.unused_norm_dim,
        )
    return config


# ---------------------------------------------------------------------------------------------------------------------
# State-dict names and shapes, in the original's order
# ---------------------------------------------------------------------------------------------------------------------
def _siglip_shapes(prefix: str, s: OriginalSizes) -> dict:
    w, mlp, grid = s.siglip_width, s.siglip_mlp, s.siglip_image // s.siglip_patch
    shapes = {
        f"{prefix}pos_embed": (1, grid * grid, w),
        f"{prefix}patch_embed.proj.weight": (w, 3, s.siglip_patch, s.siglip_patch),
        f"{prefix}patch_embed.proj.bias": (w,),
    }
    for i in range(s.siglip_blocks):
        b = f"{prefix}blocks.{i}."
        shapes.update({
            f"{b}norm1.weight": (w,), f"{b}norm1.bias": (w,),
            f"{b}attn.qkv.weight": (3 * w, w), f"{b}attn.qkv.bias": (3 * w,),
            f"{b}attn.proj.weight": (w, w), f"{b}attn.proj.bias": (w,),
            f"{b}norm2.weight": (w,), f"{b}norm2.bias": (w,),
            f"{b}mlp.fc1.weight": (mlp, w), f"{b}mlp.fc1.bias": (mlp,),
            f"{b}mlp.fc2.weight": (w, mlp), f"{b}mlp.fc2.bias": (w,),
        })
    shapes.update({f"{prefix}norm.weight": (w,), f"{prefix}norm.bias": (w,)})
    # timm AttentionPoolLatent (global_pool="map"): stored, never run by DeepSeek-VL.
    a = f"{prefix}attn_pool."
    shapes.update({
        f"{a}latent": (1, 1, w),
        f"{a}q.weight": (w, w), f"{a}q.bias": (w,),
        f"{a}kv.weight": (2 * w, w), f"{a}kv.bias": (2 * w,),
        f"{a}proj.weight": (w, w), f"{a}proj.bias": (w,),
        f"{a}norm.weight": (w,), f"{a}norm.bias": (w,),
        f"{a}mlp.fc1.weight": (mlp, w), f"{a}mlp.fc1.bias": (mlp,),
        f"{a}mlp.fc2.weight": (w, mlp), f"{a}mlp.fc2.bias": (w,),
    })
    return shapes


def _sam_shapes(prefix: str, s: OriginalSizes) -> dict:
    w, grid, head_dim = s.sam_width, s.sam_image // s.sam_patch, s.sam_width // s.sam_heads
    mlp, neck = int(w * s.sam_mlp_ratio), s.sam_neck
    shapes = {
        f"{prefix}pos_embed": (1, grid, grid, w),
        f"{prefix}hd_alpha_downsamples": (1,),
        f"{prefix}patch_embed.proj.weight": (w, 3, s.sam_patch, s.sam_patch),
        f"{prefix}patch_embed.proj.bias": (w,),
    }
    for i in range(s.sam_layers):
        b = f"{prefix}blocks.{i}."
        rel = 2 * (grid if i in s.sam_global else s.sam_window) - 1
        shapes.update({
            f"{b}norm1.weight": (w,), f"{b}norm1.bias": (w,),
            f"{b}attn.rel_pos_h": (rel, head_dim), f"{b}attn.rel_pos_w": (rel, head_dim),
            f"{b}attn.qkv.weight": (3 * w, w), f"{b}attn.qkv.bias": (3 * w,),
            f"{b}attn.proj.weight": (w, w), f"{b}attn.proj.bias": (w,),
            f"{b}norm2.weight": (w,), f"{b}norm2.bias": (w,),
            f"{b}mlp.lin1.weight": (mlp, w), f"{b}mlp.lin1.bias": (mlp,),
            f"{b}mlp.lin2.weight": (w, mlp), f"{b}mlp.lin2.bias": (w,),
        })

    def neck_shapes(name):
        return {f"{prefix}{name}.0.weight": (neck, w, 1, 1), f"{prefix}{name}.1.weight": (neck,),
                f"{prefix}{name}.1.bias": (neck,), f"{prefix}{name}.2.weight": (neck, neck, 3, 3),
                f"{prefix}{name}.3.weight": (neck,), f"{prefix}{name}.3.bias": (neck,)}

    shapes.update(neck_shapes("neck"))
    channels = [neck, *s.sam_downsample]
    for i in range(len(s.sam_downsample)):
        shapes[f"{prefix}downsamples.{i}.weight"] = (channels[i + 1], channels[i], 3, 3)
    shapes.update(neck_shapes("neck_hd"))
    return shapes


def _language_shapes(s: OriginalSizes) -> dict:
    h, head_dim = s.lm_hidden, s.lm_hidden // s.lm_heads
    kv = s.lm_kv_heads * head_dim
    shapes = {"language_model.model.embed_tokens.weight": (s.lm_vocab, h)}
    for i in range(s.lm_layers):
        b = f"language_model.model.layers.{i}."
        shapes.update({
            f"{b}self_attn.q_proj.weight": (h, h), f"{b}self_attn.k_proj.weight": (kv, h),
            f"{b}self_attn.v_proj.weight": (kv, h), f"{b}self_attn.o_proj.weight": (h, h),
            f"{b}mlp.gate_proj.weight": (s.lm_intermediate, h), f"{b}mlp.up_proj.weight": (s.lm_intermediate, h),
            f"{b}mlp.down_proj.weight": (h, s.lm_intermediate),
            f"{b}input_layernorm.weight": (h,), f"{b}post_attention_layernorm.weight": (h,),
        })
    shapes.update({"language_model.model.norm.weight": (h,), "language_model.lm_head.weight": (s.lm_vocab, h)})
    return shapes


def original_state_dict_shapes(variant: str, sizes: OriginalSizes) -> dict[str, tuple[int, ...]]:
    """Every tensor of the original `MultiModalityCausalLM.state_dict()` (unused ones included), in its order."""
    h = sizes.lm_hidden
    if variant == "1.3b":
        shapes = _siglip_shapes(SINGLE_SIGLIP, sizes)
        aligner = {"aligner.layers.0.weight": (h, sizes.siglip_width), "aligner.layers.0.bias": (h,)}
        for depth in range(1, sizes.aligner_depth):
            aligner.update({f"aligner.layers.{2 * depth}.weight": (h, h), f"aligner.layers.{2 * depth}.bias": (h,)})
    elif variant == "7b":
        shapes = {**_sam_shapes(HIGH_SAM, sizes), **_siglip_shapes(LOW_SIGLIP, sizes)}
        d = sizes.unused_norm_dim
        shapes.update({"vision_model.high_layer_norm.weight": (d,), "vision_model.high_layer_norm.bias": (d,),
                       "vision_model.low_layer_norm.weight": (d,), "vision_model.low_layer_norm.bias": (d,)})
        aligner = {
            "aligner.high_up_proj.weight": (h // 2, sizes.siglip_width), "aligner.high_up_proj.bias": (h // 2,),
            "aligner.low_up_proj.weight": (h // 2, sizes.siglip_width), "aligner.low_up_proj.bias": (h // 2,),
        }
        for depth in range(1, sizes.aligner_depth):
            aligner.update({f"aligner.layers.{2 * depth - 1}.weight": (h, h),
                            f"aligner.layers.{2 * depth - 1}.bias": (h,)})
    else:
        raise ValueError(f"variant must be '1.3b' or '7b', got {variant!r}")
    return {**shapes, **aligner, **_language_shapes(sizes)}


def is_unused_original_tensor(name: str) -> bool:
    """The tensors the original stores but never runs (the converter drops exactly these)."""
    return ".attn_pool." in name or name.startswith(("vision_model.high_layer_norm.", "vision_model.low_layer_norm."))


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------
def random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Deterministic per (name, seed) values that keep a tiny model numerically sane: norms around 1, the rest
    small; the SAM global-feature alpha (zero at initialisation in the original) non-zero."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + sum(map(ord, name)) * 7919 + len(name)) % 2**63)
    scale = 0.02 if min(shape, default=1) >= 512 else 0.2
    values = torch.randn(shape, generator=generator) * scale
    is_norm_weight = name.endswith(".weight") and any(
        key in name for key in ("norm", "neck.1.", "neck.3.", "neck_hd.1.", "neck_hd.3.")
    ) and len(shape) == 1
    if is_norm_weight:
        values = values + 1.0
    if name.endswith("hd_alpha_downsamples"):
        values = values.abs() + 0.5
    return values.to(dtype)


def _split_evenly(names: list[str], shapes: dict, num_shards: int) -> list[list[str]]:
    sizes = [math.prod(shapes[n]) for n in names]
    total, target = sum(sizes), sum(sizes) / num_shards
    shards, current, running = [], [], 0
    for name, size in zip(names, sizes):
        if current and running + size / 2 > target * (len(shards) + 1) and len(shards) < num_shards - 1:
            shards.append(current)
            current = []
        current.append(name)
        running += size
    shards.append(current)
    assert len(shards) == num_shards, (len(shards), num_shards, total)
    return shards


def write_original_tokenizer(directory: str | os.PathLike, vocab_size: int = 300) -> dict:
    """A small byte-level BPE tokenizer with the original special tokens (BOS 0, EOS 1, <image_placeholder> 2), and
    tokenizer_config.json / special_tokens_map.json shaped like the original repositories' (LlamaTokenizerFast,
    no pad token). Returns the ids."""
    from transformers_dsvl.tokenization_dsvl import train_tokenizer

    directory = Path(directory)
    tokenizer = train_tokenizer(TOKENIZER_CORPUS, vocab_size=vocab_size)
    tokenizer.save_pretrained(str(directory))
    vocab = tokenizer.get_vocab()
    added_tokens_decoder = {
        str(vocab[token]): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True}
        for token in (BOS, EOS, IMAGE)
    }

    def added(content, normalized=True):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": normalized,
                "rstrip": False, "single_word": False}

    tokenizer_config = {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added_tokens_decoder,
        "bos_token": added(BOS), "clean_up_tokenization_spaces": False, "eos_token": added(EOS), "legacy": True,
        "model_max_length": 16384, "pad_token": None, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": None, "use_default_system_prompt": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    special_tokens_map = {
        "additional_special_tokens": [{"content": IMAGE, "lstrip": False, "normalized": False, "rstrip": False,
                                       "single_word": False}],
        "bos_token": BOS, "eos_token": EOS,
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special_tokens_map, indent=2, ensure_ascii=False))
    return {"bos": vocab[BOS], "eos": vocab[EOS], "image": vocab[IMAGE], "size": len(tokenizer)}


@dataclass
class GeneratedCheckpoint:
    directory: Path
    variant: str
    sizes: OriginalSizes
    dtype: torch.dtype
    config: dict
    shapes: dict[str, tuple[int, ...]]
    weight_files: list[str]
    token_ids: dict = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors, read back with safetensors / torch (independently of the converter)."""
        out = {}
        for file_name in self.weight_files:
            path = self.directory / file_name
            if file_name.endswith(".safetensors"):
                from safetensors.torch import load_file

                out.update(load_file(str(path)))
            elif file_name.endswith(".bin"):
                out.update(torch.load(path, weights_only=True))
        return out


def write_original_checkpoint(
    directory: str | os.PathLike,
    variant: str = "1.3b",
    size: str | OriginalSizes = "tiny",
    dtype: torch.dtype = torch.bfloat16,
    num_shards: int = 1,
    seed: int = 0,
    weights_format: str = "safetensors",
    with_processor_files: bool = True,
    preprocessor_overrides: dict | None = None,
) -> GeneratedCheckpoint:
    """Write an original-format DeepSeek-VL checkpoint with random weights into `directory`.

    Args:
        variant: "1.3b" (SigLIP only) or "7b" (SAM + SigLIP hybrid).
        size: "tiny", "published" (the real shapes: 1.98B / 7.34B parameters) or an `OriginalSizes`.
        dtype: storage dtype (the releases use float16 / bfloat16).
        num_shards: 1 writes `model.safetensors`; more write `model-0000i-of-0000n.safetensors` + index.
        weights_format: "safetensors" or "pickle" (`pytorch_model.bin`, only for the refusal / opt-in tests).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not isinstance(size, OriginalSizes):
        size = {"tiny": TINY_SIZES, "published": PUBLISHED_SIZES}[size][variant]
    sizes = size
    token_ids = {}
    if with_processor_files:
        token_ids = write_original_tokenizer(directory, vocab_size=sizes.tokenizer_vocab)
        if token_ids["size"] > sizes.lm_vocab:
            raise ValueError(f"The tokenizer ({token_ids['size']} tokens) does not fit lm_vocab={sizes.lm_vocab}.")
        image_size = sizes.sam_image if variant == "7b" else sizes.siglip_image
        mean = CLIP_MEAN if variant == "7b" else SIGLIP_MEAN
        std = CLIP_STD if variant == "7b" else SIGLIP_STD
        preprocessor = {
            "background_color": [int(m * 255) for m in mean], "do_normalize": False, "image_mean": mean,
            "image_processor_type": "VLMImageProcessor", "image_size": image_size, "image_std": std,
            "min_size": 14, "processor_class": "VLChatProcessor", "rescale_factor": 0.00392156862745098,
            **(preprocessor_overrides or {}),
        }
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
        processor = {"add_special_token": False, "ignore_id": -100, "image_tag": IMAGE, "mask_prompt": True,
                     "num_image_tokens": sizes.num_image_tokens, "processor_class": "VLChatProcessor",
                     "sft_format": "deepseek"}
        (directory / "processor_config.json").write_text(json.dumps(processor, indent=2))

    config = original_config_json(variant, sizes, dtype)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    shapes = original_state_dict_shapes(variant, sizes)
    names = list(shapes)

    if weights_format == "pickle":
        if num_shards != 1:
            raise ValueError("pickle checkpoints are written as a single pytorch_model.bin")
        state_dict = {n: random_tensor(n, shapes[n], dtype, seed) for n in names}
        torch.save(state_dict, directory / "pytorch_model.bin")
        weight_files = ["pytorch_model.bin"]
    elif weights_format == "safetensors":
        from safetensors.torch import save_file

        groups = _split_evenly(names, shapes, num_shards) if num_shards > 1 else [names]
        if num_shards == 1:
            weight_files = ["model.safetensors"]
        else:
            weight_files = [f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)]
        weight_map = {}
        for file_name, group in zip(weight_files, groups):
            save_file({n: random_tensor(n, shapes[n], dtype, seed) for n in group}, str(directory / file_name),
                      metadata={"format": "pt"})
            weight_map.update({n: file_name for n in group})
        if num_shards > 1:
            itemsize = torch.empty((), dtype=dtype).element_size()
            index = {"metadata": {"total_size": sum(math.prod(s) for s in shapes.values()) * itemsize},
                     "weight_map": dict(sorted(weight_map.items()))}
            (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    else:
        raise ValueError(f"weights_format must be 'safetensors' or 'pickle', got {weights_format!r}")
    return GeneratedCheckpoint(directory=directory, variant=variant, sizes=sizes, dtype=dtype, config=config,
                               shapes=shapes, weight_files=weight_files, token_ids=token_ids)


def tiny_sizes(variant: str, **overrides) -> OriginalSizes:
    return replace(TINY_SIZES[variant], **overrides)


__all__ = [
    "GeneratedCheckpoint",
    "OriginalSizes",
    "PUBLISHED_CONFIGS",
    "PUBLISHED_SIZES",
    "TINY_SIZES",
    "is_unused_original_tensor",
    "original_config_json",
    "original_state_dict_shapes",
    "random_tensor",
    "tiny_sizes",
    "write_original_checkpoint",
    "write_original_tokenizer",
]
