"""DeepSeek-VL model: original numerics, transformers behaviours, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import (
    IMAGE_TOKEN_ID,
    left_pad,
    pixel_kwargs,
    prompt_ids,
    random_images,
    reference_config,
    tiny_config,
    tiny_model,
    to_original_state_dict,
)
from reference_original import original_image_embeddings, original_prepare_inputs_embeds
from transformers import LlamaForCausalLM

from transformers_dsvl import DeepSeekVLConfig, DeepSeekVLForConditionalGeneration
from transformers_dsvl.modeling_dsvl_sam import (
    dense_relative_bias,
    fold_bias_into_query_key,
    relative_position_terms,
    sam_eager_attention_forward,
)

VARIANTS = ["tiny", "tiny-hybrid"]


# -- published shapes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "preset, published_params, unused_params",
    [
        # published totals include tensors the original stores but never runs: SigLIP's attention-pool head
        # (12,595,200) and, for the 7B, two LayerNorm(1024) (4,096).
        ("deepseek-vl-1.3b", 1_975_235_584, 12_595_200),
        ("deepseek-vl-7b", 7_343_990_017, 12_595_200 + 4_096),
    ],
)
def test_presets_reproduce_published_parameter_counts(preset, published_params, unused_params):
    config = DeepSeekVLConfig.from_preset(preset)
    with torch.device("meta"):
        model = DeepSeekVLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == published_params - unused_params
    assert config.num_image_tokens == 576
    assert model.lm_head.weight is not model.get_input_embeddings().weight  # untied, as released


def test_published_sam_shapes():
    config = DeepSeekVLConfig.from_preset("deepseek-vl-7b")
    with torch.device("meta"):
        model = DeepSeekVLForConditionalGeneration(config)
    sam = model.model.high_res_vision_model
    assert tuple(sam.pos_embed.shape) == (1, 64, 64, 768)
    assert tuple(sam.layers[0].attn.rel_pos_h.shape) == (27, 64)
    assert tuple(sam.layers[2].attn.rel_pos_h.shape) == (127, 64)
    assert [tuple(c.weight.shape) for c in sam.downsamples] == [(512, 256, 3, 3), (1024, 512, 3, 3)]
    assert config.high_res_vision_config.resize_size == 96
    assert tuple(model.model.aligner.layers[1].weight.shape) == (4096, 4096)


# -- original numerics -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_image_embeddings_match_original(variant, attn):
    model = tiny_model(variant, attn_implementation=attn)
    images = random_images(model.config, 3)
    ours = model.get_image_features(**pixel_kwargs(model.config, images))
    reference = original_image_embeddings(to_original_state_dict(model), images, reference_config(model.config))
    assert ours.shape == (3, model.config.num_image_tokens, model.config.text_config.hidden_size)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_original_prepare_inputs_embeds(variant):
    """Batch of two, left-padded: two images in sample 0, none in sample 1 (the original's zero padding image)."""
    model = tiny_model(variant)
    config = model.config
    sample0 = prompt_ids(config, [10, 11], 1, [12]) + prompt_ids(config, [13], 1, [14, 15])[1:]
    sample1 = prompt_ids(config, [20, 21, 22, 23])
    input_ids, attention_mask = left_pad([sample0, sample1])
    images = random_images(config, 2)
    ours = model(input_ids=input_ids, attention_mask=attention_mask, **pixel_kwargs(config, images)).logits

    original_sd = to_original_state_dict(model)
    language_model = LlamaForCausalLM(config.text_config).eval()
    language_model.load_state_dict(
        {k[len("language_model."):]: v for k, v in original_sd.items() if k.startswith("language_model.")}
    )
    pixel_values = torch.zeros(2, 2, 3, config.image_size, config.image_size)
    pixel_values[0] = images
    images_emb_mask = torch.zeros(2, 2, config.num_image_tokens, dtype=torch.bool)
    images_emb_mask[0] = True
    embeds = original_prepare_inputs_embeds(original_sd, language_model, input_ids, pixel_values,
                                            input_ids == IMAGE_TOKEN_ID, images_emb_mask, reference_config(config))
    reference = language_model(inputs_embeds=embeds, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(ours[real], reference[real], atol=1e-4, rtol=1e-5)


def test_hybrid_low_res_view_and_normalisation_are_made_inside_the_model():
    model = tiny_model("tiny-hybrid")
    images = random_images(model.config, 2)
    size = model.config.vision_config.image_size
    view = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    derived = model.get_image_features(high_res_pixel_values=images)
    explicit = model.get_image_features(high_res_pixel_values=images, pixel_values=view)
    torch.testing.assert_close(derived, explicit, atol=0, rtol=0)


def test_hybrid_aligner_concatenates_high_resolution_first():
    model = tiny_model("tiny-hybrid")
    aligner = model.model.aligner
    low, high = torch.randn(1, 4, 32), torch.randn(1, 4, 64)
    expected = aligner.layers(torch.cat([aligner.high_up_proj(high), aligner.low_up_proj(low)], -1))
    torch.testing.assert_close(aligner(low, high), expected)
    swapped = aligner.layers(torch.cat([aligner.low_up_proj(low), aligner.high_up_proj(high)], -1))
    assert not torch.allclose(aligner(low, high), swapped)


def test_global_feature_branch_contributes_through_alpha():
    model = tiny_model("tiny-hybrid")
    images = random_images(model.config, 1)
    with_alpha = model.get_image_features(high_res_pixel_values=images)
    with torch.no_grad():
        model.model.high_res_vision_model.global_alpha.zero_()
    without = model.get_image_features(high_res_pixel_values=images)
    assert (with_alpha - without).abs().max() > 1e-3


def test_sam_attention_paths_agree():
    """Dense bias (eager, the original arithmetic), chunked SDPA, and the bias folded into q/k (for bias-free
    kernels such as flash-attention) compute the same attention."""
    torch.manual_seed(0)
    batch, heads, size, head_dim = 2, 3, 6, 8
    query, key, value = (torch.randn(batch, heads, size * size, head_dim) for _ in range(3))
    rel_pos_h, rel_pos_w = torch.randn(2 * size - 1, head_dim), torch.randn(2 * size - 1, head_dim)
    rel_h, rel_w = relative_position_terms(query, rel_pos_h, rel_pos_w, size, size)
    scaling = head_dim**-0.5
    module = torch.nn.Module()
    eager, _ = sam_eager_attention_forward(module, query, key, value, dense_relative_bias(rel_h, rel_w), scaling)
    wide_q, wide_k, wide_v = fold_bias_into_query_key(query, key, value, rel_h, rel_w, scaling)
    folded = F.scaled_dot_product_attention(wide_q, wide_k, wide_v, scale=1.0)[..., :head_dim].transpose(1, 2)
    torch.testing.assert_close(folded, eager, atol=1e-5, rtol=1e-5)


def test_sam_eager_softmax_runs_in_working_dtype():
    """The original takes the SAM softmax in the working dtype; in bfloat16 our eager path equals the oracle run
    in bfloat16 far more closely than the float32 result does (which is what upstream's float32 softmax gives)."""
    model = tiny_model("tiny-hybrid").to(torch.bfloat16)
    images = random_images(model.config, 1).to(torch.bfloat16)
    ours = model.get_image_features(high_res_pixel_values=images).float()
    reference = original_image_embeddings(
        to_original_state_dict(model), images, reference_config(model.config)
    ).float()
    assert (ours - reference).abs().max() <= 0.02 * reference.abs().max()


# -- transformers behaviours -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_with_cache_equals_without(variant):
    model = tiny_model(variant)
    config = model.config
    input_ids = torch.tensor([prompt_ids(config, [7, 8], 1, [9, 10])])
    kwargs = dict(attention_mask=torch.ones_like(input_ids), max_new_tokens=8, do_sample=False,
                  **pixel_kwargs(config, random_images(config, 1)))
    cached = model.generate(input_ids, use_cache=True, **kwargs)
    uncached = model.generate(input_ids, use_cache=False, **kwargs)
    assert cached.shape[1] == input_ids.shape[1] + 8
    assert torch.equal(cached, uncached)


def test_images_are_encoded_once_during_generation(monkeypatch):
    model = tiny_model("tiny-hybrid")
    config = model.config
    calls = []
    original = model.model.get_image_features
    monkeypatch.setattr(model.model, "get_image_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    input_ids = torch.tensor([prompt_ids(config, [7], 1, [9])])
    model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=5, do_sample=False,
                   **pixel_kwargs(config, random_images(config, 1)))
    assert len(calls) == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_equals_samples_one_by_one(variant):
    """Left padding; a one-image sample, a text-only sample and a two-image interleaved sample in one batch."""
    model = tiny_model(variant)
    config = model.config
    images = random_images(config, 3)
    samples = [
        (prompt_ids(config, [30], 1, [31, 32]), images[0:1]),
        (prompt_ids(config, [40, 41, 42, 43, 44]), None),
        (prompt_ids(config, [50], 1, [51]) + [config.image_token_id] * config.num_image_tokens + [52], images[1:3]),
    ]
    input_ids, attention_mask = left_pad([s for s, _ in samples])
    batch_out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False,
                               **pixel_kwargs(config, images[[0, 1, 2]]))
    batch_logits = model(input_ids=input_ids, attention_mask=attention_mask,
                         **pixel_kwargs(config, images)).logits[:, -1]
    for row, (ids, sample_images) in enumerate(samples):
        ids = torch.tensor([ids])
        kwargs = pixel_kwargs(config, sample_images) if sample_images is not None else {}
        single = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, **kwargs)
        assert torch.equal(batch_out[row, -6:], single[0, -6:])
        single_logits = model(input_ids=ids, **kwargs).logits[0, -1]
        torch.testing.assert_close(batch_logits[row], single_logits, atol=1e-4, rtol=1e-4)


