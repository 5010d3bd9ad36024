"""Stage configurations: the paper's hyperparameters (Table 4) as presets, CPU presets, YAML loading, and conversion to
`transformers.TrainingArguments` (stages 1-2) or `trl.SFTConfig` (stage 3).

    config = StageConfig.from_preset("deepseek-vl-7b", stage=2, output_dir="runs/s2", max_steps=1000)
    config = StageConfig.from_yaml("training/configs/stage2_7b.yaml", learning_rate=1e-5)

Presets:

| preset | stage | lr | schedule | warm-up | steps | global batch | seq len | packing |
|---|---|---|---|---|---|---|---|---|
| deepseek-vl-1.3b / -7b | 1 | 1e-3 | cosine | 128 | 15000 | 256 | 512 | no |
| deepseek-vl-1.3b | 2 | 3e-5 | step | 2000 | 96000 | 1024 | 4096 | yes |
| deepseek-vl-7b | 2 | 4.2e-5 | step | 2000 | 42000 | 2304 | 4096 | yes |
| deepseek-vl-1.3b / -7b | 3 | 2e-5 | cosine | 256 | 10000 | 256 | 4096 | no |
| cpu | 1 / 2 / 3 | 1e-3 / 5e-4 / 5e-4 | as above | 2 | 20 | 4 | 512 | stage 2 |

Everywhere: AdamW (beta1 0.9, beta2 0.95), weight decay 0, gradient clipping 1.0. Not given by the paper [U]: AdamW
epsilon (1e-8 here), the step schedule's decay points (x0.316 at 80% and 90%, DeepSeek-LLM's), the cosine floor (0),
and the modality warm-up's length (10% of the stage-2 steps here) and shape (linear).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from .packing import PACKING_STRATEGIES
from .schedules import DEFAULT_STEP_DECAY, DEFAULT_STEP_MILESTONES

LORA_TARGET_GROUPS = ("language_model", "low_res_vision", "aligner", "high_res_vision")


@dataclass
class DataSource:
    """One dataset of a stage's mixture.

    Args:
        path: a local file or folder (see the module docstring).
        weight: its share of the mixture (sources are interleaved with probabilities proportional to the weights).
        split: the split to read (files and folders without splits have `train`).
        streaming: read it as an `IterableDataset`.
        name: a label for logs (defaults to the file name).
    """

    path: str
    weight: float = 1.0
    split: str = "train"
    streaming: bool = False
    name: str | None = None

    def __post_init__(self):
        if not self.path:
            raise ValueError("DataSource.path is empty. Fix: give a local file or folder.")
        if not self.weight > 0:
            raise ValueError(f"DataSource.weight must be positive, got {self.weight} for {self.path!r}.")
        self.name = self.name or os.path.basename(os.path.normpath(self.path))

    @classmethod
    def coerce(cls, value) -> DataSource:
        if isinstance(value, DataSource):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls(path=str(value))
        if isinstance(value, dict):
            unknown = set(value) - {"path", "weight", "split", "streaming", "name"}
            if unknown:
                raise ValueError(
                    f"Unknown data-source keys {sorted(unknown)}; use path, weight, split, streaming, name."
                )
            return cls(**value)
        raise TypeError(f"A data source is a path or a dict with 'path' (and weight, split, ...), got {value!r}.")


@dataclass
class LoraSettings:
    """LoRA / QLoRA through peft (stage 3).

    Args:
        r, alpha, dropout: LoRA rank, scaling numerator and dropout.
        target_groups: parameter groups whose Linear layers get adapters: `language_model` (default: attention and MLP
            projections of every decoder layer; never `lm_head`), `low_res_vision` (SigLIP attention/MLP), `aligner`,
            `high_res_vision` (SAM attention/MLP).
        modules_to_save: modules trained fully next to the adapters (e.g. `["aligner"]`).
        load_in_4bit: QLoRA: load the language model in 4-bit NF4 with bitsandbytes (needs a CUDA GPU and
            `bitsandbytes`; the vision towers, aligner and output layer stay unquantised). Untested on CPU machines.
        merge: at the end, merge the adapters into the weights and also save a plain checkpoint in
            `<output_dir>/merged` (not possible for a 4-bit base: save the adapters and merge into a full-precision
            copy with `merge_lora_checkpoint`).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_groups: list[str] = field(default_factory=lambda: ["language_model"])
    modules_to_save: list[str] = field(default_factory=list)
    load_in_4bit: bool = False
    merge: bool = True

    def __post_init__(self):
        unknown = set(self.target_groups) - set(LORA_TARGET_GROUPS)
        if unknown or not self.target_groups:
            raise ValueError(
                f"LoRA target_groups {self.target_groups} must be a non-empty subset of {LORA_TARGET_GROUPS}."
            )
        if self.r <= 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA needs r > 0, alpha > 0 and 0 <= dropout < 1; got {self.r}, {self.alpha}, "
                             f"{self.dropout}.")


