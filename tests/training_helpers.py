"""Tiny models, processors and synthetic datasets for the training tests (CPU, seconds per stage)."""

from __future__ import annotations

import numpy as np
import PIL.Image
from datasets import Dataset, Features, Image, List, Value
from model_helpers import tiny_model
from processor_helpers import tiny_processor

IMAGE = "<image_placeholder>"
WORDS = ["red", "green", "blue", "dog", "cat", "chair", "small", "large", "left", "right", "top", "bottom"]


def tiny_model_and_processor(variant: str = "tiny-hybrid", seed: int = 0):
    """A random tiny model and the processor that fits it (tokenizer ids: BOS 0, EOS 1, image 2)."""
    processor = tiny_processor(hybrid=variant == "tiny-hybrid")
    model = tiny_model(variant, seed=seed, text_config={"vocab_size": len(processor.tokenizer)}, image_token_id=2)
    return model.train(), processor


def solid_image(index: int, size: int = 40) -> PIL.Image.Image:
    rng = np.random.default_rng(index)
    array = np.zeros((size, size + 8, 3), dtype=np.uint8)
    array[:] = rng.integers(0, 256, size=3)
    array[size // 4 : size // 2, size // 4 : size // 2] = rng.integers(0, 256, size=3)
    return PIL.Image.fromarray(array)


def _sentence(rng, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def image_text_dataset(num: int = 16, seed: int = 0) -> Dataset:
    """Pairs (`image` + `caption`-like `text`) and interleaved rows (two placeholders) mixed."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num):
        if i % 3 == 2:
            rows.append({"images": [solid_image(seed * 1000 + i), solid_image(seed * 1000 + i + 500)],
                         "text": f"{_sentence(rng, 3)} {IMAGE} {_sentence(rng, 2)} {IMAGE} {_sentence(rng, 3)}"})
        else:
            rows.append({"images": [solid_image(seed * 1000 + i)], "text": _sentence(rng, 6)})
    features = Features({"images": List(Image()), "text": Value("string")})
    return Dataset.from_list(rows, features=features)


def text_dataset(num: int = 24, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset.from_list([{"text": _sentence(rng, int(rng.integers(5, 30)))} for _ in range(num)])


def user(*parts):
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def conversation_dataset(num: int = 8, seed: int = 2) -> Dataset:
    """Single-image, multi-turn multi-image, and text-only conversations."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num):
        kind = i % 3
        if kind == 0:
            rows.append({"messages": [user({"type": "image"}, "What is it?"), assistant(_sentence(rng, 4))],
                         "images": [solid_image(seed * 1000 + i)]})
        elif kind == 1:
            rows.append({"messages": [user({"type": "image"}, "Describe."), assistant(_sentence(rng, 3)),
                                      user({"type": "image"}, "And this one?"), assistant(_sentence(rng, 3))],
                         "images": [solid_image(seed * 1000 + i), solid_image(seed * 1000 + i + 1)]})
        else:
            rows.append({"messages": [user(f"Say {_sentence(rng, 2)}."), assistant(_sentence(rng, 5))], "images": []})
    return Dataset.from_list(rows)