def test_text_only_input_and_inputs_embeds_path():
    model = tiny_model("tiny-hybrid")
    input_ids = torch.tensor([[0, 10, 11, 12]])
    by_ids = model(input_ids=input_ids).logits
    by_embeds = model(inputs_embeds=model.get_input_embeddings()(input_ids)).logits
    torch.testing.assert_close(by_ids, by_embeds)
    config = model.config
    with_image = torch.tensor([prompt_ids(config, [7], 1, [9])])
    images = random_images(config, 1)
    by_ids = model(input_ids=with_image, **pixel_kwargs(config, images)).logits
    by_embeds = model(inputs_embeds=model.get_input_embeddings()(with_image), **pixel_kwargs(config, images)).logits
    torch.testing.assert_close(by_ids, by_embeds)


def test_sdpa_equals_eager():
    eager, sdpa = tiny_model("tiny-hybrid", attn_implementation="eager"), tiny_model("tiny-hybrid", attn_implementation="sdpa")
    config = eager.config
    input_ids, attention_mask = left_pad([prompt_ids(config, [7], 1, [9, 10]), prompt_ids(config, [3, 4], 1, [])])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, **pixel_kwargs(config, random_images(config, 2)))
    real = attention_mask.bool()
    torch.testing.assert_close(sdpa(**kwargs).logits[real], eager(**kwargs).logits[real], atol=1e-5, rtol=1e-5)


