"""Metrics and benchmark scoring on hand-written answers with known results: POPE's F1 on a labelled set,
CircularEval (one wrong rotation fails the question), VQA accuracy, OCRBench scores, MMMU, per-category breakdowns,
and the `evaluate` backend."""

from __future__ import annotations

import sys
import types

import pytest
from test_eval_formats import (
    write_mmbench_tsv,
    write_mmmu_jsonl,
    write_ocrbench,
    write_pope,
    write_scienceqa,
    write_seed,
    write_vqa,
)

from transformers_dsvl.evaluation import MetricBackend, get_benchmark
from transformers_dsvl.evaluation.metrics import (
    binary_classification_scores,
    circular_group_hits,
    pope_scores,
    vqa_accuracy,
)

BUILTIN = MetricBackend(use_evaluate=False)


def _score(task, data, answers_by_uid, **options):
    benchmark = get_benchmark(task, **options)
    requests = benchmark.requests(benchmark.load(data))
    return requests, benchmark.score(requests, [answers_by_uid(r) for r in requests], BUILTIN)


# ---------------------------------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------------------------------
def test_pope_scores_on_a_labelled_set():
    labels = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
    predictions = ["yes", "no", "yes", "yes", "no", None, "yes", "no"]
    # TP = 3 (0, 2, 6), FP = 1 (3), FN = 1 (1); the undecided answer (5) is wrong and predicts "not yes".
    scores = pope_scores(labels, predictions, BUILTIN)
    assert scores["precision"] == pytest.approx(3 / 4)
    assert scores["recall"] == pytest.approx(3 / 4)
    assert scores["f1"] == pytest.approx(0.75)
    assert scores["accuracy"] == pytest.approx(5 / 8)  # 0, 2, 4, 6, 7
    assert scores["yes_ratio"] == pytest.approx(4 / 8)
    assert (scores["undecided"], scores["count"]) == (1, 8)


def test_pope_scores_unbalanced_precision_and_recall():
    labels = ["yes"] * 4 + ["no"] * 4
    predictions = ["yes", "yes", "no", "no", "yes", "yes", "yes", "no"]
    scores = pope_scores(labels, predictions, BUILTIN)
    precision, recall = 2 / 5, 2 / 4
    assert scores["precision"] == pytest.approx(precision)
    assert scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert scores["yes_ratio"] == pytest.approx(5 / 8)


def test_binary_scores_without_positive_predictions_are_zero():
    assert binary_classification_scores([1, 0], [0, 0]) == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0,
                                                            "f1": 0.0}


def test_pope_benchmark_scoring_per_category(tmp_path):
    folder = write_pope(tmp_path / "pope")
    answers = {
        "adversarial:1": "No, there is no cat.",  # right
        "adversarial:2": "Yes",  # right
        "random:1": "Yes, there is a dog.",  # right
        "random:2": "Yes",  # wrong (false positive)
        "random:3": "I am not sure.",  # undecided
    }
    _, result = _score("pope", folder, lambda r: answers[r.uid])
    random_split = result.breakdowns["category"]["random"]
    assert random_split["accuracy"] == pytest.approx(1 / 3)
    assert random_split["precision"] == pytest.approx(1 / 2) and random_split["recall"] == pytest.approx(1 / 2)
    assert random_split["yes_ratio"] == pytest.approx(2 / 3)
    assert result.breakdowns["category"]["adversarial"]["f1"] == pytest.approx(1.0)
    assert result.metrics["accuracy"] == pytest.approx(3 / 5)
    # Pooled: TP 2, FP 1, FN 1.
    assert result.metrics["f1"] == pytest.approx(2 / 3)
    assert result.metrics["mean_category_f1"] == pytest.approx((1.0 + 0.5) / 2)
    assert [item["parsed"] for item in result.items] == ["no", "yes", "yes", "yes", None]

    # The LLaVA rule reads "I am not sure." as "no" (it contains "not"); the label is "yes", so it is wrong.
    _, llava = _score("pope", folder, lambda r: answers[r.uid], yes_no_rule="llava")
    assert llava.items[-1]["parsed"] == "no" and llava.items[-1]["correct"] is False


# ---------------------------------------------------------------------------------------------------------------------
# MMBench CircularEval
# ---------------------------------------------------------------------------------------------------------------------
def test_circular_group_hits():
    hits = circular_group_hits(["q1"] * 4 + ["q2"] * 4, [True, True, False, True] + [True] * 4)
    assert hits == {"q1": False, "q2": True}


