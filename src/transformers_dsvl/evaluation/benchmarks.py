"""The benchmarks `dsvl eval` runs: for each, how its file is read, how each question is asked, and how the answers
are scored (which parser, which metrics, which breakdowns).

A `Benchmark` turns `Sample`s (formats.py) into `GenerationRequest`s (one chat prompt each; MMBench's CircularEval
asks every question once per rotation of its options) and scores the generated answers into per-item records,
headline metrics and per-category breakdowns.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image

from . import formats, prompts
from .metrics import (
    MetricBackend,
    breakdown,
    circular_group_hits,
    mean,
    pope_scores,
    vqa_accuracy,
)
from .parsing import (
    YES_NO_RULES,
    extract_option_letter,
    extract_yes_no,
    mmmu_open_is_correct,
    ocrbench_is_correct,
    parse_mmmu_choice,
    parse_mmmu_open,
)


@dataclass
class GenerationRequest:
    """One prompt to generate an answer for.

    Attributes:
        uid: the answer-cache key (the sample's uid, plus `/circularK` for MMBench rotations).
        sample: the benchmark question it asks.
        content: the user turn as HF message content parts (`{"type": "image"}` / `{"type": "text", ...}`).
        image_order: which of `sample.images` the image parts show, in order.
        options: the options as asked (rotated for a circular variant).
        answer: the reference answer for these options.
        variant: the circular rotation (0 for the question as stored).
    """

    uid: str
    sample: formats.Sample
    content: list[dict]
    image_order: list[int]
    options: dict[str, str] = field(default_factory=dict)
    answer: Any = None
    variant: int = 0

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.content}]

    def load_images(self) -> list[PIL.Image.Image]:
        return [self.sample.images[index].load() for index in self.image_order]


@dataclass
class ScoreResult:
    """`items`: one record per request (reference, parsed answer, rule, correctness); `metrics`: the headline numbers;
    `breakdowns`: {breakdown name: {category: metrics}}."""

    items: list[dict]
    metrics: dict[str, Any]
    breakdowns: dict[str, dict[str, dict[str, Any]]]


class Benchmark:
    """Base class: a benchmark's loader, prompts and scoring."""

    name: str = ""
    title: str = ""
    default_max_new_tokens: int = 64
    headline_metric: str = "accuracy"

    def load(self, data: str | Path, image_root: str | Path | None = None) -> list[formats.Sample]:
        raise NotImplementedError

    def requests(self, samples: Sequence[formats.Sample]) -> list[GenerationRequest]:
        raise NotImplementedError

    def score(self, requests: Sequence[GenerationRequest], answers: Sequence[str],
              backend: MetricBackend) -> ScoreResult:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Options that change prompts or scores; recorded in the report and checked when a run resumes."""
        return {}


def _base_item(request: GenerationRequest, **values) -> dict:
    return {"uid": request.uid, "sample_uid": request.sample.uid, "variant": request.variant,
            "category": request.sample.category, **values}


def _letter_index(letter: str | None) -> int:
    return -1 if letter is None else ord(letter) - ord("A")


def _accuracy_summary(records: list[dict]) -> dict[str, Any]:
    return {"accuracy": mean(float(record["correct"]) for record in records), "count": len(records)}


# ---------------------------------------------------------------------------------------------------------------------
# Single-pass multiple choice: SEED-Bench, ScienceQA
# ---------------------------------------------------------------------------------------------------------------------
class _MultipleChoiceBenchmark(Benchmark):
    """One prompt per question; the option letter is extracted with VLMEvalKit's exact-matching rules."""

    breakdown_name = "category"

    def _text(self, sample: formats.Sample) -> str:
        raise NotImplementedError

    def requests(self, samples):
        return [
            GenerationRequest(uid=sample.uid, sample=sample,
                              content=prompts.image_first_content(len(sample.images), self._text(sample)),
                              image_order=list(range(len(sample.images))), options=sample.options,
                              answer=sample.answer)
            for sample in samples
        ]

    def score(self, requests, answers, backend):
        items = []
        for request, answer in zip(requests, answers):
            parsed = extract_option_letter(answer, request.options)
            items.append(_base_item(request, reference=request.answer, parsed=parsed.letter, rule=parsed.rule,
                                    correct=parsed.letter == request.answer))
        metrics = {
            "accuracy": backend.accuracy([_letter_index(r.answer) for r in requests],
                                         [_letter_index(item["parsed"]) for item in items]),
            "count": len(items),
            "unparsed": sum(item["parsed"] is None for item in items),
        }
        return ScoreResult(items, metrics, {self.breakdown_name: breakdown(items, "category", _accuracy_summary)})


class SeedBench(_MultipleChoiceBenchmark):
    name = "seed"
    title = "SEED-Bench (image)"
    default_max_new_tokens = 32
    breakdown_name = "question type"

    def load(self, data, image_root=None):
        return formats.load_seed_bench(data, image_root)

    def _text(self, sample):
        return prompts.seed_text(sample)


class ScienceQA(_MultipleChoiceBenchmark):
    name = "scienceqa"
    title = "ScienceQA-IMG"
    default_max_new_tokens = 16
    breakdown_name = "subject"

    def __init__(self, split: str = "test"):
        self.split = split

    def load(self, data, image_root=None):
        return formats.load_scienceqa(data, self.split, image_root)

    def _text(self, sample):
        return prompts.scienceqa_text(sample)

    def settings(self):
        return {"split": self.split}


# ---------------------------------------------------------------------------------------------------------------------
# MMBench with CircularEval
# ---------------------------------------------------------------------------------------------------------------------
class MMBench(Benchmark):
    """MMBench / MMBench-CN with CircularEval.

    A question with n options is asked n times, its options rotated so that the right answer takes every position;
    it counts as solved only when all n answers are right. When the TSV already holds the circular copies (rows
    with index >= 1e6, VLMEvalKit's files) those are used as they are; otherwise the rotations are made here.
    `circular=False` asks each stored row once and scores plain accuracy.
    """

    default_max_new_tokens = 256

    def __init__(self, chinese: bool = False, circular: bool = True):
        self.chinese = chinese
        self.circular = circular
        self.headline_metric = "circular_accuracy" if circular else "accuracy"
        self.name = "mmbench_cn" if chinese else "mmbench"
        self.title = "MMBench-CN" if chinese else "MMBench"

    def settings(self):
        return {"circular": self.circular}

    def load(self, data, image_root=None):
        return formats.load_mmbench_tsv(data)

    def requests(self, samples):
        has_stored_copies = any(sample.fields["index"] >= formats.CIRCULAR_INDEX_OFFSET for sample in samples)
        requests = []
        for sample in samples:
            if not self.circular or has_stored_copies:
                if not self.circular and sample.fields["index"] >= formats.CIRCULAR_INDEX_OFFSET:
                    continue  # plain accuracy: the questions as stored, without their circular copies
                variant = sample.fields["index"] // formats.CIRCULAR_INDEX_OFFSET
                requests.append(self._request(sample, sample.uid, sample.options, sample.answer, variant))
                continue
            letters = list(sample.options)
            texts = list(sample.options.values())
            answer_position = letters.index(sample.answer)
            for shift in range(len(letters)):
                rotated = {letters[i]: texts[(i + shift) % len(letters)] for i in range(len(letters))}
                answer = letters[(answer_position - shift) % len(letters)]
                requests.append(self._request(sample, f"{sample.uid}/circular{shift}", rotated, answer, shift))
        return requests

    def _request(self, sample, uid, options, answer, variant):
        text = prompts.mmbench_text(sample, options, self.chinese)
        return GenerationRequest(uid=uid, sample=sample, content=prompts.image_first_content(1, text),
                                 image_order=[0], options=options, answer=answer, variant=variant)

    def score(self, requests, answers, backend):
        items = []
        for request, answer in zip(requests, answers):
            parsed = extract_option_letter(answer, request.options)
            items.append(_base_item(
                request, group=request.sample.fields["group"], l2_category=request.sample.fields.get("l2_category"),
                reference=request.answer, parsed=parsed.letter, rule=parsed.rule,
                correct=parsed.letter == request.answer,
            ))
        hits = circular_group_hits([item["group"] for item in items], [item["correct"] for item in items])
        for item in items:
            item["group_correct"] = hits[item["group"]]
        first_variant = [(request, item) for request, item in zip(requests, items) if request.variant == 0]
        metrics = {
            "circular_accuracy": mean(float(hit) for hit in hits.values()),
            "single_pass_accuracy": backend.accuracy([_letter_index(r.answer) for r, _ in first_variant],
                                                     [_letter_index(i["parsed"]) for _, i in first_variant]),
            "questions": len(hits),
            "prompts": len(items),
            "unparsed": sum(item["parsed"] is None for item in items),
        }
        if not self.circular:
            metrics = {"accuracy": metrics["single_pass_accuracy"], "count": len(items),
                       "unparsed": metrics["unparsed"]}
        groups = [item for item in items if item["variant"] == 0]

        def group_summary(records):
            key = "group_correct" if self.circular else "correct"
            return {"accuracy": mean(float(record[key]) for record in records), "count": len(records)}

        return ScoreResult(items, metrics, {
            "category": breakdown(groups, "category", group_summary),
            "l2-category": breakdown(groups, "l2_category", group_summary),
        })


# ---------------------------------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------------------------------
class POPE(Benchmark):
    name = "pope"
    title = "POPE"
    default_max_new_tokens = 128
    headline_metric = "f1"

    def __init__(self, yes_no_rule: str = "vlmevalkit"):
        if yes_no_rule not in YES_NO_RULES:
            raise ValueError(f"yes_no_rule must be one of {', '.join(YES_NO_RULES)}, got {yes_no_rule!r}.")
        self.yes_no_rule = yes_no_rule

    def settings(self):
        return {"yes_no_rule": self.yes_no_rule}

    def load(self, data, image_root=None):
        return formats.load_pope(data, image_root)

    def requests(self, samples):
        return [GenerationRequest(uid=sample.uid, sample=sample,
                                  content=prompts.image_first_content(1, prompts.short_answer_text(sample)),
                                  image_order=[0], answer=sample.answer) for sample in samples]

    def score(self, requests, answers, backend):
        items = []
        for request, answer in zip(requests, answers):
            parsed = extract_yes_no(answer, self.yes_no_rule)
            items.append(_base_item(request, reference=request.answer, parsed=parsed,
                                    rule=self.yes_no_rule, correct=parsed == request.answer))

        def summary(records):
            return pope_scores([r["reference"] for r in records], [r["parsed"] for r in records], backend)

        per_category = breakdown(items, "category", summary)
        metrics = summary(items)
        if per_category:
            metrics["mean_category_f1"] = mean(scores["f1"] for scores in per_category.values())
            metrics["mean_category_accuracy"] = mean(scores["accuracy"] for scores in per_category.values())
        return ScoreResult(items, metrics, {"category": per_category})


# ---------------------------------------------------------------------------------------------------------------------
# OCRBench
# ---------------------------------------------------------------------------------------------------------------------
OCRBENCH_RECOGNITION_TYPES = (
    "Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
    "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
)


class OCRBench(Benchmark):
    name = "ocrbench"
    title = "OCRBench"
    default_max_new_tokens = 128
    headline_metric = "score"

    def load(self, data, image_root=None):
        return formats.load_ocrbench(data, image_root)

    def requests(self, samples):
        return [GenerationRequest(uid=sample.uid, sample=sample,
                                  content=prompts.image_first_content(1, prompts.ocrbench_text(sample)),
                                  image_order=[0], answer=sample.answer) for sample in samples]

    def score(self, requests, answers, backend):
        items = []
        for request, answer in zip(requests, answers):
            dataset_name = request.sample.fields["dataset_name"]
            correct = ocrbench_is_correct(answer, request.answer, dataset_name)
            rule = "formula_substring" if dataset_name == "HME100k" else "substring"
            items.append(_base_item(request, dataset_name=dataset_name, reference=request.answer,
                                    parsed=answer.strip(), rule=rule, correct=correct))

        def summary(records):
            return {"score": sum(int(r["correct"]) for r in records), "count": len(records),
                    "accuracy": mean(float(r["correct"]) for r in records)}

        metrics = summary(items)
        recognition = [item for item in items if item["category"] in OCRBENCH_RECOGNITION_TYPES]
        metrics["text_recognition_score"] = sum(int(item["correct"]) for item in recognition)
        return ScoreResult(items, metrics, {"type": breakdown(items, "category", summary)})


# ---------------------------------------------------------------------------------------------------------------------
# MMMU
# ---------------------------------------------------------------------------------------------------------------------
# The MMMU disciplines and their subjects (as the MMMU paper groups its 30 subjects).
MMMU_DISCIPLINES = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}
_DISCIPLINE_OF = {subject: discipline for discipline, subjects in MMMU_DISCIPLINES.items() for subject in subjects}


