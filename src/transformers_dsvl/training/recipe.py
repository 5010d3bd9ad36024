"""The three-stage recipe as one call per stage:

    result = run_stage(StageConfig.from_preset("cpu", stage=2, output_dir="runs/s2"), model, processor,
                       multimodal_data=image_text_dataset, text_data=text_dataset)
    result.log_history    # the trainer's log entries (loss, learning rate, modality statistics, ...)
    result.model          # the trained model (LoRA: merged into a plain model when `lora.merge`)

`build_stage_trainer` returns the configured trainer without training, for custom loops and inspection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from datasets import IterableDataset
from transformers import PreTrainedModel, TrainerCallback

from .checkpoints import load_model, load_processor, save_checkpoint
from .collators import DeepSeekVLPretrainingCollator, DeepSeekVLSFTCollator
from .config import StageConfig
from .data import as_dataset, load_data_mixture
from .freezing import FreezingReport, apply_stage_freezing, pin_frozen_modules_to_eval, release_eval_pins
from .lora import build_lora_config, merge_lora, prepare_for_qlora, qlora_quantization_config
from .packing import pack_documents
from .progress import use_compact_progress
from .sampler import (
    ModalityGroupedIterableDataset,
    ModalityMixtureDataset,
    ModalityPlan,
    ModalityWarmup,
)
from .trainers import DeepSeekVLPretrainingTrainer, DeepSeekVLSFTTrainer, step_lr_setting


@dataclass
class StageResult:
    """What `run_stage` returns.

    Attributes:
        stage: 1, 2 or 3.
        model: the trained model (a plain `DeepSeekVLForConditionalGeneration`; with LoRA the merged model, or the
            peft model when `lora.merge` is off).
        trainer: the trainer (its `state` holds everything that was logged).
        log_history: `trainer.state.log_history`: one dict per log (`step`, `loss`, `learning_rate`, `grad_norm`,
            and in stage 2 `scheduled_language_ratio`, `language_steps`, `multimodal_steps`, `loss_language`,
            `loss_multimodal`), plus the final train summary.
        metrics: the train summary (`train_loss`, `train_runtime`, ...).
        freezing: trainable/frozen parameter names of the stage.
        output_dir: where the final model and processor were saved.
        merged_dir: the merged LoRA checkpoint, when one was written.
    """

    stage: int
    model: Any
    trainer: Any
    log_history: list[dict]
    metrics: dict
    freezing: FreezingReport
    output_dir: str
    merged_dir: str | None = None
    modality_history: list = field(default_factory=list)

    def losses(self) -> list[tuple[int, float]]:
        """(step, loss) of every training log entry."""
        return [(entry["step"], entry["loss"]) for entry in self.log_history if "loss" in entry]


# ---------------------------------------------------------------------------------------------------------------------
# Data per stage
# ---------------------------------------------------------------------------------------------------------------------
def _stage_dataset(data, sources, schema: str, seed: int):
    if data is not None:
        return as_dataset(data, schema)
    if sources:
        return load_data_mixture(sources, schema, seed=seed)
    return None


def prepare_language_data(text_dataset, processor, config: StageConfig):
    """Stage-2 language-only data: packed rows (`config.packing`) or plain documents (tokenised by the collator)."""
    if text_dataset is None or not config.packing:
        return text_dataset
    return pack_documents(text_dataset, processor.tokenizer, max_length=config.max_length,
                          strategy=config.packing_strategy)


def build_modality_plan(config: StageConfig) -> ModalityPlan:
    warmup = ModalityWarmup(
        target_language_ratio=config.language_ratio,
        warmup_steps=config.modality_warmup_steps,
        start_language_ratio=config.modality_warmup_start,
        shape=config.modality_warmup_shape,
    )
    return ModalityPlan(warmup, num_steps=config.max_steps, seed=config.seed, assignment=config.modality_assignment)


def _is_streaming(dataset) -> bool:
    return isinstance(dataset, IterableDataset) or (dataset is not None and not hasattr(dataset, "__len__"))


# ---------------------------------------------------------------------------------------------------------------------
# Trainers per stage
# ---------------------------------------------------------------------------------------------------------------------
def build_stage_trainer(
    config: StageConfig,
    model: PreTrainedModel,
    processor,
    *,
    multimodal_data=None,
    text_data=None,
    conversations=None,
    eval_dataset=None,
    callbacks: list[TrainerCallback] | None = None,
    args=None,
):
    """Freeze `model` for `config.stage` and build its trainer. Data arguments (a `datasets.Dataset`,
    `IterableDataset`, list of dicts or path) override the config's data sources; `args` (the stage's
    `TrainingArguments`/`SFTConfig`) defaults to `config.training_arguments()`. Returns `(trainer, freezing)`."""
    args = args if args is not None else config.training_arguments()
    if config.stage in (1, 2):
        return _build_pretraining_trainer(config, args, model, processor, multimodal_data, text_data, eval_dataset,
                                          callbacks)
    return _build_sft_trainer(config, args, model, processor, conversations, eval_dataset, callbacks)


def _build_pretraining_trainer(config, args, model, processor, multimodal_data, text_data, eval_dataset, callbacks):
    freezing = apply_stage_freezing(model, config.stage, config.train_high_res_adaptor)
    multimodal = _stage_dataset(multimodal_data, config.multimodal_data, "image_text", config.seed)
    if multimodal is None and config.stage == 1:
        raise ValueError("Stage 1 needs image-text data: pass multimodal_data or set config.multimodal_data.")
    modality_plan = None
    if config.stage == 1:
        if text_data is not None:
            raise ValueError("Stage 1 (aligner warm-up) trains on image-text pairs only; pass text data to stage 2.")
        train_dataset = multimodal
    else:
        text = prepare_language_data(_stage_dataset(text_data, config.text_data, "text", config.seed), processor,
                                     config)
        modality_plan = build_modality_plan(config)
        if modality_plan.count("language") and text is None:
            raise ValueError(
                f"The stage-2 modality plan has {modality_plan.count('language')} language-only steps but no text "
                "data was given. Fix: pass text_data (or config.text_data), or set language_ratio=0 and "
                "modality_warmup_steps=0."
            )
        if modality_plan.count("multimodal") and multimodal is None:
            raise ValueError("The stage-2 modality plan has multimodal steps but no image-text data was given.")
        if _is_streaming(text) or _is_streaming(multimodal):
            train_dataset = ModalityGroupedIterableDataset(
                text, multimodal, modality_plan, batch_size=args.per_device_train_batch_size,
                gradient_accumulation_steps=args.gradient_accumulation_steps, num_replicas=args.world_size,
                seed=config.seed,
            )
        else:
            train_dataset = ModalityMixtureDataset(language=text, multimodal=multimodal)
    if _is_streaming(train_dataset) or isinstance(train_dataset, ModalityGroupedIterableDataset):
        # Each rank collates its own slice of the stream: dispatching collated batches from rank 0 would split the
        # flattened image tensors across ranks.
        args.accelerator_config.dispatch_batches = False
    collator = DeepSeekVLPretrainingCollator(processor, max_length=config.max_length,
                                             return_modality=config.stage == 2)
    trainer = DeepSeekVLPretrainingTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=as_dataset(eval_dataset, "image_text") if eval_dataset is not None else None,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
        modality_plan=modality_plan,
        step_lr=step_lr_setting(config.lr_scheduler == "step", config.step_lr_milestones, config.step_lr_decay),
    )
    return trainer, freezing


def _build_sft_trainer(config, args, model, processor, conversations, eval_dataset, callbacks):
    dataset = _stage_dataset(conversations, config.sft_data, "conversations", config.seed)
    if dataset is None:
        raise ValueError("Stage 3 needs conversations: pass conversations=... or set config.sft_data.")
    peft_config = None
    if config.lora is not None:
        # peft freezes every base weight and trains the adapters (plus `modules_to_save`).
        release_eval_pins(model)
        if config.lora.load_in_4bit:
            if not getattr(model, "is_loaded_in_4bit", False):
                raise ValueError(
                    "QLoRA needs the model loaded in 4 bits. Fix: let run_stage load it from model_name_or_path "
                    "(it applies the quantisation config), or pass a model loaded with qlora_quantization_config()."
                )
            model = prepare_for_qlora(model, config.gradient_checkpointing)
        peft_config = build_lora_config(model, config.lora)
    else:
        freezing = apply_stage_freezing(model, 3, config.train_high_res_adaptor)
    collator = DeepSeekVLSFTCollator(
        processor=processor,
        max_length=config.max_length,
        assistant_only_loss=config.assistant_only_loss,
    )
    trainer = DeepSeekVLSFTTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=dataset,
        eval_dataset=as_dataset(eval_dataset, "conversations") if eval_dataset is not None else None,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
        step_lr=step_lr_setting(config.lr_scheduler == "step", config.step_lr_milestones, config.step_lr_decay),
    )
    if peft_config is not None:
        freezing = FreezingReport(trainable_groups=("lora",))
        for name, parameter in trainer.model.named_parameters():
            (freezing.trainable if parameter.requires_grad else freezing.frozen).append(name)
            freezing.parameter_sizes[name] = parameter.numel()
        freezing.eval_pinned_modules = pin_frozen_modules_to_eval(trainer.model)
    return trainer, freezing


# ---------------------------------------------------------------------------------------------------------------------
# Running a stage
# ---------------------------------------------------------------------------------------------------------------------
def load_stage_model_and_processor(config: StageConfig):
    """Load the checkpoint `config.model_name_or_path` (4-bit for QLoRA) and its processor."""
    if not config.model_name_or_path:
        raise ValueError("No model given: pass a model to run_stage or set model_name_or_path in the stage config.")
    quantization = qlora_quantization_config() if config.lora is not None and config.lora.load_in_4bit else None
    model = load_model(config.model_name_or_path, quantization_config=quantization)
    processor = load_processor(config.processor_name_or_path or config.model_name_or_path)
    return model, processor


def run_stage(
    config: StageConfig,
    model: PreTrainedModel | None = None,
    processor=None,
    *,
    multimodal_data=None,
    text_data=None,
    conversations=None,
    eval_dataset=None,
    callbacks: list[TrainerCallback] | None = None,
    resume_from_checkpoint: str | bool | None = None,
    progress_description: str | None = None,
) -> StageResult:
    """Train one stage and save the result (model + processor, remote-code checkpoint) to `config.output_dir`.

    `model`/`processor` default to loading `config.model_name_or_path`; the data arguments default to the config's
    data sources. `resume_from_checkpoint` (a checkpoint folder, or `True` for the last one in `output_dir`)
    defaults to `config.resume_from_checkpoint`. `progress_description` swaps the trainer's console output (a bar
    plus one printed dict per log) for a single progress bar with that label and the latest loss.
    """
    # The arguments come first: under DeepSpeed ZeRO-3 their creation makes `from_pretrained` partition the weights
    # while loading instead of materialising the whole model in every process.
    args = config.training_arguments()
    if model is None or processor is None:
        loaded_model, loaded_processor = load_stage_model_and_processor(config)
        model = model if model is not None else loaded_model
        processor = processor if processor is not None else loaded_processor
    trainer, freezing = build_stage_trainer(
        config, model, processor, multimodal_data=multimodal_data, text_data=text_data,
        conversations=conversations, eval_dataset=eval_dataset, callbacks=callbacks, args=args,
    )
    if progress_description is not None:
        use_compact_progress(trainer, progress_description)
    if resume_from_checkpoint is None:
        resume_from_checkpoint = config.resume_from_checkpoint
    train_output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.save_state()
    trained = trainer.model
    merged_dir = None
    if config.lora is not None and config.lora.merge and not config.lora.load_in_4bit:
        trained = merge_lora(trainer.model)
        if trainer.is_world_process_zero():
            merged_dir = save_checkpoint(trained, processor, os.path.join(config.output_dir, "merged"))
    return StageResult(
        stage=config.stage,
        model=trained,
        trainer=trainer,
        log_history=list(trainer.state.log_history),
        metrics=dict(train_output.metrics),
        freezing=freezing,
        output_dir=config.output_dir,
        merged_dir=merged_dir,
        modality_history=list(getattr(trainer, "modality_history", [])),
    )


__all__ = [
    "StageResult",
    "build_modality_plan",
    "build_stage_trainer",
    "load_stage_model_and_processor",
    "prepare_language_data",
    "run_stage",
]
