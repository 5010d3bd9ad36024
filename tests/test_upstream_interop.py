"""Interop with transformers' own DeepSeek-VL ports (`deepseek_vl`, `deepseek_vl_hybrid`).

1. The converters are exact: ours -> upstream -> ours gives back every tensor bit for bit (float32 and bfloat16),
   and every upstream weight is ours, bit for bit.
2. Where the reference (section 5) says the upstream port matches the original, our model and transformers'
   `DeepseekVL[Hybrid]ForConditionalGeneration` on the converted weights agree: image features (aligner outputs) and
   logits within 1e-4, identical greedy tokens; fed equivalent inputs (upstream: normalised pixels, the hybrid's
   384-px view made from the 1024-px image the original way; ours: [0, 1] pixels).
3. Where it documents a deviation, a test pins our original-faithful behaviour and measures the difference:
   weight tying default, where the hybrid's low-resolution view is made, SAM numerics in reduced precision.
Runs under transformers 4.57 and 5.x (both ship the upstream port).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import textwrap

import numpy as np
import pytest
from cross_version import OTHER_PYTHON
import torch
import torch.nn.functional as F
import transformers
from model_helpers import randomize_, tiny_model
from processor_helpers import noise_rgb, tiny_processor
from safetensors.torch import load_file

from transformers_dsvl import DeepSeekVLForConditionalGeneration
from transformers_dsvl.conversion.upstream import (
    UpstreamConversionError,
    canonical_upstream_name,
    config_from_upstream,
    config_to_upstream,
    from_upstream,
    plan_renames,
    state_dict_from_upstream,
    state_dict_to_upstream,
    to_upstream,
    upstream_class,
    upstream_name,
)
from transformers_dsvl.conversion.upstream_cli import run_from_upstream, run_to_upstream

if not hasattr(transformers, "DeepseekVLHybridForConditionalGeneration"):
    pytest.skip(f"transformers {transformers.__version__} has no upstream DeepSeek-VL port (deepseek_vl_hybrid)",
                allow_module_level=True)

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
TOLERANCE = 1e-4
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures: one tiny model per variant, saved with its processor, converted, and loaded by transformers
# ---------------------------------------------------------------------------------------------------------------------
class Converted:
    def __init__(self, variant, tmp_path_factory):
        self.hybrid = variant == "tiny-hybrid"
        self.processor = tiny_processor(self.hybrid)
        tokenizer = self.processor.tokenizer
        self.ours = tiny_model(variant, text_config=dict(vocab_size=len(tokenizer)),
                               image_token_id=self.processor.image_token_id)
        self.config = self.ours.config
        root = tmp_path_factory.mktemp(variant)
        self.source_dir, self.upstream_dir = root / "ours", root / "upstream"
        self.ours.save_pretrained(self.source_dir)
        self.processor.save_pretrained(self.source_dir)
        self.result = to_upstream(self.source_dir, self.upstream_dir)
        self.upstream_class = upstream_class(self.result.model_type, "model")
        self.upstream, self.loading_info = self.upstream_class.from_pretrained(self.upstream_dir,
                                                                               output_loading_info=True)
        self.upstream.eval()


@pytest.fixture(scope="module", params=["tiny", "tiny-hybrid"])
def converted(request, tmp_path_factory):
    return Converted(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    return Converted("tiny-hybrid", tmp_path_factory)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs: the same images, as each model wants them (written from the reference, not with the package's helpers)
# ---------------------------------------------------------------------------------------------------------------------
def normalise(pixels, mean, std):
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def original_low_res_view(high_res_pixels, size):
    """The original hybrid tower's SigLIP input: torchvision Resize(size, antialias=True) on the [0,1] tensor."""
    return F.interpolate(high_res_pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def pixel_inputs(config, images):
    """(ours, upstream) keyword arguments for the same [0,1] images."""
    low_size = config.vision_config.image_size
    if not config.is_hybrid:
        return ({"pixel_values": images},
                {"pixel_values": normalise(images, config.low_res_image_mean, config.low_res_image_std)})
    low = original_low_res_view(images, low_size)
    return ({"high_res_pixel_values": images},
            {"pixel_values": normalise(low, config.low_res_image_mean, config.low_res_image_std),
             "high_res_pixel_values": normalise(images, config.high_res_image_mean, config.high_res_image_std)})


def batch(config, seed=0):
    """Two prompts of different lengths (left-padded), one image each."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, config.image_size, config.image_size, generator=generator)
    image = [config.image_token_id] * config.num_image_tokens
    prompts = [[0, 17, 23, *image, 31, 40, 52], [0, *image, 61, 70]]
    length = max(map(len, prompts))
    input_ids = torch.tensor([[1] * (length - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    return input_ids, attention_mask, images


def flat_image_features(output, hidden_size):
    return output.image_hidden_states.reshape(-1, hidden_size)


def greedy(model, input_ids, attention_mask, pixels, max_new_tokens=8):
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=1, **pixels)
    return out[:, input_ids.shape[1]:]


# ---------------------------------------------------------------------------------------------------------------------
# 1. The converters are exact
# ---------------------------------------------------------------------------------------------------------------------
def test_upstream_checkpoint_loads_with_every_weight_and_layout_of_the_hub(converted):
    assert not any(converted.loading_info.values()), converted.loading_info  # nothing missing, unexpected, mismatched
    stored = load_file(converted.upstream_dir / "model.safetensors")
    # SigLIP in the layout of the Hub checkpoints (what transformers 4.x saves and 5.x loads), lm_head stored.
    assert "model.vision_model.vision_model.embeddings.patch_embedding.weight" in stored
    assert "lm_head.weight" in stored
    config = json.loads((converted.upstream_dir / "config.json").read_text())
    assert config["model_type"] == ("deepseek_vl_hybrid" if converted.hybrid else "deepseek_vl")
    assert config["tie_word_embeddings"] is False and config["text_config"]["tie_word_embeddings"] is False
    if converted.hybrid:
        sam = config["high_res_vision_config"]
        ours = converted.config.high_res_vision_config
        assert (sam["output_channels"], sam["mlp_dim"], sam["window_size"], sam["global_attn_indexes"]) == (
            ours.neck_channels, ours.intermediate_size, ours.window_size, ours.global_attn_indexes)


def test_every_upstream_weight_is_ours_bit_for_bit(converted):
    ours = converted.ours.state_dict()
    theirs = {canonical_upstream_name(n): t for n, t in converted.upstream.state_dict().items()}
    assert len(theirs) == len(ours)
    for name, tensor in ours.items():
        other = theirs[canonical_upstream_name(upstream_name(name, converted.hybrid))]
        assert other.dtype == tensor.dtype and torch.equal(other, tensor), name
    # The hybrid's renamed SAM pieces, spelled out once.
    if converted.hybrid:
        up, sam = converted.upstream.model, converted.ours.model.high_res_vision_model
        assert torch.equal(up.high_res_vision_alpha, sam.global_alpha)
        assert torch.equal(up.high_res_vision_proj.conv2.weight, sam.downsamples[1].weight)
        assert torch.equal(up.high_res_vision_neck.layer_norm2.bias, sam.global_neck.layer_norm2.bias)
        assert torch.equal(up.aligner.proj.weight, converted.ours.model.aligner.layers[1].weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["tiny", "tiny-hybrid"])
def test_round_trip_ours_upstream_ours_is_bit_exact(variant, dtype, tmp_path):
    processor = tiny_processor(variant == "tiny-hybrid")
    model = tiny_model(variant, text_config=dict(vocab_size=len(processor.tokenizer)),
                       image_token_id=processor.image_token_id).to(dtype)
    model.save_pretrained(tmp_path / "ours")
    processor.save_pretrained(tmp_path / "ours")
    to_upstream(tmp_path / "ours", tmp_path / "upstream")
    result = from_upstream(tmp_path / "upstream", tmp_path / "back")

    before, after = load_file(tmp_path / "ours" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys() and result.num_tensors == len(before)
    for name in before:
        assert before[name].dtype == after[name].dtype == dtype and torch.equal(before[name], after[name]), name

    ignored = {"auto_map", "transformers_version", "architectures"}
    config_before = json.loads((tmp_path / "ours" / "config.json").read_text())
    config_after = json.loads((tmp_path / "back" / "config.json").read_text())
    assert {k: v for k, v in config_after.items() if k not in ignored} == {
        k: v for k, v in config_before.items() if k not in ignored}
    # The processor settings come back too (mean/std went through the upstream image processor and back).
    image_before = processor.image_processor.to_dict()
    reloaded = DeepSeekVLForConditionalGeneration.from_pretrained(tmp_path / "back")
    assert reloaded.config.low_res_image_mean == model.config.low_res_image_mean
    from transformers_dsvl.image_processing_dsvl import DeepSeekVLImageProcessor

    image_after = DeepSeekVLImageProcessor.from_pretrained(tmp_path / "back").to_dict()
    for key in DeepSeekVLImageProcessor.config_fields:
        assert image_after[key] == image_before[key], key


def test_state_dict_functions_are_inverse_renames():
    for variant in ("tiny", "tiny-hybrid"):
        model = tiny_model(variant)
        state_dict = model.state_dict()
        upstream_config = config_to_upstream(model.config)
        upstream = state_dict_to_upstream(state_dict, model.config)
        back = state_dict_from_upstream(upstream, upstream_config)
        assert back.keys() == state_dict.keys()
        assert all(back[name] is state_dict[name] for name in state_dict)  # pure renames, not even a copy
        # transformers 5.x keeps SigLIP flat in memory: that layout reads back the same.
        flat = {canonical_upstream_name(name): tensor for name, tensor in upstream.items()}
        assert state_dict_from_upstream(flat, upstream_config).keys() == state_dict.keys()


def test_config_round_trip_and_released_sizes():
    from transformers_dsvl import DeepSeekVLConfig

    for preset in ("tiny", "tiny-hybrid", "deepseek-vl-1.3b", "deepseek-vl-7b"):
        config = DeepSeekVLConfig.from_preset(preset)
        upstream = config_to_upstream(config)
        back = config_from_upstream(upstream)
        assert back.to_dict() == config.to_dict(), preset
    sam = config_to_upstream(DeepSeekVLConfig.from_preset("deepseek-vl-7b")).high_res_vision_config
    # The values transformers' own converter uses for deepseek-vl-7b.
    assert (sam.hidden_size, sam.mlp_dim, sam.output_channels, sam.num_hidden_layers, sam.image_size) == (
        768, 3072, 256, 12, 1024)
    assert list(sam.global_attn_indexes) == [2, 5, 8, 11] and sam.window_size == 14


def test_from_upstream_reads_what_transformers_saves_and_live_models(converted, tmp_path):
    # transformers 5.x saves SigLIP flat, 4.x nested; both read back to our exact weights.
    converted.upstream.save_pretrained(tmp_path / "saved_by_transformers")
    from_upstream(tmp_path / "saved_by_transformers", tmp_path / "from_saved")
    from_upstream(converted.upstream, tmp_path / "from_model")
    expected = converted.ours.state_dict()
    for directory in ("from_saved", "from_model"):
        weights = load_file(tmp_path / directory / "model.safetensors")
        assert weights.keys() == expected.keys(), directory
        assert all(torch.equal(weights[n], expected[n]) for n in expected), directory


def test_command_lines_convert_both_ways(hybrid, tmp_path, capsys):
    # Small shards: the sharded layout (index + several files) loads upstream and converts back.
    assert run_to_upstream(["--input_dir", str(hybrid.source_dir), "--output_dir", str(tmp_path / "up"),
                            "--max_shard_size", "100kB"]) == 0
    index = json.loads((tmp_path / "up" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not any(hybrid.upstream_class.from_pretrained(tmp_path / "up", output_loading_info=True)[1].values())
    assert run_from_upstream(["--input_dir", str(tmp_path / "up"), "--output_dir", str(tmp_path / "back")]) == 0
    assert "deepseek_vl_hybrid" in capsys.readouterr().out
    before = load_file(hybrid.source_dir / "model.safetensors")
    after = load_file(tmp_path / "back" / "model.safetensors")
    assert all(torch.equal(before[n], after[n]) for n in before) and before.keys() == after.keys()
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_to_upstream(["--input_dir", str(hybrid.source_dir), "--output_dir", str(tmp_path / "up")])




@pytest.mark.skipif(OTHER_PYTHON is None, reason="no virtualenv with the other transformers major version was found")
def test_converted_checkpoints_cross_transformers_versions(hybrid, tmp_path):
    """Converted under this transformers, used under the other major version, and the other way round: the upstream
    model and processor load there and give our logits; a checkpoint converted there loads here, gives our logits and
    converts back to our exact weights."""
    input_ids, attention_mask, images = batch(hybrid.config)
    ours_pixels, upstream_pixels = pixel_inputs(hybrid.config, images)
    torch.save({"input_ids": input_ids, "attention_mask": attention_mask, **upstream_pixels}, tmp_path / "inputs.pt")
    image_path = tmp_path / "image.png"
    noise_rgb(128, 128, seed=5).save(image_path)
    script = textwrap.dedent(
        f"""
        import PIL.Image, torch, transformers
        from transformers_dsvl.conversion.upstream import to_upstream
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        model = transformers.AutoModelForImageTextToText.from_pretrained({str(hybrid.upstream_dir)!r}).eval()
        processor = transformers.AutoProcessor.from_pretrained({str(hybrid.upstream_dir)!r})
        processed = processor(text="<image_placeholder>Describe.", images=[PIL.Image.open({str(image_path)!r})],
                              return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.save({{"logits": logits, **{{k: processed[k] for k in ("input_ids", "pixel_values",
                    "high_res_pixel_values")}}}}, {str(tmp_path / "outputs.pt")!r})
        to_upstream({str(hybrid.source_dir)!r}, {str(tmp_path / "converted_there")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([OTHER_PYTHON, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    there = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        ours = hybrid.ours(input_ids=input_ids, attention_mask=attention_mask, **ours_pixels).logits
    real = attention_mask.bool()
    assert (there["logits"] - ours)[real].abs().max() <= TOLERANCE
    here = transformers.AutoProcessor.from_pretrained(hybrid.upstream_dir)(
        text="<image_placeholder>Describe.", images=[noise_rgb(128, 128, seed=5)], return_tensors="pt")
    assert torch.equal(there["input_ids"], here["input_ids"])
    for key in ("pixel_values", "high_res_pixel_values"):
        assert (there[key] - here[key]).abs().max() < 1e-6, key

    converted_there = tmp_path / "converted_there"
    upstream = hybrid.upstream_class.from_pretrained(converted_there).eval()
    with torch.no_grad():
        theirs = upstream(input_ids=input_ids, attention_mask=attention_mask, **upstream_pixels).logits
    assert (theirs - ours)[real].abs().max() <= TOLERANCE
    from_upstream(converted_there, tmp_path / "back_here")
    back = load_file(tmp_path / "back_here" / "model.safetensors")
    expected = hybrid.ours.state_dict()
    assert back.keys() == expected.keys() and all(torch.equal(back[n], expected[n]) for n in expected)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Same outputs as transformers' port where the reference says it matches the original
# ---------------------------------------------------------------------------------------------------------------------
def test_image_features_logits_and_greedy_tokens_match_upstream(converted):
    config = converted.config
    input_ids, attention_mask, images = batch(config)
    ours_pixels, upstream_pixels = pixel_inputs(config, images)
    with torch.no_grad():
        ours = converted.ours(input_ids=input_ids, attention_mask=attention_mask, **ours_pixels)
        theirs = converted.upstream(input_ids=input_ids, attention_mask=attention_mask, **upstream_pixels)
    hidden = config.text_config.hidden_size
    feature_diff = (flat_image_features(ours, hidden) - flat_image_features(theirs, hidden)).abs().max().item()
    real = attention_mask.bool()
    logit_diff = (ours.logits[real] - theirs.logits[real]).abs().max().item()
    assert feature_diff <= TOLERANCE, feature_diff
    assert logit_diff <= TOLERANCE, logit_diff
    assert ours.logits.abs().max() > 1  # not a vacuous comparison of near-zero outputs
    tokens = greedy(converted.ours, input_ids, attention_mask, ours_pixels)
    assert torch.equal(tokens, greedy(converted.upstream, input_ids, attention_mask, upstream_pixels))


def test_each_side_with_its_own_processor_agrees_for_the_siglip_only_model(tmp_path_factory):
    """Text through both processors (our chat template is carried over) and a square image at the model's size (no
    resize, so the documented resize-rounding difference does not enter): same ids, same logits and tokens."""
    converted = Converted("tiny", tmp_path_factory)
    upstream_processor = transformers.AutoProcessor.from_pretrained(converted.upstream_dir)
    assert type(upstream_processor).__name__ == "DeepseekVLProcessor"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the chart."}]}]
    text = converted.processor.apply_chat_template(messages, add_generation_prompt=True)
    assert upstream_processor.apply_chat_template(messages, add_generation_prompt=True) == text
    image = noise_rgb(32, 32, seed=3)
    ours_inputs = converted.processor(text=text, images=[image], return_tensors="pt")
    upstream_inputs = upstream_processor(text=text, images=[image], return_tensors="pt")
    upstream_inputs.pop("token_type_ids", None)  # transformers 4.57's processor adds them; Llama ignores them
    assert torch.equal(ours_inputs["input_ids"], upstream_inputs["input_ids"])
    with torch.no_grad():
        ours = converted.ours(**ours_inputs).logits
        theirs = converted.upstream(**upstream_inputs).logits
    assert (ours - theirs).abs().max() <= TOLERANCE
    assert torch.equal(greedy(converted.ours, ours_inputs["input_ids"], ours_inputs["attention_mask"],
                              {"pixel_values": ours_inputs["pixel_values"]}),
                       greedy(converted.upstream, upstream_inputs["input_ids"], upstream_inputs["attention_mask"],
                              {"pixel_values": upstream_inputs["pixel_values"]}))


# ---------------------------------------------------------------------------------------------------------------------
# 3. Documented deviations: our original-faithful behaviour, and the measured difference
# ---------------------------------------------------------------------------------------------------------------------
def _without_tie_flags(source, target):
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.pop("tie_word_embeddings", None)
    config["text_config"].pop("tie_word_embeddings", None)
    (target / "config.json").write_text(json.dumps(config))


def test_separate_lm_head_is_kept_and_upstream_default_would_tie_it_in_transformers_5(hybrid, tmp_path):
    """Deviation (a): the release has a separate lm_head. The converter writes tie_word_embeddings=false (top level
    and text config), so the upstream model keeps it. Without that flag the upstream config defaults to tying in
    transformers 5.x: a model built from such a config has lm_head = input embeddings (4.57 follows the Llama text
    config, default False, and does not tie). Loading a checkpoint that stores both matrices, 5.23 refuses to tie
    them (with a warning), so the logits stay right; a tied output layer would be off by up to 8.7 on this model
    (logits up to ~6)."""
    upstream = hybrid.upstream
    assert upstream.lm_head.weight.data_ptr() != upstream.get_input_embeddings().weight.data_ptr()
    assert torch.equal(upstream.lm_head.weight, hybrid.ours.lm_head.weight)

    _without_tie_flags(hybrid.upstream_dir, tmp_path / "no_tie_flag")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "no_tie_flag")
    built = hybrid.upstream_class(config)
    tied_when_built = built.lm_head.weight.data_ptr() == built.get_input_embeddings().weight.data_ptr()
    assert tied_when_built == TRANSFORMERS_5

    loaded = hybrid.upstream_class.from_pretrained(tmp_path / "no_tie_flag").eval()
    assert loaded.lm_head.weight.data_ptr() != loaded.get_input_embeddings().weight.data_ptr()
    input_ids, attention_mask, images = batch(hybrid.config)
    _, upstream_pixels = pixel_inputs(hybrid.config, images)
    real = attention_mask.bool()
    with torch.no_grad():
        expected = upstream(input_ids=input_ids, attention_mask=attention_mask, **upstream_pixels)
        assert torch.equal(loaded(input_ids=input_ids, attention_mask=attention_mask, **upstream_pixels).logits,
                           expected.logits)
        hidden = upstream.model(input_ids=input_ids, attention_mask=attention_mask, **upstream_pixels)
        tied_logits = hidden.last_hidden_state @ upstream.get_input_embeddings().weight.T
    tying_error = (tied_logits - expected.logits)[real].abs().max().item()
    assert tying_error > 0.5, tying_error


def test_tied_output_layer_converts_both_ways(tmp_path):
    """A model that ties on purpose stays tied: no lm_head in the upstream file, the same logits there, tied again
    after the way back (from_upstream follows the weights, not the config default)."""
    model = tiny_model("tiny", tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    to_upstream(model, tmp_path / "up")
    assert "lm_head.weight" not in load_file(tmp_path / "up" / "model.safetensors")
    upstream = upstream_class("deepseek_vl", "model").from_pretrained(tmp_path / "up").eval()
    input_ids, attention_mask, images = batch(model.config)
    ours_pixels, upstream_pixels = pixel_inputs(model.config, images)
    with torch.no_grad():
        difference = (model(input_ids=input_ids, attention_mask=attention_mask, **ours_pixels).logits
                      - upstream(input_ids=input_ids, attention_mask=attention_mask, **upstream_pixels).logits)
    assert difference[attention_mask.bool()].abs().max() <= TOLERANCE
    from_upstream(tmp_path / "up", tmp_path / "back")
    back = DeepSeekVLForConditionalGeneration.from_pretrained(tmp_path / "back")
    assert back.config.tie_word_embeddings
    assert back.lm_head.weight.data_ptr() == back.get_input_embeddings().weight.data_ptr()
    assert torch.equal(back.lm_head.weight, model.lm_head.weight)


def test_hybrid_low_res_view_is_made_in_the_model_not_in_preprocessing(hybrid):
    """Deviation (b): the original (and our model) makes the 384-px view from the [0,1] 1024-px tensor (bilinear,
    antialias, float32). The upstream processor written by the converter makes it from the padded 8-bit image (PIL
    BILINEAR) before rescaling. Measured on a 128-px noise image -> 32 px: max |pixel difference| 0.0034 (0.86 of
    an 8-bit step), mean 0.001; aligner outputs differ by ~0.02 (values up to ~80). Fed our view, the upstream model
    agrees within 1e-4, so the whole difference is the view."""
    config = hybrid.config
    upstream_processor = transformers.AutoProcessor.from_pretrained(hybrid.upstream_dir)
    image = noise_rgb(128, 128, seed=3)
    ours_inputs = hybrid.processor(text="<image_placeholder>", images=[image], return_tensors="pt")
    upstream_inputs = upstream_processor(text="<image_placeholder>", images=[image], return_tensors="pt")
    high = ours_inputs["high_res_pixel_values"]
    assert "pixel_values" not in ours_inputs  # our model makes the view itself

    # The high-resolution pixels agree (the image is already 128 px square, so there is no resize).
    upstream_high = upstream_inputs["high_res_pixel_values"] * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(
        CLIP_MEAN).view(1, 3, 1, 1)
    assert (upstream_high - high).abs().max() < 1e-6
    # The low-resolution views do not, quite.
    our_view = original_low_res_view(high, config.vision_config.image_size)
    upstream_view = upstream_inputs["pixel_values"] * 0.5 + 0.5
    view_difference = (upstream_view - our_view).abs()
    assert 0 < view_difference.max() <= 1.5 / 255, view_difference.max()
    assert view_difference.mean() < 0.5 / 255

    model = hybrid.ours
    with torch.no_grad():
        ours = model.get_image_features(high_res_pixel_values=high)
        # Pinned: ours equals the features of the original view, passed explicitly.
        assert torch.equal(ours, model.get_image_features(pixel_values=our_view, high_res_pixel_values=high))
        upstream = hybrid.upstream.model
        theirs = upstream.get_image_features(upstream_inputs["pixel_values"], upstream_inputs["high_res_pixel_values"])
        theirs_with_our_view = upstream.get_image_features(normalise(our_view, (0.5,) * 3, (0.5,) * 3),
                                                           upstream_inputs["high_res_pixel_values"])
    theirs = getattr(theirs, "pooler_output", theirs)
    theirs_with_our_view = getattr(theirs_with_our_view, "pooler_output", theirs_with_our_view)
    assert (ours - theirs_with_our_view).abs().max() <= TOLERANCE
    feature_difference = (ours - theirs).abs().max().item()
    assert 1e-3 < feature_difference < 0.01 * ours.abs().max().item(), feature_difference


def test_hybrid_padding_colour_of_the_high_res_image(hybrid):
    """Not in the reference: the original pads the hybrid's 1024-px image with int(CLIP mean * 255) = (122, 116,
    104). Our processor and upstream on transformers 5.x do; transformers 4.57's hybrid image processor pads with its
    low-resolution background int(0.5 * 255) = 127 instead (up to 23/255 off in the border)."""
    upstream_processor = transformers.AutoProcessor.from_pretrained(hybrid.upstream_dir)
    image = noise_rgb(128, 64, seed=4)  # long side already 128: no resize, 32 padding rows above and below
    ours = hybrid.processor(text="<image_placeholder>", images=[image], return_tensors="pt")["high_res_pixel_values"]
    theirs = upstream_processor(text="<image_placeholder>", images=[image], return_tensors="pt")
    theirs = theirs["high_res_pixel_values"] * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(
        CLIP_MEAN).view(1, 3, 1, 1)
    expected = torch.tensor([int(m * 255) for m in CLIP_MEAN]) / 255
    assert torch.allclose(ours[0, :, 0, 0], expected, atol=1e-6)
    assert torch.allclose(ours[0, :, 32:96], theirs[0, :, 32:96], atol=1e-6)  # the image itself agrees
    border = theirs[0, :, 0, 0]
    if TRANSFORMERS_5:
        assert torch.allclose(border, expected, atol=1e-6)
    else:
        assert torch.allclose(border, torch.full((3,), 127 / 255), atol=1e-6)
        assert abs((border - expected).abs().max().item() - 23 / 255) < 1e-6


def _sam_pair(hybrid, dtype):
    ours = copy.deepcopy(hybrid.ours.model.high_res_vision_model).to(dtype)
    theirs = copy.deepcopy(hybrid.upstream.model).to(dtype)
    return ours, theirs


def test_sam_softmax_precision_makes_no_difference_in_pytorch(hybrid, monkeypatch):
    """Deviation (c), softmax: the original (and ours) takes SAM's attention softmax in the working dtype, upstream
    in float32 and casts back. PyTorch's bfloat16/float16 softmax accumulates in float32 and rounds once, so the two
    precisions give bit-identical results: our tower with upstream's float32 softmax swapped in is unchanged (measured
    0.0 in both dtypes). Our and upstream's attention layers still differ by op-order rounding in bfloat16 (a few
    bf16 steps: up to ~0.66 on outputs up to ~18; 0 to 6e-6 in float32)."""
    from transformers_dsvl import modeling_dsvl_sam

    def float32_softmax_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        weights = torch.matmul(query * scaling, key.transpose(-1, -2)) + attention_mask
        weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    generator = torch.Generator().manual_seed(0)
    config = hybrid.config
    pixels = normalise(torch.rand(1, 3, config.image_size, config.image_size, generator=generator), CLIP_MEAN,
                       CLIP_STD)
    for dtype in (torch.bfloat16, torch.float16):
        tower = copy.deepcopy(hybrid.ours.model.high_res_vision_model).to(dtype)
        with torch.no_grad():
            output = tower(pixels.to(dtype), output_attentions=True)
            working_dtype, attentions = output.last_hidden_state, output.attentions
            with monkeypatch.context() as patch:
                patch.setattr(modeling_dsvl_sam, "sam_eager_attention_forward", float32_softmax_attention)
                float32_softmax = tower(pixels.to(dtype)).last_hidden_state
        assert all(weights.dtype == dtype for weights in attentions)  # ours: softmax in the working dtype
        assert torch.equal(working_dtype, float32_softmax), dtype

    upstream_layers = hybrid.upstream.model.high_res_vision_model.vision_encoder.layers
    for index, layer in enumerate(hybrid.ours.model.high_res_vision_model.layers):
        side = layer.window_size or config.high_res_vision_config.grid_size
        hidden = torch.randn(4, side, side, config.high_res_vision_config.hidden_size, generator=generator) * 3
        for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 0.08)):
            with torch.no_grad():
                ours, _ = copy.deepcopy(layer.attn).to(dtype)(hidden.to(dtype))
                theirs, _ = copy.deepcopy(upstream_layers[index].attn).to(dtype)(hidden.to(dtype))
            difference = (ours.float() - theirs.float()).abs().max()
            assert difference <= tolerance * max(1.0, ours.float().abs().max().item()), (index, dtype, difference)


def test_sam_tower_numerics_in_float32_and_bfloat16(hybrid):
    """Deviation (c), the rest of SAM. Float32: ours and upstream agree to 2.3e-5 (features up to 34). bfloat16:
    they differ by up to 0.25 (mean 0.041; features 7.9 on average, up to 34). The documented difference in the resize before
    the downsampling convolutions (original: float32; upstream: working dtype) contributes nothing: PyTorch's
    reduced-precision bilinear resize computes in float32 and rounds once (measured 0.0). What does differ, beyond
    op-order rounding, is not in the reference: the neck's LayerNorm2d (original and ours: written out in the
    working dtype, bit-identical to the oracle; upstream: nn.LayerNorm, float32 inside; measured max 0.031 on
    unit-scale maps in bfloat16)."""
    from reference_original import _neck

    generator = torch.Generator().manual_seed(1)
    config = hybrid.config
    pixels = normalise(torch.rand(2, 3, config.image_size, config.image_size, generator=generator), CLIP_MEAN,
                       CLIP_STD)
    original_weights = _original_sam_names(hybrid.ours)
    for dtype, tolerance in ((torch.float32, TOLERANCE), (torch.bfloat16, 0.5)):
        ours, theirs = _sam_pair(hybrid, dtype)
        with torch.no_grad():
            a = ours(pixels.to(dtype)).last_hidden_state.float()
            b = theirs.get_high_res_image_features(pixels.to(dtype))
            b = getattr(b, "last_hidden_state", b).float()
        assert (a - b).abs().max() <= tolerance, (dtype, (a - b).abs().max())
        if dtype == torch.bfloat16:
            assert (a - b).abs().mean() < 0.01 * a.abs().mean()

        # The neck alone, on the same map: ours is the original's LayerNorm2d bit for bit, upstream is not in bf16.
        feature_map = torch.randn(2, 8, 8, config.high_res_vision_config.hidden_size, generator=generator).to(dtype)
        with torch.no_grad():
            ours_neck = ours.neck(feature_map)
            upstream_neck = theirs.high_res_vision_model.vision_encoder.neck(feature_map)
            original_neck = _neck({k: v.to(dtype) for k, v in original_weights.items()}, "neck", feature_map)
            # The resize + downsampling: ours resizes in float32 like the original.
            neck_output = ours_neck
            ours_down = ours.resize_and_downsample(neck_output)
            upstream_down = theirs.high_res_vision_proj(neck_output)
            size = config.high_res_vision_config.resize_size
            resized = F.interpolate(neck_output.float(), size=(size, size), mode="bilinear",
                                    align_corners=False).to(dtype)
            original_down = ours.downsamples[1](ours.downsamples[0](resized))
        assert torch.equal(ours_neck, original_neck)
        assert torch.equal(ours_down, original_down)
        neck_difference = (ours_neck.float() - upstream_neck.float()).abs().max().item()
        down_difference = (ours_down.float() - upstream_down.float()).abs().max().item()
        if dtype == torch.float32:
            assert neck_difference < 1e-5 and down_difference < 1e-4, (neck_difference, down_difference)
        else:
            assert 0 < neck_difference < 0.1, neck_difference
            assert down_difference == 0.0, down_difference


def _original_sam_names(model):
    """Our SAM neck weights under the original names (`neck.0`, `neck.1`, ...), for the reference oracle."""
    neck = model.model.high_res_vision_model.neck
    return {"neck.0.weight": neck.conv1.weight, "neck.1.weight": neck.layer_norm1.weight,
            "neck.1.bias": neck.layer_norm1.bias, "neck.2.weight": neck.conv2.weight,
            "neck.3.weight": neck.layer_norm2.weight, "neck.3.bias": neck.layer_norm2.bias}


# ---------------------------------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variant, overrides, field",
    [
        ("tiny-hybrid", dict(high_res_vision_config=dict(downsample_channels=[32, 48])), "downsample_channels"),
        ("tiny-hybrid", dict(high_res_vision_config=dict(downsample_channels=[32])), "downsample_channels"),
        ("tiny-hybrid", dict(high_res_vision_config=dict(global_feature_layer=3)), "global_feature_layer"),
        ("tiny-hybrid", dict(high_res_vision_config=dict(global_feature_layer=None)), "global_feature_layer"),
        ("tiny-hybrid", dict(high_res_vision_config=dict(layer_norm_eps=1e-5)), "layer_norm_eps"),
        ("tiny-hybrid", dict(aligner_depth=3), "aligner_depth"),
        ("tiny", dict(aligner_type="linear", aligner_depth=2), "aligner_type"),
    ],
)
def test_architectures_the_upstream_port_cannot_run_are_refused(variant, overrides, field, tmp_path):
    from transformers_dsvl import DeepSeekVLConfig
    from transformers_dsvl.configuration_dsvl import PRESETS

    preset = copy.deepcopy(PRESETS[variant])
    for key, value in overrides.items():
        preset[key] = {**preset[key], **value} if isinstance(value, dict) else value
    model = DeepSeekVLForConditionalGeneration(DeepSeekVLConfig(**preset))
    with pytest.raises(UpstreamConversionError, match=field) as error:
        to_upstream(model, tmp_path / "out")
    assert "Fix:" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_mismatched_weights_are_listed(hybrid, tmp_path):
    config = hybrid.config
    shapes = {name: (t.dtype, tuple(t.shape)) for name, t in hybrid.ours.state_dict().items()}
    extra = dict(shapes, **{"model.high_res_vision_model.extra.weight": (torch.float32, (3,))})
    with pytest.raises(UpstreamConversionError, match="does not have: model.high_res_vision_model.extra.weight"):
        plan_renames(extra, config, to_upstream=True)
    missing = {k: v for k, v in shapes.items() if k != "model.high_res_vision_model.global_alpha"}
    with pytest.raises(UpstreamConversionError, match="lacks: model.high_res_vision_model.global_alpha"):
        plan_renames(missing, config, to_upstream=True)
    wrong = dict(shapes, **{"model.aligner.layers.1.bias": (torch.float32, (5,))})
    with pytest.raises(UpstreamConversionError, match=r"wrong shape: model.aligner.layers.1.bias \[5\]"):
        plan_renames(wrong, config, to_upstream=True)

    # A directory whose weights lack a tensor: refused before anything is written.
    shutil.copytree(hybrid.upstream_dir, tmp_path / "broken")
    weights = load_file(tmp_path / "broken" / "model.safetensors")
    del weights["model.high_res_vision_neck.conv1.weight"]
    from safetensors.torch import save_file

    save_file(weights, tmp_path / "broken" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UpstreamConversionError, match="lacks: model.high_res_vision_neck.conv1.weight"):
        from_upstream(tmp_path / "broken", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_deepseek_configs_are_refused():
    with pytest.raises(UpstreamConversionError, match="not one of transformers' DeepSeek-VL ports"):
        config_from_upstream(transformers.LlamaConfig())
    with pytest.raises(TypeError, match="DeepSeekVLForConditionalGeneration"):
        to_upstream(torch.nn.Linear(2, 2), "unused")


def test_randomized_weights_are_distinct_so_a_swapped_rename_would_show():
    """Guards the exactness tests above: no two tensors of the tiny models are equal, so renaming one onto another
    of the same shape could not pass unnoticed."""
    model = randomize_(tiny_model("tiny-hybrid"), seed=0)
    tensors = list(model.state_dict().values())
    fingerprints = {(tuple(t.shape), float(t.double().sum()), float(np.float64(t.double().abs().max())))
                    for t in tensors}
    assert len(fingerprints) == len(tensors)
