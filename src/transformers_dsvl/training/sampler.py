"""Stage-2 modality mixing (paper Sec. 3.2.2, 4.3): language-only and multimodal data at a target ratio (7:3), with the
modality warm-up and batch-level modality grouping.

* Modality warm-up: the share of language-only optimizer steps starts at 1.0 (all language) and moves to the target
  over `warmup_steps` (the paper does not give the curve's shape or length: linear by default, cosine optional).
* Batch-level modality grouping: every optimizer step is entirely language-only or entirely multimodal: all its
  gradient-accumulation micro-batches and, under data parallelism, the micro-batches of every rank. The paper samples
  the modality of each step separately; `assignment="random"` does exactly that (an independent draw with the
  scheduled probability per step), `assignment="balanced"` (default) draws one random phase and then places the
  language steps so that the count after any number of steps is within one step of the scheduled expectation
  (systematic sampling), which keeps the realised ratio on schedule even over short windows.

The plan of modalities is a pure function of the schedule, the number of steps and the seed, so every rank computes
the same plan without communicating, and a resumed run replays the same data.

Two ways to feed a `Trainer`:
* `ModalityMixtureDataset` + `ModalityGroupedBatchSampler` (map-style data). With `rank=None` the sampler yields the
  micro-batches of all ranks in the order (step, accumulation micro-batch, rank): accelerate's `BatchSamplerShard`
  (what `Trainer`/`accelerator.prepare` wrap a data loader's batch sampler in) hands batch i to rank i % world_size,
  which is exactly this layout. With `rank=r` it yields only rank r's micro-batches (for custom loops).
* `ModalityGroupedIterableDataset` (streaming data): yields examples in the same global order; accelerate's
  `IterableDatasetShard` (with `dispatch_batches=False`) gives each rank its slice of every global batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

LANGUAGE = "language"
MULTIMODAL = "multimodal"
MODALITIES = (LANGUAGE, MULTIMODAL)


@dataclass(frozen=True)
class ModalityWarmup:
    """Share of language-only optimizer steps as a function of the step.

    Args:
        target_language_ratio: the final share (0.7 in the paper: language : multimodal = 7 : 3).
        warmup_steps: steps over which the share moves from `start_language_ratio` to the target (0: no warm-up).
        start_language_ratio: the share at step 0 (1.0 in the paper: start with language only).
        shape: `"linear"` or `"cosine"` (a half-cosine ease from start to target).
    """

    target_language_ratio: float = 0.7
    warmup_steps: int = 0
    start_language_ratio: float = 1.0
    shape: str = "linear"

    def __post_init__(self):
        for name in ("target_language_ratio", "start_language_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ModalityWarmup.{name} must be in [0, 1], got {value}. Fix: e.g. 0.7 for 7:3.")
        if self.warmup_steps < 0:
            raise ValueError(f"ModalityWarmup.warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.shape not in ("linear", "cosine"):
            raise ValueError(f"ModalityWarmup.shape must be 'linear' or 'cosine', got {self.shape!r}.")

    def language_ratio(self, step: int) -> float:
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.target_language_ratio
        progress = step / self.warmup_steps
        if self.shape == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.start_language_ratio + (self.target_language_ratio - self.start_language_ratio) * progress

    def language_ratios(self, num_steps: int) -> np.ndarray:
        return np.array([self.language_ratio(step) for step in range(num_steps)], dtype=np.float64)


class ModalityPlan:
    """The modality of every optimizer step of a run.

    Args:
        warmup: the language-share schedule.
        num_steps: number of optimizer steps (the run's `max_steps`).
        seed: the only source of randomness (same seed, same plan on every rank and after a resume).
        assignment: `"balanced"` (systematic sampling: realised count within one step of the schedule at all times)
            or `"random"` (an independent draw per step, as the paper describes).
    """

    def __init__(self, warmup: ModalityWarmup, num_steps: int, seed: int = 0, assignment: str = "balanced"):
        if num_steps <= 0:
            raise ValueError(f"ModalityPlan needs num_steps > 0, got {num_steps}. Fix: set max_steps.")
        if assignment not in ("balanced", "random"):
            raise ValueError(f"assignment must be 'balanced' or 'random', got {assignment!r}.")
        self.warmup = warmup
        self.num_steps = num_steps
        self.seed = seed
        self.assignment = assignment
        ratios = warmup.language_ratios(num_steps)
        rng = np.random.default_rng([seed, 0x5EED])
        if assignment == "random":
            is_language = rng.random(num_steps) < ratios
        else:
            # Systematic sampling: step s is language iff floor(C_{s+1} + u) > floor(C_s + u), C = cumulative share.
            phase = rng.random()
            cumulative = np.concatenate([[0.0], np.cumsum(ratios)])
            is_language = np.diff(np.floor(cumulative + phase)) > 0
        self.is_language = is_language.astype(bool)
        # Steps of each modality before step s (s = 0..num_steps): where each modality's data stream stands.
        self._language_before = np.concatenate([[0], np.cumsum(self.is_language)])
        self._multimodal_before = np.arange(num_steps + 1) - self._language_before

    def __len__(self) -> int:
        return self.num_steps

    def modality(self, step: int) -> str:
        return LANGUAGE if self.is_language[step] else MULTIMODAL

    def steps_before(self, step: int, modality: str) -> int:
        return int((self._language_before if modality == LANGUAGE else self._multimodal_before)[step])

    def count(self, modality: str) -> int:
        return self.steps_before(self.num_steps, modality)

    def language_share(self, start: int = 0, stop: int | None = None) -> float:
        stop = self.num_steps if stop is None else stop
        return float(self.is_language[start:stop].mean())

    def scheduled_language_share(self, start: int = 0, stop: int | None = None) -> float:
        stop = self.num_steps if stop is None else stop
        return float(self.warmup.language_ratios(stop)[start:stop].mean())


class _IndexStream:
    """Infinite stream of indices into a dataset of `size` rows: a fresh seeded permutation per pass."""

    def __init__(self, size: int, seed: int, stream_id: int, shuffle: bool = True):
        self.size, self.seed, self.stream_id, self.shuffle = size, seed, stream_id, shuffle
        self._pass, self._permutation = None, None

    def __getitem__(self, position: int) -> int:
        data_pass, offset = divmod(position, self.size)
        if data_pass != self._pass:
            self._pass = data_pass
            self._permutation = (
                np.random.default_rng([self.seed, self.stream_id, data_pass]).permutation(self.size)
                if self.shuffle
                else np.arange(self.size)
            )
        return int(self._permutation[offset])


class ModalityMixtureDataset(torch.utils.data.Dataset):
    """Map-style union of a language-only and a multimodal dataset: indices `[0, L)` are language rows, `[L, L + M)`
    multimodal rows. Each example comes back as a dict with a `"modality"` key added."""

    def __init__(self, language=None, multimodal=None):
        self.language = language
        self.multimodal = multimodal
        self.num_language = len(language) if language is not None else 0
        self.num_multimodal = len(multimodal) if multimodal is not None else 0

    def __len__(self) -> int:
        return self.num_language + self.num_multimodal

    def __getitem__(self, index: int) -> dict:
        if index < self.num_language:
            return {**self.language[index], "modality": LANGUAGE}
        return {**self.multimodal[index - self.num_language], "modality": MULTIMODAL}


class ModalityGroupedBatchSampler(torch.utils.data.Sampler):
    """Batch sampler over a `ModalityMixtureDataset` where every optimizer step holds one modality.

    Args:
        plan: the modality of each optimizer step.
        num_language / num_multimodal: sizes of the two parts of the `ModalityMixtureDataset`.
        batch_size: per-device micro-batch size.
        gradient_accumulation_steps: micro-batches per optimizer step and rank.
        num_replicas: data-parallel world size.
        rank: `None` to yield the micro-batches of all ranks in the order (step, micro-batch, rank), which accelerate's
            `BatchSamplerShard` distributes round-robin (what `Trainer` does); an int to yield one rank's only.
        seed: seeds the per-pass shuffles of both datasets.
        shuffle: shuffle each pass over a dataset (else read it in order).
    """

    drop_last = False

    def __init__(
        self,
        plan: ModalityPlan,
        num_language: int,
        num_multimodal: int,
        batch_size: int,
        gradient_accumulation_steps: int = 1,
        num_replicas: int = 1,
        rank: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if batch_size <= 0 or gradient_accumulation_steps <= 0 or num_replicas <= 0:
            raise ValueError("batch_size, gradient_accumulation_steps and num_replicas must be positive.")
        if rank is not None and not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}.")
        for modality, size in ((LANGUAGE, num_language), (MULTIMODAL, num_multimodal)):
            if plan.count(modality) > 0 and size == 0:
                raise ValueError(
                    f"The modality plan has {plan.count(modality)} {modality} steps but the {modality} dataset is "
                    f"empty. Fix: provide {modality} data, or set the language ratio to "
                    f"{0.0 if modality == LANGUAGE else 1.0} (and warm-up start accordingly)."
                )
        self.plan = plan
        self.num_language, self.num_multimodal = num_language, num_multimodal
        self.batch_size = batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps * self.num_replicas

    def __len__(self) -> int:
        per_rank = self.plan.num_steps * self.gradient_accumulation_steps
        return per_rank if self.rank is not None else per_rank * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """The plan covers the whole run, so there is nothing to reseed per epoch (each dataset pass is reshuffled)."""

    def step_batches(self, step: int, streams=None) -> list[tuple[int, list[int]]]:
        """(rank, indices) of every micro-batch of optimizer step `step`, in (micro-batch, rank) order."""
        streams = streams or self._streams()
        modality = self.plan.modality(step)
        stream = streams[modality]
        offset = self.num_language if modality == MULTIMODAL else 0
        start = self.plan.steps_before(step, modality) * self.samples_per_step
        batches = []
        for micro_batch in range(self.gradient_accumulation_steps):
            for rank in range(self.num_replicas):
                first = start + (micro_batch * self.num_replicas + rank) * self.batch_size
                batches.append((rank, [offset + stream[p] for p in range(first, first + self.batch_size)]))
        return batches

    def _streams(self):
        return {
            LANGUAGE: _IndexStream(max(self.num_language, 1), self.seed, 0, self.shuffle),
            MULTIMODAL: _IndexStream(max(self.num_multimodal, 1), self.seed, 1, self.shuffle),
        }

    def __iter__(self) -> Iterator[list[int]]:
        streams = self._streams()
        for step in range(self.plan.num_steps):
            for rank, batch in self.step_batches(step, streams):
                if self.rank is None or rank == self.rank:
                    yield batch


class ModalityGroupedIterableDataset(torch.utils.data.IterableDataset):
    """Streaming counterpart of `ModalityMixtureDataset` + `ModalityGroupedBatchSampler`.

    Yields examples (dicts with a `"modality"` key) in the global order (step, micro-batch, rank, example), pulling each
    step's `batch_size * gradient_accumulation_steps * num_replicas` examples from the step's modality. The sources are
    iterables (e.g. `datasets.IterableDataset` from `load_dataset(..., streaming=True)`), re-iterated when exhausted
    (calling their `set_epoch(pass)` when they have one, so a shuffled stream reshuffles), or map-style datasets (read
    through seeded permutations). Under distribution, give it to `Trainer` with `dispatch_batches=False` (the
    pretraining trainer does this) so each rank keeps its own slice of every global batch.
    """

    def __init__(
        self,
        language,
        multimodal,
        plan: ModalityPlan,
        batch_size: int,
        gradient_accumulation_steps: int = 1,
        num_replicas: int = 1,
        seed: int = 0,
    ):
        self.sources = {LANGUAGE: language, MULTIMODAL: multimodal}
        for modality in MODALITIES:
            if plan.count(modality) > 0 and self.sources[modality] is None:
                raise ValueError(f"The modality plan has {modality} steps but no {modality} data was given.")
        self.plan = plan
        self.batch_size = batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.num_replicas = num_replicas
        self.seed = seed

    def __len__(self) -> int:
        return self.plan.num_steps * self.batch_size * self.gradient_accumulation_steps * self.num_replicas

    def _stream(self, modality: str) -> Iterator[dict]:
        source = self.sources[modality]
        if source is None:
            return iter(())
        if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
            indices = _IndexStream(len(source), self.seed, MODALITIES.index(modality))
            return (source[indices[position]] for position in itertools.count())
        return self._repeat(source)

    @staticmethod
    def _repeat(source) -> Iterator[dict]:
        for data_pass in itertools.count():
            if hasattr(source, "set_epoch"):
                source.set_epoch(data_pass)
            produced = False
            for example in source:
                produced = True
                yield example
            if not produced:
                raise ValueError("A streaming source of the modality mixture yielded no example.")

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise ValueError(
                "ModalityGroupedIterableDataset must be read by a single data-loader worker (every worker would "
                "replay the whole stream). Fix: dataloader_num_workers=0 or 1."
            )
        streams = {modality: self._stream(modality) for modality in MODALITIES}
        per_step = self.batch_size * self.gradient_accumulation_steps * self.num_replicas
        for step in range(self.plan.num_steps):
            modality = self.plan.modality(step)
            for example in itertools.islice(streams[modality], per_step):
                yield {**example, "modality": modality}


__all__ = [
    "LANGUAGE",
    "MODALITIES",
    "MULTIMODAL",
    "ModalityGroupedBatchSampler",
    "ModalityGroupedIterableDataset",
    "ModalityMixtureDataset",
    "ModalityPlan",
    "ModalityWarmup",
]
