"""Benchmark evaluation of DeepSeek-VL checkpoints, scored the way the standard harnesses score them.

Typical use::

    from transformers_dsvl.evaluation import get_benchmark, evaluate_benchmark
    report = evaluate_benchmark(get_benchmark("pope"), "data/pope", model, processor, "eval_results/pope")

or from the command line: `dsvl eval --task pope --data DIR --model DIR`. See docs/evaluation.md.
"""

from .benchmarks import TASKS, Benchmark, GenerationRequest, ScoreResult, get_benchmark
from .formats import BenchmarkFormatError, ImageSource, Sample
from .metrics import MetricBackend
from .runner import (
    AnswerCache,
    AnswerCacheMismatchError,
    GreedyGenerator,
    evaluate_benchmark,
)

__all__ = [
    "TASKS",
    "AnswerCache",
    "AnswerCacheMismatchError",
    "Benchmark",
    "BenchmarkFormatError",
    "GenerationRequest",
    "GreedyGenerator",
    "ImageSource",
    "MetricBackend",
    "Sample",
    "ScoreResult",
    "evaluate_benchmark",
    "get_benchmark",
]
