"""The DeepSeek-VL training recipe (paper Sec. 3.2-3.3): stage 1 aligner warm-up, stage 2 joint vision-language
pretraining with modality mixing, stage 3 supervised fine-tuning, on transformers' `Trainer`, TRL and accelerate.

Needs the `training` extra (`pip install 'transformers_dsvl[training]'`: trl, accelerate, datasets, peft).
See docs/training.md. Names are imported lazily, so `dsvl` subcommands that do not train start fast.
"""

import importlib

_EXPORTS = {
    "checkpoints": ["save_checkpoint"],
    "collators": ["DeepSeekVLPretrainingCollator", "DeepSeekVLSFTCollator"],
    "config": ["STAGE_PRESETS", "DataSource", "LoraSettings", "StageConfig"],
    "data": ["load_data_mixture", "load_data_source", "load_local_dataset", "mix_datasets", "to_schema"],
    "freezing": ["apply_freezing", "apply_stage_freezing", "parameter_group", "stage_trainable_groups"],
    "lora": ["build_lora_config", "merge_lora", "merge_lora_checkpoint"],
    "packing": ["pack_documents"],
    "recipe": ["StageResult", "build_modality_plan", "build_stage_trainer", "run_stage"],
    "sampler": [
        "ModalityGroupedBatchSampler",
        "ModalityGroupedIterableDataset",
        "ModalityMixtureDataset",
        "ModalityPlan",
        "ModalityWarmup",
    ],
    "schedules": ["get_step_schedule_with_warmup"],
    "trainers": ["DeepSeekVLPretrainingTrainer", "DeepSeekVLSFTTrainer"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
