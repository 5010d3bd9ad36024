"""Trainers of the recipe: `DeepSeekVLPretrainingTrainer` (stages 1-2, a `transformers.Trainer`) and
`DeepSeekVLSFTTrainer` (stage 3, TRL's `SFTTrainer`), both with the optional stage-2 "step" learning-rate schedule.

The pretraining trainer reads a `ModalityMixtureDataset` through `ModalityGroupedBatchSampler` (or a
`ModalityGroupedIterableDataset` for streaming data), so every optimizer step holds one modality on every rank; it
logs, with each training log, the scheduled language share and, over the logging window, the number of language and
multimodal steps and the loss of each (`loss_language`, `loss_multimodal`, averaged over ranks like `loss`).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from trl import SFTTrainer

from .sampler import LANGUAGE, MODALITIES, ModalityGroupedBatchSampler, ModalityMixtureDataset, ModalityPlan
from .schedules import DEFAULT_STEP_DECAY, DEFAULT_STEP_MILESTONES, get_step_schedule_with_warmup


class StepLRSchedulerMixin:
    """`create_scheduler` that builds the recipe's step schedule when `step_lr=(milestones, decay)` is set."""

    step_lr: tuple | None = None

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.step_lr is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            milestones, decay = self.step_lr
            self.lr_scheduler = get_step_schedule_with_warmup(
                optimizer if optimizer is not None else self.optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                milestones=milestones,
                decay=decay,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler


def step_lr_setting(use_step: bool, milestones=DEFAULT_STEP_MILESTONES, decay=DEFAULT_STEP_DECAY):
    return (tuple(milestones), float(decay)) if use_step else None


class DeepSeekVLPretrainingTrainer(StepLRSchedulerMixin, Trainer):
    """`Trainer` for stages 1 and 2.

    Args (besides `Trainer`'s):
        modality_plan: the stage-2 `ModalityPlan` (its `num_steps` must equal `args.max_steps`); `None` for stage 1.
        step_lr: `(milestones, decay)` to use the step schedule (see `schedules.py`), `None` for `args`' schedule.
    """

    def __init__(self, *args, modality_plan: ModalityPlan | None = None, step_lr: tuple | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.modality_plan = modality_plan
        self.step_lr = step_lr
        if modality_plan is not None and modality_plan.num_steps != self.args.max_steps:
            raise ValueError(
                f"The modality plan covers {modality_plan.num_steps} steps but max_steps is {self.args.max_steps}. "
                "Fix: build the plan with num_steps=args.max_steps."
            )
        # (optimizer step, modality) and loss of every micro-batch this process trained on, in order (the loss as the
        # trainer accumulates it: a step's loss is the sum over its micro-batches).
        self.modality_history: list[tuple[int, str]] = []
        self.micro_batch_losses: list[float] = []
        self._window_loss = {modality: 0.0 for modality in MODALITIES}
        self._window_micro_batches = {modality: 0 for modality in MODALITIES}

    # -- data ------------------------------------------------------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        if not isinstance(self.train_dataset, ModalityMixtureDataset):
            return super().get_train_dataloader()
        if self.modality_plan is None:
            raise ValueError("A ModalityMixtureDataset needs a modality_plan (the stage-2 modality schedule).")
        dataset = self.train_dataset
        batch_sampler = ModalityGroupedBatchSampler(
            self.modality_plan,
            num_language=dataset.num_language,
            num_multimodal=dataset.num_multimodal,
            batch_size=self._train_batch_size,
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            num_replicas=self.args.world_size,
            rank=None,  # accelerate's BatchSamplerShard deals the micro-batches out to the ranks round-robin
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )
        num_workers = self.args.dataloader_num_workers
        loader_kwargs = dict(
            batch_sampler=batch_sampler,
            collate_fn=self.data_collator,
            num_workers=num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        if num_workers > 0:
            loader_kwargs.update(persistent_workers=self.args.dataloader_persistent_workers,
                                 prefetch_factor=self.args.dataloader_prefetch_factor)
        return self.accelerator.prepare(DataLoader(dataset, **loader_kwargs))

    # -- training --------------------------------------------------------------------------------------------------
    def training_step(self, model, inputs, *args, **kwargs):
        modality = inputs.pop("modality", None)
        loss = super().training_step(model, inputs, *args, **kwargs)
        if modality is not None:
            step = self.state.global_step
            previous = self.modality_history[-1] if self.modality_history else None
            if previous is not None and previous[0] == step and previous[1] != modality:
                raise RuntimeError(
                    f"Optimizer step {step} received both {previous[1]} and {modality} micro-batches; "
                    "every step must hold one modality. The data loader does not follow the modality plan (was the "
                    "gradient accumulation or world size changed after building it?)."
                )
            self.modality_history.append((step, modality))
            self.micro_batch_losses.append(float(loss.detach()))
            self._window_loss[modality] += self.micro_batch_losses[-1]
            self._window_micro_batches[modality] += 1
        return loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self.modality_plan is not None and "loss" in logs:
            accumulation = self.args.gradient_accumulation_steps
            step = max(self.state.global_step - 1, 0)
            logs["scheduled_language_ratio"] = round(self.modality_plan.warmup.language_ratio(step), 6)
            window_loss = torch.tensor([self._window_loss[m] for m in MODALITIES], device=self.args.device)
            if self.args.world_size > 1:
                # Every rank trained the same steps (one modality per step everywhere): average like `loss` is.
                window_loss = self.accelerator.reduce(window_loss, reduction="mean")
            for modality, modality_loss in zip(MODALITIES, window_loss.tolist(), strict=True):
                micro_batches = self._window_micro_batches[modality]
                steps = micro_batches / accumulation
                logs[f"{modality}_steps"] = steps
                if micro_batches:
                    # Each step's loss is the sum of its micro-batch losses, as in the trainer's own `loss`.
                    logs[f"loss_{modality}"] = round(modality_loss / steps, 6)
                self._window_loss[modality] = 0.0
                self._window_micro_batches[modality] = 0
            total = logs[f"{LANGUAGE}_steps"] + logs["multimodal_steps"]
            if total:
                logs["language_steps_share"] = logs[f"{LANGUAGE}_steps"] / total
        super().log(logs, *args, **kwargs)


class DeepSeekVLSFTTrainer(StepLRSchedulerMixin, SFTTrainer):
    """TRL's `SFTTrainer` (stage 3), with the step learning-rate schedule available (`step_lr=(milestones, decay)`)."""

    def __init__(self, *args, step_lr: tuple | None = None, **kwargs):
        self.step_lr = step_lr
        super().__init__(*args, **kwargs)


def optimizer_parameter_names(trainer: Trainer) -> set[str]:
    """Names of the parameters the trainer's optimizer updates (for checks that frozen weights cost no state)."""
    names_by_id = {id(p): n for n, p in trainer.model.named_parameters()}
    return {
        names_by_id[id(p)] for group in trainer.optimizer.param_groups for p in group["params"] if id(p) in names_by_id
    }


__all__ = [
    "DeepSeekVLPretrainingTrainer",
    "DeepSeekVLSFTTrainer",
    "StepLRSchedulerMixin",
    "optimizer_parameter_names",
    "step_lr_setting",
]