class MMMU(Benchmark):
    """MMMU: multiple-choice answers through the MMMU parser (a seeded random letter when nothing matches, as the
    authors' parser picks one at random), open answers through the MMMU open-answer parser."""

    name = "mmmu"
    title = "MMMU"
    default_max_new_tokens = 128

    def __init__(self, seed: int = 0):
        self.seed = seed

    def settings(self):
        return {"seed": self.seed}

    def load(self, data, image_root=None):
        return formats.load_mmmu(data, image_root)

    def requests(self, samples):
        requests = []
        for sample in samples:
            content, order = prompts.mmmu_content(sample)
            requests.append(GenerationRequest(uid=sample.uid, sample=sample, content=content, image_order=order,
                                              options=sample.options, answer=sample.answer))
        return requests

    def score(self, requests, answers, backend):
        items = []
        for request, answer in zip(requests, answers):
            question_type = request.sample.fields["question_type"]
            if question_type == "multiple-choice":
                # One generator per item, seeded by the item: the result does not depend on order or batching.
                parsed_choice = parse_mmmu_choice(answer, request.options, random.Random(f"{self.seed}:{request.uid}"))
                parsed: Any = parsed_choice.letter
                rule = parsed_choice.rule
                correct = parsed == request.answer
            else:
                parsed = parse_mmmu_open(answer)
                rule = "open"
                correct = mmmu_open_is_correct(request.answer, parsed)
            items.append(_base_item(request, question_type=question_type,
                                    discipline=_DISCIPLINE_OF.get(request.sample.category or ""),
                                    reference=request.answer, parsed=parsed, rule=rule, correct=correct))
        metrics = {"accuracy": mean(float(item["correct"]) for item in items), "count": len(items),
                   "random_guesses": sum(item["rule"] == "random" for item in items)}
        return ScoreResult(items, metrics, {
            "discipline": breakdown(items, "discipline", _accuracy_summary),
            "subject": breakdown(items, "category", _accuracy_summary),
            "question type": breakdown(items, "question_type", _accuracy_summary),
        })


