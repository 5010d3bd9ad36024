"""Batches for the three stages, built through `DeepSeekVLProcessor`, with labels that train on text only.

Labels are `-100` (ignored by the loss) on image tokens, on padding and, in SFT, on everything outside the assistant
answers (system prompt, user turns, role names); each assistant answer and its end-of-sentence token are trained, as
the paper describes (Sec. 3.2.3) and the `deepseek` template's `{% generation %}` markers delimit. Pretraining text
(captions, interleaved documents, language-only documents) is trained entirely, including the EOS that ends it.
Batches are right-padded (the processor's left padding is for generation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from transformers.processing_utils import ProcessorMixin
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from .data import clean_messages, with_image_placeholders
from .packing import collate_packed_rows
from .sampler import LANGUAGE, MULTIMODAL

IGNORE_INDEX = -100


def text_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_token_id: int) -> torch.Tensor:
    """`input_ids` with -100 on image tokens and padding."""
    labels = input_ids.clone()
    labels[input_ids == image_token_id] = IGNORE_INDEX
    if attention_mask is not None:
        labels[attention_mask == 0] = IGNORE_INDEX
    return labels


def example_modality(example: dict) -> str:
    if "modality" in example:
        return example["modality"]
    images = example.get("images")
    if images is None and example.get("image") is not None:
        images = [example["image"]]
    return MULTIMODAL if images else LANGUAGE


@dataclass
class DeepSeekVLPretrainingCollator:
    """Stage 1/2 batches from image-text examples (`images` + `text`), language-only documents (`text`) or packed
    language rows (`input_ids` [+ `seq_lengths`], from `pack_documents`).

    A batch must hold one modality (the stage-2 sampler guarantees it); mixing raises.

    Args:
        processor: the `DeepSeekVLProcessor`.
        max_length: truncate longer sequences (never inside an image: the processor raises instead).
        append_eos: end every text with the EOS token (documents and captions end, so the model learns to stop).
        return_modality: add `"modality"` ("language" / "multimodal") to the batch, for the pretraining trainer's
            statistics (it removes the key before the forward).
    """

    processor: Any
    max_length: int | None = None
    append_eos: bool = True
    return_modality: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        modalities = {example_modality(example) for example in examples}
        if len(modalities) != 1:
            raise ValueError(
                "A pretraining batch mixes language-only and multimodal examples; DeepSeek-VL groups modalities per "
                "batch. Fix: use ModalityGroupedBatchSampler (the stage-2 trainer does) or one modality per dataset."
            )
        modality = modalities.pop()
        examples = [{k: v for k, v in example.items() if k != "modality"} for example in examples]
        tokenizer = self.processor.tokenizer
        if "input_ids" in examples[0]:
            batch = collate_packed_rows(examples, pad_token_id=tokenizer.pad_token_id)
        else:
            batch = self._process(examples, tokenizer)
        if self.return_modality:
            batch["modality"] = modality
        return batch

    def _process(self, examples: list[dict], tokenizer) -> dict[str, Any]:
        texts, images = [], []
        for example in examples:
            sample_images = example.get("images")
            if sample_images is None:
                sample_images = [example["image"]] if example.get("image") is not None else []
            text = example.get("text", example.get("caption"))
            if text is None:
                raise ValueError(f"A pretraining example needs a 'text' column; got keys {sorted(example)}.")
            text = with_image_placeholders(text, len(sample_images))
            texts.append(text + tokenizer.eos_token if self.append_eos else text)
            images.append(list(sample_images))
        batch = self.processor(
            text=texts,
            images=images if any(images) else None,
            padding=True,
            padding_side="right",
            truncation=self.max_length is not None,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = dict(batch)
        batch["labels"] = text_labels(batch["input_ids"], batch["attention_mask"], self.processor.image_token_id)
        return batch


@dataclass
class DeepSeekVLSFTCollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision-language SFT collator for DeepSeek-VL conversations (stage 3).

    On top of TRL's collator (chat template through the processor, right padding, assistant-only labels from the
    template's `{% generation %}` markers), it accepts rows straight from Parquet/JSONL (Arrow's `None` fields in
    content parts, text-only rows with no `images`), and masks image tokens in the labels whatever the loss mode, since
    TRL's fused loss does not go through the model's own label masking.

    On transformers 4.x, whose assistant mask indexes past the end of a sample when truncation removed one of its
    answers (an `IndexError` inside transformers), assistant-only batches are collated whole and then cut to
    `max_length` on the right, exactly as the processor truncates (and with its error when an image would be cut).
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prepared = []
        for example in examples:
            example = dict(example)
            if "image" in example:
                image = example.pop("image")
                example["images"] = [image] if image is not None else []
            example["images"] = list(example.get("images") or [])
            if "messages" in example:
                example["messages"] = clean_messages(example["messages"])
            prepared.append(example)
        truncate_after = (
            self.assistant_only_loss
            and self.max_length is not None
            and not hasattr(ProcessorMixin, "_adjust_assistant_masks_indices")  # transformers 4.x
            and self.processor.tokenizer.truncation_side == "right"
        )
        if truncate_after:
            whole = dataclasses.replace(self, max_length=None)
            batch = truncate_right(DataCollatorForVisionLanguageModeling.torch_call(whole, prepared), self.max_length,
                                   self.processor.image_token_id)
        else:
            batch = super().torch_call(prepared)
        batch["labels"][batch["input_ids"] == self.processor.image_token_id] = IGNORE_INDEX
        return batch


def truncate_right(batch: dict[str, Any], max_length: int, image_token_id: int) -> dict[str, Any]:
    """A right-padded batch cut to `max_length` tokens, as `DeepSeekVLProcessor(truncation=True)` would have cut its
    samples; like the processor, it refuses to cut image tokens."""
    input_ids = batch["input_ids"]
    if input_ids.shape[1] <= max_length:
        return batch
    cut_images = (input_ids[:, max_length:] == image_token_id).any(dim=1)
    if cut_images.any():
        row = int(cut_images.nonzero()[0])
        needed = int((input_ids[row] == image_token_id).nonzero()[-1]) + 1
        raise ValueError(
            f"Truncating sample {row} to max_length={max_length} would cut image tokens. Raise max_length to at least "
            f"{needed}, shorten the conversation, or use fewer images."
        )
    return {
        key: value[:, :max_length] if torch.is_tensor(value) and value.dim() == 2 and value.shape == input_ids.shape
        else value
        for key, value in batch.items()
    }


__all__ = [
    "DeepSeekVLPretrainingCollator",
    "DeepSeekVLSFTCollator",
    "IGNORE_INDEX",
    "example_modality",
    "text_labels",
    "truncate_right",
]
