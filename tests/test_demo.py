"""`dsvl demo`: the synthetic data, the warm-up loss, and the short demo run end to end.

The short run (`--preset quick`, about 85 s here) goes through the warm-ups and stages 1-3 with the same code as
the full demo. It checks that every phase learns (its loss falls), that the model learns the task's format through
the chat template (every held-out answer is one of the answers its question type allows), that it reads the image
(the true answers cost less with the real images than with blank ones, which a broken tower, aligner or image-token
merge cannot give), and that the saved checkpoint answers through `pipeline("image-text-to-text")` exactly as the
in-memory model did. The short run is only part-way there (23-30% held-out against 20% chance); the full run's
93.6% is measured by hand and reported in docs/demo.md.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from transformers_dsvl.demo import synthetic
from transformers_dsvl.demo.data import DemoDataSizes, build_split, tokenizer_corpus
from transformers_dsvl.demo.evaluation import first_word, image_reliance
from transformers_dsvl.demo.pretraining import CaptionTokenHeads, caption_token_loss, caption_token_targets
from transformers_dsvl.demo.run import DemoSettings, demo_config, run_demo
from transformers_dsvl.training.data import as_dataset


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- data ------------------------------------------------------------------------------------------------------------
def test_examples_are_deterministic_and_streams_independent():
    first = [synthetic.caption_example(0, index) for index in range(20)]
    again = [synthetic.caption_example(0, index) for index in range(20)]
    assert [png_bytes(e["image"]) for e in first] == [png_bytes(e["image"]) for e in again]
    assert [e["caption"] for e in first] == [e["caption"] for e in again]
    other_seed = [synthetic.caption_example(1, index) for index in range(20)]
    assert [png_bytes(e["image"]) for e in first] != [png_bytes(e["image"]) for e in other_seed]
    # The held-out split has its own streams: none of its images is a training image.
    training = {png_bytes(synthetic.caption_example(0, i)["image"]) for i in range(300)}
    held_out = {png_bytes(synthetic.test_example(0, i)["image"]) for i in range(70)}
    assert not training & held_out


def test_scenes_answer_every_question_type_they_allow():
    rng = synthetic.example_rng(0, "unit", 0)
    for question_type in synthetic.QUESTION_TYPES:
        for _ in range(10):
            image, scene = synthetic.render_for_question_type(rng, question_type)
            assert scene.answer(question_type) in synthetic.ANSWERS[question_type]
            assert 96 <= max(image.size) <= 192
    scene = synthetic.Scene(kind="shapes", colour="red", shape="circle", count=3)
    assert scene.caption() == "Three red circle shapes."  # the shape word is the same token for every count
    chart = synthetic.Scene(kind="chart", bars=[("red", 0.3), ("blue", 0.9), ("green", 0.5)])
    assert chart.answer("bar") == "blue" and "blue" in chart.caption()
    with pytest.raises(ValueError, match="cannot answer"):
        chart.answer("colour")


def connected_regions(mask) -> int:
    """4-connected regions of True pixels."""
    seen, regions = set(), 0
    height, width = mask.shape
    for start in zip(*mask.nonzero()):
        if start in seen:
            continue
        regions += 1
        stack = [start]
        seen.add(start)
        while stack:
            y, x = stack.pop()
            for neighbour in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= neighbour[0] < height and 0 <= neighbour[1] < width and mask[neighbour] \
                        and neighbour not in seen:
                    seen.add(neighbour)
                    stack.append(neighbour)
    return regions


def test_shapes_are_drawn_apart_so_they_can_be_counted():
    import numpy as np

    rng = synthetic.example_rng(0, "unit", 1)
    for _ in range(30):
        image, scene = synthetic.render_for_question_type(rng, "count")
        mask = (np.asarray(image) == synthetic.COLOURS[scene.colour]).all(axis=-1)
        assert connected_regions(mask) == scene.count, scene


def test_held_out_split_is_balanced_and_in_the_loaders_schemas():
    test = build_split("test", seed=0, size=70)
    assert {t: list(test["question_type"]).count(t) for t in synthetic.QUESTION_TYPES} == dict.fromkeys(
        synthetic.QUESTION_TYPES, 10)
    conversations = build_split("conversations", seed=0, size=60)
    loaded = as_dataset(conversations, "conversations")
    assert len(loaded) == 60
    forms = {(len(row["images"]), len(row["messages"])) for row in conversations}
    assert any(images == 0 for images, _ in forms) and any(images == 2 for images, _ in forms)
    assert any(turns > 2 for _, turns in forms)  # multi-turn
    for row in conversations:  # one image part per image, all in the first user turn
        parts = [part["type"] for part in row["messages"][0]["content"]]
        assert parts.count("image") == len(row["images"])
    captions = as_dataset(build_split("captions", seed=0, size=10), "image_text")
    assert all(text.startswith("<image_placeholder>") for text in captions["text"])
    with pytest.raises(ValueError, match="multiple of 7"):
        DemoDataSizes(test=50).check_test_size()
    with pytest.raises(ValueError, match="multiple of 7"):
        DemoSettings(data=DemoDataSizes(test=50))


def test_a_world_of_shape_images_only():
    """`image_kinds` narrows every image split to some kinds; the question types follow, the text corpus stays."""
    kinds = ("shapes",)
    assert synthetic.question_types(kinds) == ("colour", "shape", "count", "position")
    assert synthetic.question_types() == synthetic.QUESTION_TYPES
    test = build_split("test", seed=0, size=40, image_kinds=kinds)
    assert {t: list(test["question_type"]).count(t) for t in synthetic.question_types(kinds)} == dict.fromkeys(
        synthetic.question_types(kinds), 10)
    captions = build_split("captions", seed=0, size=40, image_kinds=kinds)
    assert {caption.split()[0] for caption in captions["caption"]} <= {"One", "Two", "Three", "Four"}  # shape scenes
    conversations = build_split("conversations", seed=0, size=60, image_kinds=kinds)
    answers = [part["text"] for row in conversations for message in row["messages"] if message["role"] == "assistant"
               for part in message["content"]]
    assert not {answer.rstrip(".") for answer in answers} & {*synthetic.ANSWERS["word"], *synthetic.ANSWERS["digit"]}
    assert any(len(row["images"]) == 2 for row in conversations) and any(not row["images"] for row in conversations)
    # The full world is unchanged by the option: the same examples as without it.
    assert build_split("test", seed=0, size=14)["question"] == build_split(
        "test", seed=0, size=14, image_kinds=synthetic.IMAGE_KINDS)["question"]
    DemoDataSizes(test=200).check_test_size(kinds)
    with pytest.raises(ValueError, match="multiple of 4"):
        DemoDataSizes(test=210).check_test_size(kinds)
    with pytest.raises(ValueError, match="non-empty selection of"):
        DemoSettings(image_kinds=("photos",))


def test_tokenizer_corpus_covers_every_answer():
    sizes = {"captions": 40, "text": 300, "conversations": 40}
    data = {split: build_split(split, 0, size) for split, size in sizes.items()}
    words = set(" ".join(tokenizer_corpus(data)).lower().replace(".", " ").replace("?", " ").split())
    for answers in synthetic.ANSWERS.values():
        assert set(answers) <= words | set(synthetic.DIGITS)


# -- warm-up loss and answer parsing --------------------------------------------------------------------------------
def test_caption_token_warm_up_loss():
    """Targets are the caption's token set; the loss is BCE summed over the vocabulary, averaged over images."""
    targets = caption_token_targets([[3, 5, 3], [0]], vocab_size=6)
    assert targets.tolist() == [[0, 0, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0]]
    logits = torch.tensor([[0.5, -1.0, 2.0, 3.0, 0.0, -2.0], [1.0, 0.0, 0.0, -1.0, 0.5, 0.25]])
    expected = 0.0
    for row in range(2):
        for token in range(6):
            probability = 1 / (1 + math.exp(-float(logits[row, token])))
            expected -= math.log(probability if targets[row, token] else 1 - probability)
    assert caption_token_loss(logits, targets).item() == pytest.approx(expected / 2, rel=1e-6)
    heads = CaptionTokenHeads(demo_config(DemoSettings(), vocab_size=300), vocab_size=300)
    towers = [torch.randn(2, 16, 96), torch.randn(2, 16, 128)]  # SigLIP and SAM outputs of the demo model
    assert [tuple(logits.shape) for logits in heads(towers)] == [(2, 300), (2, 300)]


