"""`ChatSession` gives, turn after turn, exactly the tokens of re-running `generate` on the whole conversation, while
reusing the KV cache of the shared prefix and encoding every image once."""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomize_
from processor_helpers import noise_rgb, tiny_processor

from transformers_dsvl import DeepSeekVLConfig, DeepSeekVLForConditionalGeneration
from transformers_dsvl.chat import ChatSession

MAX_NEW_TOKENS = 7


def tiny_model_and_processor(hybrid: bool):
    processor = tiny_processor(hybrid=hybrid)
    config = DeepSeekVLConfig.from_preset(
        "tiny-hybrid" if hybrid else "tiny", text_config={"vocab_size": len(processor.tokenizer)}
    )
    torch.manual_seed(0)
    model = randomize_(DeepSeekVLForConditionalGeneration(config), seed=0, scale=0.3).eval()
    return model, processor


@pytest.fixture(scope="module", params=[False, True], ids=["siglip", "hybrid"])
def model_and_processor(request):
    return tiny_model_and_processor(request.param)


def rerun_generate(model, processor, messages, seed=None, **generate_kwargs) -> list[int]:
    """The reference: render the whole conversation, process every image again, generate from scratch."""
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [part["image"] for message in messages for part in message["content"] if part["type"] == "image"]
    inputs = processor(text=prompt, images=images or None, return_tensors="pt")
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, **generate_kwargs)
    return output[0, inputs["input_ids"].shape[1]:].tolist()


class VisionCallCounter:
    """Counts images that go through the vision tower(s)."""

    def __init__(self, model):
        self.images = 0
        tower = model.model.vision_model
        self.handle = tower.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        pixels = args[0] if args else kwargs["pixel_values"]
        self.images += pixels.shape[0]

    def remove(self):
        self.handle.remove()


