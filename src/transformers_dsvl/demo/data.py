"""The demo's datasets, built from `synthetic.py` and saved with the `datasets` library in the schemas that the
training code (`training/data.py`) and the demo's evaluation read.

| split           | schema          | columns                                        | used by                       |
|-----------------|-----------------|------------------------------------------------|-------------------------------|
| `captions`      | `image_text`    | `image`, `caption`                             | vision warm-up, stages 1, 2   |
| `text`          | `text`          | `text`                                         | LLM warm-up, stage 2 language |
| `conversations` | `conversations` | `images`, `messages`                           | stage 3 (TRL's VLM format)    |
| `test`          | (evaluation)    | `image`, `question`, `answer`, `question_type` | held-out evaluation           |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from . import synthetic

SPLITS = ("captions", "text", "conversations", "test")
_MESSAGE_FEATURE = {
    "role": datasets.Value("string"),
    "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
}
FEATURES = {
    "captions": datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    "text": datasets.Features({"text": datasets.Value("string")}),
    "conversations": datasets.Features(
        {"images": datasets.List(datasets.Image()), "messages": datasets.List(_MESSAGE_FEATURE)}
    ),
    "test": datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
        }
    ),
}
_EXAMPLES: dict[str, Callable[[int, int], dict]] = {
    "captions": synthetic.caption_example,
    "text": synthetic.text_example,
    "conversations": synthetic.conversation_example,
    "test": synthetic.test_example,
}


@dataclass(frozen=True)
class DemoDataSizes:
    """Number of examples per split."""

    captions: int = 6000
    text: int = 3000
    conversations: int = 6000
    test: int = 700

    def __post_init__(self):
        for split, size in asdict(self).items():
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"DemoDataSizes.{split} must be a positive integer, got {size!r}.")

    def check_test_size(self, image_kinds=synthetic.IMAGE_KINDS) -> None:
        """Every question type of `image_kinds` must get the same number of held-out questions."""
        types = synthetic.question_types(image_kinds)
        if self.test % len(types):
            raise ValueError(
                f"DemoDataSizes.test={self.test} must be a multiple of {len(types)} (the question types of "
                f"{', '.join(synthetic.check_image_kinds(image_kinds))} images) so every type gets the same number "
                "of held-out questions."
            )


def _canonical_parts(example: dict) -> dict:
    """Content parts with both keys (`{"type": "image", "text": None}`), the layout Arrow stores."""
    for message in example["messages"]:
        message["content"] = [{"type": part["type"], "text": part.get("text")} for part in message["content"]]
    return example


def build_split(split: str, seed: int, size: int, image_kinds=synthetic.IMAGE_KINDS) -> datasets.Dataset:
    """One split, example `i` drawn from its own random stream (`synthetic.example_rng(seed, split, i)`); images of
    `image_kinds` only (shapes, text, chart)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown demo split {split!r}; use one of {SPLITS}.")
    kinds = synthetic.check_image_kinds(image_kinds)
    if split == "text":
        rows = [_EXAMPLES[split](seed, index) for index in range(size)]
    else:
        rows = [_EXAMPLES[split](seed, index, kinds=kinds) for index in range(size)]
    if split == "conversations":
        rows = [_canonical_parts(row) for row in rows]
    return datasets.Dataset.from_list(rows, features=FEATURES[split])


def build_datasets(
    directory: str | Path, seed: int, sizes: DemoDataSizes, progress=None, image_kinds=synthetic.IMAGE_KINDS
) -> dict[str, datasets.Dataset]:
    """Build every split, save it under `directory/<split>` (`save_to_disk`) and return the memory-mapped copies.

    `progress(split, size)` is called before each split is built; `image_kinds` narrows the images (and so the
    question types) to some of shapes, text and chart.
    """
    sizes.check_test_size(image_kinds)
    directory = Path(directory)
    loaded = {}
    for split in SPLITS:
        size = getattr(sizes, split)
        if progress is not None:
            progress(split, size)
        target = directory / split
        build_split(split, seed, size, image_kinds).save_to_disk(str(target))
        loaded[split] = datasets.load_from_disk(str(target))
    return loaded


def tokenizer_corpus(data: dict[str, datasets.Dataset]) -> list[str]:
    """Every text the model will read or write: the corpus, the captions, and the conversations' turns."""
    texts = list(data["text"]["text"]) + list(data["captions"]["caption"])
    for messages in data["conversations"]["messages"]:
        texts.extend(part["text"] for message in messages for part in message["content"] if part["text"])
    return texts


__all__ = ["DemoDataSizes", "FEATURES", "SPLITS", "build_datasets", "build_split", "tokenizer_corpus"]
