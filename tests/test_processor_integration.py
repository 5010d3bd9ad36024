"""The processor with the model: `pipeline("image-text-to-text")` equals calling `generate` directly, and TRL's
DataCollatorForVisionLanguageModeling builds training batches on which the model computes a finite loss."""

from __future__ import annotations

import pytest
import torch
import transformers
from model_helpers import randomize_
from packaging.version import Version
from processor_helpers import EOS, noise_rgb, tiny_processor
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from transformers_dsvl import DeepSeekVLConfig, DeepSeekVLForConditionalGeneration
from transformers_dsvl.processing_dsvl import DeepSeekVLProcessor

MAX_NEW_TOKENS = 6


def tiny_model_and_processor(hybrid: bool):
    processor = tiny_processor(hybrid=hybrid)
    # Vocabulary = the tokenizer's, so every generated id decodes to text and the text comparisons are meaningful.
    config = DeepSeekVLConfig.from_preset(
        "tiny-hybrid" if hybrid else "tiny", text_config={"vocab_size": len(processor.tokenizer)}
    )
    assert processor.image_token_id == config.image_token_id and processor.num_image_tokens == config.num_image_tokens
    assert processor.tokenizer.eos_token_id == config.text_config.eos_token_id
    torch.manual_seed(0)
    model = randomize_(DeepSeekVLForConditionalGeneration(config), seed=0, scale=0.3).eval()
    return model, processor


@pytest.fixture(scope="module", params=[False, True], ids=["siglip", "hybrid"])
def checkpoint(request, tmp_path_factory):
    model, processor = tiny_model_and_processor(request.param)
    path = tmp_path_factory.mktemp("hybrid" if request.param else "siglip")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, model, processor


def image_block(image):
    return {"type": "image", "image": image}


def chats():
    return {
        "single": [
            {"role": "user", "content": [image_block(noise_rgb(40, 24, 1)), {"type": "text", "text": "What is it?"}]}
        ],
        "two images": [
            {
                "role": "user",
                "content": [
                    image_block(noise_rgb(30, 30, 2)),
                    image_block(noise_rgb(12, 50, 3)),
                    {"type": "text", "text": "Compare the two pictures, please, in some detail."},
                ],
            }
        ],
        "text only": [{"role": "user", "content": [{"type": "text", "text": "Tell me a joke."}]}],
        "two turns": [
            {"role": "user", "content": [image_block(noise_rgb(25, 35, 4)), {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
            {"role": "user", "content": [{"type": "text", "text": "Color?"}]},
        ],
    }


def pipeline_kwargs() -> dict:
    # A fresh dict per call: the pipeline writes max_new_tokens into the generate_kwargs it is given.
    return dict(max_new_tokens=MAX_NEW_TOKENS, return_full_text=False, generate_kwargs={"do_sample": False})


def generate_directly(model, processor, conversations: list, return_ids: bool = False):
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    if return_ids:
        return output
    texts = processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1] :])
    assert any(text.strip() for text in texts), "the tiny model generated no visible text: the comparison is void"
    return texts


