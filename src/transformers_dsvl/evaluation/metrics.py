"""Scores: accuracy, POPE's classification metrics, VQA accuracy, MMBench CircularEval, per-category breakdowns.

Accuracy, precision, recall and F1 go through Hugging Face `evaluate` when its metric modules can be loaded. They are
scripts fetched from the Hub on first use, so offline (and in CI) `evaluate.load` fails; the same formulas are then
computed here. `MetricBackend.name` says which one produced a report, and the tests check that both agree when
`evaluate` works.
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .parsing import normalize_vqa_answer

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Backend: `evaluate` when available, the same formulas otherwise
# ---------------------------------------------------------------------------------------------------------------------
class MetricBackend:
    """Computes accuracy and binary precision / recall / F1 with `evaluate` when its modules load, else locally.

    Args:
        use_evaluate: try `evaluate.load` ("accuracy", "precision", "recall", "f1"). With False, or when loading
            fails (offline: the modules are Hub scripts), the local implementation is used.
    """

    _METRIC_NAMES = ("accuracy", "precision", "recall", "f1")

    def __init__(self, use_evaluate: bool = True):
        self.modules: dict[str, Any] | None = None
        if use_evaluate:
            self.modules = self._load_evaluate_modules()
        self.name = "evaluate" if self.modules is not None else "builtin"

    @classmethod
    def _load_evaluate_modules(cls) -> dict[str, Any] | None:
        try:
            import evaluate
        except ImportError:
            logger.info("`evaluate` is not installed; metrics are computed by transformers_dsvl itself.")
            return None
        modules = {}
        for name in cls._METRIC_NAMES:
            try:
                modules[name] = evaluate.load(name)
            except Exception as error:  # noqa: BLE001 -- offline: FileNotFoundError, ConnectionError, Hub errors
                logger.info(
                    f"evaluate.load({name!r}) failed ({type(error).__name__}); metrics are computed by "
                    "transformers_dsvl itself with the same formulas."
                )
                return None
        return modules

    def accuracy(self, references: Sequence[int], predictions: Sequence[int]) -> float:
        if not references:
            return 0.0
        if self.modules is not None:
            result = self.modules["accuracy"].compute(references=list(references), predictions=list(predictions))
            return float(result["accuracy"])
        return accuracy(references, predictions)

    def binary(self, references: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
        """accuracy, precision, recall, f1 with 1 as the positive class (zero where undefined)."""
        if self.modules is not None and references:
            scores = {"accuracy": self.accuracy(references, predictions)}
            for name in ("precision", "recall", "f1"):
                result = self.modules[name].compute(
                    references=list(references), predictions=list(predictions), pos_label=1, zero_division=0
                )
                scores[name] = float(result[name])
            return scores
        return binary_classification_scores(references, predictions)


# ---------------------------------------------------------------------------------------------------------------------
# Formulas
# ---------------------------------------------------------------------------------------------------------------------
def accuracy(references: Sequence, predictions: Sequence) -> float:
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions.")
    if not references:
        return 0.0
    return sum(reference == prediction for reference, prediction in zip(references, predictions)) / len(references)


def binary_classification_scores(references: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of the positive class 1; a ratio with a zero denominator is 0 (as
    VLMEvalKit's POPE rating and sklearn with zero_division=0)."""
    true_positive = sum(r == 1 and p == 1 for r, p in zip(references, predictions))
    false_positive = sum(r != 1 and p == 1 for r, p in zip(references, predictions))
    false_negative = sum(r == 1 and p != 1 for r, p in zip(references, predictions))
    precision = true_positive / (true_positive + false_positive) if true_positive + false_positive else 0.0
    recall = true_positive / (true_positive + false_negative) if true_positive + false_negative else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": accuracy(references, predictions), "precision": precision, "recall": recall, "f1": f1}


_YES_NO_CLASS = {"yes": 1, "no": 0, None: 2}


def pope_scores(labels: Sequence[str], predictions: Sequence[str | None], backend: MetricBackend) -> dict[str, Any]:
    """POPE: accuracy, precision, recall, F1 (positive class "yes"), yes-ratio (share of "yes" predictions, as the
    POPE paper defines it) and how many answers were neither yes nor no. An undecided answer is wrong and counts
    as a "no" prediction for precision and recall (VLMEvalKit)."""
    references = [1 if label == "yes" else 0 for label in labels]
    predicted = [1 if prediction == "yes" else 0 for prediction in predictions]
    scores = backend.binary(references, predicted)
    # For accuracy an undecided answer is a third class (2), so it never counts as a correct "no".
    scores["accuracy"] = backend.accuracy(references, [_YES_NO_CLASS[prediction] for prediction in predictions])
    scores["yes_ratio"] = sum(predicted) / len(predicted) if predicted else 0.0
    scores["undecided"] = sum(prediction is None for prediction in predictions)
    scores["count"] = len(labels)
    return scores


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy as lmms-eval computes it (EvalAI normalisation of prediction and references).

    With several reference answers (10 in VQAv2 / TextVQA): for each reference, min(1, number of the *other*
    references equal to the prediction / 3), averaged. A lone reference gives no others to compare with, so it is
    scored as a normalised exact match instead (stated in docs/evaluation.md).
    """
    normalised_prediction = normalize_vqa_answer(prediction)
    normalised = [normalize_vqa_answer(reference) for reference in references]
    if len(normalised) == 1:
        return float(normalised_prediction == normalised[0])
    scores = []
    for index in range(len(normalised)):
        others = normalised[:index] + normalised[index + 1:]
        scores.append(min(1.0, sum(other == normalised_prediction for other in others) / 3))
    return statistics.mean(scores)


def circular_group_hits(
    group_of: Sequence[Any], correct: Sequence[bool]
) -> dict[Any, bool]:
    """MMBench CircularEval: a question counts as solved only if every one of its circular variants is answered
    correctly; one wrong (or unparseable) rotation fails it."""
    hits: dict[Any, bool] = {}
    for group, is_correct in zip(group_of, correct):
        hits[group] = hits.get(group, True) and bool(is_correct)
    return hits


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def breakdown(
    records: Iterable[dict], key: str, score: Callable[[list[dict]], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """`score` applied to the records of each value of `key` (records without one are left out), sorted by name."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        value = record.get(key)
        if value is not None:
            groups[str(value)].append(record)
    return {name: score(groups[name]) for name in sorted(groups)}


__all__ = [
    "MetricBackend",
    "accuracy",
    "binary_classification_scores",
    "breakdown",
    "circular_group_hits",
    "mean",
    "pope_scores",
    "vqa_accuracy",
]
