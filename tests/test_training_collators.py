"""Labels: image tokens, padding and (SFT) system/user prompts are -100; answers and their end-of-sentence token,
and pretraining text with its EOS, are trained. Packed language rows keep their documents apart."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from processor_helpers import tiny_processor
from training_helpers import IMAGE, assistant, solid_image, tiny_model_and_processor, user

from transformers_dsvl.training.collators import DeepSeekVLPretrainingCollator, DeepSeekVLSFTCollator
from transformers_dsvl.training.packing import collate_packed_rows, pack_documents

EOS = "<｜end▁of▁sentence｜>"
IMAGE_ID, EOS_ID = 2, 1


@pytest.fixture(scope="module")
def processor():
    return tiny_processor(hybrid=True)


def _trained_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([i for i, label in zip(ids.tolist(), labels.tolist(), strict=True) if label != -100])


def _check_structural_masks(batch):
    labels, ids, attention = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert torch.all(labels[ids == IMAGE_ID] == -100)
    assert torch.all(labels[attention == 0] == -100)
    trained = labels != -100
    assert torch.equal(labels[trained], ids[trained])  # a trained position predicts its own token


def test_pretraining_labels_train_text_and_eos_only(processor):
    examples = [
        {"images": [solid_image(0)], "text": "a red square"},  # pair: the image goes first
        {"images": [solid_image(1), solid_image(2)], "text": f"left {IMAGE} right {IMAGE} done"},
    ]
    batch = DeepSeekVLPretrainingCollator(processor)(examples)
    assert batch["high_res_pixel_values"].shape == (3, 3, 128, 128)
    assert batch["attention_mask"][0, -1] == 0  # right padding
    _check_structural_masks(batch)
    tokenizer = processor.tokenizer
    # Everything but the images is trained, the EOS that ends the text included.
    assert _trained_text(tokenizer, batch["input_ids"][0], batch["labels"][0]).endswith("a red square" + EOS)
    assert _trained_text(tokenizer, batch["input_ids"][1], batch["labels"][1]).endswith(f"left  right  done{EOS}")
    assert int((batch["input_ids"] == IMAGE_ID).sum()) == 3 * 16
    text_only = DeepSeekVLPretrainingCollator(processor, return_modality=True)([{"text": "plain words"}])
    assert text_only["modality"] == "language" and "high_res_pixel_values" not in text_only
    assert _trained_text(tokenizer, text_only["input_ids"][0], text_only["labels"][0]).endswith("plain words" + EOS)


def test_pretraining_batches_refuse_mixed_modalities(processor):
    with pytest.raises(ValueError, match="mixes language-only and multimodal"):
        DeepSeekVLPretrainingCollator(processor)([{"text": "x"}, {"images": [solid_image(0)], "text": "y"}])


def _expected_answer_mask(tokenizer, ids: list[int], answers: list[str]) -> list[bool]:
    """True exactly on " answer" + EOS of every answer, found in order (independent of the chat template)."""
    mask, start = [False] * len(ids), 0
    for answer in answers:
        answer_ids = tokenizer.encode(" " + answer + EOS, add_special_tokens=False)
        for position in range(start, len(ids) - len(answer_ids) + 1):
            if ids[position : position + len(answer_ids)] == answer_ids:
                mask[position : position + len(answer_ids)] = [True] * len(answer_ids)
                start = position + len(answer_ids)
                break
        else:
            raise AssertionError(f"answer {answer!r} not in the ids")
    return mask


def test_sft_labels_are_the_answers_and_their_eos(processor):
    examples = [
        {"messages": [user({"type": "image"}, "What is it?"), assistant("A red square."),
                      user({"type": "image"}, "And this?"), assistant("Blue.")],
         "images": [solid_image(3), solid_image(4)]},
        {"messages": [{"role": "system", "content": "Be brief."}, user("Count to two."), assistant("One, two.")],
         "images": []},  # text-only rows mix with image rows
        {"messages": [user("Hi"), assistant("Hello there.")]},  # no images column at all
    ]
    answers = [["A red square.", "Blue."], ["One, two."], ["Hello there."]]
    batch = DeepSeekVLSFTCollator(processor=processor, assistant_only_loss=True)(examples)
    _check_structural_masks(batch)
    tokenizer = processor.tokenizer
    for row, row_answers in enumerate(answers):
        real = batch["attention_mask"][row].bool()
        ids = batch["input_ids"][row][real].tolist()
        trained = (batch["labels"][row][real] != -100).tolist()
        assert trained == _expected_answer_mask(tokenizer, ids, row_answers), row
        assert _trained_text(tokenizer, batch["input_ids"][row], batch["labels"][row]) == "".join(
            " " + answer + EOS for answer in row_answers)
    # The prompt parts never count: system prompt, "User:" turns, the question text.
    assert "Count to two" not in _trained_text(tokenizer, batch["input_ids"][1], batch["labels"][1])


def test_sft_truncation_that_removes_an_answer(processor):
    """max_length cuts a conversation inside or before its second answer: the batch is the whole conversation's batch
    cut at max_length (the first answer trained, what is left of the second too), on every transformers line (4.x's
    own assistant mask raised IndexError when a whole answer was cut); cutting into an image is refused by name."""
    conversation = {"messages": [user({"type": "image"}, "What is it?"), assistant("A red square."),
                                 user("And the other one, the larger one?"), assistant("A blue circle, large.")],
                    "images": [solid_image(3)]}
    short = {"messages": [user("Hi"), assistant("Hello.")]}
    whole = DeepSeekVLSFTCollator(processor=processor, assistant_only_loss=True)([conversation, short])
    length = int(whole["attention_mask"][0].sum())
    answer_positions = (whole["labels"][0] != -100).nonzero().flatten().tolist()
    second_answer = next(b for a, b in zip(answer_positions, answer_positions[1:]) if b > a + 1)
    for max_length in (answer_positions[-1] - 1, second_answer + 1, second_answer - 2, length):
        batch = DeepSeekVLSFTCollator(processor=processor, max_length=max_length, assistant_only_loss=True)(
            [conversation, short])
        assert batch["input_ids"].shape == (2, max_length)
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(batch[key], whole[key][:, :max_length]), (key, max_length)
        assert torch.equal(batch["high_res_pixel_values"], whole["high_res_pixel_values"])
    trained = _trained_text(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert trained.startswith(" A red square." + EOS)
    first_image_token = int((whole["input_ids"][0] == IMAGE_ID).nonzero()[0])
    with pytest.raises(ValueError, match="would cut image tokens"):
        DeepSeekVLSFTCollator(processor=processor, max_length=first_image_token + 3, assistant_only_loss=True)(
            [conversation, short])


def test_sft_collator_masks_image_tokens_even_without_assistant_only_loss(processor):
    examples = [{"messages": [user({"type": "image"}, "What?"), assistant("Red.")], "images": [solid_image(5)]}]
    batch = DeepSeekVLSFTCollator(processor=processor, assistant_only_loss=False)(examples)
    assert int((batch["input_ids"] == IMAGE_ID).sum()) == 16
    _check_structural_masks(batch)
    assert "What?" in _trained_text(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])


def test_packing_keeps_documents_apart():
    model, processor = tiny_model_and_processor("tiny")
    documents = Dataset.from_dict({"text": ["red green blue dog", "cat", "small large left right top bottom"]})
    packed = pack_documents(documents, processor.tokenizer, max_length=24, strategy="bfd_split")
    rows = list(packed)
    assert all(len(row["input_ids"]) <= 24 for row in rows)
    assert sum(len(row["seq_lengths"]) for row in rows) == 3
    batch = collate_packed_rows(rows, pad_token_id=EOS_ID)
    assert "attention_mask" not in batch and batch["use_cache"] is False
    separate = [processor.tokenizer(text)["input_ids"] + [EOS_ID] for text in documents["text"]]
    with torch.no_grad():
        packed_logits = model(**batch).logits
        for row, example in enumerate(rows):
            start = 0
            for length in example["seq_lengths"]:
                document = example["input_ids"][start : start + length]
                assert document in separate and document[0] == 0 and document[-1] == EOS_ID  # BOS ... EOS
                alone = model(input_ids=torch.tensor([document])).logits[0]
                torch.testing.assert_close(packed_logits[row, start : start + length], alone, atol=1e-4, rtol=1e-4)
                assert batch["labels"][row, start] == -100  # a document's first token never follows another's
                assert torch.equal(batch["labels"][row, start + 1 : start + length],
                                   torch.tensor(document[1:]))
                start += length
            assert torch.all(batch["labels"][row, start:] == -100)  # padding
        # Without the restarting positions, a second document would attend to the first.
        row = next(i for i, example in enumerate(rows) if len(example["seq_lengths"]) > 1)
        first = rows[row]["seq_lengths"][0]
        joined = model(input_ids=batch["input_ids"][row : row + 1]).logits[0]
        second = rows[row]["input_ids"][first : first + rows[row]["seq_lengths"][1]]
        alone = model(input_ids=torch.tensor([second])).logits[0]
        assert (joined[first : first + len(second)] - alone).abs().max() > 1e-2
