"""Stage 3: SFT overfits a tiny set; LoRA trains adapters only and merges back to a plain checkpoint with the same
outputs; `trl sft` (the real command line) trains a saved checkpoint through its remote code on a local dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version
from training_helpers import conversation_dataset, solid_image, tiny_model_and_processor
from transformers import AutoModelForImageTextToText, TrainerCallback

from transformers_dsvl import DeepSeekVLForConditionalGeneration
from transformers_dsvl.training import LoraSettings, StageConfig, run_stage, save_checkpoint
from transformers_dsvl.training.data import to_schema


def _sft_config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "sft"), save_steps=1000, logging_steps=1)
    values.update(overrides)
    return StageConfig.from_preset("cpu", 3, **values)


def test_sft_loss_halves_on_a_tiny_overfit_set(tmp_path):
    model, processor = tiny_model_and_processor("tiny")
    config = _sft_config(tmp_path, max_steps=30, learning_rate=3e-3, warmup_steps=0, lr_scheduler="constant",
                         global_batch_size=4, per_device_train_batch_size=4)
    result = run_stage(config, model, processor, conversations=conversation_dataset(4))
    losses = [loss for _, loss in result.losses()]
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0], losses


class CaptureOutputs(TrainerCallback):
    """Logits of the trained (still unmerged) model on fixed inputs, taken when training ends."""

    def __init__(self, inputs):
        self.inputs, self.logits = inputs, None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.logits = model(**self.inputs).logits
        model.train(was_training)


def _probe_inputs(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return dict(processor(text=prompt, images=[solid_image(7)], return_tensors="pt"))


def test_lora_trains_only_adapters_and_merges_into_a_plain_checkpoint(tmp_path):
    model, processor = tiny_model_and_processor("tiny")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    probe = _probe_inputs(processor)
    capture = CaptureOutputs(probe)
    config = _sft_config(tmp_path, max_steps=5, learning_rate=5e-3,
                         lora=LoraSettings(r=4, alpha=8, dropout=0.1, target_groups=["language_model"]))
    result = run_stage(config, model, processor, conversations=conversation_dataset(6), callbacks=[capture])

    trainable = result.freezing.trainable
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert all(".language_model.layers." in name for name in trainable)  # the LLM by default, never lm_head
    adapted = {name.split(".lora_")[0] for name in trainable}
    assert {n.split("model.language_model.layers.0.")[-1] for n in adapted if ".layers.0." in n} == {
        f"self_attn.{p}_proj" for p in "qkvo"} | {f"mlp.{p}_proj" for p in ("gate", "up", "down")}

    merged = result.model
    assert type(merged) is DeepSeekVLForConditionalGeneration
    changed = {name for name, p in merged.named_parameters() if not torch.equal(p, before[name])}
    # Merging folds B @ A into exactly the adapted weights; everything else is untouched.
    assert changed == {name.replace("base_model.model.", "") + ".weight" for name in adapted}

    assert result.merged_dir == os.path.join(config.output_dir, "merged")
    assert not any("lora" in key for key in json.dumps(json.load(open(Path(result.merged_dir) / "config.json"))))
    reloaded = AutoModelForImageTextToText.from_pretrained(result.merged_dir).eval()
    assert type(reloaded) is DeepSeekVLForConditionalGeneration
    with torch.no_grad():
        merged_logits = reloaded(**probe).logits
        base = DeepSeekVLForConditionalGeneration(model.config).eval()
        base.load_state_dict(before)
        base_logits = base(**probe).logits
    # Same outputs up to float32 rounding of the folded weights; the adapters themselves moved the outputs far more.
    torch.testing.assert_close(merged_logits, capture.logits, atol=1e-4, rtol=1e-4)
    assert (base_logits - capture.logits).abs().max() > 1e-2
    # The adapter itself was saved too (output_dir holds the PEFT adapter).
    assert (Path(config.output_dir) / "adapter_config.json").exists()


BLOCK_PACKAGE = """
import importlib.abc, sys
class _BlockPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers_dsvl" or name.startswith("transformers_dsvl."):
            raise ImportError("transformers_dsvl is blocked: the checkpoint must load through its remote code")
sys.meta_path.insert(0, _BlockPackage())
"""


def test_trl_sft_command_line_trains_a_saved_checkpoint(tmp_path):
    trl_command = Path(sys.executable).parent / "trl"
    assert trl_command.exists(), f"the trl command line is missing next to {sys.executable}"
    model, processor = tiny_model_and_processor("tiny")
    checkpoint = save_checkpoint(model, processor, tmp_path / "checkpoint")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    to_schema(conversation_dataset(8), "conversations").to_parquet(str(data_dir / "train.parquet"))
    # The package is blocked in the subprocess: model and processor must come from the checkpoint's remote code.
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_PACKAGE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(tmp_path / "block"), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"),
               TOKENIZERS_PARALLELISM="false")
    command = [str(trl_command), "sft", "--model_name_or_path", checkpoint, "--trust_remote_code",
               "--dataset_name", str(data_dir), "--output_dir", str(tmp_path / "out"), "--max_steps", "5",
               "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
               "--save_strategy", "steps", "--save_steps", "5", "--report_to", "none", "--bf16", "False",
               "--gradient_checkpointing", "False"]
    if Version(transformers.__version__) >= Version("5.18.0"):
        command.append("--assistant_only_loss")  # TRL allows it for vision data from transformers 5.18 on
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "checkpoint-5" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 5 and len(losses) == 5 and all(loss > 0 for loss in losses)
    trained = DeepSeekVLForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert not torch.equal(trained.lm_head.weight, model.lm_head.weight)
    assert (tmp_path / "out" / "processing_dsvl.py").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path of QLoRA")
def test_qlora_explains_what_it_needs(tmp_path):
    from transformers_dsvl.training.lora import check_qlora_available

    with pytest.raises(RuntimeError, match="QLoRA"):
        check_qlora_available()
