"""Helpers for the processor tests: a tiny tokenizer, tiny processors, test images, and independent transcriptions of
the original DeepSeek-VL preprocessing (`VLMImageProcessor`) and conversation format (`deepseek` template), written
from the reference (sections 2 and 3) without using the package's code."""

from __future__ import annotations

import copy
import functools
import os

import numpy as np
import PIL.Image

from transformers_dsvl.image_processing_dsvl import DeepSeekVLImageProcessor
from transformers_dsvl.processing_dsvl import DeepSeekVLProcessor
from transformers_dsvl.tokenization_dsvl import train_tokenizer

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
IMAGE = "<image_placeholder>"
SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SHARED_IMAGES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "images")

CORPUS = [
    SYSTEM,
    "User: <image_placeholder>Describe each stage of this image.\n\nAssistant: A dog.<｜end▁of▁sentence｜>",
    "User: What is it?\n\nAssistant: It is a cat sitting on a red chair.<｜end▁of▁sentence｜>User: Color?",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "Describe the chart, compare both pictures, count the people, read the text in the image.",
    "green blue yellow black white orange purple small large left right top bottom",
] * 4


@functools.lru_cache(maxsize=None)
def _trained_tokenizer(vocab_size: int):
    return train_tokenizer(CORPUS, vocab_size=vocab_size)


def tiny_tokenizer(vocab_size: int = 400):
    """A fresh copy (callers may mutate it) of a tokenizer trained once per session. Ids: BOS 0, EOS 1, image 2."""
    return copy.deepcopy(_trained_tokenizer(vocab_size))


def tiny_image_processor(hybrid: bool = False, **overrides) -> DeepSeekVLImageProcessor:
    """The image processors of the "tiny" / "tiny-hybrid" presets (SigLIP 32 px, SAM 128 px)."""
    if hybrid:
        settings = dict(image_size=128, image_mean=CLIP_MEAN, image_std=CLIP_STD, low_res_image_size=32)
    else:
        settings = dict(image_size=32)
    settings.update(overrides)
    return DeepSeekVLImageProcessor(**settings)