def user(text, *images):
    return {"role": "user", "content": [{"type": "image", "image": i} for i in images] + [{"type": "text", "text": text}]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def test_each_turn_equals_rerunning_generate_and_reuses_the_prefix(model_and_processor):
    model, processor = model_and_processor
    first, second = noise_rgb(40, 24, 1), noise_rgb(20, 36, 2)
    session = ChatSession(model, processor, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    counter = VisionCallCounter(model)
    try:
        turns = [
            ("What is it?", [first]),
            ("And the colour?", []),
            ("Compare it with this one, please.", [second]),
            ("Which is larger?", []),
        ]
        messages, visible = [], False
        for turn, (text, images) in enumerate(turns):
            counter.images = 0
            answer = session.ask(text, images=images or None)
            assert counter.images == len(images), f"turn {turn}: every image is encoded once, old ones never again"
            generated = session.last_generated_ids

            messages.append(user(text, *images))
            counter.images = 0
            expected = rerun_generate(model, processor, messages, do_sample=False)
            assert generated == expected, f"turn {turn}"
            assert answer == processor.tokenizer.decode(expected, skip_special_tokens=True)
            messages.append(assistant(answer))
            visible = visible or bool(answer.strip())

            if turn == 0:
                assert session.last_reused_tokens == 0
            else:
                # At least the whole previous prompt comes from the cache (the answer too, unless it re-tokenises).
                previous_prompt = processor.apply_chat_template(messages[:-3], add_generation_prompt=True,
                                                                tokenize=False)
                previous_length = len(session._token_ids(previous_prompt))
                assert session.last_reused_tokens >= previous_length, f"turn {turn}"
        assert visible, "the tiny model generated no visible text: the comparison would be void"
        assert session.messages == messages
        assert len(session.images) == 2
    finally:
        counter.remove()


def test_prompt_ids_equal_the_processor(model_and_processor):
    model, processor = model_and_processor
    session = ChatSession(model, processor, max_new_tokens=2)
    messages = [user("Describe.", noise_rgb(30, 30, 3), noise_rgb(12, 50, 4)), assistant("Two dogs."), user("Why?")]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = processor(text=prompt, images=[noise_rgb(30, 30, 3), noise_rgb(12, 50, 4)])["input_ids"][0]
    assert session._token_ids(prompt) == list(expected)


def test_sampling_draws_the_same_tokens_as_rerunning_generate(model_and_processor):
    model, processor = model_and_processor
    kwargs = dict(do_sample=True, temperature=1.5, top_k=50)
    session = ChatSession(model, processor, max_new_tokens=MAX_NEW_TOKENS, **kwargs)
    image = noise_rgb(33, 21, 5)
    torch.manual_seed(11)
    first = session.ask("What is it?", images=image)
    torch.manual_seed(12)
    session.ask("Again?")
    messages = [user("What is it?", image)]
    first_ids = rerun_generate(model, processor, messages, seed=11, **kwargs)
    assert processor.tokenizer.decode(first_ids, skip_special_tokens=True) == first
    messages += [assistant(first), user("Again?")]
    assert rerun_generate(model, processor, messages, seed=12, **kwargs) == session.last_generated_ids


def test_a_cached_prefix_that_no_longer_matches_is_recomputed(model_and_processor):
    model, processor = model_and_processor
    image = noise_rgb(28, 28, 6)
    session = ChatSession(model, processor, max_new_tokens=MAX_NEW_TOKENS)
    answer = session.ask("What is it?", images=[image])
    # Pretend the cache was built from other tokens from some position of the first prompt on (as when an answer
    # re-tokenises differently): only the matching prefix may be reused, the rest must be prefilled again.
    first_prompt = processor.apply_chat_template([user("What is it?", image)], add_generation_prompt=True,
                                                 tokenize=False)
    diverge_at = len(session._token_ids(first_prompt)) - 3
    session._cached_ids[diverge_at] = (session._cached_ids[diverge_at] + 1) % len(processor.tokenizer)
    session.ask("Sure?")
    assert session.last_reused_tokens == diverge_at
    messages = [user("What is it?", image), assistant(answer), user("Sure?")]
    assert session.last_generated_ids == rerun_generate(model, processor, messages)


def test_a_divergence_inside_an_image_refills_the_whole_image_from_stored_features(model_and_processor):
    model, processor = model_and_processor
    image = noise_rgb(26, 30, 7)
    session = ChatSession(model, processor, max_new_tokens=MAX_NEW_TOKENS)
    answer = session.ask("Look.", images=[image])
    start = session._cached_ids.index(processor.image_token_id)
    session._cached_ids[start + 3] = 0  # "diverges" inside the image's tokens
    counter = VisionCallCounter(model)
    try:
        session.ask("More?")
    finally:
        counter.remove()
    assert session.last_reused_tokens == start, "an image is either wholly cached or wholly prefilled"
    assert counter.images == 0, "the image's features are reused, not recomputed"
    messages = [user("Look.", image), assistant(answer), user("More?")]
    assert session.last_generated_ids == rerun_generate(model, processor, messages)


def test_reset_starts_a_new_conversation(model_and_processor):
    model, processor = model_and_processor
    session = ChatSession(model, processor, max_new_tokens=MAX_NEW_TOKENS)
    session.ask("Hello?", images=[noise_rgb(20, 20, 8)])
    session.reset()
    assert session.messages == [] and session.images == [] and session.last_reused_tokens == 0
    session.ask("Tell me a joke.")
    assert session.last_reused_tokens == 0
    assert session.last_generated_ids == rerun_generate(model, processor, [user("Tell me a joke.")])


def test_clear_errors(model_and_processor):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="max_new_tokens"):
        ChatSession(model, processor, max_new_tokens=0)
    with pytest.raises(TypeError, match="past_key_values"):
        ChatSession(model, processor, past_key_values=None)
    with pytest.raises(TypeError, match="DeepSeekVLProcessor"):
        ChatSession(model, processor.tokenizer)
    session = ChatSession(model, processor, max_new_tokens=2)
    with pytest.raises(TypeError, match="string"):
        session.ask(["not", "a", "string"])
    other = tiny_processor(hybrid=not model.config.is_hybrid, num_image_tokens=9)
    with pytest.raises(ValueError, match="does not match"):
        ChatSession(model, other)
