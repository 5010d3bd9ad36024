"""The opt-in fused CPU kernels (`enable_fused_cpu_kernels`) give the default path's values within 1e-4.

They are compiled here with torch's C++ extension loader (about 30 s the first time on a machine; torch caches the
build), as users get them: a C++ compiler and ninja are part of the test environment (`.[dev]` installs ninja).
"""

from __future__ import annotations

import re

import pytest
import torch
from model_helpers import pixel_kwargs, random_images, randomize_, tiny_model
from test_fast_paths import original_window_attention, small_sam_config

import transformers_dsvl
from transformers_dsvl import cpu_kernels, modeling_dsvl, modeling_dsvl_sam
from transformers_dsvl.modeling_dsvl_sam import (
    DeepSeekVLSamAttention,
    dense_relative_bias,
    flipped_relative_tables,
    relative_position_terms,
    relative_terms_views,
    sam_eager_attention_forward,
)

TOLERANCE = 1e-4


@pytest.fixture
def fused_kernels():
    transformers_dsvl.enable_fused_cpu_kernels()
    assert transformers_dsvl.fused_cpu_kernels_enabled()
    yield cpu_kernels
    transformers_dsvl.disable_fused_cpu_kernels()


@pytest.fixture
def kernel_calls(fused_kernels, monkeypatch):
    """Counts the models' calls of the kernels by name."""
    calls = []
    for module, alias, name in ((modeling_dsvl, "attention_kernel", "attention"),
                                (modeling_dsvl_sam, "window_attention_kernel", "window_attention"),
                                (modeling_dsvl_sam, "relative_bias_softmax_", "relative_bias_softmax_")):
        real = getattr(module, alias)

        def counted(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(module, alias, counted)
    return calls


def projected(batch, heads, tokens, head_dim, generator):
    """q, k, v as the projections leave them: [B, N, heads, d] in memory, seen as [B, heads, N, d]."""
    return tuple(torch.randn(batch, tokens, heads, head_dim, generator=generator).transpose(1, 2) for _ in range(3))


@pytest.mark.parametrize("height,width", [(4, 4), (5, 7), (14, 14), (3, 40)])
def test_relative_bias_softmax_equals_softmax_of_the_dense_bias(height, width, fused_kernels):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 6, height * width, generator=generator) * 4
    rel_h = torch.randn(2, 6, height, generator=generator)
    rel_w = torch.randn(2, 6, width, generator=generator)
    expected = torch.softmax(scores + (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2), dim=-1)
    result = fused_kernels.relative_bias_softmax_(scores, rel_h, rel_w)
    assert result is scores  # in place
    torch.testing.assert_close(scores, expected, atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, 6))