@pytest.mark.parametrize("answer, word", [("Red.", "red"), (" three shapes", "three"), ("7", "7"), ("", ""),
                                          ("... left!", "left")])
def test_first_word(answer, word):
    assert first_word(answer) == word


def test_answer_loss_refuses_misaligned_or_empty_inputs():
    from transformers_dsvl.demo.evaluation import answer_loss, blank_like

    image = blank_like(synthetic.test_example(0, 0)["image"])
    with pytest.raises(ValueError, match="one image and one answer per question; got 1 images, 2 questions"):
        answer_loss(None, None, [image], ["What colour is the shape?", "Count the shapes."], ["red"])
    with pytest.raises(ValueError, match="at least one question"):
        answer_loss(None, None, [], [], [])


def test_settings_validate():
    with pytest.raises(ValueError, match="stage3_steps"):
        DemoSettings(stage3_steps=0)
    with pytest.raises(ValueError, match="Unknown demo preset"):
        DemoSettings.preset("huge")


# -- the short run end to end -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    return run_demo(DemoSettings.preset("quick", output_dir=str(output_dir)), log=lambda message: None)


QUICK_TYPES = synthetic.question_types(("shapes",))  # the short variant's world: shape scenes only


@pytest.mark.slow
def test_quick_demo_answers_every_held_out_question_in_the_task_format(quick_run):
    scores = quick_run.scores
    assert len(scores.predictions) == 200
    assert set(scores.accuracy) == set(QUICK_TYPES)
    assert scores.chance == {t: 1 / len(synthetic.ANSWERS[t]) for t in QUICK_TYPES}
    for prediction in scores.predictions:
        assert first_word(prediction["answer"]) in synthetic.ANSWERS[prediction["question_type"]], prediction
        assert prediction["correct"] == (first_word(prediction["answer"]) == prediction["truth"])
    hits = sum(prediction["correct"] for prediction in scores.predictions)
    assert scores.overall == pytest.approx(hits / 200)