@dataclass
class StageConfig:
    """Everything one stage of the recipe needs. Unset optimisation fields take the preset's values.

    Model and data:
        stage: 1 (aligner warm-up), 2 (joint pretraining) or 3 (SFT).
        model_name_or_path / processor_name_or_path: checkpoint to start from (the processor defaults to the model's).
        multimodal_data: image-text sources (stages 1-2), `DataSource`s, paths or dicts with `path` and `weight`.
        text_data: language-only sources (stage 2).
        sft_data: conversation sources (stage 3); text-only conversations can be mixed in.
        max_length: sequence length (truncation; packed-row length).
        packing / packing_strategy: pack the stage-2 language data (`bfd_split`, `bfd` or `wrapped`).

    Stage-2 modality mixing:
        language_ratio: final share of language-only steps (0.7).
        modality_warmup_steps / modality_warmup_start / modality_warmup_shape: the modality warm-up.
        modality_assignment: `balanced` or `random` (see `sampler.py`).

    Trainable parameters:
        train_high_res_adaptor: train SAM's neck/downsamples/alpha (hybrid only); `None` = stage default (stage 2 on).
        lora: `LoraSettings` (stage 3) to train adapters instead of the stage's full parameter set.
        assistant_only_loss: stage 3 trains on assistant answers only (paper); `False` trains the whole conversation.

    Optimisation (Table 4): learning_rate, lr_scheduler (`cosine`, `step`, or any transformers scheduler name),
        lr_scheduler_kwargs, step_lr_milestones / step_lr_decay, warmup_steps, max_steps, global_batch_size (sequences
        per optimizer step over all ranks), per_device_train_batch_size (gradient accumulation is derived),
        weight_decay, max_grad_norm, adam_beta1/2, adam_epsilon, seed, bf16, gradient_checkpointing.

    Bookkeeping, passed to the trainer: output_dir, logging_steps, save_steps, save_total_limit, report_to,
        resume_from_checkpoint, push_to_hub, hub_model_id, and `training_args` (any other `TrainingArguments` /
        `SFTConfig` field, e.g. `deepspeed`, `fsdp`, `dataloader_num_workers`).
    """

    stage: int
    preset: str | None = None
    output_dir: str | None = None
    model_name_or_path: str | None = None
    processor_name_or_path: str | None = None
    multimodal_data: list = field(default_factory=list)
    text_data: list = field(default_factory=list)
    sft_data: list = field(default_factory=list)
    max_length: int | None = 4096
    packing: bool = False
    packing_strategy: str = "bfd_split"
    language_ratio: float = 0.7
    modality_warmup_steps: int = 0
    modality_warmup_start: float = 1.0
    modality_warmup_shape: str = "linear"
    modality_assignment: str = "balanced"
    train_high_res_adaptor: bool | None = None
    lora: LoraSettings | None = None
    assistant_only_loss: bool = True
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    lr_scheduler_kwargs: dict = field(default_factory=dict)
    step_lr_milestones: list[float] = field(default_factory=lambda: list(DEFAULT_STEP_MILESTONES))
    step_lr_decay: float = DEFAULT_STEP_DECAY
    warmup_steps: int = 0
    max_steps: int = 100
    global_batch_size: int = 8
    per_device_train_batch_size: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    seed: int = 42
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 1000
    save_total_limit: int | None = None
    report_to: Any = "none"
    resume_from_checkpoint: Any = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    training_args: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        for name in ("multimodal_data", "text_data", "sft_data"):
            value = getattr(self, name) or []
            value = value if isinstance(value, (list, tuple)) else [value]
            setattr(self, name, [DataSource.coerce(source) for source in value])
        if self.output_dir is None:
            self.output_dir = os.path.join("outputs", f"dsvl-stage{self.stage}")
        self.validate()

    # -- validation ------------------------------------------------------------------------------------------------
    def validate(self):
        def fail(name, problem, fix):
            raise ValueError(f"StageConfig.{name}: {problem}. Fix: {fix}.")

        if self.stage not in (1, 2, 3):
            fail("stage", f"{self.stage!r} is not a stage of the recipe", "use 1, 2 or 3")
        if self.stage == 1 and self.text_data:
            fail("text_data", "stage 1 (aligner warm-up) trains on image-text pairs only", "move text data to stage 2")
        if self.stage != 3 and self.sft_data:
            fail("sft_data", f"conversation data is for stage 3, this is stage {self.stage}",
                 "use multimodal_data/text_data, or stage=3")
        if self.stage == 3 and (self.multimodal_data or self.text_data):
            fail("multimodal_data", "stage 3 reads conversations (sft_data)", "put them in sft_data")
        if self.lora is not None and self.stage != 3:
            fail("lora", f"LoRA is offered for stage 3 (SFT), this is stage {self.stage}", "remove lora or use stage 3")
        if self.packing_strategy not in PACKING_STRATEGIES:
            fail("packing_strategy", f"{self.packing_strategy!r} is unknown", f"use one of {PACKING_STRATEGIES}")
        if self.packing and self.max_length is None:
            fail("max_length", "packing needs a row length", "set max_length")
        for name in ("language_ratio", "modality_warmup_start"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                fail(name, f"{getattr(self, name)} is not in [0, 1]", "e.g. language_ratio=0.7 for 7:3")
        if self.modality_warmup_shape not in ("linear", "cosine"):
            fail("modality_warmup_shape", f"{self.modality_warmup_shape!r} is unknown", "use linear or cosine")
        if self.modality_assignment not in ("balanced", "random"):
            fail("modality_assignment", f"{self.modality_assignment!r} is unknown", "use balanced or random")
        if self.max_steps <= 0:
            fail("max_steps", f"{self.max_steps} must be positive", "set the number of optimizer steps")
        if self.global_batch_size <= 0 or self.per_device_train_batch_size <= 0:
            fail("global_batch_size", "batch sizes must be positive", "e.g. global_batch_size=256")
        if self.global_batch_size % self.per_device_train_batch_size:
            fail("global_batch_size", f"{self.global_batch_size} is not a multiple of per_device_train_batch_size="
                 f"{self.per_device_train_batch_size}", "choose sizes that divide")
        if self.learning_rate <= 0 or self.warmup_steps < 0:
            fail("learning_rate", "needs learning_rate > 0 and warmup_steps >= 0", "use the preset's values")
        if self.max_length is not None and self.max_length <= 0:
            fail("max_length", f"{self.max_length} must be positive", "e.g. 4096")
        if self.train_high_res_adaptor is not None and not isinstance(self.train_high_res_adaptor, bool):
            fail("train_high_res_adaptor", f"{self.train_high_res_adaptor!r} is not a boolean", "true, false or null")
        own_fields = {f.name for f in dataclasses.fields(self)} | {"gradient_accumulation_steps", "lr_scheduler_type"}
        reserved = own_fields & set(self.training_args)
        if reserved:
            fail("training_args", f"{sorted(reserved)} are set by the stage config itself",
                 "set them as top-level StageConfig fields (gradient accumulation comes from global_batch_size)")

    # -- derived values --------------------------------------------------------------------------------------------
    def gradient_accumulation_steps(self, world_size: int | None = None) -> int:
        world_size = world_size or detect_world_size()
        per_step = self.per_device_train_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} cannot be split into micro-batches of "
                f"per_device_train_batch_size={self.per_device_train_batch_size} on {world_size} process(es). Fix: "
                f"make global_batch_size a multiple of {per_step} or change per_device_train_batch_size."
            )
        return self.global_batch_size // per_step

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str, stage: int, **overrides) -> StageConfig:
        """The preset's values for `stage` (see the module docstring), then `overrides`."""
        return cls.from_dict({**overrides, "stage": stage, "preset": preset})

    @classmethod
    def from_dict(cls, values: dict) -> StageConfig:
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"Unknown stage-config keys {sorted(unknown)}. Valid keys: {', '.join(sorted(known))} (other "
                "TrainingArguments/SFTConfig fields go under `training_args`)."
            )
        if "stage" not in values:
            raise ValueError("The stage config needs `stage: 1 | 2 | 3`.")
        preset = values.get("preset")
        if preset is not None:
            if preset not in STAGE_PRESETS:
                raise ValueError(f"Unknown training preset {preset!r}. Fix: use one of {sorted(STAGE_PRESETS)}.")
            if values["stage"] not in STAGE_PRESETS[preset]:
                raise ValueError(f"Preset {preset!r} has no stage {values['stage']!r}; stages are 1, 2 and 3.")
            values = {**copy.deepcopy(STAGE_PRESETS[preset][values["stage"]]), **values}
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> StageConfig:
        """Read a YAML stage config (`stage`, optionally `preset`, then any field); `overrides` win over the file."""
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a stage config is a YAML mapping of field: value.")
        return cls.from_dict({**values, **{k: v for k, v in overrides.items() if v is not None}})

    def replace(self, **changes) -> StageConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        for name in ("multimodal_data", "text_data", "sft_data"):
            values[name] = [dataclasses.asdict(source) for source in getattr(self, name)]
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    # -- trainer arguments -----------------------------------------------------------------------------------------
    def _common_trainer_arguments(self, world_size: int | None) -> dict:
        return dict(
            output_dir=self.output_dir,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps(world_size),
            learning_rate=self.learning_rate,
            # The step schedule is built by the trainer; transformers has no such type, so it gets a placeholder.
            lr_scheduler_type="constant_with_warmup" if self.lr_scheduler == "step" else self.lr_scheduler,
            lr_scheduler_kwargs=dict(self.lr_scheduler_kwargs),
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            adam_beta1=self.adam_beta1,
            adam_beta2=self.adam_beta2,
            adam_epsilon=self.adam_epsilon,
            seed=self.seed,
            bf16=self.bf16,
            **_checkpointing_arguments(self.gradient_checkpointing),
            logging_steps=self.logging_steps,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            report_to=self.report_to,
            push_to_hub=self.push_to_hub,
            hub_model_id=self.hub_model_id,
            remove_unused_columns=False,  # the collators need the raw columns (images, text, messages)
            # Text-only steps leave the vision side without gradients: DDP must not wait for them.
            ddp_find_unused_parameters=self.stage != 1,
        )

    def training_arguments(self, world_size: int | None = None):
        """`TrainingArguments` (stages 1-2) or `SFTConfig` (stage 3) for this stage."""
        if self.stage == 3:
            return self.sft_config(world_size)
        from transformers import TrainingArguments

        arguments = self._common_trainer_arguments(world_size)
        arguments.update(self.training_args)
        return TrainingArguments(**arguments)

    def sft_config(self, world_size: int | None = None):
        import transformers
        from packaging.version import Version
        from trl import SFTConfig

        arguments = self._common_trainer_arguments(world_size)
        # TRL refuses assistant_only_loss for vision data before transformers 5.18; the stage-3 collator builds the
        # assistant-only labels itself on every version, so the flag only goes to TRL where TRL supports it.
        trl_supports = Version(transformers.__version__) >= Version("5.18.0.dev0")
        arguments.update(
            max_length=self.max_length,
            assistant_only_loss=self.assistant_only_loss and trl_supports,
            packing=False,  # Table 4: no packing in SFT (and TRL cannot pack vision data)
            dataset_kwargs={"skip_prepare_dataset": True},
        )
        arguments.update(self.training_args)
        return SFTConfig(**arguments)


