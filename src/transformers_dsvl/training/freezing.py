"""Which parameters train in each stage of the DeepSeek-VL recipe (paper Sec. 3.2, Fig. 3), and keeping the frozen
towers frozen: `requires_grad=False` and in eval mode for the whole run, whatever `Trainer` does with `model.train()`.

Every parameter of `DeepSeekVLForConditionalGeneration` belongs to exactly one group:

| group | parameters |
|---|---|
| `aligner` | `model.aligner.*` (the VL adaptor's MLP) |
| `language_model` | `model.language_model.*`, `lm_head.*` |
| `low_res_vision` | `model.vision_model.*` (SigLIP) |
| `high_res_adaptor` | `model.high_res_vision_model.{neck,global_neck,downsamples,global_alpha}` (SAM's neck, second neck, stride-2 convolutions and their scale: what the original trains with `freeze_high=False`) |
| `high_res_vision` | every other `model.high_res_vision_model.*` parameter (the SAM ViT body) |

Stages (paper defaults; `high_res_adaptor` only exists for the hybrid model):

| stage | trains | frozen |
|---|---|---|
| 1 aligner warm-up | aligner | SigLIP, SAM, LLM |
| 2 joint pretraining | aligner, LLM, (+ SAM neck/downsamples/alpha, on by default) | SigLIP, SAM body |
| 3 SFT | aligner, LLM, SigLIP | SAM (body and, by default, neck) |
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

from torch import nn

PARAMETER_GROUPS = ("aligner", "language_model", "low_res_vision", "high_res_adaptor", "high_res_vision")

# Parameter-name prefixes, checked in this order (the adaptor lives inside the SAM tower, so it is matched first).
_GROUP_PREFIXES = (
    ("aligner", ("model.aligner.",)),
    ("language_model", ("model.language_model.", "lm_head.")),
    ("low_res_vision", ("model.vision_model.",)),
    (
        "high_res_adaptor",
        (
            "model.high_res_vision_model.neck.",
            "model.high_res_vision_model.global_neck.",
            "model.high_res_vision_model.downsamples.",
            "model.high_res_vision_model.global_alpha",
        ),
    ),
    ("high_res_vision", ("model.high_res_vision_model.",)),
)

# Stage -> groups that train by default. Stage 2 trains SAM's neck/downsamples/alpha (`train_high_res_adaptor`).
STAGE_TRAINABLE_GROUPS = {
    1: ("aligner",),
    2: ("aligner", "language_model"),
    3: ("aligner", "language_model", "low_res_vision"),
}
STAGE_TRAINS_HIGH_RES_ADAPTOR = {1: False, 2: True, 3: False}


def parameter_group(name: str) -> str:
    """The group of a parameter of `DeepSeekVLForConditionalGeneration`, by its name in `named_parameters()`."""
    for group, prefixes in _GROUP_PREFIXES:
        if name.startswith(prefixes):
            return group
    raise ValueError(
        f"Parameter {name!r} belongs to no DeepSeek-VL parameter group ({', '.join(PARAMETER_GROUPS)}). Freezing "
        "expects a DeepSeekVLForConditionalGeneration (not a PEFT-wrapped or DDP-wrapped model): apply the stage "
        "freezing before wrapping."
    )


def stage_trainable_groups(stage: int, train_high_res_adaptor: bool | None = None) -> tuple[str, ...]:
    """Groups that train in `stage` (1, 2 or 3). `train_high_res_adaptor=None` keeps the stage's default (on in stage
    2 only); it only matters for the hybrid model."""
    if stage not in STAGE_TRAINABLE_GROUPS:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}.")
    groups = STAGE_TRAINABLE_GROUPS[stage]
    if train_high_res_adaptor is None:
        train_high_res_adaptor = STAGE_TRAINS_HIGH_RES_ADAPTOR[stage]
    if train_high_res_adaptor:
        groups = groups + ("high_res_adaptor",)
    return groups


@dataclass
class FreezingReport:
    """What `apply_freezing` did: parameter names by state, and the modules pinned to eval mode."""

    trainable_groups: tuple[str, ...]
    trainable: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    eval_pinned_modules: list[str] = field(default_factory=list)
    parameter_sizes: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def num_trainable_parameters(self) -> int:
        return sum(self.parameter_sizes[name] for name in self.trainable)

    def summary(self) -> str:
        total = sum(self.parameter_sizes.values()) or 1
        trainable = self.num_trainable_parameters
        return (
            f"trainable groups: {', '.join(self.trainable_groups)}; {trainable:,} of {total:,} parameters "
            f"({100 * trainable / total:.2f}%) train; modules kept in eval mode: "
            f"{', '.join(self.eval_pinned_modules) or 'none'}"
        )


def apply_freezing(model: nn.Module, trainable_groups) -> FreezingReport:
    """Make exactly the parameters of `trainable_groups` trainable and pin every fully frozen module to eval mode.

    A frozen module stays in eval mode even when `model.train()` is called (as `Trainer` does at every step), so
    dropout or any other train-only behaviour of a frozen tower never runs. Calling this again (the next stage on the
    same model) first undoes the previous pins.
    """
    unknown = set(trainable_groups) - set(PARAMETER_GROUPS)
    if unknown:
        raise ValueError(f"Unknown parameter groups {sorted(unknown)}. Fix: use groups among {PARAMETER_GROUPS}.")
    trainable_groups = tuple(trainable_groups)
    release_eval_pins(model)
    report = FreezingReport(trainable_groups=trainable_groups)
    for name, parameter in model.named_parameters():
        train = parameter_group(name) in trainable_groups
        parameter.requires_grad_(train)
        (report.trainable if train else report.frozen).append(name)
        report.parameter_sizes[name] = parameter.numel()
    if not report.trainable:
        raise ValueError(
            f"No parameter of this model is in the trainable groups {trainable_groups} (e.g. 'high_res_adaptor' on a "
            "SigLIP-only model). Fix: choose groups the model has."
        )
    report.eval_pinned_modules = pin_frozen_modules_to_eval(model)
    model.train(model.training)  # re-apply the current mode so the pins take effect now
    return report


def apply_stage_freezing(model: nn.Module, stage: int, train_high_res_adaptor: bool | None = None) -> FreezingReport:
    """`apply_freezing` with the groups of a recipe stage (see the module docstring)."""
    return apply_freezing(model, stage_trainable_groups(stage, train_high_res_adaptor))


def _frozen_eval_train(self, mode: bool = True):
    # Bound to a frozen module in place of nn.Module.train: it and its children always stay in eval mode.
    return nn.Module.train(self, False)


def pin_frozen_modules_to_eval(model: nn.Module) -> list[str]:
    """Pin the largest fully frozen submodules (those whose parent still has a trainable parameter) to eval mode;
    returns their names. `apply_freezing` calls it; call it directly after another library froze the weights (peft)."""
    pinned = []

    def fully_frozen(module):
        parameters = list(module.parameters())
        return bool(parameters) and not any(p.requires_grad for p in parameters)

    def visit(prefix, module):
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if fully_frozen(child):
                # An instance attribute shadows nn.Module.train; nn.Module.train(parent) reaches it through
                # `child.train(mode)` for every child, so the pin holds under any wrapper that calls model.train().
                child.train = types.MethodType(_frozen_eval_train, child)
                child.train(False)
                pinned.append(name)
            else:
                visit(name, child)

    if fully_frozen(model):
        return pinned
    visit("", model)
    return pinned


def release_eval_pins(model: nn.Module) -> None:
    """Undo `apply_freezing`'s eval pins (the modules follow `model.train()` again)."""
    for module in model.modules():
        module.__dict__.pop("train", None)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


__all__ = [
    "PARAMETER_GROUPS",
    "STAGE_TRAINABLE_GROUPS",
    "FreezingReport",
    "apply_freezing",
    "apply_stage_freezing",
    "parameter_group",
    "pin_frozen_modules_to_eval",
    "release_eval_pins",
    "stage_trainable_groups",
    "trainable_parameter_names",
]
