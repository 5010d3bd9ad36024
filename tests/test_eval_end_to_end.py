"""End-to-end evaluation with a tiny real checkpoint (random weights, saved and loaded like a real one) on small
benchmark files of every format: complete reports, batched generation equal to one-by-one generation, resuming an
interrupted run without redoing answered prompts, the answer-cache guards, and the `dsvl eval` command."""

from __future__ import annotations

import json

import pytest
import torch
from test_eval_formats import (
    write_mmbench_tsv,
    write_mmmu_parquet,
    write_ocrbench,
    write_pope,
    write_scienceqa,
    write_seed,
    write_vqa,
)

from transformers_dsvl import DeepSeekVLConfig, DeepSeekVLForConditionalGeneration
from transformers_dsvl.evaluation import (
    AnswerCacheMismatchError,
    evaluate_benchmark,
    get_benchmark,
)
from transformers_dsvl.evaluation.cli import (
    add_eval_arguments,
    load_model_and_processor,
    main_eval,
)
from transformers_dsvl.evaluation.parsing import extract_option_letter, extract_yes_no
from transformers_dsvl.evaluation.runner import ANSWERS_FILE, GreedyGenerator
from transformers_dsvl.processing_dsvl import DEFAULT_SYSTEM_PROMPT, DeepSeekVLProcessor
from transformers_dsvl.tokenization_dsvl import train_tokenizer

MAX_NEW_TOKENS = 4
CORPUS = [
    DEFAULT_SYSTEM_PROMPT,
    "User: <image_placeholder>Is there a dog in the image? Answer the question using a single word or phrase.",
    "Assistant: Yes. No. A. B. C. D. The answer is B. Answer with the option's letter from the given choices.",
    "What animal is shown? cat dog bird fish blue green red apple pear towels forest beach city Context:",
    "what is written in the image? CHALLENGER March 3 the area is 12 square meters x ^ { 2 }",
] * 3