def test_mmbench_circular_eval_one_wrong_rotation_fails_the_question(tmp_path):
    data = write_mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv")
    # Question 0 (4 rotations): every rotation answered right except rotation 2.
    # Question 1 (2 rotations): both right, once by letter and once by option text.
    # Question 2 (3 rotations): all right.
    def answer(request):
        if request.uid == "0/circular2":
            return "The answer is B."  # the right answer is D in this rotation
        if request.uid == "1/circular1":
            return f"It is {request.options[request.answer]}"
        return f"{request.answer}. {request.options[request.answer]}"

    requests, result = _score("mmbench", data, answer)
    assert len(requests) == 4 + 2 + 3
    assert result.metrics["circular_accuracy"] == pytest.approx(2 / 3)
    assert result.metrics["single_pass_accuracy"] == pytest.approx(1.0)  # rotation 0 of every question is right
    assert (result.metrics["questions"], result.metrics["prompts"], result.metrics["unparsed"]) == (3, 9, 0)
    wrong = [item for item in result.items if not item["correct"]]
    assert [item["uid"] for item in wrong] == ["0/circular2"]
    assert all(not item["group_correct"] for item in result.items if item["group"] == 0)
    rules = {item["uid"]: item["rule"] for item in result.items}
    assert rules["1/circular1"] == "option_text" and rules["1/circular0"] == "letter"
    assert result.breakdowns["category"] == {
        "attribute_recognition": {"accuracy": 1.0, "count": 2},
        "object_localization": {"accuracy": 0.0, "count": 1},
    }
    assert result.breakdowns["l2-category"]["finegrained_perception (instance-level)"]["accuracy"] == \
        pytest.approx(2 / 3)


def test_mmbench_unparsed_rotation_also_fails(tmp_path):
    data = write_mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv")
    _, result = _score("mmbench", data,
                       lambda r: "I cannot see it" if r.uid == "2/circular1" else r.answer)
    assert result.metrics["circular_accuracy"] == pytest.approx(2 / 3)
    assert result.metrics["unparsed"] == 1


def test_mmbench_without_circular_eval(tmp_path):
    data = write_mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv")
    answers = {"0": "B", "1": "B", "2": "C"}  # question 1 wrong
    _, result = _score("mmbench", data, lambda r: answers[r.uid], circular=False)
    assert result.metrics == {"accuracy": pytest.approx(2 / 3), "count": 3, "unparsed": 0}


def test_mmbench_cn_uses_the_chinese_instruction(tmp_path):
    data = write_mmbench_tsv(tmp_path / "MMBench_DEV_CN.tsv")
    request = get_benchmark("mmbench_cn").requests(get_benchmark("mmbench_cn").load(data))[0]
    assert request.content[-1]["text"].endswith("请直接使用所提供的选项字母作为答案回答。")
    request = get_benchmark("mmbench").requests(get_benchmark("mmbench").load(data))[4]  # question 1, with hint
    assert request.content[-1]["text"] == (
        "Look up.\nWhat colour is the sky?\nA. blue\nB. green\n"
        "Answer with the option's letter from the given choices directly.")


# ---------------------------------------------------------------------------------------------------------------------
# SEED-Bench, ScienceQA
# ---------------------------------------------------------------------------------------------------------------------
def test_seed_accuracy_and_question_types(tmp_path):
    answers = {"101669": "A", "101670": "(B) Beach"}
    _, result = _score("seed", write_seed(tmp_path / "seed"), lambda r: answers[r.uid])
    assert result.metrics == {"accuracy": 0.5, "count": 2, "unparsed": 0}
    assert result.breakdowns["question type"] == {
        "Instance Counting": {"accuracy": 1.0, "count": 1}, "Scene Understanding": {"accuracy": 0.0, "count": 1}}


def test_scienceqa_accuracy_by_subject_and_prompt(tmp_path):
    answers = {"5": "whale", "7": "I think A"}
    requests, result = _score("scienceqa", write_scienceqa(tmp_path / "sqa"), lambda r: answers[r.uid])
    assert requests[0].content[-1]["text"] == (
        "Context: Mammals feed their young milk.\nWhich is a mammal?\nA. frog\nB. whale\nC. shark\n"
        "Answer with the option's letter from the given choices directly.")
    assert result.metrics["accuracy"] == 0.5
    assert result.breakdowns["subject"]["natural science"] == {"accuracy": 1.0, "count": 1}


# ---------------------------------------------------------------------------------------------------------------------
# OCRBench, MMMU, VQA
# ---------------------------------------------------------------------------------------------------------------------
def test_ocrbench_scores(tmp_path):
    answers = {"0": "The word is Challenger", "1": "x^{2}", "2": "It is dated March 4"}
    _, result = _score("ocrbench", write_ocrbench(tmp_path / "ocr"), lambda r: answers[r.uid])
    assert result.metrics["score"] == 2 and result.metrics["count"] == 3
    assert result.metrics["text_recognition_score"] == 1
    assert result.breakdowns["type"]["Doc-oriented VQA"]["score"] == 0