def test_labels_never_train_on_image_tokens_or_padding():
    model = tiny_model("tiny-hybrid")
    config = model.config
    input_ids, attention_mask = left_pad([prompt_ids(config, [7], 1, [9, 10, 11]), prompt_ids(config, [3, 4])])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, **pixel_kwargs(config, random_images(config, 1)))
    naive = model(labels=input_ids.clone(), **kwargs).loss
    masked_labels = input_ids.masked_fill((input_ids == config.image_token_id) | (attention_mask == 0), -100)
    masked = model(labels=masked_labels, **kwargs).loss
    torch.testing.assert_close(naive, masked)
    logits = model(**kwargs).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), masked_labels[:, 1:].reshape(-1))
    torch.testing.assert_close(masked, expected)


def test_gradient_checkpointing_gives_same_gradients():
    config_kwargs = dict(attn_implementation="eager")
    reference, checkpointed = tiny_model("tiny-hybrid", **config_kwargs), tiny_model("tiny-hybrid", **config_kwargs)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = reference.config
    input_ids = torch.tensor([prompt_ids(config, [7], 1, [9, 10, 11])])
    images = random_images(config, 1)
    for model in (reference, checkpointed):
        model.train()
        model(input_ids=input_ids, labels=input_ids, **pixel_kwargs(config, images)).loss.backward()
    assert checkpointed.model.high_res_vision_model.layers[0].gradient_checkpointing
    for (name, p_ref), (_, p_ckpt) in zip(reference.named_parameters(), checkpointed.named_parameters()):
        assert p_ref.grad is not None, name
        torch.testing.assert_close(p_ckpt.grad, p_ref.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_output_hidden_states_and_attentions():
    model = tiny_model("tiny-hybrid", attn_implementation="eager")
    config = model.config
    input_ids = torch.tensor([prompt_ids(config, [7], 1, [9])])
    out = model(input_ids=input_ids, output_hidden_states=True, output_attentions=True,
                **pixel_kwargs(config, random_images(config, 1)))
    layers = config.text_config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    seq = input_ids.shape[1]
    assert out.attentions[0].shape == (1, config.text_config.num_attention_heads, seq, seq)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, config.text_config.num_attention_heads, seq))


