"""Stage configs (presets, YAML files, validation) and the `dsvl train` entry point on a saved tiny checkpoint."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import yaml
from training_helpers import solid_image, tiny_model_and_processor

from transformers_dsvl import DeepSeekVLForConditionalGeneration
from transformers_dsvl.training import STAGE_PRESETS, StageConfig, save_checkpoint
from transformers_dsvl.training.cli import add_train_arguments, config_from_args, main_train

CONFIG_DIR = Path(__file__).resolve().parent.parent / "training" / "configs"
PRESET_FILES = {"deepseek-vl-1.3b": "1.3b", "deepseek-vl-7b": "7b", "cpu": "cpu"}


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(argv)


def test_paper_presets_hold_table_4():
    for size, stage2 in (("deepseek-vl-1.3b", (3e-5, 96000, 1024)), ("deepseek-vl-7b", (4.2e-5, 42000, 2304))):
        s1, s2, s3 = (StageConfig.from_preset(size, stage) for stage in (1, 2, 3))
        assert (s1.learning_rate, s1.lr_scheduler, s1.warmup_steps, s1.max_steps, s1.global_batch_size,
                s1.max_length, s1.packing) == (1e-3, "cosine", 128, 15000, 256, 512, False)
        assert (s2.learning_rate, s2.max_steps, s2.global_batch_size) == stage2
        assert (s2.lr_scheduler, s2.warmup_steps, s2.max_length, s2.packing, s2.language_ratio) == (
            "step", 2000, 4096, True, 0.7)
        assert (s3.learning_rate, s3.lr_scheduler, s3.warmup_steps, s3.max_steps, s3.global_batch_size,
                s3.max_length, s3.packing) == (2e-5, "cosine", 256, 10000, 256, 4096, False)
        for config in (s1, s2, s3):
            assert (config.weight_decay, config.max_grad_norm, config.adam_beta1, config.adam_beta2) == (
                0.0, 1.0, 0.9, 0.95)
        assert sum(source.weight for source in s2.multimodal_data + s2.text_data) == pytest.approx(100.0)
        assert sum(source.weight for source in s3.sft_data) == pytest.approx(100.0)


@pytest.mark.parametrize("preset", sorted(STAGE_PRESETS))
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_yaml_configs_match_their_presets(preset, stage):
    from_file = StageConfig.from_yaml(CONFIG_DIR / f"stage{stage}_{PRESET_FILES[preset]}.yaml")
    from_preset = StageConfig.from_preset(preset, stage)
    ignored = {"preset", "model_name_or_path", "output_dir"}
    assert {k: v for k, v in from_file.to_dict().items() if k not in ignored} == {
        k: v for k, v in from_preset.to_dict().items() if k not in ignored}


def test_every_shipped_yaml_config_loads():
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        config = StageConfig.from_yaml(path)
        assert config.stage in (1, 2, 3)
    lora = StageConfig.from_yaml(CONFIG_DIR / "stage3_7b_lora.yaml")
    assert lora.lora.target_groups == ["language_model"] and lora.learning_rate == 2e-4 and lora.max_steps == 10000


def test_config_validation_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Unknown stage-config keys .'learning_rat'."):
        StageConfig.from_dict({"stage": 1, "learning_rat": 1e-3})
    with pytest.raises(ValueError, match="language_ratio"):
        StageConfig.from_preset("cpu", 2, language_ratio=1.5)
    with pytest.raises(ValueError, match="LoRA is offered for stage 3"):
        StageConfig.from_preset("cpu", 2, lora={"r": 4})
    with pytest.raises(ValueError, match="set by the stage config itself"):
        StageConfig.from_preset("cpu", 1, training_args={"learning_rate": 1.0})
    with pytest.raises(ValueError, match="cannot be split into micro-batches"):
        StageConfig.from_preset("cpu", 1, global_batch_size=6, per_device_train_batch_size=2).training_arguments(2)
    with pytest.raises(SystemExit, match="contradicts"):
        config_from_args(_parse(["--stage", "2", "--config", str(CONFIG_DIR / "stage1_cpu.yaml")]))
    with pytest.raises(SystemExit, match="say which stage"):
        config_from_args(_parse([]))
    assert StageConfig.from_preset("cpu", 1, global_batch_size=8).gradient_accumulation_steps(world_size=2) == 2


def test_flags_and_set_override_the_yaml(capsys):
    args = _parse(["--config", str(CONFIG_DIR / "stage2_7b.yaml"), "--max-steps", "50", "--set", "language_ratio=0.6",
                   "--set", "training_args={dataloader_num_workers: 2}", "--print-config"])
    config = config_from_args(args)
    assert (config.stage, config.max_steps, config.language_ratio, config.learning_rate) == (2, 50, 0.6, 4.2e-5)
    assert config.training_args == {"dataloader_num_workers": 2}
    assert main_train(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["max_steps"] == 50 and printed["lr_scheduler"] == "step"
    lora = config_from_args(_parse(["--stage", "3", "--preset", "cpu", "--lora"]))
    assert lora.lora is not None and not lora.lora.load_in_4bit


def test_dsvl_train_runs_a_stage_from_files(tmp_path, capsys):
    model, processor = tiny_model_and_processor("tiny")
    checkpoint = save_checkpoint(model, processor, tmp_path / "checkpoint")
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(6):
        solid_image(i).save(tmp_path / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "caption": f"square number {i}"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = _parse(["--config", str(CONFIG_DIR / "stage1_cpu.yaml"), "--model", checkpoint, "--multimodal-data",
                   str(tmp_path / "pairs.jsonl"), "--output-dir", str(tmp_path / "out"), "--max-steps", "3",
                   "--set", "save_steps=2"])
    assert main_train(args) == 0
    out = capsys.readouterr().out
    assert "stage 1 done" in out and "trainable groups: aligner" in out
    trained = DeepSeekVLForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert not (trained.model.aligner.layers[0].weight == model.model.aligner.layers[0].weight).all()
    assert (trained.lm_head.weight == model.lm_head.weight).all()
    assert os.path.exists(tmp_path / "out" / "checkpoint-2" / "trainer_state.json")
    assert os.path.exists(tmp_path / "out" / "processing_dsvl.py")  # the saved processor carries its code
