"""Running a benchmark: batched greedy generation, an answer cache that makes runs resumable, scoring, the report.

`evaluate_benchmark` asks every prompt of a benchmark through the processor's chat template (default DeepSeek-VL
system prompt) and `model.generate` with greedy decoding, in left-padded batches. Each batch's answers are appended
to `answers.jsonl` in the output folder and flushed as soon as they exist, so an interrupted run, started again with
the same command, generates only what is missing, and gives the same report (batches are fixed slices of the
benchmark's prompt list, so a resumed run batches every remaining prompt exactly as an uninterrupted one would).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from .benchmarks import Benchmark, GenerationRequest
from .metrics import MetricBackend
from .report import build_report, write_report

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
ANSWERS_FILE = "answers.jsonl"
RUN_CONFIG_FILE = "run_config.json"


class AnswerCacheMismatchError(RuntimeError):
    """The output folder holds answers of a different run (another model, data file, or settings)."""


class AnswerCache:
    """Generated answers on disk, one JSON line per prompt: {"uid", "prompt", "answer"}.

    `run_config.json` records what produced them (task, settings, model, data, generation settings); opening the
    folder for a different run fails instead of mixing answers, unless `overwrite=True` discards the old ones.
    A line cut short by a crash is dropped (that prompt is generated again).
    """

    def __init__(self, output_dir: str | Path, run_config: dict[str, Any], overwrite: bool = False):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.answers_path = self.output_dir / ANSWERS_FILE
        config_path = self.output_dir / RUN_CONFIG_FILE
        if overwrite:
            for path in (self.answers_path, config_path):
                path.unlink(missing_ok=True)
        if config_path.is_file():
            stored = json.loads(config_path.read_text(encoding="utf-8"))
            if stored != run_config:
                changed = sorted(key for key in set(stored) | set(run_config) if stored.get(key) != run_config.get(key))
                details = "; ".join(f"{key}: {stored.get(key)!r} -> {run_config.get(key)!r}" for key in changed)
                raise AnswerCacheMismatchError(
                    f"{self.output_dir} holds answers of a different run ({details}). Pass --overwrite to discard "
                    "them, or choose another --output folder."
                )
        else:
            config_path.write_text(json.dumps(run_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        self.entries: dict[str, dict[str, str]] = self._load()

    def _load(self) -> dict[str, dict[str, str]]:
        if not self.answers_path.is_file():
            return {}
        lines = self.answers_path.read_text(encoding="utf-8").split("\n")
        entries, kept = {}, []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if number >= len(lines) - 1:  # the last line, cut short by an interruption
                    logger.warning(f"{self.answers_path}: dropping an incomplete last line; it is generated again.")
                    continue
                raise RuntimeError(
                    f"{self.answers_path}, line {number}: not valid JSON. The answer cache is damaged; pass "
                    "--overwrite to start again."
                ) from None
            entries[entry["uid"]] = entry
            kept.append(line)
        if len(kept) != sum(1 for line in lines if line.strip()):
            self.answers_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        return entries

    def __contains__(self, uid: str) -> bool:
        return uid in self.entries

    def check_prompt(self, uid: str, prompt: str) -> None:
        """A cached answer must belong to the same prompt (else the data changed under the same output folder)."""
        if self.entries[uid]["prompt"] != prompt:
            raise AnswerCacheMismatchError(
                f"{self.answers_path}: the cached prompt of {uid!r} differs from the prompt built now, so the "
                "benchmark data changed since those answers were generated. Pass --overwrite to start again."
            )

    def add(self, entries: Sequence[dict[str, str]]) -> None:
        with self.answers_path.open("a", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for entry in entries:
            self.entries[entry["uid"]] = entry

    def answer(self, uid: str) -> str:
        return self.entries[uid]["answer"]


class GreedyGenerator:
    """Batched greedy generation with a DeepSeek-VL model and processor (left padding, the processor's default).

    Args:
        model: a `DeepSeekVLForConditionalGeneration` (or any model taking the processor's outputs).
        processor: the matching `DeepSeekVLProcessor`.
        max_new_tokens: generation budget per answer; generation stops earlier at the EOS token.
    """

    def __init__(self, model, processor, max_new_tokens: int):
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}.")
        self.model = model.eval()
        self.processor = processor
        tokenizer = processor.tokenizer
        # A fresh config, not the checkpoint's: the reported numbers use plain greedy decoding (no sampling, no
        # repetition penalty), whatever generation_config.json says.
        self.generation_config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )

    def render(self, request: GenerationRequest) -> str:
        """The full prompt text: the chat template with the default system prompt and the generation prompt."""
        return self.processor.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[str], images: Sequence[Sequence]) -> list[str]:
        has_images = any(len(sample_images) for sample_images in images)
        inputs = self.processor(
            text=list(prompts), images=[list(i) for i in images] if has_images else None,
            padding=True, return_tensors="pt",
        )
        device, dtype = self.model.device, self.model.dtype
        inputs = {
            key: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
            for key, value in inputs.items()
        }
        output = self.model.generate(**inputs, generation_config=self.generation_config)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def evaluate_benchmark(
    benchmark: Benchmark,
    data: str | Path,
    model,
    processor,
    output_dir: str | Path,
    *,
    image_root: str | Path | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    use_evaluate: bool = True,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Run `benchmark` on the files at `data` with `model`, write `results.json` and `summary.md` to `output_dir`,
    and return the report.

    Args:
        benchmark: from `get_benchmark(task, ...)`.
        data: the benchmark file or folder in its public format.
        model, processor: a DeepSeek-VL model and its processor.
        output_dir: receives `answers.jsonl` (the resumable answer cache), `run_config.json`, `results.json`
            (every item's prompt, raw answer, parsed answer, correctness; metrics; breakdowns) and `summary.md`.
        image_root: where the benchmark's images are, when not at the format's default place.
        batch_size: prompts per `generate` call.
        max_new_tokens: defaults to the benchmark's `default_max_new_tokens`.
        limit: only the first `limit` questions (a quick check; the report says so).
        overwrite: discard answers already in `output_dir` instead of resuming.
        progress: show a progress bar.
        use_evaluate: compute accuracy / precision / recall / F1 with `evaluate` when its modules load.
        model_name: how the report names the model (default: `model.name_or_path`).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}.")
    max_new_tokens = max_new_tokens or benchmark.default_max_new_tokens
    samples = benchmark.load(data, image_root)
    total_samples = len(samples)
    if limit is not None:
        samples = samples[:limit]
    requests = benchmark.requests(samples)
    seen: set[str] = set()
    for request in requests:
        if request.uid in seen:
            raise ValueError(
                f"{request.sample.location}: question id {request.uid!r} appears twice in the benchmark; ids must be "
                "unique (they key the answer cache)."
            )
        seen.add(request.uid)
    generator = GreedyGenerator(model, processor, max_new_tokens)
    prompts = [generator.render(request) for request in requests]

    model_name = model_name or str(getattr(model, "name_or_path", "") or type(model).__name__)
    run_config = {
        "format_version": CACHE_FORMAT_VERSION,
        "task": benchmark.name,
        "settings": benchmark.settings(),
        "model": model_name,
        "data": str(Path(data).resolve()),
        "generation": {"decoding": "greedy", "max_new_tokens": max_new_tokens},
    }
    cache = AnswerCache(output_dir, run_config, overwrite=overwrite)
    for request, prompt in zip(requests, prompts):
        if request.uid in cache:
            cache.check_prompt(request.uid, prompt)

    _generate_missing(generator, cache, requests, prompts, batch_size, progress, benchmark.name)

    answers = [cache.answer(request.uid) for request in requests]
    backend = MetricBackend(use_evaluate=use_evaluate)
    result = benchmark.score(requests, answers, backend)
    report = build_report(benchmark, run_config, requests, prompts, answers, result, backend.name,
                          questions_in_file=total_samples, limit=limit)
    write_report(report, output_dir)
    return report


def _generate_missing(generator, cache, requests, prompts, batch_size, progress, task_name) -> None:
    from tqdm.auto import tqdm

    done = sum(request.uid in cache for request in requests)
    with tqdm(total=len(requests), initial=done, desc=f"dsvl eval {task_name}", unit="prompt",
              disable=not progress) as bar:
        # Fixed slices of the full prompt list: a resumed run forms the same batches as an uninterrupted one.
        for start in range(0, len(requests), batch_size):
            batch = [(request, prompt) for request, prompt in zip(requests[start:start + batch_size],
                                                                  prompts[start:start + batch_size])
                     if request.uid not in cache]
            if not batch:
                continue
            answers = generator([prompt for _, prompt in batch], [request.load_images() for request, _ in batch])
            cache.add([{"uid": request.uid, "prompt": prompt, "answer": answer}
                       for (request, prompt), answer in zip(batch, answers)])
            bar.update(len(batch))


__all__ = ["AnswerCache", "AnswerCacheMismatchError", "GreedyGenerator", "evaluate_benchmark"]