def test_resize_token_embeddings_keeps_rows_and_runs():
    model = tiny_model("tiny")
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(old.shape[0] + 7)
    assert model.get_input_embeddings().weight.shape[0] == old.shape[0] + 7
    assert model.lm_head.weight.shape[0] == old.shape[0] + 7
    assert model.config.text_config.vocab_size == old.shape[0] + 7
    torch.testing.assert_close(model.get_input_embeddings().weight[: old.shape[0]], old)
    logits = model(input_ids=torch.tensor([[0, old.shape[0] + 3]])).logits
    assert logits.shape[-1] == old.shape[0] + 7


def test_no_split_modules_name_real_modules():
    model = tiny_model("tiny-hybrid")
    class_names = {type(m).__name__ for m in model.modules()}
    assert set(DeepSeekVLForConditionalGeneration._no_split_modules) <= class_names


def test_device_map_auto_loads(tmp_path):
    model = tiny_model("tiny-hybrid")
    model.save_pretrained(tmp_path)
    loaded = DeepSeekVLForConditionalGeneration.from_pretrained(tmp_path, device_map="auto")
    input_ids = torch.tensor([[0, 10, 11]])
    torch.testing.assert_close(loaded(input_ids=input_ids).logits, model(input_ids=input_ids).logits)


# -- clear errors ----------------------------------------------------------------------------------------------------
def test_error_image_token_count_differs_from_images():
    model = tiny_model("tiny")
    config = model.config
    input_ids = torch.tensor([prompt_ids(config, [7], 1, [9])])
    with pytest.raises(ValueError, match=r"16 image tokens .* but 2 images were given.*<image_placeholder>"):
        model(input_ids=input_ids, pixel_values=random_images(config, 2))
    with pytest.raises(ValueError, match="no images were given"):
        model(input_ids=input_ids)


def test_error_hybrid_without_high_res_input():
    model = tiny_model("tiny-hybrid")
    input_ids = torch.tensor([prompt_ids(model.config, [7], 1, [9])])
    with pytest.raises(ValueError, match="needs `high_res_pixel_values`"):
        model(input_ids=input_ids, pixel_values=torch.rand(1, 3, 32, 32))


