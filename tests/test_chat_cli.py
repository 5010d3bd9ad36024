"""`dsvl chat`: one-shot and interactive multi-turn chat on a saved checkpoint, images kept across turns."""

from __future__ import annotations

import io

import pytest
import torch
from model_helpers import tiny_model
from PIL import Image
from processor_helpers import tiny_processor

import transformers_dsvl
from transformers_dsvl.chat_cli import add_chat_arguments, main_chat
from transformers_dsvl.cli import build_parser


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chat_checkpoint")
    processor = tiny_processor(hybrid=True)
    model = tiny_model("tiny-hybrid", text_config=dict(vocab_size=len(processor.tokenizer)),
                       image_token_id=processor.image_token_id)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    image_path = directory / "picture.png"
    Image.fromarray((torch.rand(40, 70, 3) * 255).byte().numpy()).save(image_path)
    return directory, model, processor, image_path


def parse(*argv):
    return build_parser("chat").parse_args(["chat", *argv])


def reference_answers(model, processor, image_path, questions):
    """Re-running generate on the whole conversation at every turn, greedy, as the chat promises to match."""
    image = Image.open(image_path).convert("RGB")
    messages, answers = [], []
    for turn, question in enumerate(questions):
        content = ([{"type": "image"}] if turn == 0 else []) + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=prompt, images=[image], return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        answers.append(answer)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return answers


def test_one_shot_answer_equals_generate(checkpoint):
    directory, model, processor, image_path = checkpoint
    out = io.StringIO()
    args = parse("--model", str(directory), "--image", str(image_path), "--prompt", "What is it?",
                 "--max-new-tokens", "6")
    assert main_chat(args, stdout=out) == 0
    assert out.getvalue().rstrip("\n") == reference_answers(model, processor, image_path, ["What is it?"])[0]


def test_interactive_multi_turn_keeps_the_image(checkpoint):
    directory, model, processor, image_path = checkpoint
    questions = ["What is it?", "And the colour?"]
    out = io.StringIO()
    args = parse("--model", str(directory), "--image", str(image_path), "--max-new-tokens", "6")
    assert main_chat(args, stdin=io.StringIO("\n".join(questions) + "\n/quit\n"), stdout=out) == 0
    answers = [line[len("Assistant: "):] for line in out.getvalue().split("User: ") if line.startswith("Assistant: ")]
    answers = [a.rstrip("\n") for a in answers]
    assert answers == reference_answers(model, processor, image_path, questions)


def test_fused_cpu_kernels_flag_gives_the_same_answers(checkpoint):
    directory, model, processor, image_path = checkpoint
    out = io.StringIO()
    args = parse("--model", str(directory), "--image", str(image_path), "--prompt", "What is it?",
                 "--max-new-tokens", "6", "--fused-cpu-kernels")
    try:
        assert main_chat(args, stdout=out) == 0
        assert transformers_dsvl.fused_cpu_kernels_enabled()
    finally:
        transformers_dsvl.disable_fused_cpu_kernels()
    assert out.getvalue().rstrip("\n") == reference_answers(model, processor, image_path, ["What is it?"])[0]


def test_fused_cpu_kernels_flag_names_a_failed_build(checkpoint, monkeypatch):
    from torch.utils import cpp_extension

    from transformers_dsvl import cpu_kernels

    directory, _, _, _ = checkpoint
    monkeypatch.setattr(cpu_kernels, "_BUILT", None)

    def failing_load(*args, **kwargs):
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    with pytest.raises(SystemExit, match=r"no C\+\+ compiler found.*leave out --fused-cpu-kernels"):
        main_chat(parse("--model", str(directory), "--prompt", "hi", "--fused-cpu-kernels"))
    assert not transformers_dsvl.fused_cpu_kernels_enabled()


def test_clear_errors_for_missing_model_and_image(checkpoint, tmp_path):
    directory, _, _, _ = checkpoint
    with pytest.raises(SystemExit, match="has no config.json"):
        main_chat(parse("--model", str(tmp_path), "--prompt", "hi"))
    with pytest.raises(SystemExit, match="does not exist"):
        main_chat(parse("--model", str(directory), "--image", str(tmp_path / "nope.png"), "--prompt", "hi"))


def test_sampling_flags_map_to_generate_kwargs():
    import argparse

    from transformers_dsvl.chat_cli import generation_kwargs

    parser = add_chat_arguments(argparse.ArgumentParser())
    assert generation_kwargs(parser.parse_args(["--model", "m"])) == {"do_sample": False, "repetition_penalty": 1.0}
    sampled = generation_kwargs(parser.parse_args(["--model", "m", "--temperature", "0.2", "--repetition-penalty",
                                                   "1.1"]))
    assert sampled == {"do_sample": True, "temperature": 0.2, "top_p": 0.95, "repetition_penalty": 1.1}