def test_mmmu_scores(tmp_path):
    answers = {"validation_Art_Theory_1": "(B) Cubism", "validation_Math_2": "The area is 12",
               "validation_Clinical_Medicine_3": "A"}
    _, result = _score("mmmu", write_mmmu_jsonl(tmp_path / "mmmu"), lambda r: answers[r.uid])
    assert [item["correct"] for item in result.items] == [True, True, False]
    assert result.metrics["accuracy"] == pytest.approx(2 / 3) and result.metrics["random_guesses"] == 0
    assert result.breakdowns["discipline"]["Health and Medicine"] == {"accuracy": 0.0, "count": 1}
    assert result.breakdowns["question type"]["open"] == {"accuracy": 1.0, "count": 1}


def test_mmmu_random_fallback_is_reproducible_and_seed_dependent(tmp_path):
    data = write_mmmu_jsonl(tmp_path / "mmmu")
    picks = {}
    for seed in range(6):
        _, result = _score("mmmu", data, lambda r: "hmm", seed=seed)
        _, again = _score("mmmu", data, lambda r: "hmm", seed=seed)
        assert result.items == again.items
        picks[seed] = tuple(item["parsed"] for item in result.items if item["question_type"] == "multiple-choice")
        assert result.metrics["random_guesses"] == 2
    assert len(set(picks.values())) > 1


def test_vqa_accuracy_formula():
    references = ["2"] * 3 + ["3"] * 7
    # Each "2" reference sees 2 other "2"s (2/3); each "3" reference sees 3 (capped at 1): (3 * 2/3 + 7) / 10.
    assert vqa_accuracy("two", references) == pytest.approx(0.9)
    assert vqa_accuracy("3", references) == pytest.approx(1.0)
    assert vqa_accuracy("four", references) == 0.0
    assert vqa_accuracy("Red.", ["red"]) == 1.0  # a lone reference: normalised exact match


def test_vqa_benchmark_scores(tmp_path):
    answers = {"100": "Two", "101": "blue"}
    _, result = _score("vqa", write_vqa(tmp_path / "vqa"), lambda r: answers[r.uid])
    # "two" -> "2": 3 references "2" and 4 "two" (normalised to "2"): 7 of 10 agree -> 1.0.
    assert [item["score"] for item in result.items] == [1.0, 0.0]
    assert result.metrics == {"accuracy": 0.5, "count": 2}


# ---------------------------------------------------------------------------------------------------------------------
# The `evaluate` backend
# ---------------------------------------------------------------------------------------------------------------------
def test_backend_falls_back_to_builtin_when_evaluate_cannot_load(monkeypatch):
    fake = types.ModuleType("evaluate")

    def load(name):
        raise FileNotFoundError(f"Couldn't find a module script at {name}.py")

    fake.load = load
    monkeypatch.setitem(sys.modules, "evaluate", fake)
    backend = MetricBackend()
    assert backend.name == "builtin"
    assert backend.accuracy([1, 0, 2], [1, 1, 2]) == pytest.approx(2 / 3)


def test_backend_uses_evaluate_modules_when_they_load(monkeypatch):
    calls = []

    class FakeMetric:
        def __init__(self, name):
            self.name = name

        def compute(self, references, predictions, **kwargs):
            calls.append((self.name, kwargs))
            return {self.name: 0.123}

    fake = types.ModuleType("evaluate")
    fake.load = FakeMetric
    monkeypatch.setitem(sys.modules, "evaluate", fake)
    backend = MetricBackend()
    assert backend.name == "evaluate"
    scores = pope_scores(["yes", "no"], ["yes", None], backend)
    assert scores["f1"] == scores["precision"] == scores["recall"] == scores["accuracy"] == 0.123
    assert ("precision", {"pos_label": 1, "zero_division": 0}) in calls


def _real_evaluate_backend():
    backend = MetricBackend(use_evaluate=True)
    if backend.name != "evaluate":
        pytest.skip("evaluate's metric modules cannot be loaded here (they are Hub scripts; offline they are "
                    "unavailable), so there is nothing to compare the built-in formulas with.")
    return backend


def test_builtin_formulas_agree_with_evaluate():
    backend = _real_evaluate_backend()
    references = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
    predictions = [1, 0, 1, 1, 0, 0, 1, 0, 0, 1]
    assert backend.binary(references, predictions) == pytest.approx(
        binary_classification_scores(references, predictions))
    assert backend.accuracy([0, 1, 2, 3], [0, 1, 3, -1]) == pytest.approx(0.5)
