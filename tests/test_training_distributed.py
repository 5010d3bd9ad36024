"""Stage 2 under data parallelism (two CPU processes through `accelerate launch`, gloo) and kill-and-resume.

Note on the launch command: `accelerate launch --num_processes 2 --cpu` starts ONE process unless MPI is installed
(accelerate's multi-CPU launcher is mpirun); two CPU ranks come from accelerate's torchrun launcher with the CPU
backend forced: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...` (docs/training.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from stage2_run_script import run_stage2, stage2_config
from training_helpers import tiny_model_and_processor

SCRIPT = os.path.join(os.path.dirname(__file__), "stage2_run_script.py")


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def test_two_cpu_ranks_run_stage2_to_identical_weights(tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, str(tmp_path),
               "--dump"]
    result = subprocess.run(command, env=_env(ACCELERATE_USE_CPU="1"), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    weights = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    histories = [json.loads((tmp_path / f"rank{rank}_modalities.json").read_text()) for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    initial, _ = tiny_model_and_processor("tiny-hybrid", seed=0)
    assert not torch.equal(weights[0]["lm_head.weight"], initial.lm_head.weight)  # it trained
    assert not torch.equal(weights[0]["model.aligner.layers.1.weight"], initial.model.aligner.layers[1].weight)
    # Both ranks trained the same modality at every step, with 2 micro-batches per step each
    # (global batch 4 = 1 per device x 2 ranks x 2 accumulation steps), language and multimodal steps both present.
    assert histories[0] == histories[1]
    config = stage2_config(str(tmp_path))
    by_step = {}
    for step, modality in histories[0]:
        by_step.setdefault(step, []).append(modality)
    assert sorted(by_step) == list(range(config.max_steps))
    assert all(len(modalities) == 2 and len(set(modalities)) == 1 for modalities in by_step.values())
    assert {modalities[0] for modalities in by_step.values()} == {"language", "multimodal"}
    state = json.loads((tmp_path / "checkpoint-8" / "trainer_state.json").read_text())
    logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logs) == config.max_steps
    for entry in logs:  # the per-modality loss is averaged over ranks exactly like the trainer's own loss
        modality = "language" if entry["language_steps"] else "multimodal"
        assert abs(entry[f"loss_{modality}"] - entry["loss"]) < 1e-3


def _step_losses(trainer) -> dict[int, float]:
    losses: dict[int, float] = {}
    for (step, _), loss in zip(trainer.modality_history, trainer.micro_batch_losses, strict=True):
        losses[step] = losses.get(step, 0.0) + loss
    return losses


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    uninterrupted = run_stage2(str(tmp_path / "full"))
    crashed_dir = tmp_path / "crash"
    killed = subprocess.run([sys.executable, SCRIPT, str(crashed_dir), "--kill-at-step", "6"], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL after step 6: steps 5-6 are lost
    assert (crashed_dir / "checkpoint-4").exists() and not (crashed_dir / "checkpoint-8").exists()

    resumed = run_stage2(str(crashed_dir), resume=str(crashed_dir / "checkpoint-4"))
    expected, replayed = _step_losses(uninterrupted), _step_losses(resumed)
    assert sorted(replayed) == [4, 5, 6, 7]  # the optimizer steps after the checkpoint (0-based)
    assert {m for s, m in uninterrupted.modality_history if s >= 4} == {"language", "multimodal"}
    for step in replayed:
        assert abs(replayed[step] - expected[step]) <= 1e-6, (step, replayed[step], expected[step])
    assert [m for s, m in resumed.modality_history] == [m for s, m in uninterrupted.modality_history if s >= 4]
    final = dict(resumed.model.named_parameters())
    for name, parameter in uninterrupted.model.named_parameters():
        torch.testing.assert_close(final[name], parameter, atol=1e-6, rtol=0)