@pytest.mark.slow
def test_quick_demo_answers_far_above_chance(quick_run):
    """Held-out accuracy of the short run (shape scenes; chance 25% overall, 16.7% for colour): measured 62.5% /
    colour 100% on transformers 5.x and 47.0% / colour 56% on 4.57 (the two lines' runs differ from the first
    phase on). A model that ignores the image answers at about chance; so does a broken recipe."""
    scores = quick_run.scores
    assert scores.overall_chance == pytest.approx(0.25)
    assert scores.overall >= 0.40, scores.accuracy
    assert scores.accuracy["colour"] >= 0.40, scores.accuracy


@pytest.mark.slow
def test_quick_demo_reads_the_image(quick_run):
    """The true answers cost less with the held-out image than with a blank one. A model that ignores the image (a
    broken tower, aligner or merge) pays the same loss both ways (measured 1.70 against 1.71 nats for a short run
    whose model answered from the question alone); this preset: 0.82 against 2.22 (5.x), 1.02 against 1.99 (4.57)."""
    reliance = quick_run.reliance
    with_images, blank = reliance["answer_loss_with_images"], reliance["answer_loss_with_blank_images"]
    assert with_images < blank - 0.5, reliance
    # The same measurement from the saved checkpoint, on the held-out split the run wrote.
    import datasets

    from transformers_dsvl import DeepSeekVLForConditionalGeneration, DeepSeekVLProcessor

    model = DeepSeekVLForConditionalGeneration.from_pretrained(quick_run.model_dir)
    processor = DeepSeekVLProcessor.from_pretrained(quick_run.model_dir)
    test = datasets.load_from_disk(str(quick_run.output_dir / "work" / "data" / "test"))
    assert image_reliance(model, processor, test) == pytest.approx(reliance, abs=1e-4)


