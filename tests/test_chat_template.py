"""The chat template renders the original `deepseek` conversation format byte for byte (reference section 3.1), and
its `{% generation %}` markers give assistant masks covering exactly the answers and their end-of-sentence tokens."""

from __future__ import annotations

import pytest
import torch
from processor_helpers import EOS, IMAGE, SYSTEM, noise_rgb, original_input_ids, original_sft_format, tiny_processor

from transformers_dsvl.processing_dsvl import CHAT_TEMPLATE


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def image_part(with_image: bool = False):
    return {"type": "image", "image": noise_rgb(20, 10)} if with_image else {"type": "image"}


def user(*parts):
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


# ---------------------------------------------------------------------------------------------------------------------
# The reference's own examples, literally
# ---------------------------------------------------------------------------------------------------------------------
def test_reference_examples_literally(processor):
    single = [user(image_part(), "Describe each stage of this image.")]
    assert processor.apply_chat_template(single, add_generation_prompt=True) == (
        f"{SYSTEM}\n\nUser: {IMAGE}Describe each stage of this image.\n\nAssistant:"
    )
    multi_turn = [user(image_part(), "What is it?"), assistant("A dog."), user("Color?")]
    assert processor.apply_chat_template(multi_turn, add_generation_prompt=True) == (
        f"{SYSTEM}\n\nUser: {IMAGE}What is it?\n\nAssistant: A dog.{EOS}User: Color?\n\nAssistant:"
    )
    finished = [user(image_part(), "What is it?"), assistant("A dog.")]
    assert processor.apply_chat_template(finished) == f"{SYSTEM}\n\nUser: {IMAGE}What is it?\n\nAssistant: A dog.{EOS}"


