"""The DeepSeek-VL training recipe (paper Sec. 3.2-3.3): stage 1 aligner warm-up, stage 2 joint vision-language
pretraining with modality mixing, stage 3 supervised fine-tuning, on transformers' `Trainer`, TRL and accelerate.

Needs the `training` extra (`pip install 'transformers_dsvl[training]'`: trl, accelerate, datasets, peft).
See docs/training.md.
"""

from .checkpoints import save_checkpoint
from .collators import DeepSeekVLPretrainingCollator, DeepSeekVLSFTCollator
from .config import STAGE_PRESETS, LoraSettings, StageConfig
from .data import DataSource, load_data_mixture, load_data_source, load_local_dataset, mix_datasets, to_schema
from .freezing import apply_freezing, apply_stage_freezing, parameter_group, stage_trainable_groups
from .lora import build_lora_config, merge_lora, merge_lora_checkpoint
from .packing import pack_documents
from .recipe import StageResult, build_modality_plan, build_stage_trainer, run_stage
from .sampler import (
    ModalityGroupedBatchSampler,
    ModalityGroupedIterableDataset,
    ModalityMixtureDataset,
    ModalityPlan,
    ModalityWarmup,
)
from .schedules import get_step_schedule_with_warmup
from .trainers import DeepSeekVLPretrainingTrainer, DeepSeekVLSFTTrainer

__all__ = [
    "STAGE_PRESETS",
    "DataSource",
    "DeepSeekVLPretrainingCollator",
    "DeepSeekVLPretrainingTrainer",
    "DeepSeekVLSFTCollator",
    "DeepSeekVLSFTTrainer",
    "LoraSettings",
    "ModalityGroupedBatchSampler",
    "ModalityGroupedIterableDataset",
    "ModalityMixtureDataset",
    "ModalityPlan",
    "ModalityWarmup",
    "StageConfig",
    "StageResult",
    "apply_freezing",
    "apply_stage_freezing",
    "build_lora_config",
    "build_modality_plan",
    "build_stage_trainer",
    "get_step_schedule_with_warmup",
    "load_data_mixture",
    "load_data_source",
    "load_local_dataset",
    "merge_lora",
    "merge_lora_checkpoint",
    "mix_datasets",
    "pack_documents",
    "parameter_group",
    "run_stage",
    "save_checkpoint",
    "stage_trainable_groups",
    "to_schema",
]
