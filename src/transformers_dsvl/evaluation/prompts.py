"""Prompts: the question text and answer instruction each benchmark is asked with, as chat messages.

The wording is the standard harnesses' (lmms-eval / LLaVA evaluation), which is also how DeepSeek-VL's reported
numbers were produced: the question, its options as "A. text" lines, and a fixed instruction. The chat template of the
processor then adds the default DeepSeek-VL system prompt and the `User:` / `Assistant:` roles; generation is greedy.

| benchmark | user turn |
|---|---|
| MMBench | [hint\\n] question \\n A. .. \\n B. .. \\n Answer with the option's letter from the given choices directly. |
| MMBench-CN | same, instruction 请直接使用所提供的选项字母作为答案回答。 |
| SEED-Bench | question \\n A. .. \\n D. .. \\n Answer with the option's letter from the given choices directly. |
| ScienceQA | [Context: hint\\n] question \\n A. .. \\n Answer with the option's letter from the given choices directly. |
| MMMU | question \\n A. .. \\n\\n Answer with the option's letter from the given choices directly. (open: question \\n\\n Answer the question using a single word or phrase.) |
| POPE, VQA | question \\n Answer the question using a single word or phrase. |
| OCRBench | question |

The image comes first in the user turn (`<image_placeholder>` right before the text, as in the original README);
MMMU's images go where the question references them (`<image 1>`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .formats import Sample

MULTIPLE_CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MULTIPLE_CHOICE_INSTRUCTION_CN = "请直接使用所提供的选项字母作为答案回答。"
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."

_MMMU_IMAGE_REFERENCE = re.compile(r"<image (\d+)>")


def format_options(options: Mapping[str, str]) -> str:
    """"A. text" lines, in letter order."""
    return "\n".join(f"{letter}. {text}" for letter, text in options.items())


def image_first_content(num_images: int, text: str) -> list[dict]:
    """HF message content: the images, then the text."""
    return [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]


def mmbench_text(sample: Sample, options: Mapping[str, str], chinese: bool = False) -> str:
    hint = sample.fields.get("hint")
    question = f"{hint}\n{sample.question}" if hint else sample.question
    instruction = MULTIPLE_CHOICE_INSTRUCTION_CN if chinese else MULTIPLE_CHOICE_INSTRUCTION
    return f"{question}\n{format_options(options)}\n{instruction}"


def seed_text(sample: Sample) -> str:
    return f"{sample.question}\n{format_options(sample.options)}\n{MULTIPLE_CHOICE_INSTRUCTION}"


def scienceqa_text(sample: Sample) -> str:
    hint = sample.fields.get("hint")
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{sample.question}\n{format_options(sample.options)}\n{MULTIPLE_CHOICE_INSTRUCTION}"


def short_answer_text(sample: Sample) -> str:
    return f"{sample.question}\n{SHORT_ANSWER_INSTRUCTION}"


def ocrbench_text(sample: Sample) -> str:
    return sample.question


def mmmu_content(sample: Sample) -> tuple[list[dict], list[int]]:
    """MMMU message content with images interleaved, and the order of the images used (indices into
    `sample.images`).

    Each image goes where the question or an option first references it (`<image k>` is replaced by the image);
    later references stay as text. Images the text never references are put before the text, in their order.
    """
    if sample.fields.get("question_type") == "multiple-choice":
        text = f"{sample.question}\n{format_options(sample.options)}\n\n{MULTIPLE_CHOICE_INSTRUCTION}"
    else:
        text = f"{sample.question}\n\n{SHORT_ANSWER_INSTRUCTION}"
    numbers = sample.fields.get("image_numbers") or list(range(1, len(sample.images) + 1))
    position_of = {number: position for position, number in enumerate(numbers)}

    content: list[dict] = []
    order: list[int] = []
    cursor = 0
    for match in _MMMU_IMAGE_REFERENCE.finditer(text):
        number = int(match.group(1))
        if number not in position_of or position_of[number] in order:
            continue
        if match.start() > cursor:
            content.append({"type": "text", "text": text[cursor : match.start()]})
        content.append({"type": "image"})
        order.append(position_of[number])
        cursor = match.end()
    if cursor < len(text):
        content.append({"type": "text", "text": text[cursor:]})
    unreferenced = [position for position in range(len(numbers)) if position not in order]
    content = [{"type": "image"} for _ in unreferenced] + content
    return content, unreferenced + order


__all__ = [
    "MULTIPLE_CHOICE_INSTRUCTION",
    "MULTIPLE_CHOICE_INSTRUCTION_CN",
    "SHORT_ANSWER_INSTRUCTION",
    "format_options",
    "image_first_content",
    "mmbench_text",
    "mmmu_content",
    "ocrbench_text",
    "scienceqa_text",
    "seed_text",
    "short_answer_text",
]
