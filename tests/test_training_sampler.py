"""Stage-2 modality mixing: the warm-up schedule, the realised language share, single-modality optimizer steps under
gradient accumulation and data parallelism (accelerate's own sharding), streaming, determinism; the step LR schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, IterableDatasetShard
from datasets import Dataset

from transformers_dsvl.training.sampler import (
    LANGUAGE,
    MULTIMODAL,
    ModalityGroupedBatchSampler,
    ModalityGroupedIterableDataset,
    ModalityMixtureDataset,
    ModalityPlan,
    ModalityWarmup,
)
from transformers_dsvl.training.schedules import get_step_schedule_with_warmup

PAPER_WARMUP = ModalityWarmup(target_language_ratio=0.7, warmup_steps=1000, start_language_ratio=1.0)


def test_warmup_schedule_starts_all_language_and_reaches_the_target():
    assert PAPER_WARMUP.language_ratio(0) == 1.0
    assert PAPER_WARMUP.language_ratio(500) == pytest.approx(0.85)
    assert PAPER_WARMUP.language_ratio(1000) == pytest.approx(0.7)
    assert PAPER_WARMUP.language_ratio(5000) == pytest.approx(0.7)
    ratios = PAPER_WARMUP.language_ratios(1200)
    assert np.all(np.diff(ratios) <= 1e-12)  # never goes back up
    cosine = ModalityWarmup(0.7, 1000, shape="cosine")
    assert cosine.language_ratio(500) == pytest.approx(0.85)
    assert cosine.language_ratio(100) == pytest.approx(1.0 - 0.3 * 0.5 * (1 - math.cos(math.pi * 0.1)))
    assert ModalityWarmup(0.7, warmup_steps=0).language_ratio(0) == pytest.approx(0.7)


@pytest.mark.parametrize("bad", [dict(target_language_ratio=1.5), dict(warmup_steps=-1), dict(shape="square")])
def test_warmup_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="ModalityWarmup"):
        ModalityWarmup(**bad)


def test_language_share_follows_the_warmup_within_two_points_over_2000_steps():
    plan = ModalityPlan(PAPER_WARMUP, num_steps=2000, seed=3)
    for start in range(0, 2000, 100):  # every 100-step window, warm-up included
        observed = plan.language_share(start, start + 100)
        scheduled = plan.scheduled_language_share(start, start + 100)
        assert abs(observed - scheduled) <= 0.02, (start, observed, scheduled)
    # The running count never strays more than one step from the schedule's expectation.
    expected = np.cumsum(PAPER_WARMUP.language_ratios(2000))
    assert np.max(np.abs(np.cumsum(plan.is_language) - expected)) <= 1.0
    assert plan.language_share(1000, 2000) == pytest.approx(0.7, abs=0.001)
    assert plan.language_share(0, 10) == 1.0  # the warm-up starts with language only


def test_random_assignment_is_unbiased():
    # The paper's per-step draw: the share over 2000 steps averages to the schedule (20 seeds, std of mean ~0.2 pp).
    shares = [ModalityPlan(PAPER_WARMUP, 2000, seed=seed, assignment="random").language_share() for seed in range(20)]
    scheduled = ModalityPlan(PAPER_WARMUP, 2000).scheduled_language_share()
    assert abs(np.mean(shares) - scheduled) < 0.005
    assert len({tuple(ModalityPlan(PAPER_WARMUP, 50, seed=s, assignment="random").is_language) for s in range(5)}) > 1


def _rank_batches(sampler, num_replicas):
    """What accelerate gives each rank from the global batch sampler (the Trainer's data-parallel path)."""
    return [list(BatchSamplerShard(sampler, num_processes=num_replicas, process_index=rank))
            for rank in range(num_replicas)]


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_every_optimizer_step_holds_one_modality_on_every_rank(num_replicas):
    accumulation, batch_size, num_steps = 4, 2, 2000
    num_language, num_multimodal = 37, 23
    plan = ModalityPlan(PAPER_WARMUP, num_steps, seed=1)
    sampler = ModalityGroupedBatchSampler(plan, num_language, num_multimodal, batch_size, accumulation, num_replicas)
    per_rank = _rank_batches(sampler, num_replicas)
    assert all(len(batches) == num_steps * accumulation for batches in per_rank)
    language_steps = 0
    for step in range(num_steps):
        micro_batches = [b for batches in per_rank for b in batches[step * accumulation : (step + 1) * accumulation]]
        modalities = {LANGUAGE if index < num_language else MULTIMODAL for batch in micro_batches for index in batch}
        assert modalities == {plan.modality(step)}, step
        assert all(len(batch) == batch_size for batch in micro_batches)
        language_steps += modalities == {LANGUAGE}
    assert language_steps == plan.count(LANGUAGE)
    # The rank-aware mode (custom loops) yields exactly what accelerate hands each rank.
    for rank in range(num_replicas):
        direct = ModalityGroupedBatchSampler(plan, num_language, num_multimodal, batch_size, accumulation,
                                             num_replicas, rank=rank)
        assert list(direct) == per_rank[rank]


def test_each_modality_is_read_as_whole_shuffled_passes_without_overlap_between_ranks():
    plan = ModalityPlan(ModalityWarmup(0.5), num_steps=60, seed=0)
    sampler = ModalityGroupedBatchSampler(plan, 12, 8, batch_size=2, gradient_accumulation_steps=1, num_replicas=2)
    language = [i for batch in sampler for i in batch if i < 12]
    multimodal = [i - 12 for batch in sampler for i in batch if i >= 12]
    for stream, size in ((language, 12), (multimodal, 8)):
        for start in range(0, len(stream) - size + 1, size):  # every full pass is a permutation
            assert sorted(stream[start : start + size]) == list(range(size))
    batches = list(sampler)
    for first, second in zip(batches[0::2], batches[1::2], strict=True):  # the two ranks of a step: different samples
        assert not set(first) & set(second)
    assert language[:12] != list(range(12))  # shuffled


def test_plan_and_batches_are_deterministic_per_seed():
    plan = ModalityPlan(PAPER_WARMUP, 300, seed=5)
    first = list(ModalityGroupedBatchSampler(plan, 10, 10, 2, 2, 2, seed=5))
    again = list(ModalityGroupedBatchSampler(ModalityPlan(PAPER_WARMUP, 300, seed=5), 10, 10, 2, 2, 2, seed=5))
    other = list(ModalityGroupedBatchSampler(ModalityPlan(PAPER_WARMUP, 300, seed=6), 10, 10, 2, 2, 2, seed=6))
    assert first == again
    assert first != other


def test_sampler_refuses_a_plan_it_cannot_serve():
    plan = ModalityPlan(PAPER_WARMUP, 10)
    with pytest.raises(ValueError, match="language dataset is empty"):
        ModalityGroupedBatchSampler(plan, 0, 5, batch_size=1)


def test_mixture_dataset_tags_modalities():
    mixture = ModalityMixtureDataset(language=[{"text": "a"}, {"text": "b"}], multimodal=[{"text": "c", "images": [1]}])
    assert len(mixture) == 3
    assert mixture[1] == {"text": "b", "modality": LANGUAGE}
    assert mixture[2]["modality"] == MULTIMODAL


@pytest.mark.parametrize("streaming", [False, True])
def test_streaming_mixture_follows_the_plan_on_each_rank(streaming):
    language = Dataset.from_dict({"text": [f"l{i}" for i in range(7)]})
    multimodal = Dataset.from_dict({"text": [f"m{i}" for i in range(5)]})
    if streaming:
        language, multimodal = language.to_iterable_dataset(), multimodal.to_iterable_dataset()
    plan = ModalityPlan(PAPER_WARMUP, num_steps=200, seed=2)
    batch_size, accumulation, replicas = 2, 4, 2
    stream = ModalityGroupedIterableDataset(language, multimodal, plan, batch_size, accumulation, replicas)
    assert len(stream) == 200 * batch_size * accumulation * replicas
    for rank in range(replicas):
        shard = IterableDatasetShard(stream, batch_size=batch_size, num_processes=replicas, process_index=rank)
        examples = list(shard)
        assert len(examples) == 200 * batch_size * accumulation
        for step in range(200):
            chunk = examples[step * batch_size * accumulation : (step + 1) * batch_size * accumulation]
            assert {e["modality"] for e in chunk} == {plan.modality(step)}
            assert {e["text"][0] for e in chunk} == {"l" if plan.modality(step) == LANGUAGE else "m"}
    # Sources are re-read when exhausted: 7 language rows serve many more language examples.
    texts = [e["text"] for e in stream if e["modality"] == LANGUAGE]
    assert len(texts) > 7 and set(texts) == {f"l{i}" for i in range(7)}


def test_step_learning_rate_schedule():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=2.0)
    schedule = get_step_schedule_with_warmup(optimizer, num_warmup_steps=10, num_training_steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.0 and rates[5] == pytest.approx(1.0) and rates[10] == pytest.approx(2.0)
    assert rates[79] == pytest.approx(2.0) and rates[80] == pytest.approx(2.0 * 0.316)
    assert rates[89] == pytest.approx(2.0 * 0.316) and rates[90] == pytest.approx(2.0 * 0.316**2)
    with pytest.raises(ValueError, match="milestones"):
        get_step_schedule_with_warmup(optimizer, 0, 10, milestones=(0.9, 0.8))
