"""The models and processors the suites compare: ours (`transformers_dsvl`) and transformers' own DeepSeek-VL port
(`deepseek_vl` / `deepseek_vl_hybrid`) with the *same* random weights, moved across by the package's interop
converter (`transformers_dsvl.conversion.upstream`).

Sizes are the published ones. The vision suites need only the towers and the aligner, so their language model has
no layers (the aligner still projects to the real LM width); the language-model suites use a full checkpoint with the
1.3B shapes, written once to a cache directory (random weights, a small stand-in tokenizer whose ids the config
uses: BOS 0, EOS 1, `<image_placeholder>` 2).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from transformers_dsvl import DeepSeekVLConfig, DeepSeekVLForConditionalGeneration
from transformers_dsvl.conversion.upstream import (
    canonical_upstream_name,
    config_to_upstream,
    state_dict_to_upstream,
    to_upstream,
    upstream_class,
    write_upstream_processor,
)
from transformers_dsvl.processing_dsvl import CHAT_TEMPLATE, DEFAULT_SYSTEM_PROMPT, DeepSeekVLProcessor
from transformers_dsvl.tokenization_dsvl import train_tokenizer

ATTN_IMPLEMENTATION = "sdpa"
# Ids of the stand-in tokenizer (train_tokenizer puts the special tokens first).
SMALL_TOKENIZER_IDS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
SMALL_IMAGE_TOKEN_ID = 2
VISION_PRESETS = {"hybrid": "deepseek-vl-7b", "siglip": "deepseek-vl-1.3b"}
LANGUAGE_PRESET = "deepseek-vl-1.3b"
# `--smoke` runs every suite end to end at test sizes, to check the harness in seconds (numbers meaningless).
SMOKE_PRESETS = {"hybrid": "tiny-hybrid", "siglip": "tiny", "language": "tiny"}
CHECKPOINT_FORMAT_VERSION = 1

CORPUS = [
    DEFAULT_SYSTEM_PROMPT,
    "User: <image_placeholder>Describe this image in detail.\n\nAssistant: The image shows a busy street.",
    "What is written on the sign? Which colour is the car on the left? How many people are there?",
    "The quick brown fox jumps over the lazy dog. A photo of a red bicycle leaning against a white wall.",
    "charts tables documents screenshots diagrams numbers labels axes titles legends values trends",
] * 8


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "transformers_dsvl" / "benchmarks"


def small_tokenizer():
    return train_tokenizer(CORPUS, vocab_size=600)


# -- vision-only models -------------------------------------------------------------------------------------------
def vision_config(variant: str, smoke: bool = False) -> DeepSeekVLConfig:
    """Published vision towers and aligner of `variant` ("hybrid" = 7B's SAM-B + SigLIP-L, "siglip" = 1.3B's
    SigLIP-L), with a layer-less language model of the real width."""
    return DeepSeekVLConfig.from_preset(
        SMOKE_PRESETS[variant] if smoke else VISION_PRESETS[variant],
        text_config=dict(num_hidden_layers=0, vocab_size=1024, **SMALL_TOKENIZER_IDS),
        image_token_id=SMALL_IMAGE_TOKEN_ID,
    )


def build_ours(config: DeepSeekVLConfig, seed: int = 0) -> DeepSeekVLForConditionalGeneration:
    torch.manual_seed(seed)
    model = DeepSeekVLForConditionalGeneration._from_config(config, attn_implementation=ATTN_IMPLEMENTATION)
    if config.is_hybrid:
        with torch.no_grad():
            # Initialised to 0 (as released untrained); any other value makes the global branch show in outputs.
            model.model.high_res_vision_model.global_alpha.fill_(0.5)
    return model.eval()


def upstream_twin(model: DeepSeekVLForConditionalGeneration):
    """transformers' own port holding the very same weight tensors as `model` (no copy), through the converter's
    config and weight-name translation."""
    from accelerate import init_empty_weights

    upstream_config = config_to_upstream(model.config)
    upstream_cls = upstream_class(upstream_config.model_type, "model")
    with init_empty_weights():  # parameters on the meta device, buffers (rotary frequencies, ids) real
        twin = upstream_cls._from_config(upstream_config, attn_implementation=ATTN_IMPLEMENTATION)
    weights = state_dict_to_upstream(model.state_dict(), model.config)
    expected = set(twin.state_dict())
    weights = {(name if name in expected else canonical_upstream_name(name)): tensor for name, tensor in weights.items()}
    twin.load_state_dict(weights, strict=True, assign=True)
    return twin.eval()


def upstream_processor(config: DeepSeekVLConfig, tokenizer, our_image_processor=None):
    """The upstream processor the converter writes for `config` (normalising image processor; for the hybrid, the
    384 px view made in preprocessing), loaded back."""
    model_type = config_to_upstream(config).model_type
    with tempfile.TemporaryDirectory() as directory:
        write_upstream_processor(Path(directory), config, our_image_processor, tokenizer, CHAT_TEMPLATE)
        return upstream_class(model_type, "processor").from_pretrained(directory)


def upstream_image_processor(config: DeepSeekVLConfig, our_image_processor=None):
    from transformers_dsvl.conversion.upstream import upstream_image_processor_settings

    model_type = config_to_upstream(config).model_type
    settings = upstream_image_processor_settings(config, our_image_processor)
    return upstream_class(model_type, "image_processor")(**settings)


# -- the 1.3B-shaped checkpoint ------------------------------------------------------------------------------------
def language_config(smoke: bool = False) -> DeepSeekVLConfig:
    """deepseek-vl-1.3b exactly (SigLIP-L, 2048-wide 24-layer LM, 102400-entry vocabulary), with the special ids of
    the stand-in tokenizer."""
    text_config = dict(**SMALL_TOKENIZER_IDS)
    if smoke:
        text_config["vocab_size"] = 1024
    return DeepSeekVLConfig.from_preset(
        SMOKE_PRESETS["language"] if smoke else LANGUAGE_PRESET, text_config=text_config,
        image_token_id=SMALL_IMAGE_TOKEN_ID,
    )


def checkpoint_dirs(cache_dir: Path, smoke: bool = False) -> tuple[Path, Path]:
    name = "tiny-random" if smoke else "deepseek-vl-1.3b-random"
    return cache_dir / name, cache_dir / f"{name}-upstream"


def ensure_checkpoints(cache_dir: Path, smoke: bool = False, log=print) -> tuple[Path, Path]:
    """Our 1.3B-shaped random checkpoint (float32 safetensors + processor) and its upstream conversion, written once
    and reused (about 8 GB each)."""
    ours, theirs = checkpoint_dirs(cache_dir, smoke)
    marker = {"format": CHECKPOINT_FORMAT_VERSION}
    if not (ours / "benchmark.json").is_file() or json.loads((ours / "benchmark.json").read_text()) != marker:
        log(f"  writing the 1.3B-shaped random checkpoint to {ours} (once)")
        ours.mkdir(parents=True, exist_ok=True)
        model = build_ours(language_config(smoke))
        model.save_pretrained(ours)
        tokenizer = small_tokenizer()
        DeepSeekVLProcessor.from_model_config(model.config, tokenizer).save_pretrained(ours)
        del model
        (ours / "benchmark.json").write_text(json.dumps(marker))
    if not (theirs / "benchmark.json").is_file():
        log(f"  converting it to the upstream format in {theirs} (once)")
        to_upstream(ours, theirs, overwrite=True)
        (theirs / "benchmark.json").write_text(json.dumps(marker))
    return ours, theirs


def load_ours(path: Path) -> DeepSeekVLForConditionalGeneration:
    model = DeepSeekVLForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION
    )
    return model.eval()


def load_our_processor(path: Path) -> DeepSeekVLProcessor:
    return DeepSeekVLProcessor.from_pretrained(path)


def load_upstream_processor(path: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


def weight_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.glob("*.safetensors"))


def checkpoint_tensor_bytes(path: Path) -> int:
    """Bytes of the tensors themselves (safetensors headers excluded)."""
    total = 0
    for file in path.glob("*.safetensors"):
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
        total += sum(end - start for name, entry in header.items() if name != "__metadata__"
                     for start, end in [entry["data_offsets"]])
    return total


def load_side_by_side(args, log=print):
    """The 1.3B-shaped random checkpoint (written once) as ours and its processor, and upstream's twin holding the
    same weight tensors, with upstream's processor."""
    our_dir, their_dir = ensure_checkpoints(args.cache_dir, args.smoke, log)
    ours = load_ours(our_dir)
    return ours, load_our_processor(our_dir), upstream_twin(ours), load_upstream_processor(their_dir)


__all__ = [
    "build_ours",
    "checkpoint_dirs",
    "checkpoint_tensor_bytes",
    "default_cache_dir",
    "ensure_checkpoints",
    "language_config",
    "load_our_processor",
    "load_ours",
    "load_side_by_side",
    "load_upstream_processor",
    "small_tokenizer",
    "upstream_image_processor",
    "upstream_processor",
    "upstream_twin",
    "vision_config",
    "weight_bytes",
]