def _save_checkpoint(folder, variant):
    tokenizer = train_tokenizer(CORPUS, vocab_size=320)
    image_token_id = tokenizer.convert_tokens_to_ids("<image_placeholder>")
    config = DeepSeekVLConfig.from_preset(variant, text_config={"vocab_size": len(tokenizer)},
                                          image_token_id=image_token_id)
    torch.manual_seed(0)
    model = DeepSeekVLForConditionalGeneration(config)
    with torch.no_grad():  # larger random weights: answers vary with the input instead of repeating one token
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    model.save_pretrained(folder)
    DeepSeekVLProcessor.from_model_config(config, tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _save_checkpoint(tmp_path_factory.mktemp("tiny_dsvl"), "tiny")


@pytest.fixture(scope="module")
def model_and_processor(checkpoint):
    return load_model_and_processor(checkpoint, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def benchmark_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return {
        "mmbench": write_mmbench_tsv(root / "MMBench_DEV_EN.tsv"),
        "mmbench_cn": write_mmbench_tsv(root / "MMBench_DEV_CN.tsv"),
        "pope": write_pope(root / "pope"),
        "scienceqa": write_scienceqa(root / "scienceqa"),
        "seed": write_seed(root / "seed"),
        "ocrbench": write_ocrbench(root / "ocrbench"),
        "mmmu": write_mmmu_parquet(root / "mmmu"),
        "vqa": write_vqa(root / "vqa"),
    }


def _run(task, data, model_and_processor, output, **kwargs):
    model, processor = model_and_processor
    kwargs = {"batch_size": 2, "max_new_tokens": MAX_NEW_TOKENS, "progress": False, "use_evaluate": False,
              "model_name": "tiny", **kwargs}
    return evaluate_benchmark(get_benchmark(task), data, model, processor, output, **kwargs)


EXPECTED_PROMPTS = {"mmbench": 9, "mmbench_cn": 9, "pope": 5, "scienceqa": 2, "seed": 2, "ocrbench": 3, "mmmu": 3,
                    "vqa": 2}


@pytest.mark.parametrize("task", sorted(EXPECTED_PROMPTS))
def test_every_format_gives_a_complete_report(task, benchmark_files, model_and_processor, tmp_path):
    report = _run(task, benchmark_files[task], model_and_processor, tmp_path / task)

    assert report["task"] == task and report["metric_backend"] == "builtin"
    assert report["generation"] == {"decoding": "greedy", "max_new_tokens": MAX_NEW_TOKENS}
    assert len(report["items"]) == EXPECTED_PROMPTS[task]
    for item in report["items"]:
        assert {"uid", "prompt", "raw_answer", "parsed", "correct", "reference", "rule"} <= set(item)
        assert item["prompt"].startswith(DEFAULT_SYSTEM_PROMPT + "\n\nUser: ")
        assert item["prompt"].endswith("\n\nAssistant:")
        assert "<image_placeholder>" in item["prompt"]
        assert isinstance(item["raw_answer"], str)
    assert report["headline"]["value"] == report["metrics"][report["headline"]["metric"]]

    # The files on disk hold the same report, and the summary shows its headline metric.
    on_disk = json.loads((tmp_path / task / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    summary = (tmp_path / task / "summary.md").read_text()
    assert f"| **{report['headline']['metric']}** |" in summary
    assert len((tmp_path / task / ANSWERS_FILE).read_text().splitlines()) == EXPECTED_PROMPTS[task]


def test_scores_follow_from_the_raw_answers(benchmark_files, model_and_processor, tmp_path):
    """The report's numbers are the parsers applied to the generated text (recomputed here independently)."""
    pope = _run("pope", benchmark_files["pope"], model_and_processor, tmp_path / "pope")
    parsed = [extract_yes_no(item["raw_answer"]) for item in pope["items"]]
    assert [item["parsed"] for item in pope["items"]] == parsed
    correct = [p == item["reference"] for p, item in zip(parsed, pope["items"])]
    assert pope["metrics"]["accuracy"] == pytest.approx(sum(correct) / len(correct))
    assert pope["metrics"]["yes_ratio"] == pytest.approx(sum(p == "yes" for p in parsed) / len(parsed))

    mmbench = _run("mmbench", benchmark_files["mmbench"], model_and_processor, tmp_path / "mmbench")
    groups = {}
    for item in mmbench["items"]:
        letter = extract_option_letter(item["raw_answer"], _options_in_prompt(item["prompt"])).letter
        assert item["parsed"] == letter
        groups.setdefault(item["group"], []).append(letter == item["reference"])
    expected = sum(all(hits) for hits in groups.values()) / len(groups)
    assert mmbench["metrics"]["circular_accuracy"] == pytest.approx(expected)


def _options_in_prompt(prompt):
    options = {}
    for line in prompt.split("\n"):
        if len(line) > 3 and line[0] in "ABCD" and line[1:3] == ". ":
            options[line[0]] = line[3:]
    return options


def _scripted_generate(processor, answer_for_prompt):
    """A stand-in for `model.generate` that writes a chosen answer after each (left-padded) prompt, so that known
    answers go through the runner's real decoding, cache and scoring."""
    tokenizer = processor.tokenizer

    def generate(input_ids, attention_mask, generation_config, **kwargs):
        assert generation_config.do_sample is False and generation_config.num_beams == 1
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)
            rows.append(tokenizer(answer_for_prompt(prompt), add_special_tokens=False).input_ids
                        + [tokenizer.eos_token_id])
        width = max(len(row) for row in rows)
        new_tokens = torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in rows])
        return torch.cat([input_ids, new_tokens], dim=1)

    return generate


def test_known_answers_flow_through_generation_decoding_and_report(benchmark_files, model_and_processor, tmp_path,
                                                                     monkeypatch):
    model, processor = model_and_processor
    right_text = {"What animal is shown?": "dog", "What colour is the sky?": "blue", "How many legs?": "six"}

    def mmbench_answer(prompt):
        question = next(q for q in right_text if q in prompt)
        options = _options_in_prompt(prompt)
        letter = next(letter for letter, text in options.items() if text == right_text[question])
        if question == "What animal is shown?" and letter == "D":
            return " The answer is B."  # one wrong rotation: question 0 fails CircularEval
        return f" {letter}. {options[letter]}"

    monkeypatch.setattr(model, "generate", _scripted_generate(processor, mmbench_answer))
    report = _run("mmbench", benchmark_files["mmbench"], model_and_processor, tmp_path / "mmbench")
    assert report["metrics"]["circular_accuracy"] == pytest.approx(2 / 3)
    assert report["metrics"]["single_pass_accuracy"] == pytest.approx(1.0)
    assert [item["raw_answer"] for item in report["items"]][:2] == ["B. dog", "A. dog"]
    assert sum(not item["correct"] for item in report["items"]) == 1

    def pope_answer(prompt):
        present = any(f"Is there a {thing} in the image?" in prompt for thing in ("dog", "chair", "table"))
        return " Yes, there is." if present else " No."

    monkeypatch.setattr(model, "generate", _scripted_generate(processor, pope_answer))
    report = _run("pope", benchmark_files["pope"], model_and_processor, tmp_path / "pope")
    assert report["metrics"]["accuracy"] == 1.0 and report["metrics"]["f1"] == 1.0
    assert report["metrics"]["yes_ratio"] == pytest.approx(3 / 5)


def test_batched_generation_matches_one_by_one(benchmark_files, model_and_processor):
    """Left-padded batches of different prompt lengths give the answers of unbatched generation."""
    model, processor = model_and_processor
    benchmark = get_benchmark("mmbench")
    requests = benchmark.requests(benchmark.load(benchmark_files["mmbench"]))
    # Different lengths: question 1 has a hint and two options, question 2 three options.
    chosen = [requests[0], requests[4], requests[6]]
    generator = GreedyGenerator(model, processor, max_new_tokens=6)
    prompts = [generator.render(request) for request in chosen]
    batched = generator(prompts, [request.load_images() for request in chosen])
    single = [generator([prompt], [request.load_images()])[0] for prompt, request in zip(prompts, chosen)]
    assert batched == single
    assert len(set(batched)) > 1, "the tiny model should not answer every question identically"


@pytest.mark.parametrize("variant", ["tiny", "tiny-hybrid"])
def test_interrupted_run_resumes_without_redoing_answers(variant, benchmark_files, tmp_path, monkeypatch):
    checkpoint = _save_checkpoint(tmp_path / f"ckpt-{variant}", variant)
    model_and_processor = load_model_and_processor(checkpoint, device="cpu", dtype="float32")
    model = model_and_processor[0]
    data = benchmark_files["mmbench"]  # 9 prompts -> 5 batches of 2

    reference = _run("mmbench", data, model_and_processor, tmp_path / "uninterrupted")

    original_generate = model.generate
    calls = []

    def interrupted_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the third batch
        return original_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", interrupted_generate)
    with pytest.raises(KeyboardInterrupt):
        _run("mmbench", data, model_and_processor, tmp_path / "resumed")
    cached = (tmp_path / "resumed" / ANSWERS_FILE).read_text().splitlines()
    assert len(cached) == 4 and not (tmp_path / "resumed" / "results.json").exists()

    calls.clear()
    monkeypatch.setattr(model, "generate", lambda *args, **kwargs: calls.append(kwargs["input_ids"].shape[0])
                        or original_generate(*args, **kwargs))
    resumed = _run("mmbench", data, model_and_processor, tmp_path / "resumed")
    assert calls == [2, 2, 1]  # only the 5 unanswered prompts, in the batches of an uninterrupted run
    assert resumed == reference
    assert (tmp_path / "resumed" / "results.json").read_text() == \
        (tmp_path / "uninterrupted" / "results.json").read_text()

    # A third run generates nothing.
    calls.clear()
    assert _run("mmbench", data, model_and_processor, tmp_path / "resumed") == reference
    assert calls == []


def test_incomplete_last_cache_line_is_generated_again(benchmark_files, model_and_processor, tmp_path):
    output = tmp_path / "pope"
    reference = _run("pope", benchmark_files["pope"], model_and_processor, output)
    answers = output / ANSWERS_FILE
    lines = answers.read_text().splitlines()
    answers.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # a crash mid-write

    model = model_and_processor[0]
    calls = []
    original_generate = model.generate
    model.generate = lambda *args, **kwargs: calls.append(kwargs["input_ids"].shape[0]) or original_generate(
        *args, **kwargs)
    try:
        assert _run("pope", benchmark_files["pope"], model_and_processor, output) == reference
    finally:
        del model.generate
    assert calls == [1]
    assert len(answers.read_text().splitlines()) == len(lines)


def test_cache_of_a_different_run_is_refused_unless_overwritten(benchmark_files, model_and_processor, tmp_path):
    output = tmp_path / "seed"
    _run("seed", benchmark_files["seed"], model_and_processor, output)
    with pytest.raises(AnswerCacheMismatchError, match=r"max_new_tokens.*--overwrite"):
        _run("seed", benchmark_files["seed"], model_and_processor, output, max_new_tokens=MAX_NEW_TOKENS + 1)
    report = _run("seed", benchmark_files["seed"], model_and_processor, output, max_new_tokens=MAX_NEW_TOKENS + 1,
                  overwrite=True)
    assert report["generation"]["max_new_tokens"] == MAX_NEW_TOKENS + 1

    # Same settings but the data changed under the same output folder: the cached prompt no longer matches.
    data = tmp_path / "seed_copy"
    data.mkdir()
    (data / "SEED-Bench.json").write_text((benchmark_files["seed"] / "SEED-Bench.json").read_text())
    (data / "SEED-Bench-image").symlink_to(benchmark_files["seed"] / "SEED-Bench-image")
    _run("seed", data, model_and_processor, tmp_path / "seed_copy_results")
    content = json.loads((data / "SEED-Bench.json").read_text())
    content["questions"][0]["question"] = "How many towels are on the rack?"
    (data / "SEED-Bench.json").write_text(json.dumps(content))
    with pytest.raises(AnswerCacheMismatchError, match="data changed"):
        _run("seed", data, model_and_processor, tmp_path / "seed_copy_results")


def test_limit_evaluates_the_first_questions(benchmark_files, model_and_processor, tmp_path):
    report = _run("mmbench", benchmark_files["mmbench"], model_and_processor, tmp_path / "limited", limit=1)
    assert (report["questions_evaluated"], report["questions_in_file"], len(report["items"])) == (1, 3, 4)
    assert "limited to the first 1" in (tmp_path / "limited" / "summary.md").read_text()


def _cli_args(argv):
    import argparse

    return add_eval_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_cli_runs_pope(checkpoint, benchmark_files, tmp_path, capsys):
    output = tmp_path / "cli_pope"
    code = main_eval(_cli_args(["--task", "pope", "--data", str(benchmark_files["pope"]), "--model",
                                str(checkpoint), "--output", str(output), "--max-new-tokens", "3",
                                "--batch-size", "4", "--no-progress"]))
    assert code == 0
    report = json.loads((output / "results.json").read_text())
    assert report["task"] == "pope" and len(report["items"]) == 5
    assert set(report["breakdowns"]["category"]) == {"adversarial", "random"}
    printed = capsys.readouterr().out
    assert "# POPE results" in printed and "| **f1** |" in printed


def test_cli_reports_malformed_files_with_file_and_row(checkpoint, benchmark_files, tmp_path):
    data = tmp_path / "MMBench_bad.tsv"
    write_mmbench_tsv(data)
    lines = data.read_text().splitlines()
    lines[2] = lines[2].replace("\tA\t", "\tE\t")  # row 2's answer: a letter it has no option for
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as info:
        main_eval(_cli_args(["--task", "mmbench", "--data", str(data), "--model", str(checkpoint), "--output",
                             str(tmp_path / "out"), "--no-progress"]))
    message = str(info.value)
    assert message.startswith("dsvl eval: ") and "MMBench_bad.tsv, row 2 (line 3)" in message
    assert "'E' is not one of the options A, B" in message


def test_cli_rejects_a_folder_without_checkpoint(benchmark_files, tmp_path):
    with pytest.raises(SystemExit, match="not a checkpoint folder"):
        main_eval(_cli_args(["--task", "pope", "--data", str(benchmark_files["pope"]), "--model", str(tmp_path),
                             "--no-progress"]))


def test_dsvl_dispatcher_wires_eval_to_this_module():
    import importlib

    from transformers_dsvl.cli import SUBCOMMANDS

    module_name, add_arguments, main_name = SUBCOMMANDS["eval"][:3]
    module = importlib.import_module(module_name)
    assert getattr(module, add_arguments) is add_eval_arguments
    assert getattr(module, main_name) is main_eval


def test_load_model_and_processor_in_the_requested_dtype(checkpoint, benchmark_files):
    model, processor = load_model_and_processor(checkpoint, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu" and not model.training
    assert processor.image_processor.image_size == 32
    # Generation casts the float32 pixels to the model's dtype.
    benchmark = get_benchmark("pope")
    request = benchmark.requests(benchmark.load(benchmark_files["pope"]))[0]
    generator = GreedyGenerator(model, processor, max_new_tokens=2)
    assert len(generator([generator.render(request)], [request.load_images()])) == 1
