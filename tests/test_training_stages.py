"""The three stages on a tiny model: trainable parameters by name, frozen towers kept in eval mode, frozen weights
bit-identical and trainable weights changed after each stage, and no optimizer state for weights that got no
gradient (language-only steps)."""

from __future__ import annotations

import pytest
import torch
from training_helpers import conversation_dataset, image_text_dataset, text_dataset, tiny_model_and_processor
from transformers import TrainerCallback

from transformers_dsvl.training import StageConfig, apply_stage_freezing, run_stage
from transformers_dsvl.training.freezing import parameter_group, stage_trainable_groups
from transformers_dsvl.training.trainers import optimizer_parameter_names

HYBRID_ALIGNER = [
    f"model.aligner.{m}.{p}" for m in ("high_up_proj", "low_up_proj", "layers.1") for p in ("weight", "bias")
]
SIGLIP_ONLY_ALIGNER = [f"model.aligner.layers.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
SAM_ADAPTOR = (
    [f"model.high_res_vision_model.{neck}.{part}" for neck in ("neck", "global_neck")
     for part in ("conv1.weight", "layer_norm1.weight", "layer_norm1.bias", "conv2.weight", "layer_norm2.weight",
                  "layer_norm2.bias")]
    + ["model.high_res_vision_model.downsamples.0.weight", "model.high_res_vision_model.downsamples.1.weight",
       "model.high_res_vision_model.global_alpha"]
)


def _names(model, *prefixes):
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


def expected_trainable(model, stage: int) -> set[str]:
    """The paper's trainable modules (Sec. 3.2), written out independently of the freezing code."""
    hybrid = model.config.is_hybrid
    names = set(HYBRID_ALIGNER if hybrid else SIGLIP_ONLY_ALIGNER)
    if stage >= 2:
        names |= _names(model, "model.language_model.", "lm_head.")
    if stage == 2 and hybrid:
        names |= set(SAM_ADAPTOR)  # the original's freeze_high=False path: neck, neck_hd, downsamples, alpha
    if stage == 3:
        names |= _names(model, "model.vision_model.")
    return names


@pytest.mark.parametrize("variant", ["tiny", "tiny-hybrid"])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_trainable_parameters_per_stage_by_name(variant, stage):
    model, _ = tiny_model_and_processor(variant)
    report = apply_stage_freezing(model, stage)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(report.trainable) == expected_trainable(model, stage)
    assert set(report.frozen) == {name for name, _ in model.named_parameters()} - trainable
    # Concrete spot checks of the paper's table.
    assert ("model.vision_model.embeddings.patch_embedding.weight" in trainable) == (stage == 3)
    assert ("model.language_model.layers.0.self_attn.q_proj.weight" in trainable) == (stage >= 2)
    if variant == "tiny-hybrid":
        assert "model.high_res_vision_model.layers.0.attn.qkv.weight" not in trainable  # SAM body: always frozen
        assert ("model.high_res_vision_model.neck.conv1.weight" in trainable) == (stage == 2)


def test_high_res_adaptor_is_configurable_and_groups_cover_every_parameter():
    model, _ = tiny_model_and_processor("tiny-hybrid")
    assert {parameter_group(name) for name, _ in model.named_parameters()} == {
        "aligner", "language_model", "low_res_vision", "high_res_adaptor", "high_res_vision"}
    report = apply_stage_freezing(model, 2, train_high_res_adaptor=False)
    assert not set(SAM_ADAPTOR) & set(report.trainable)
    report = apply_stage_freezing(model, 3, train_high_res_adaptor=True)
    assert set(SAM_ADAPTOR) <= set(report.trainable)
    assert stage_trainable_groups(1) == ("aligner",)
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3"):
        stage_trainable_groups(4)


def test_frozen_towers_stay_in_eval_mode_whatever_train_is_called():
    model, _ = tiny_model_and_processor("tiny-hybrid")
    report = apply_stage_freezing(model, 2)
    assert {"model.vision_model", "model.high_res_vision_model.patch_embed",
            "model.high_res_vision_model.layers"} <= set(report.eval_pinned_modules)
    model.train()
    assert not model.model.vision_model.training
    assert not model.model.high_res_vision_model.layers[0].training
    assert model.model.high_res_vision_model.neck.training and model.model.language_model.training
    apply_stage_freezing(model, 3)  # a new stage re-pins: SigLIP trains again, SAM is frozen whole
    model.train()
    assert model.model.vision_model.training and not model.model.high_res_vision_model.training
    model.eval()
    assert not model.model.aligner.training


class ModeRecorder(TrainerCallback):
    """Module modes seen at the end of every optimizer step (Trainer calls model.train() before each step)."""

    def __init__(self, model):
        self.model, self.modes = model, []

    def on_step_end(self, args, state, control, **kwargs):
        inner = self.model.model
        self.modes.append({"siglip": inner.vision_model.training, "sam": inner.high_res_vision_model.training,
                           "llm": inner.language_model.training, "aligner": inner.aligner.training})


def _stage_config(stage, tmp_path, **overrides):
    overrides = {"max_steps": 6, "save_steps": 1000, "logging_steps": 1, **overrides}
    return StageConfig.from_preset("cpu", stage, output_dir=str(tmp_path / f"stage{stage}"), **overrides)


def test_three_stages_train_exactly_their_parameters(tmp_path):
    model, processor = tiny_model_and_processor("tiny-hybrid")
    data = {
        1: dict(multimodal_data=image_text_dataset(12)),
        2: dict(multimodal_data=image_text_dataset(12, seed=4), text_data=text_dataset(24)),
        3: dict(conversations=conversation_dataset(8)),
    }
    expected_modes = {1: {"siglip": False, "sam": False, "llm": False, "aligner": True},
                      2: {"siglip": False, "sam": True, "llm": True, "aligner": True},  # SAM: its neck trains
                      3: {"siglip": True, "sam": False, "llm": True, "aligner": True}}
    for stage in (1, 2, 3):
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        recorder = ModeRecorder(model)
        overrides = {"modality_warmup_steps": 2, "language_ratio": 0.5} if stage == 2 else {}
        result = run_stage(_stage_config(stage, tmp_path, **overrides), model, processor, callbacks=[recorder],
                           **data[stage])
        trainable = set(result.freezing.trainable)
        assert trainable == expected_trainable(model, stage)
        for name, parameter in model.named_parameters():
            if name in trainable:
                assert not torch.equal(parameter, before[name]), f"stage {stage}: trainable {name} did not change"
            else:
                assert torch.equal(parameter, before[name]), f"stage {stage}: frozen {name} changed"
        assert recorder.modes and all(mode == expected_modes[stage] for mode in recorder.modes)
        # Frozen weights never reach the optimizer.
        assert optimizer_parameter_names(result.trainer) == trainable
        losses = [loss for _, loss in result.losses()]
        assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
        if stage == 2:
            modalities = {modality for _, modality in result.modality_history}
            assert modalities == {"language", "multimodal"}
            assert any("loss_multimodal" in entry for entry in result.log_history)
            assert any("loss_language" in entry for entry in result.log_history)


def test_language_only_steps_leave_the_vision_side_untouched_and_stateless(tmp_path):
    model, processor = tiny_model_and_processor("tiny-hybrid")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = _stage_config(2, tmp_path, max_steps=3, language_ratio=1.0, modality_warmup_steps=0)
    result = run_stage(config, model, processor, multimodal_data=image_text_dataset(4), text_data=text_dataset(12))
    assert {modality for _, modality in result.modality_history} == {"language"}
    optimizer = result.trainer.optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    with_state = {names[id(p)] for p in optimizer.state if optimizer.state[p]}
    vision_side = set(HYBRID_ALIGNER) | set(SAM_ADAPTOR)
    assert not with_state & vision_side  # no Adam moments for weights that never had a gradient
    assert with_state == set(result.freezing.trainable) - vision_side
    for name in vision_side:
        assert torch.equal(dict(model.named_parameters())[name], before[name])


def test_stage_configs_refuse_wrong_data_for_their_stage(tmp_path):
    model, processor = tiny_model_and_processor("tiny")
    with pytest.raises(ValueError, match="image-text pairs only"):
        run_stage(_stage_config(1, tmp_path), model, processor, multimodal_data=image_text_dataset(2),
                  text_data=text_dataset(2))
    with pytest.raises(ValueError, match="no text data was given"):
        run_stage(_stage_config(2, tmp_path), model, processor, multimodal_data=image_text_dataset(2))
    with pytest.raises(ValueError, match="needs conversations"):
        run_stage(_stage_config(3, tmp_path), model, processor)


def test_stage2_streams_iterable_datasets_in_the_planned_modality_order(tmp_path):
    model, processor = tiny_model_and_processor("tiny")
    config = _stage_config(2, tmp_path, max_steps=5, language_ratio=0.4, modality_warmup_steps=0)  # packed, too
    result = run_stage(config, model, processor, multimodal_data=image_text_dataset(6).to_iterable_dataset(),
                       text_data=text_dataset(10).to_iterable_dataset())
    from transformers_dsvl.training import build_modality_plan

    plan = build_modality_plan(config)
    steps = sorted({step for step, _ in result.modality_history})
    assert steps == list(range(5))
    assert [dict(result.modality_history)[step] for step in steps] == [plan.modality(step) for step in steps]
    assert {modality for _, modality in result.modality_history} == {"language", "multimodal"}