def _checkpointing_arguments(enabled: bool) -> dict:
    """Activation checkpointing under the name of the installed transformers (5.x renamed `gradient_checkpointing`).
    Non-reentrant: with frozen towers (stage 1) the checkpointed inputs may not require gradients."""
    import dataclasses as _dataclasses

    from transformers import TrainingArguments

    kwargs = {"use_reentrant": False} if enabled else None
    if "activation_checkpointing" in {f.name for f in _dataclasses.fields(TrainingArguments)}:
        return {"activation_checkpointing": enabled, "activation_checkpointing_kwargs": kwargs}
    return {"gradient_checkpointing": enabled, "gradient_checkpointing_kwargs": kwargs}


def detect_world_size() -> int:
    """Number of data-parallel processes of this launch (accelerate/torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------------------------------------------------------------
# Presets (Table 4 and Tables 1-2)
# ---------------------------------------------------------------------------------------------------------------------
_OPTIMIZER = dict(weight_decay=0.0, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8)
_GPU = dict(bf16=True, gradient_checkpointing=True, logging_steps=10, save_steps=1000, per_device_train_batch_size=1)

# Paper mixtures, with placeholder paths to replace by your local copies (weights = percentages of the paper).
STAGE1_DATA = [
    dict(path="data/stage1/sharegpt4v_captions", weight=1.25, name="ShareGPT4V captions (1.25M)"),
    dict(path="data/stage1/document_ocr", weight=2.5, name="document OCR renderings (2.5M)"),
]
STAGE2_MULTIMODAL_DATA = [
    dict(path="data/stage2/interleaved", weight=13.1, name="interleaved image-text"),
    dict(path="data/stage2/image_caption", weight=11.1, name="image caption"),
    dict(path="data/stage2/table_chart", weight=2.1, name="table and chart"),
    dict(path="data/stage2/web_code", weight=0.4, name="web code"),
    dict(path="data/stage2/scene_text_ocr", weight=1.2, name="scene-text OCR"),
    dict(path="data/stage2/document_ocr", weight=2.1, name="document OCR"),
]
STAGE2_TEXT_DATA = [dict(path="data/stage2/text", weight=70.0, name="text-only corpus")]
STAGE3_DATA = [
    dict(path="data/stage3/in_house_taxonomy", weight=10.5, name="in-house taxonomy SFT"),
    dict(path="data/stage3/general_multimodal", weight=35.5, name="general multimodal"),
    dict(path="data/stage3/table_chart", weight=4.1, name="table and chart"),
    dict(path="data/stage3/web_code", weight=2.0, name="web code"),
    dict(path="data/stage3/text_only", weight=47.9, name="text-only SFT"),
]


def _paper_presets(stage2_lr: float, stage2_steps: int, stage2_batch: int) -> dict:
    return {
        1: dict(_OPTIMIZER, **_GPU, learning_rate=1e-3, lr_scheduler="cosine", warmup_steps=128, max_steps=15000,
                global_batch_size=256, max_length=512, packing=False, multimodal_data=STAGE1_DATA),
        2: dict(_OPTIMIZER, **_GPU, learning_rate=stage2_lr, lr_scheduler="step", warmup_steps=2000,
                max_steps=stage2_steps, global_batch_size=stage2_batch, max_length=4096, packing=True,
                language_ratio=0.7, modality_warmup_steps=stage2_steps // 10, multimodal_data=STAGE2_MULTIMODAL_DATA,
                text_data=STAGE2_TEXT_DATA),
        3: dict(_OPTIMIZER, **_GPU, learning_rate=2e-5, lr_scheduler="cosine", warmup_steps=256, max_steps=10000,
                global_batch_size=256, max_length=4096, packing=False, sft_data=STAGE3_DATA),
    }


_CPU = dict(_OPTIMIZER, bf16=False, gradient_checkpointing=False, warmup_steps=2, max_steps=20, global_batch_size=4,
            per_device_train_batch_size=2, max_length=512, logging_steps=1, save_steps=10,
            training_args={"dataloader_pin_memory": False})
STAGE_PRESETS = {
    "deepseek-vl-1.3b": _paper_presets(stage2_lr=3e-5, stage2_steps=96000, stage2_batch=1024),
    "deepseek-vl-7b": _paper_presets(stage2_lr=4.2e-5, stage2_steps=42000, stage2_batch=2304),
    "cpu": {
        1: dict(_CPU, learning_rate=1e-3, lr_scheduler="cosine"),
        2: dict(_CPU, learning_rate=5e-4, lr_scheduler="step", packing=True, max_length=256, language_ratio=0.7,
                modality_warmup_steps=10),
        3: dict(_CPU, learning_rate=5e-4, lr_scheduler="cosine"),
    },
}

__all__ = ["LORA_TARGET_GROUPS", "STAGE_PRESETS", "DataSource", "LoraSettings", "StageConfig", "detect_world_size"]