# ---------------------------------------------------------------------------------------------------------------------
# Against the transcription of the original renderer
# ---------------------------------------------------------------------------------------------------------------------
CASES = {
    # name: (HF messages, original-format messages, system prompt the original gets, add_generation_prompt)
    "single image": (
        [user(image_part(), "Describe this.")],
        [{"role": "User", "content": f"{IMAGE}Describe this."}, {"role": "Assistant", "content": ""}],
        SYSTEM,
        True,
    ),
    "two images": (
        [user(image_part(), image_part(), "Compare the two pictures.")],
        [{"role": "User", "content": f"{IMAGE}{IMAGE}Compare the two pictures."}, {"role": "Assistant", "content": ""}],
        SYSTEM,
        True,
    ),
    "images between texts": (
        [user("First:", image_part(), " and second: ", image_part(), "  which is larger? ")],
        [
            {"role": "User", "content": f"First:{IMAGE} and second: {IMAGE}  which is larger? "},
            {"role": "Assistant", "content": ""},
        ],
        SYSTEM,
        True,
    ),
    "multi-turn with images in two turns": (
        [user(image_part(), "What is it?"), assistant("A dog."), user(image_part(), "And this?"), assistant("A cat.")],
        [
            {"role": "User", "content": f"{IMAGE}What is it?"},
            {"role": "Assistant", "content": "A dog."},
            {"role": "User", "content": f"{IMAGE}And this?"},
            {"role": "Assistant", "content": "A cat."},
        ],
        SYSTEM,
        False,
    ),
    "text only": (
        [user("Tell me a joke.")],
        [{"role": "User", "content": "Tell me a joke."}, {"role": "Assistant", "content": ""}],
        SYSTEM,
        True,
    ),
    "plain string contents": (
        [{"role": "user", "content": "  Hi there  "}, {"role": "assistant", "content": "\nHello!\n"}],
        [{"role": "User", "content": "  Hi there  "}, {"role": "Assistant", "content": "\nHello!\n"}],
        SYSTEM,
        False,
    ),
    "system message replaces the default": (
        [
            {"role": "system", "content": "Be brief."},
            user(image_part(), "What is it?"),
            assistant("A dog."),
            user("Color?"),
        ],
        [
            {"role": "User", "content": f"{IMAGE}What is it?"},
            {"role": "Assistant", "content": "A dog."},
            {"role": "User", "content": "Color?"},
            {"role": "Assistant", "content": ""},
        ],
        "Be brief.",
        True,
    ),
    "system message as parts, leading and trailing whitespace": (
        [{"role": "system", "content": [{"type": "text", "text": "  Be brief.\n"}]}, user("Hi")],
        [{"role": "User", "content": "Hi"}, {"role": "Assistant", "content": ""}],
        "  Be brief.\n",
        True,
    ),
    "empty system message": (
        [{"role": "system", "content": ""}, user("Hi")],
        [{"role": "User", "content": "Hi"}, {"role": "Assistant", "content": ""}],
        "",
        True,
    ),
    "generation prompt after a finished exchange": (
        [user("A?"), assistant("B."), user("C?")],
        [
            {"role": "User", "content": "A?"},
            {"role": "Assistant", "content": "B."},
            {"role": "User", "content": "C?"},
            {"role": "Assistant", "content": ""},
        ],
        SYSTEM,
        True,
    ),
    "finished conversation": (
        [user("A?"), assistant("B."), user("C?"), assistant("D.")],
        [
            {"role": "User", "content": "A?"},
            {"role": "Assistant", "content": "B."},
            {"role": "User", "content": "C?"},
            {"role": "Assistant", "content": "D."},
        ],
        SYSTEM,
        False,
    ),
    "user message without generation prompt (trailing separator stripped)": (
        [user("A?")],
        [{"role": "User", "content": "A?"}],
        SYSTEM,
        False,
    ),
    "empty assistant answer in the middle": (
        [user("A?"), assistant("  "), user("C?")],
        [
            {"role": "User", "content": "A?"},
            {"role": "Assistant", "content": "  "},
            {"role": "User", "content": "C?"},
            {"role": "Assistant", "content": ""},
        ],
        SYSTEM,
        True,
    ),
    "separators follow index parity, not roles": (
        [assistant("Hello, how can I help?"), user("Describe it."), assistant("Sure.")],
        [
            {"role": "Assistant", "content": "Hello, how can I help?"},
            {"role": "User", "content": "Describe it."},
            {"role": "Assistant", "content": "Sure."},
        ],
        SYSTEM,
        False,
    ),
    "capitalised roles as in the original format": (
        [{"role": "User", "content": "A?"}, {"role": "Assistant", "content": "B."}],
        [{"role": "User", "content": "A?"}, {"role": "Assistant", "content": "B."}],
        SYSTEM,
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendering_equals_the_original(processor, name):
    messages, original_messages, system_prompt, add_generation_prompt = CASES[name]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert rendered == original_sft_format(original_messages, system_prompt)


def test_prefill_continues_the_final_assistant_message(processor):
    messages = [user(image_part(), "What is it?"), assistant("It is a ")]
    rendered = processor.apply_chat_template(messages, continue_final_message=True)
    full = original_sft_format(
        [{"role": "User", "content": f"{IMAGE}What is it?"}, {"role": "Assistant", "content": "It is a"}]
    )
    assert full.endswith(EOS)
    assert rendered == full[: -len(EOS)] == f"{SYSTEM}\n\nUser: {IMAGE}What is it?\n\nAssistant: It is a"


def test_tokenised_prefill_ends_with_the_prefill_tokens(processor):
    messages = [user("What is it?"), assistant("It is a")]
    out = processor.apply_chat_template(
        messages, continue_final_message=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    prompt = f"{SYSTEM}\n\nUser: What is it?\n\nAssistant: It is a"
    assert out["input_ids"][0].tolist() == original_input_ids(processor.tokenizer, prompt, processor.num_image_tokens)
    assert processor.tokenizer.eos_token_id not in out["input_ids"][0].tolist()


def test_images_given_by_path_in_the_chat(processor, tmp_path):
    image = noise_rgb(30, 18, 3)
    path = tmp_path / "picture.png"
    image.save(path)
    for block in ({"type": "image", "path": str(path)}, {"type": "image", "url": str(path)}, image_part(True)):
        block = dict(block)
        if "image" in block:
            block["image"] = image
        out = processor.apply_chat_template(
            [user(block, "What is it?")], add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt",
        )
        expected = processor.image_processor(image, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(out["pixel_values"], expected, rtol=0, atol=0)
        assert out["input_ids"][0].tolist().count(processor.image_token_id) == processor.num_image_tokens


def test_tokenised_chat_equals_the_original_ids(processor):
    image = noise_rgb(30, 20)
    messages = [user({"type": "image", "image": image}, "What is it?"), assistant("A dog."), user("Color?")]
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    prompt = f"{SYSTEM}\n\nUser: {IMAGE}What is it?\n\nAssistant: A dog.{EOS}User: Color?\n\nAssistant:"
    expected = original_input_ids(processor.tokenizer, prompt, processor.num_image_tokens)
    assert out["input_ids"].tolist() == [expected]
    assert out["input_ids"][0].tolist().count(processor.tokenizer.bos_token_id) == 1
    assert out["pixel_values"].shape == (1, 3, 32, 32)


def test_bos_once_even_when_add_special_tokens_false_is_passed(processor):
    # TRL passes add_special_tokens=False (for templates that write BOS); this template does not, so BOS stays.
    messages = [user("Hi"), assistant("Hello.")]
    out = processor.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        **_processor_kwargs({"add_special_tokens": False}),
    )
    ids = out["input_ids"][0].tolist()
    assert ids[0] == processor.tokenizer.bos_token_id and ids.count(processor.tokenizer.bos_token_id) == 1
    with_bos_template = "{{ bos_token }}" + CHAT_TEMPLATE
    out = processor.apply_chat_template(
        messages, chat_template=with_bos_template, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["input_ids"][0].tolist().count(processor.tokenizer.bos_token_id) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Assistant masks
# ---------------------------------------------------------------------------------------------------------------------
def expected_assistant_mask(tokenizer, ids: list[int], answers: list[str]) -> list[int]:
    """1 exactly on the tokens of " answer" + EOS for every answer, found in order in `ids`."""
    mask = [0] * len(ids)
    start = 0
    for answer in answers:
        answer_ids = tokenizer.encode(" " + answer + EOS, add_special_tokens=False)
        for position in range(start, len(ids) - len(answer_ids) + 1):
            if ids[position : position + len(answer_ids)] == answer_ids:
                mask[position : position + len(answer_ids)] = [1] * len(answer_ids)
                start = position + len(answer_ids)
                break
        else:
            raise AssertionError(f"answer {answer!r} not found in the ids")
    return mask


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_assistant_mask_marks_exactly_the_answers_and_their_eos(processor, padding_side):
    conversations = [
        [
            user({"type": "image", "image": noise_rgb(30, 20)}, "What is it?"),
            assistant("A dog."),
            user("Color?"),
            assistant("Brown and white."),
        ],
        [{"role": "system", "content": "Be brief."}, user("Count to three."), assistant("One, two, three.")],
        [user("Hi")],
    ]
    answers = [["A dog.", "Brown and white."], ["One, two, three."], []]
    out = processor.apply_chat_template(
        conversations,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="pt",
        **_processor_kwargs({"padding": True, "padding_side": padding_side}),
    )
    tokenizer = processor.tokenizer
    eos_id = tokenizer.eos_token_id
    rows = zip(out["input_ids"].tolist(), out["assistant_masks"].tolist(), out["attention_mask"].tolist())
    for row, (ids, mask, attention) in enumerate(rows):
        real = [i for i, a in enumerate(attention) if a]
        real_ids = [ids[i] for i in real]
        real_mask = [mask[i] for i in real]
        assert real_mask == expected_assistant_mask(tokenizer, real_ids, answers[row]), row
        assert all(mask[i] == 0 for i, a in enumerate(attention) if not a)
        marked_eos = sum(1 for token, m in zip(real_ids, real_mask) if m and token == eos_id)
        assert marked_eos == len(answers[row])
        marked_text = tokenizer.decode([t for t, m in zip(real_ids, real_mask) if m])
        assert marked_text == "".join(" " + answer + EOS for answer in answers[row])


def test_vectorised_assistant_mask_equals_the_per_token_rule(processor):
    """The processor's `_adjust_assistant_masks_indices` (transformers 5.x calls it) against the rule it replaces,
    written token by token: a token is marked when its characters overlap a generation span, spans shifted past
    expanded placeholders; zero-width tokens (padding, specials) are never marked."""
    import bisect
    import random

    rng = random.Random(0)
    samples, spans, replacements = [], [], []
    for _ in range(20):
        offsets, position = [], 0
        for _ in range(rng.randrange(1, 40)):
            width = rng.choice([0, 1, 2, 5])
            offsets.append((position, position + width))
            position += width + rng.choice([0, 0, 1])
        offsets += [(0, 0)] * rng.randrange(0, 4)  # padding
        samples.append(offsets)
        spans.append([sorted(rng.sample(range(position + 3), 2)) for _ in range(rng.randrange(0, 3))])
        ends = sorted(rng.sample(range(1, position + 2), min(position + 1, rng.randrange(0, 3))))
        replacements.append(
            [{"span": (end - 1, end), "new_span": (end - 1, end + rng.randrange(0, 4))} for end in ends])

    def reference(offsets, sample_spans, sample_replacements):
        placeholder_ends = [r["span"][1] for r in sample_replacements]
        gained = [0] + [r["new_span"][1] - r["span"][1] for r in sample_replacements]
        mask = [0] * len(offsets)
        for span in sample_spans:
            start, end = (c + gained[bisect.bisect_right(placeholder_ends, c)] for c in span)
            for position, (token_start, token_end) in enumerate(offsets):
                if token_start < end and token_end > start:
                    mask[position] = 1
        return mask

    for given in (replacements, None):
        processed = {
            "input_ids": [[1] * len(offsets) for offsets in samples],
            "offset_mapping": [torch.tensor(offsets) for offsets in samples],
        }
        if given is not None:
            processed["text_replacement_offsets"] = given
        out = processor._adjust_assistant_masks_indices(processed, spans)
        assert "offset_mapping" not in out and "text_replacement_offsets" not in out
        expected = [reference(o, s, r) for o, s, r in zip(samples, spans, given or [[]] * len(samples))]
        assert out["assistant_masks"] == expected
        assert sum(map(sum, expected)) > 0


def _processor_kwargs(kwargs: dict) -> dict:
    """transformers >= 5.4 takes processor kwargs in `processor_kwargs`, older versions as plain keywords."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) >= Version("5.4.0"):
        return {"processor_kwargs": kwargs}
    return kwargs


# ---------------------------------------------------------------------------------------------------------------------
# Errors and persistence
# ---------------------------------------------------------------------------------------------------------------------
def test_template_errors_are_clear(processor):
    with pytest.raises(Exception, match="roles system, user and assistant"):
        processor.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(Exception, match="Only the first message may be a system message"):
        processor.apply_chat_template([user("Hi"), {"role": "system", "content": "late"}])
    with pytest.raises(Exception, match="text and image parts only"):
        processor.apply_chat_template([user({"type": "video"}, "Hi")])


def test_saved_processor_carries_the_template(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATE
    reloaded = type(processor).from_pretrained(tmp_path)
    messages = CASES["system message replaces the default"][0]
    assert reloaded.apply_chat_template(messages, add_generation_prompt=True) == processor.apply_chat_template(
        messages, add_generation_prompt=True
    )