def test_relative_bias_softmax_reads_the_global_blocks_strided_terms(fused_kernels):
    """The global blocks hand it `relative_terms_views` of the table products (no copies): same values as the
    einsum's terms."""
    height, width, head_dim, scaling = 6, 5, 8, 0.3
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(1, 1, height * width, head_dim, generator=generator)
    rel_pos_h = torch.randn(2 * height - 1, head_dim, generator=generator)
    rel_pos_w = torch.randn(2 * width - 1, head_dim, generator=generator)
    rel_h, rel_w = relative_position_terms(query, rel_pos_h, rel_pos_w, height, width)
    scores = torch.randn(height * width, height * width, generator=generator)
    expected = torch.softmax(scores + dense_relative_bias(rel_h, rel_w)[0, 0], dim=-1)
    scaled_query = query[0, 0] * scaling
    products = scaled_query @ (flipped_relative_tables(rel_pos_h, rel_pos_w, query.dtype) / scaling).T
    first_row = 2
    chunk = slice(first_row * width, height * width)
    view_h, view_w = relative_terms_views(products[chunk], height, width, first_row=first_row)
    assert view_h.stride(-1) == 1 and not view_h.is_contiguous()
    fused = scores[chunk].clone()
    fused_kernels.relative_bias_softmax_(fused.view(-1, width, height * width), view_h, view_w)
    torch.testing.assert_close(fused, expected[chunk], atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("size", [4, 5], ids=["4x4", "5x5"])
def test_attention_kernel_equals_the_eager_attention(size):
    generator = torch.Generator().manual_seed(0)
    query, key, value = projected(5, 3, size * size, 8, generator)
    scaling = 0.3
    expected, _ = sam_eager_attention_forward(torch.nn.Module(), query, key, value, None, scaling)
    transformers_dsvl.enable_fused_cpu_kernels()
    try:
        with torch.inference_mode():
            result = cpu_kernels.attention(query, key, value, scaling)
    finally:
        transformers_dsvl.disable_fused_cpu_kernels()
    assert result.shape == expected.shape  # [N, tokens, heads, head_dim]
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(result, expected, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("grid", [14, 7, 3, 8], ids=["14-padded", "7-padded", "3-smaller-than-a-window", "8-exact"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_window_attention_kernel_equals_the_original(grid, qkv_bias, fused_kernels):
    """Windows cut by the kernel from the unpadded maps, padding = the qkv bias (zeros without one), against the
    original block: zero-pad, cut windows, project every padded token, eager attention, crop."""
    config = small_sam_config(qkv_bias=qkv_bias)
    config._attn_implementation = "sdpa"
    module = randomize_(DeepSeekVLSamAttention(config, window_size=config.window_size)).eval()
    hidden_states = torch.randn(2, grid, grid, config.hidden_size)
    plain = original_window_attention(module, hidden_states).detach()
    calls = []
    real = modeling_dsvl_sam.window_attention_kernel
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling_dsvl_sam, "window_attention_kernel", lambda *args: calls.append(args[7]) or real(*args))
        with torch.inference_mode():
            fast, weights = module(hidden_states)
    assert calls == [config.window_size] and weights is None
    assert plain.abs().max() > 0.1
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)


def test_kernels_reject_operands_they_cannot_take(fused_kernels):
    scores, rel_h, rel_w = torch.randn(2, 3, 16), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="float32"):
        fused_kernels.relative_bias_softmax_(scores.double(), rel_h, rel_w)
    with pytest.raises(RuntimeError, match="cover the scores' 16 keys"):
        fused_kernels.relative_bias_softmax_(scores, rel_h, torch.randn(2, 3, 3))
    with pytest.raises(RuntimeError, match="contiguous in its last dimension"):
        fused_kernels.relative_bias_softmax_(torch.randn(2, 16, 3).transpose(1, 2), rel_h, rel_w)
    query = torch.randn(1, 2, 16, 8)
    with pytest.raises(RuntimeError, match="must match query"):
        fused_kernels.attention(query, torch.randn(1, 2, 16, 4), torch.randn(1, 2, 16, 4), 1.0)
    maps, tables = torch.randn(1, 5, 5, 8), torch.randn(2 * (2 * 4 - 1), 4)
    with pytest.raises(RuntimeError, match="must have one shape"):
        fused_kernels.window_attention(maps, maps, torch.randn(1, 5, 4, 8), None, None, None, tables, 4, 2, 1.0)
    with pytest.raises(RuntimeError, match="heads dividing the 8 channels"):
        fused_kernels.window_attention(maps, maps, maps, None, None, None, tables, 4, 3, 1.0)
    with pytest.raises(RuntimeError, match="tables_t must be"):
        fused_kernels.window_attention(maps, maps, maps, None, None, None, tables[:-1], 4, 2, 1.0)
    with pytest.raises(RuntimeError, match="biases must be contiguous float32"):
        fused_kernels.window_attention(maps, maps, maps, torch.randn(7), None, None, tables, 4, 2, 1.0)


@pytest.mark.parametrize("variant", ["tiny-hybrid", "tiny"])
def test_model_image_features_with_the_kernels_equal_the_plain_path(variant, kernel_calls):
    """Every attention of the towers (SAM global and window blocks, SigLIP) through the kernels, against autograd +
    eager (every plain path)."""
    plain_model = tiny_model(variant, attn_implementation="eager")
    fast_model = tiny_model(variant, attn_implementation="sdpa")
    inputs = pixel_kwargs(plain_model.config, random_images(plain_model.config, 2))
    plain = plain_model.get_image_features(**inputs).detach()
    assert not kernel_calls  # autograd on: never the kernels (they have no backward)
    with torch.inference_mode():
        fast = fast_model.get_image_features(**inputs)
    siglip_layers = fast_model.config.vision_config.num_hidden_layers
    assert kernel_calls.count("attention") == siglip_layers
    if variant == "tiny-hybrid":
        sam = fast_model.config.high_res_vision_config
        windowed = sam.num_hidden_layers - len(sam.global_attn_indexes)
        assert kernel_calls.count("window_attention") == windowed
        assert kernel_calls.count("relative_bias_softmax_") >= len(sam.global_attn_indexes)  # one per chunk
    else:
        assert set(kernel_calls) == {"attention"}
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)


