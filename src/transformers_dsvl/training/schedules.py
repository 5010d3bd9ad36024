"""Learning-rate schedules of the recipe that transformers does not ship: the stage-2 "step" schedule (Table 4).

The paper gives the schedule type (step), the warm-up (2000 steps) and the peak rate, not the decay points. The
defaults follow DeepSeek-LLM's multi-step schedule, which the VL models start from: after a linear warm-up the rate
is multiplied by 0.316 at 80% and again at 90% of the training steps (sqrt(0.1) each, so 10% of the peak for the
last tenth). Both are marked unconfirmed [U] in the reference and are configurable.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

DEFAULT_STEP_MILESTONES = (0.8, 0.9)
DEFAULT_STEP_DECAY = 0.316


def _step_lambda(step: int, num_warmup_steps: int, milestone_steps: tuple[int, ...], decay: float) -> float:
    if step < num_warmup_steps:
        # transformers' convention (its linear and cosine schedules): the rate is 0 at step 0.
        return float(step) / float(max(1, num_warmup_steps))
    return decay ** sum(1 for milestone in milestone_steps if step >= milestone)


def get_step_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    milestones: Sequence[float] = DEFAULT_STEP_MILESTONES,
    decay: float = DEFAULT_STEP_DECAY,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warm-up to the peak rate, then multiply the rate by `decay` at each milestone.

    Args:
        milestones: fractions of `num_training_steps` (in (0, 1], increasing) where the rate drops.
        decay: factor applied at each milestone (0 < decay <= 1).
    """
    milestones = tuple(float(m) for m in milestones)
    if any(not 0.0 < m <= 1.0 for m in milestones) or list(milestones) != sorted(milestones):
        raise ValueError(
            f"Step-schedule milestones must be increasing fractions of the training steps in (0, 1], got {milestones}. "
            "Fix: e.g. milestones=(0.8, 0.9)."
        )
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"Step-schedule decay must be in (0, 1], got {decay}. Fix: e.g. decay=0.316.")
    if num_warmup_steps < 0 or num_training_steps <= 0:
        raise ValueError(
            f"Need num_warmup_steps >= 0 and num_training_steps > 0, got {num_warmup_steps} and {num_training_steps}."
        )
    milestone_steps = tuple(int(round(m * num_training_steps)) for m in milestones)
    schedule = partial(_step_lambda, num_warmup_steps=num_warmup_steps, milestone_steps=milestone_steps, decay=decay)
    return LambdaLR(optimizer, schedule, last_epoch)


__all__ = ["DEFAULT_STEP_DECAY", "DEFAULT_STEP_MILESTONES", "get_step_schedule_with_warmup"]