# ---------------------------------------------------------------------------------------------------------------------
# Generic VQA
# ---------------------------------------------------------------------------------------------------------------------
class VQA(Benchmark):
    name = "vqa"
    title = "VQA (generic JSON lines)"
    default_max_new_tokens = 64

    def load(self, data, image_root=None):
        return formats.load_vqa_jsonl(data, image_root)

    def requests(self, samples):
        return [GenerationRequest(uid=sample.uid, sample=sample,
                                  content=prompts.image_first_content(1, prompts.short_answer_text(sample)),
                                  image_order=[0], answer=sample.answer) for sample in samples]

    def score(self, requests, answers, backend):
        items = []
        for request, answer in zip(requests, answers):
            value = vqa_accuracy(answer, request.answer)
            items.append(_base_item(request, reference=request.answer, parsed=answer.strip(), rule="vqa_accuracy",
                                    score=value, correct=value > 0))

        def summary(records):
            return {"accuracy": mean(record["score"] for record in records), "count": len(records)}

        return ScoreResult(items, summary(items), {"category": breakdown(items, "category", summary)})


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------
TASKS = ("mmbench", "mmbench_cn", "pope", "scienceqa", "seed", "ocrbench", "mmmu", "vqa")


def get_benchmark(task: str, *, circular: bool = True, yes_no_rule: str = "vlmevalkit", split: str = "test",
                  seed: int = 0) -> Benchmark:
    """The benchmark called `task` (one of `TASKS`), configured with the options that apply to it."""
    if task == "mmbench":
        return MMBench(chinese=False, circular=circular)
    if task == "mmbench_cn":
        return MMBench(chinese=True, circular=circular)
    if task == "pope":
        return POPE(yes_no_rule)
    if task == "scienceqa":
        return ScienceQA(split)
    if task == "seed":
        return SeedBench()
    if task == "ocrbench":
        return OCRBench()
    if task == "mmmu":
        return MMMU(seed)
    if task == "vqa":
        return VQA()
    raise ValueError(f"Unknown task {task!r}. Choose one of: {', '.join(TASKS)}.")


__all__ = [
    "MMMU",
    "MMMU_DISCIPLINES",
    "POPE",
    "TASKS",
    "VQA",
    "Benchmark",
    "GenerationRequest",
    "MMBench",
    "OCRBench",
    "ScienceQA",
    "ScoreResult",
    "SeedBench",
    "get_benchmark",
]