def test_kernels_leave_autograd_other_dtypes_and_disabled_runs_alone(kernel_calls):
    query = torch.randn(1, 2, 16, 8)
    assert cpu_kernels.fused_kernels_apply(query) is False  # autograd on (the default)
    with torch.inference_mode():
        assert cpu_kernels.fused_kernels_apply(query)
        assert not cpu_kernels.fused_kernels_apply(query.bfloat16())
        transformers_dsvl.disable_fused_cpu_kernels()
        assert not cpu_kernels.fused_kernels_apply(query)
        with pytest.raises(RuntimeError, match="enable_fused_cpu_kernels"):
            cpu_kernels.attention(query, query, query, 1.0)


def test_a_failed_build_names_the_cause_and_the_fix(monkeypatch):
    transformers_dsvl.disable_fused_cpu_kernels()
    monkeypatch.setattr(cpu_kernels, "_BUILT", None)  # as in a process that has not loaded them yet
    from torch.utils import cpp_extension

    def failing_load(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    with pytest.raises(RuntimeError, match=r"Ninja is required.*pip install ninja") as error:
        transformers_dsvl.enable_fused_cpu_kernels()
    assert "the default path computes the same values" in str(error.value)
    assert not transformers_dsvl.fused_cpu_kernels_enabled()


def test_the_build_is_named_by_torch_version_instruction_set_and_installation():
    name = cpu_kernels.extension_name()
    assert re.fullmatch(r"\w+", name) and name.isidentifier()
    assert re.sub(r"\W", "_", torch.__version__.lower()) in name
    assert f"_{cpu_kernels._capability().lower()}_" in name
    assert cpu_kernels.SOURCE.is_file()


def test_sam_global_blocks_take_the_fused_softmax_in_every_chunk(fused_kernels, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    height, width = 6, 5
    query, key, value = projected(1, 2, height * width, 8, generator)
    rel_pos_h = torch.randn(2 * height - 1, 8, generator=generator)
    rel_pos_w = torch.randn(2 * width - 1, 8, generator=generator)
    rel_h, rel_w = relative_position_terms(query, rel_pos_h, rel_pos_w, height, width)
    expected, _ = sam_eager_attention_forward(torch.nn.Module(), query, key, value,
                                              dense_relative_bias(rel_h, rel_w), 0.3)
    monkeypatch.setattr(modeling_dsvl_sam, "ONEDNN_SCORES_CHUNK_BYTES", 2 * width * height * width * 4)
    chunks = []
    real = modeling_dsvl_sam.relative_bias_softmax_
    monkeypatch.setattr(modeling_dsvl_sam, "relative_bias_softmax_", lambda *args: chunks.append(args[0].shape) or
                        real(*args))
    with torch.inference_mode():
        result = modeling_dsvl_sam.onednn_attention(query, key, value, rel_pos_h, rel_pos_w, 0.3, height, width)
    assert chunks == [(2, width, height * width)] * 3 * 2  # 3 chunks of 2 grid rows, per head
    torch.testing.assert_close(result, expected, atol=TOLERANCE, rtol=TOLERANCE)