def tiny_processor(hybrid: bool = False, num_image_tokens: int = 16, **image_overrides) -> DeepSeekVLProcessor:
    image_processor = tiny_image_processor(hybrid, **image_overrides)
    return DeepSeekVLProcessor(image_processor, tiny_tokenizer(), num_image_tokens=num_image_tokens)


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------
def noise_rgb(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """Random colours plus a gradient: every pixel differs, so any resampling difference shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    gradient = ((x * 7 + y * 3) % 256).astype(np.uint8)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    array[..., 1] = (array[..., 1] // 2 + gradient // 2).astype(np.uint8)
    return PIL.Image.fromarray(array)


def sample_images() -> dict[str, PIL.Image.Image]:
    """The image cases named by the acceptance criteria (and a few more), in their original modes."""
    rgba = np.concatenate([np.asarray(noise_rgb(90, 60, 5)), np.full((60, 90, 1), 77, np.uint8)], axis=-1)
    gray = np.asarray(noise_rgb(50, 80, 6))[..., 0]
    sixteen = (np.random.default_rng(7).integers(0, 65536, size=(40, 70))).astype(np.uint16)
    return {
        "square": noise_rgb(200, 200, 1),
        "wide": noise_rgb(300, 120, 2),
        "tall": noise_rgb(97, 301, 3),
        "tiny_10x3": noise_rgb(10, 3, 4),
        "extreme_2000x20": noise_rgb(2000, 20, 8),
        "extreme_20x2000": noise_rgb(20, 2000, 9),
        "exact_384": noise_rgb(384, 384, 10),
        "odd_padding_147x49": noise_rgb(147, 49, 11),
        "rgba": PIL.Image.fromarray(rgba),
        "l": PIL.Image.fromarray(gray),
        "p": noise_rgb(64, 48, 12).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=37),
        "cmyk": noise_rgb(33, 66, 13).convert("CMYK"),
        "i16": PIL.Image.fromarray(sixteen),
    }


def eight_bit_rgb_reference(image: PIL.Image.Image) -> PIL.Image.Image:
    """What the original loader hands to `VLMImageProcessor`: `convert("RGB")`; for 16-bit images our documented
    rule instead (high byte, value >> 8), since PIL's own conversion clips them to 255."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535) // 256
        return PIL.Image.fromarray(values.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------------------------------
# Independent transcription of the original preprocessing (reference section 2)
# ---------------------------------------------------------------------------------------------------------------------
def original_size(width: int, height: int, image_size: int, min_size: int = 14) -> tuple[int, int]:
    """[new_h, new_w] of VLMImageProcessor.resize, returned as (new_w, new_h)."""
    max_size = max(width, height)
    new_h = max(int(height / max_size * image_size), min_size)
    new_w = max(int(width / max_size * image_size), min_size)
    return new_w, new_h


def original_pixel_values(image_rgb: PIL.Image.Image, image_size: int, image_mean, min_size: int = 14) -> np.ndarray:
    """float32 [3, S, S] of the original `VLMImageProcessor` for an RGB PIL image (do_normalize=False).

    torchvision's resize of a PIL image calls PIL's `resize(size[::-1], BICUBIC)`; `expand2square` is written here
    with a numpy canvas instead of PIL paste, so the placement rule is checked independently."""
    assert image_rgb.mode == "RGB"
    new_w, new_h = original_size(image_rgb.width, image_rgb.height, image_size, min_size)
    resized = image_rgb if (new_w, new_h) == image_rgb.size else image_rgb.resize((new_w, new_h), PIL.Image.BICUBIC)
    content = np.array(resized, dtype=np.uint8)
    background = [int(x * 255) for x in image_mean]
    side = max(new_w, new_h)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = background
    if new_w > new_h:
        top = (new_w - new_h) // 2
        canvas[top : top + new_h, :new_w] = content
    elif new_h > new_w:
        left = (new_h - new_w) // 2
        canvas[:new_h, left : left + new_w] = content
    else:
        canvas = content
    chw = np.transpose(canvas, (2, 0, 1))
    return (chw.astype(np.float64) * (1 / 255)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Independent transcription of the original conversation format (reference section 3.1)
# ---------------------------------------------------------------------------------------------------------------------
def original_sft_format(conversation: list[dict], system_prompt: str = SYSTEM) -> str:
    """`VLChatProcessor.apply_sft_template_for_multi_turn_prompts` with the `deepseek` template.

    `conversation`: original-format messages, {"role": "User" | "Assistant", "content": str}; a generation prompt
    is an {"role": "Assistant", "content": ""} message at the end, as the original builds it."""
    seps = ["\n\n", EOS]
    ret = "" if system_prompt == "" or system_prompt is None else system_prompt + seps[0]
    for i, message in enumerate(conversation):
        role, content = message["role"], message["content"].strip()
        if content:
            ret += role + ": " + content + seps[i % 2]
        else:
            ret += role + ":"
    return ret.strip()


def original_input_ids(tokenizer, prompt: str, num_image_tokens: int) -> list[int]:
    """`VLChatProcessor.process_one`: encode with BOS, then each placeholder id -> num_image_tokens copies."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    ids = tokenizer.encode(prompt)  # add_special_tokens=True: BOS prepended, nothing appended
    expanded = []
    for token in ids:
        expanded.extend([token] * (num_image_tokens if token == image_id else 1))
    return expanded


def original_left_pad(rows: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """`batchify`: left padding with the pad id, attention 1 on the right-aligned real tokens."""
    length = max(len(row) for row in rows)
    ids = [[pad_id] * (length - len(row)) + row for row in rows]
    mask = [[0] * (length - len(row)) + [1] * len(row) for row in rows]
    return ids, mask