def test_pipeline_equals_direct_generate(checkpoint):
    path, model, processor = checkpoint
    pipe = transformers.pipeline("image-text-to-text", model=str(path))
    assert type(pipe.processor) is DeepSeekVLProcessor
    conversations = chats()
    # A single message, and a two-turn chat.
    for name in ("single", "two turns"):
        answer = pipe(text=conversations[name], **pipeline_kwargs())
        assert answer[0]["generated_text"] == generate_directly(model, processor, [conversations[name]])[0], name
    # A chat ending in an assistant message is continued (prefill), as with continue_final_message=True.
    prefill = conversations["two turns"][:2]
    prefill[-1] = {"role": "assistant", "content": [{"type": "text", "text": "It is a"}]}
    inputs = processor.apply_chat_template(
        prefill, continue_final_message=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    expected = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert pipe(text=prefill, **pipeline_kwargs())[0]["generated_text"] == expected
    # The same token ids, prompt included.
    ids = pipe(text=conversations["single"], max_new_tokens=MAX_NEW_TOKENS, return_tensors=True,
               generate_kwargs={"do_sample": False})[0]["generated_token_ids"]
    direct = generate_directly(model, processor, [conversations["single"]], return_ids=True)
    assert torch.as_tensor(ids).tolist() == direct[0].tolist()
    # A batch of three chats of different lengths (the pipeline runs them one by one).
    batch = [conversations["single"], conversations["two images"], conversations["text only"]]
    answers = pipe(text=batch, **pipeline_kwargs())
    assert len(answers) == 3
    for conversation, answer in zip(batch, answers):
        assert answer[0]["generated_text"] == generate_directly(model, processor, [conversation])[0]


def test_pipeline_batching_equals_direct_batched_generate(checkpoint):
    path, model, processor = checkpoint
    pipe = transformers.pipeline("image-text-to-text", model=str(path))
    conversations = chats()
    if processor.image_processor.low_res_image_size is None:
        batch = [conversations["single"], conversations["two images"], conversations["two turns"]]
    else:
        # The pipeline's collator concatenates only keys named pixel_values; other 4-D keys such as
        # high_res_pixel_values are padded like sequences, which keeps one image per chat. So hybrid chats batched
        # by the pipeline (batch_size > 1) must hold one image each.
        batch = [conversations["single"], conversations["two turns"], conversations["single"][:]]
    answers = pipe(text=batch, batch_size=3, **pipeline_kwargs())
    # One left-padded batch through the processor, as the pipeline collates it (the tokenizer pads on the left).
    assert [answer[0]["generated_text"] for answer in answers] == generate_directly(model, processor, batch)


def test_batched_generation_with_left_padding_matches_single_runs(checkpoint):
    _, model, processor = checkpoint
    conversations = chats()
    batch = [conversations["single"], conversations["two images"], conversations["text only"]]
    batched = generate_directly(model, processor, batch)
    singles = [generate_directly(model, processor, [conversation])[0] for conversation in batch]
    assert batched == singles


# ---------------------------------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------------------------------
def training_examples():
    return [
        {
            "images": [noise_rgb(40, 30, 5)],
            "messages": [
                {"role": "user", "content": "What is in the picture?"},
                {"role": "assistant", "content": "A small dog on grass."},
            ],
        },
        {
            "images": [],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "Hi."},
            ],
        },
        {
            "images": [noise_rgb(20, 45, 6), noise_rgb(33, 33, 7)],
            "messages": [
                {"role": "user", "content": "Compare them."},
                {"role": "assistant", "content": "The first is taller."},
                {"role": "user", "content": "And the colours?"},
                {"role": "assistant", "content": "Both are noisy."},
            ],
        },
    ]


@pytest.mark.parametrize("hybrid", [False, True], ids=["siglip", "hybrid"])
def test_trl_collator_batch_and_finite_loss(hybrid):
    model, processor = tiny_model_and_processor(hybrid)
    collator = DataCollatorForVisionLanguageModeling(processor)
    examples = training_examples()
    batch = collator(examples)
    pixel_key = "high_res_pixel_values" if hybrid else "pixel_values"
    assert set(batch.keys()) == {"input_ids", "attention_mask", pixel_key, "labels"}
    assert batch[pixel_key].shape[0] == 3
    ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    bos, image = processor.tokenizer.bos_token_id, processor.image_token_id
    for row, example in enumerate(examples):
        real = ids[row][attention[row].bool()].tolist()
        assert real[0] == bos and real.count(bos) == 1  # BOS once, as the original, despite add_special_tokens=False
        assert real.count(image) == len(example["images"]) * processor.num_image_tokens
        assert attention[row, : len(real)].all()  # TRL pads on the right
        # The collated row is exactly what the processor makes of this conversation alone.
        alone = processor.apply_chat_template(
            [dict(m) for m in _with_images(example)], tokenize=True, return_dict=True, return_tensors="pt"
        )
        assert real == alone["input_ids"][0].tolist()
    assert (labels[attention == 0] == -100).all() and (labels[attention == 1] == ids[attention == 1]).all()
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _with_images(example):
    from trl.data_utils import prepare_multimodal_messages

    return prepare_multimodal_messages(example["messages"], images=example["images"])


@pytest.mark.skipif(
    Version(transformers.__version__) < Version("5.18.0"),
    reason="TRL supports assistant_only_loss for vision-language data only with transformers >= 5.18",
)
def test_trl_collator_assistant_only_loss_marks_the_answers():
    model, processor = tiny_model_and_processor(hybrid=False)
    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    examples = training_examples()
    batch = collator(examples)
    tokenizer = processor.tokenizer
    for row, example in enumerate(examples):
        answers = [m["content"] for m in example["messages"] if m["role"] == "assistant"]
        supervised = [token for token in batch["labels"][row].tolist() if token != -100]
        assert tokenizer.decode(supervised) == "".join(" " + answer + EOS for answer in answers)
    assert torch.isfinite(model(**batch).loss)
