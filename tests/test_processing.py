"""DeepSeekVLProcessor: ids identical to the original VLChatProcessor, batching, the calls transformers / TRL / vLLM /
lmms-eval make, tokenizer helpers, save/load, and clear errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import textwrap

import numpy as np
import pytest
from cross_version import OTHER_PYTHON
import torch
import transformers
from processor_helpers import (
    BOS,
    EOS,
    IMAGE,
    SYSTEM,
    noise_rgb,
    original_input_ids,
    original_left_pad,
    original_pixel_values,
    tiny_image_processor,
    tiny_processor,
    tiny_tokenizer,
)

from transformers_dsvl.image_processing_dsvl import DeepSeekVLImageProcessor
from transformers_dsvl.processing_dsvl import CHAT_TEMPLATE, DeepSeekVLProcessor
from transformers_dsvl.tokenization_dsvl import prepare_tokenizer, train_tokenizer

PROMPTS = [
    f"{SYSTEM}\n\nUser: {IMAGE}Describe each stage of this image.\n\nAssistant:",
    f"{SYSTEM}\n\nUser: {IMAGE}{IMAGE}Compare.\n\nAssistant: The left one.{EOS}User: Why?\n\nAssistant:",
    f"{SYSTEM}\n\nUser: Tell me a joke.\n\nAssistant:",
    f"User: a {IMAGE} b {IMAGE}",
]


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def images_for(prompts):
    return [
        [noise_rgb(20 + 3 * i, 30 - j, seed=10 * i + j) for j in range(prompt.count(IMAGE))]
        for i, prompt in enumerate(prompts)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Equality with the original processor
# ---------------------------------------------------------------------------------------------------------------------
def test_ids_equal_the_original_per_sample(processor):
    for prompt, images in zip(PROMPTS, images_for(PROMPTS)):
        out = processor(text=prompt, images=images or None, return_tensors="pt")
        expected = original_input_ids(processor.tokenizer, prompt, processor.num_image_tokens)
        assert out["input_ids"].tolist() == [expected]
        assert out["attention_mask"].tolist() == [[1] * len(expected)]
        ids = out["input_ids"][0].tolist()
        assert ids[0] == processor.tokenizer.bos_token_id and ids.count(processor.tokenizer.bos_token_id) == 1
        assert ids.count(processor.image_token_id) == prompt.count(IMAGE) * processor.num_image_tokens
        if images:
            expected_pixels = np.stack([original_pixel_values(image, 32, (0.5, 0.5, 0.5)) for image in images])
            np.testing.assert_array_equal(out["pixel_values"].numpy(), expected_pixels)
        else:
            assert "pixel_values" not in out


def test_expanding_ids_equals_expanding_the_string(processor):
    # The two ways to expand give identical ids: the placeholder is a special token, tokenised on its own.
    for prompt in PROMPTS:
        by_string = processor.tokenizer(prompt.replace(IMAGE, IMAGE * processor.num_image_tokens))["input_ids"]
        assert by_string == original_input_ids(processor.tokenizer, prompt, processor.num_image_tokens)


def test_batch_is_left_padded_with_eos_like_the_original(processor):
    images = images_for(PROMPTS)
    out = processor(text=PROMPTS, images=images, return_tensors="pt")
    rows = [original_input_ids(processor.tokenizer, p, processor.num_image_tokens) for p in PROMPTS]
    assert processor.tokenizer.pad_token_id == processor.tokenizer.eos_token_id == 1
    ids, mask = original_left_pad(rows, pad_id=processor.tokenizer.eos_token_id)
    assert out["input_ids"].tolist() == ids
    assert out["attention_mask"].tolist() == mask
    assert out["input_ids"].dtype == torch.long and out["attention_mask"].dtype == torch.long
    # Images are flat over the batch, in order of appearance; per-sample nesting and a flat list are the same.
    flat = [image for sample in images for image in sample]
    assert out["pixel_values"].shape == (len(flat), 3, 32, 32)
    flat_out = processor(text=PROMPTS, images=flat, return_tensors="pt")
    torch.testing.assert_close(flat_out["pixel_values"], out["pixel_values"], rtol=0, atol=0)
    assert flat_out["input_ids"].tolist() == ids


def test_right_padding_max_length_and_multiple_of(processor):
    texts = ["Hi", "Hello there, how are you?"]
    right = processor(text=texts, padding_side="right", return_tensors="pt")
    short = original_input_ids(processor.tokenizer, "Hi", 16)
    assert right["input_ids"][0, : len(short)].tolist() == short
    assert right["attention_mask"][0].tolist() == [1] * len(short) + [0] * (right["input_ids"].shape[1] - len(short))
    padded = processor(text=texts, padding="max_length", max_length=40, return_tensors="pt")
    assert padded["input_ids"].shape == (2, 40)
    multiple = processor(text=texts, pad_to_multiple_of=8, return_tensors="pt")
    assert multiple["input_ids"].shape[1] % 8 == 0
    unpadded = processor(text=texts, padding=False)
    assert [len(row) for row in unpadded["input_ids"]] == [len(processor.tokenizer(t)["input_ids"]) for t in texts]


def test_truncation_cuts_text_but_never_image_tokens(processor):
    prompt = f"User: {IMAGE}Describe it in detail please, with many words."
    full = original_input_ids(processor.tokenizer, prompt, 16)
    image_end = max(i for i, t in enumerate(full) if t == processor.image_token_id) + 1
    out = processor(text=prompt, images=[noise_rgb(10, 10)], truncation=True, max_length=image_end, return_tensors="pt")
    assert out["input_ids"][0].tolist() == full[:image_end]
    with pytest.raises(ValueError, match=f"would cut image tokens. Raise max_length to at least {image_end}"):
        processor(text=prompt, images=[noise_rgb(10, 10)], truncation=True, max_length=image_end - 1)
    processor.tokenizer.truncation_side = "left"
    try:
        with pytest.raises(ValueError, match="would cut image tokens"):
            processor(text=prompt, images=[noise_rgb(10, 10)], truncation=True, max_length=5)
    finally:
        processor.tokenizer.truncation_side = "right"


def test_offsets_and_mm_token_type_ids(processor):
    prompt = f"User: {IMAGE}What?"
    out = processor(
        text=[prompt, "Hi"],
        images=[noise_rgb(10, 10)],
        return_offsets_mapping=True,
        return_mm_token_type_ids=True,
        return_tensors="pt",
    )
    ids, offsets, types = out["input_ids"][0].tolist(), out["offset_mapping"][0].tolist(), out["mm_token_type_ids"][0]
    start = prompt.index(IMAGE)
    for token, offset, kind in zip(ids, offsets, types.tolist()):
        if token == processor.image_token_id:
            assert offset == [start, start + len(IMAGE)] and kind == 1
        else:
            assert kind == 0
    assert types.sum().item() == 16
    # Padding (left by default) gets zero-width offsets at the start.
    assert out["offset_mapping"][1, 0].tolist() == [0, 0] and out["attention_mask"][1, 0] == 0


def test_image_only_and_hybrid_outputs():
    processor = tiny_processor(hybrid=True)
    image = noise_rgb(50, 30)
    only_images = processor(images=[image], return_tensors="pt")
    assert set(only_images.keys()) == {"high_res_pixel_values"}
    out = processor(text=f"{IMAGE}Hi", images=[image], return_tensors="pt", return_low_res_view=True)
    assert set(out.keys()) == {"input_ids", "attention_mask", "high_res_pixel_values", "pixel_values"}
    assert out["high_res_pixel_values"].shape == (1, 3, 128, 128) and out["pixel_values"].shape == (1, 3, 32, 32)
    assert processor.model_input_names == ["input_ids", "attention_mask", "high_res_pixel_values"]


# ---------------------------------------------------------------------------------------------------------------------
# Calls made by other libraries
# ---------------------------------------------------------------------------------------------------------------------
def test_lmms_eval_generic_call(processor):
    texts = [f"{IMAGE}What is shown?", "Only text."]
    out = processor(text=texts, images=[noise_rgb(40, 20)], videos=[], audios=[], return_tensors="pt", padding=True)
    expected = processor(text=texts, images=[noise_rgb(40, 20)], return_tensors="pt")
    assert out["input_ids"].tolist() == expected["input_ids"].tolist()
    torch.testing.assert_close(out["pixel_values"], expected["pixel_values"], rtol=0, atol=0)


def test_trl_style_calls(processor):
    # DataCollatorForVisionLanguageModeling: per-sample image lists with empty ones, right padding, no special tokens.
    texts = [f"{IMAGE}One.", "Text only.", f"{IMAGE}{IMAGE}Two."]
    images = [[noise_rgb(10, 12)], [], [noise_rgb(14, 9), noise_rgb(9, 9)]]
    out = processor(
        images=images, text=texts, padding=True, padding_side="right", add_special_tokens=False, return_tensors="pt",
        pad_to_multiple_of=None, truncation=False, max_length=None,
    )
    assert out["pixel_values"].shape[0] == 3
    for row, text in enumerate(texts):
        expected = original_input_ids(processor.tokenizer, text, 16)[1:]  # no BOS
        assert out["input_ids"][row, : len(expected)].tolist() == expected
    text_only = processor(images=None, text=["a", "bb"], padding=True, padding_side="right", return_tensors="pt")
    assert "pixel_values" not in text_only
    nested = processor(text=texts, images=images, images_kwargs={"do_normalize": True}, text_kwargs={"padding": True})
    assert len(nested["pixel_values"]) == 3


def test_vllm_num_multimodal_tokens(processor):
    data = processor._get_num_multimodal_tokens(image_sizes=[(10, 20), (300, 40)])
    assert data.num_image_tokens == [16, 16] and data.num_image_patches == [1, 1]
    assert "num_image_tokens" not in processor._get_num_multimodal_tokens()


def test_decoding(processor):
    ids = processor(text=["Hello there", "Hi"], return_tensors="pt")["input_ids"]
    texts = processor.post_process_image_text_to_text(ids)
    assert texts == ["Hello there", "Hi"]
    assert processor.post_process_image_text_to_text(ids[0]) == "Hello there"
    assert processor.batch_decode(ids, skip_special_tokens=True) == texts
    encoded = processor(text=f"{IMAGE}Hi", images=[noise_rgb(8, 8)])
    with_specials = processor.decode(encoded["input_ids"][0], skip_special_tokens=False)
    assert with_specials == BOS + IMAGE * 16 + "Hi"


def test_attributes(processor):
    assert processor.image_token == IMAGE and processor.image_token_id == 2 and processor.num_image_tokens == 16
    assert processor.model_input_names == ["input_ids", "attention_mask", "pixel_values"]
    assert processor.chat_template == CHAT_TEMPLATE
    assert processor.return_mm_token_type_ids is False
    assert processor.tokenizer.padding_side == "left"


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer helpers
# ---------------------------------------------------------------------------------------------------------------------
def test_train_tokenizer_is_llama_style_with_the_release_special_tokens():
    tokenizer = train_tokenizer(["hello world"] * 3, vocab_size=300)
    assert [tokenizer.bos_token, tokenizer.eos_token] == [BOS, EOS]
    assert tokenizer.convert_tokens_to_ids([BOS, EOS, IMAGE]) == [0, 1, 2]
    ids = tokenizer("hello")["input_ids"]
    assert ids[0] == 0 and 1 not in ids  # BOS added, no EOS
    assert tokenizer(f"a{IMAGE}b", add_special_tokens=False)["input_ids"].count(2) == 1
    assert IMAGE in tokenizer.all_special_tokens and tokenizer.pad_token is None
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["x"], vocab_size=100)
    with pytest.raises(TypeError, match="iterable of strings"):
        train_tokenizer("just one string", vocab_size=300)


def test_prepare_tokenizer_adds_what_is_missing(caplog):
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.add_tokens(["a", "b"])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", additional_special_tokens=["<other>"]
    )
    logger = logging.getLogger("transformers_dsvl.tokenization_dsvl")
    logger.propagate = True
    with caplog.at_level(logging.WARNING):
        prepare_tokenizer(tokenizer)
    assert any("has no '<image_placeholder>' token" in record.getMessage() for record in caplog.records)
    assert IMAGE in tokenizer.get_vocab() and {IMAGE, "<other>"} <= set(tokenizer.all_special_tokens)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    assert tokenizer(f"a{IMAGE}b", add_special_tokens=False)["input_ids"].count(image_id) == 1
    assert tokenizer.pad_token == "</s>" and tokenizer.padding_side == "left"
    no_eos = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        prepare_tokenizer(no_eos)
    with pytest.raises(TypeError, match="transformers tokenizer"):
        prepare_tokenizer("not a tokenizer")


def test_from_model_config_matches_the_presets():
    from transformers_dsvl import DeepSeekVLConfig

    tokenizer = tiny_tokenizer()
    small = DeepSeekVLProcessor.from_model_config(DeepSeekVLConfig.from_preset("tiny"), tokenizer)
    assert small.num_image_tokens == 16 and small.image_processor.image_size == 32
    assert small.image_processor.low_res_image_size is None
    hybrid = DeepSeekVLProcessor.from_model_config(DeepSeekVLConfig.from_preset("tiny-hybrid"), tiny_tokenizer())
    assert hybrid.image_processor.image_size == 128 and hybrid.image_processor.low_res_image_size == 32
    assert hybrid.image_processor.effective_background_color == (122, 116, 104)
    release = DeepSeekVLImageProcessor.from_model_config(DeepSeekVLConfig.from_preset("deepseek-vl-7b"))
    assert (release.image_size, release.low_res_image_size, release.min_size) == (1024, 384, 14)
    with pytest.raises(ValueError, match="image_token_id"):
        DeepSeekVLProcessor.from_model_config(DeepSeekVLConfig.from_preset("tiny", image_token_id=7), tiny_tokenizer())


# ---------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hybrid", [False, True])
def test_save_and_load_round_trip(tmp_path, hybrid):
    processor = tiny_processor(hybrid=hybrid, num_image_tokens=9)
    processor.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"chat_template.jinja", "processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["num_image_tokens"] == 9 and config["processor_class"] == "DeepSeekVLProcessor"
    loaded = DeepSeekVLProcessor.from_pretrained(tmp_path)
    assert loaded.num_image_tokens == 9 and loaded.chat_template == CHAT_TEMPLATE
    for field in DeepSeekVLImageProcessor.config_fields:
        assert getattr(loaded.image_processor, field) == getattr(processor.image_processor, field), field
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded.tokenizer.pad_token_id == processor.tokenizer.pad_token_id
    texts = [f"{IMAGE}Describe.", "Text only, a bit longer than the other one."]
    images = [noise_rgb(33, 21)]
    a = processor(text=texts, images=images, return_tensors="pt")
    b = loaded(text=texts, images=images, return_tensors="pt")
    assert set(a.keys()) == set(b.keys())
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_auto_classes_load_the_saved_processor(tmp_path):
    # Needs the Auto registration done on `import transformers_dsvl` (AutoProcessor / AutoImageProcessor).
    tiny_processor(hybrid=True).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "dsvl", **_tiny_config_dict("tiny-hybrid")})
    )
    assert type(transformers.AutoProcessor.from_pretrained(tmp_path)) is DeepSeekVLProcessor
    assert type(transformers.AutoImageProcessor.from_pretrained(tmp_path)) is DeepSeekVLImageProcessor


def _tiny_config_dict(preset: str) -> dict:
    from transformers_dsvl import DeepSeekVLConfig

    return DeepSeekVLConfig.from_preset(preset).to_dict()




@pytest.mark.skipif(OTHER_PYTHON is None, reason="no virtualenv with the other transformers major version was found")
def test_checkpoint_saved_by_the_other_transformers_version_loads(tmp_path):
    # Checkpoints cross versions: 5.x nests the image processor in processor_config.json, 4.x writes
    # preprocessor_config.json. Save with the other major version, load here, compare outputs.
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from processor_helpers import tiny_processor
        tiny_processor(hybrid=True, num_image_tokens=9).save_pretrained({str(tmp_path)!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([OTHER_PYTHON, "-c", script], check=True, env=env, capture_output=True, timeout=300)
    loaded = DeepSeekVLProcessor.from_pretrained(tmp_path)
    reference = tiny_processor(hybrid=True, num_image_tokens=9)
    assert loaded.num_image_tokens == 9 and loaded.chat_template == CHAT_TEMPLATE
    assert loaded.image_processor.to_dict()["low_res_image_size"] == 32
    text, images = f"{IMAGE}Hi there", [noise_rgb(40, 30)]
    a = reference(text=text, images=images, return_tensors="pt")
    b = loaded(text=text, images=images, return_tensors="pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(processor):
    image = noise_rgb(10, 10)
    cases = [
        (dict(text=f"{IMAGE}{IMAGE}Hi", images=[image]), ValueError, "2 <image_placeholder> placeholder.* but 1 image"),
        (dict(text="Hi", images=[image]), ValueError, "0 <image_placeholder> placeholder\\(s\\).* but 1 image"),
        (dict(text=f"{IMAGE}Hi"), ValueError, "but 0 image"),
        (dict(text=[f"{IMAGE}a", "b"], images=[[], [image]]), ValueError, "Sample 0 has 1 <image_placeholder>"),
        (dict(text=f"{IMAGE}Hi", images=[image], videos=[np.zeros((2, 8, 8, 3))]), ValueError, "got videos"),
        (dict(text="Hi", audio=[np.zeros(100)]), ValueError, "got audio"),
        (dict(text=[[1, 2, 3]]), TypeError, "pre-tokenised input is not supported"),
        (dict(text="Hi", foo=1), TypeError, "unknown arguments \\['foo'\\]"),
        (dict(text="Hi", padding_side="middle"), ValueError, "padding_side"),
        (dict(text=["a", "bbbbbb"], padding=False, return_tensors="pt"), ValueError, "different lengths"),
        (dict(text="Hi", padding="max_length"), ValueError, "needs max_length"),
        (dict(text="Hi", return_tensors="tf"), ValueError, "return_tensors"),
        (dict(text="Hi", truncation="only_second", max_length=3), ValueError, "truncation="),
        (dict(), ValueError, "needs `text`, `images`, or both"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            processor(**kwargs)


def test_bad_construction_gives_clear_errors():
    tokenizer = tiny_tokenizer()
    with pytest.raises(TypeError, match="DeepSeekVLImageProcessor"):
        DeepSeekVLProcessor(transformers.CLIPImageProcessor(), tokenizer)
    with pytest.raises(ValueError, match="num_image_tokens"):
        DeepSeekVLProcessor(tiny_image_processor(), tokenizer, num_image_tokens=0)
    with pytest.raises(ValueError, match="image_token must be"):
        DeepSeekVLProcessor(tiny_image_processor(), tokenizer, image_token="<image>")
    # A tokenizer that splits the placeholder into pieces is caught at call time.
    processor = DeepSeekVLProcessor(tiny_image_processor(), tokenizer)
    processor.image_token_id = 12345
    with pytest.raises(ValueError, match="run prepare_tokenizer"):
        processor(text=f"{IMAGE}Hi", images=[noise_rgb(8, 8)])
