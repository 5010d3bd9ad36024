"""A small stage-2 run (tiny hybrid model, language and multimodal steps, gradient accumulation) for the distributed and
resume tests. Run as a script (`accelerate launch ... tests/stage2_run_script.py OUT`, or plain python) or import
`run_stage2`.

    python tests/stage2_run_script.py OUT [--kill-at-step N] [--dump]

`--kill-at-step N` SIGKILLs the process at the end of optimizer step N (a real crash: nothing is flushed or saved);
`--dump` makes every rank write its final weights (`rank{R}.pt`) and the (step, modality) of each of its micro-batches
(`rank{R}_modalities.json`) to OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))  # as tests/conftest.py: identical float reductions

from training_helpers import image_text_dataset, text_dataset, tiny_model_and_processor  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from transformers_dsvl.training import StageConfig, build_stage_trainer  # noqa: E402


class KillAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def stage2_config(output_dir: str, **overrides) -> StageConfig:
    values = dict(output_dir=output_dir, max_steps=8, save_steps=4, logging_steps=1, global_batch_size=4,
                  per_device_train_batch_size=1, language_ratio=0.5, modality_warmup_steps=2, max_length=64)
    values.update(overrides)
    return StageConfig.from_preset("cpu", 2, **values)


def run_stage2(output_dir: str, kill_at_step: int | None = None, resume: str | None = None, dump: bool = False):
    """Train (or resume) the run; returns the trainer."""
    model, processor = tiny_model_and_processor("tiny-hybrid", seed=0)
    callbacks = [KillAtStep(kill_at_step)] if kill_at_step is not None else []
    trainer, _ = build_stage_trainer(stage2_config(output_dir), model, processor,
                                     multimodal_data=image_text_dataset(12, seed=3), text_data=text_dataset(32),
                                     callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    if dump:
        rank = trainer.args.process_index
        torch.save({name: p.detach().clone() for name, p in trainer.model.named_parameters()},
                   os.path.join(output_dir, f"rank{rank}.pt"))
        with open(os.path.join(output_dir, f"rank{rank}_modalities.json"), "w") as handle:
            json.dump(trainer.modality_history, handle)
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--dump", action="store_true")
    arguments = parser.parse_args()
    run_stage2(arguments.output_dir, kill_at_step=arguments.kill_at_step, dump=arguments.dump)