@pytest.mark.slow
def test_answer_loss_of_a_left_padded_batch_matches_each_question_alone(quick_run):
    from transformers_dsvl import DeepSeekVLForConditionalGeneration, DeepSeekVLProcessor
    from transformers_dsvl.demo.evaluation import answer_loss, user_turn

    model = DeepSeekVLForConditionalGeneration.from_pretrained(quick_run.model_dir).eval()
    processor = DeepSeekVLProcessor.from_pretrained(quick_run.model_dir)
    rows = [synthetic.test_example(0, index) for index in range(7)]  # one per type: prompts of different lengths
    expected = 0.0
    for row in rows:
        messages = user_turn(None, row["question"])
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        full = processor.apply_chat_template(
            messages + [{"role": "assistant", "content": [{"type": "text", "text": row["answer"]}]}])
        inputs = processor(text=[full], images=[[row["image"]]], return_tensors="pt")
        answer_tokens = len(processor.tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"])
        labels = inputs["input_ids"].clone()
        labels[:, :-answer_tokens] = -100
        with torch.no_grad():
            expected += model(**inputs, labels=labels).loss.item() * answer_tokens  # the mean over answer tokens
    batched = answer_loss(model, processor, [r["image"] for r in rows], [r["question"] for r in rows],
                          [r["answer"] for r in rows], batch_size=4)
    assert batched == pytest.approx(expected / len(rows), rel=1e-4)


@pytest.mark.slow
def test_quick_demo_checkpoint_is_complete_and_loads(quick_run):
    import transformers

    model_dir = quick_run.model_dir
    metrics = json.loads((model_dir / "demo_metrics.json").read_text())
    assert metrics["held_out"]["overall_accuracy"] == pytest.approx(quick_run.scores.overall)
    assert metrics["held_out"]["answer_loss_with_images"] == pytest.approx(
        quick_run.reliance["answer_loss_with_images"])
    card = (model_dir / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and f"{quick_run.scores.overall:.1%}" in card
    assert (model_dir / "modeling_dsvl.py").is_file()  # remote code
    plots = sorted(p.name for p in (quick_run.output_dir / "plots").iterdir())
    assert plots == ["0_warmup_llm.png", "1_warmup_vision.png", "2_stage1.png", "3_stage2.png", "4_stage3.png"]
    phases = {phase["slug"]: phase for phase in metrics["phases"]}
    for slug in ("warmup_llm", "warmup_vision", "stage1", "stage3"):
        losses = [loss for _, loss in phases[slug]["losses"]]
        assert losses[-1] < losses[0], slug  # the phase learns
    # Stage 2's logged loss mixes language-only and multimodal steps, so its ends are not comparable; both ran.
    assert set(phases["stage2"]["steps_per_modality"]) == {"language", "multimodal"}
    assert sum(phases["stage2"]["steps_per_modality"].values()) == phases["stage2"]["steps"]
    # The saved checkpoint answers as the in-memory model did, through the pipeline.
    pipe = transformers.pipeline("image-text-to-text", model=str(model_dir))
    example = quick_run.examples[0]
    row = build_split("test", seed=0, size=200, image_kinds=("shapes",))[0]  # examples: the first of each type
    assert row["question"] == example["question"]
    messages = [{"role": "user", "content": [{"type": "image", "image": row["image"]},
                                             {"type": "text", "text": row["question"]}]}]
    output = pipe(text=messages, max_new_tokens=4, return_full_text=False, generate_kwargs={"do_sample": False})
    assert output[0]["generated_text"].strip() == example["answer"]


def test_demo_refuses_to_replace_a_checkpoint(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(DemoSettings.preset("quick", output_dir=str(tmp_path)), log=lambda message: None)