def test_error_wrong_pixel_shape():
    siglip_only, hybrid = tiny_model("tiny"), tiny_model("tiny-hybrid")
    input_ids = torch.tensor([prompt_ids(siglip_only.config, [7], 1, [9])])
    with pytest.raises(ValueError, match=r"pixel_values must have shape \[num_images, 3, 32, 32\], got \[1, 3, 64, 64\]"):
        siglip_only(input_ids=input_ids, pixel_values=torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"high_res_pixel_values must have shape \[num_images, 3, 128, 128\]"):
        hybrid(input_ids=input_ids, high_res_pixel_values=torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="no high-resolution tower"):
        siglip_only(input_ids=input_ids, high_res_pixel_values=torch.rand(1, 3, 128, 128))


def test_error_context_overflow():
    model = tiny_model("tiny", text_config=dict(max_position_embeddings=40))
    with pytest.raises(ValueError, match=r"41 tokens long .* context is 40 tokens"):
        model(input_ids=torch.zeros(1, 41, dtype=torch.long))
    input_ids = torch.zeros(1, 30, dtype=torch.long)
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=20, do_sample=False)


def test_error_unsupported_attention_implementation(tmp_path):
    tiny_model("tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="flex"):
        DeepSeekVLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="flex_attention")


def test_error_sam_output_attentions_needs_eager():
    model = tiny_model("tiny-hybrid", attn_implementation="sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        model.model.high_res_vision_model(random_images(model.config, 1), output_attentions=True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(aligner_type="conv"), r"aligner_type: unknown aligner type 'conv'"),
        (dict(image_token_id=5000), r"image_token_id: 5000 is outside the vocabulary \(size 300\)"),
        (dict(high_res_vision_config=dict(output_grid_size=5)), r"SAM tower gives 25 tokens .* SigLIP gives 16.*output_grid_size=4"),
        (dict(aligner_type="mlp_gelu"), r"hybrid .* needs 'low_high_hybrid_split_mlp_gelu'"),
        (dict(aligner_depth=0), r"aligner_depth: 0 must be at least 1"),
        (dict(high_res_vision_config=dict(global_attn_indexes=[1, 9])), r"global_attn_indexes: \[9\] are outside"),
        (dict(low_res_image_std=[0.5, 0.5]), r"low_res_image_std: has 2 entries for 3 channels"),
    ],
)
def test_config_validation_names_field_and_fix(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        tiny_config("tiny-hybrid", **overrides)
    assert "Fix:" in str(error.value)


def test_config_round_trip_and_untied_default(tmp_path):
    for variant in VARIANTS:
        config = tiny_config(variant)
        assert config.tie_word_embeddings is False and config.text_config.tie_word_embeddings is False
        config.save_pretrained(tmp_path / variant)
        loaded = DeepSeekVLConfig.from_pretrained(tmp_path / variant)
        assert loaded.to_dict() == config.to_dict()
        assert loaded.is_hybrid == (variant == "tiny-hybrid")


def test_rope_base_survives_both_transformers_lines(tmp_path):
    config = tiny_config("tiny", text_config=dict(rope_theta=50000.0))
    config.save_pretrained(tmp_path)
    text = __import__("json").loads((tmp_path / "config.json").read_text())["text_config"]
    assert text["rope_theta"] == 50000.0  # what transformers 4.x reads
    loaded = DeepSeekVLConfig.from_pretrained(tmp_path).text_config
    theta = getattr(loaded, "rope_parameters", None) or {}
    assert theta.get("rope_theta", getattr(loaded, "rope_theta", None)) == 50000.0


def test_half_precision_model_accepts_float32_pixels():
    model = tiny_model("tiny-hybrid").to(torch.bfloat16)
    config = model.config
    input_ids = torch.tensor([prompt_ids(config, [7], 1, [9])])
    logits = model(input_ids=input_ids, high_res_pixel_values=random_images(config, 1)).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
