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
    relative_position_terms,
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
                                (modeling_dsvl_sam, "window_attention_kernel", "window_attention")):
        real = getattr(module, alias)

        def counted(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(module, alias, counted)
    return calls


def projected(batch, heads, tokens, head_dim, generator):
    """q, k, v as the projections leave them: [B, N, heads, d] in memory, seen as [B, heads, N, d]."""
    return tuple(torch.randn(batch, tokens, heads, head_dim, generator=generator).transpose(1, 2) for _ in range(3))


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
    query = torch.randn(1, 2, 16, 8)
    with pytest.raises(RuntimeError, match="float32"):
        fused_kernels.attention(query.double(), query, query, 1.0)
    with pytest.raises(RuntimeError, match="contiguous in its last dimension"):
        fused_kernels.attention(query.transpose(2, 3), query, query, 1.0)
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
        assert sam.global_attn_indexes
        assert kernel_calls.count("window_attention") == sam.num_hidden_layers  # window and global blocks
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


def original_global_attention(module: DeepSeekVLSamAttention, hidden_states: torch.Tensor) -> torch.Tensor:
    """The original global block's attention: one fused q/k/v product, the dense relative-position bias, eager."""
    batch, height, width, _ = hidden_states.shape
    qkv = module.qkv(hidden_states).reshape(batch, height * width, 3, module.num_heads, module.head_dim)
    query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    rel_h, rel_w = relative_position_terms(query, module.rel_pos_h, module.rel_pos_w, height, width)
    output, _ = sam_eager_attention_forward(module, query, key, value, dense_relative_bias(rel_h, rel_w),
                                            module.scaling)
    return module.proj(output.reshape(batch, height, width, -1))


@pytest.mark.parametrize("grid", [14, 33], ids=["14-one-block", "33-blocks-of-queries-and-keys"])
def test_sam_global_blocks_take_the_window_kernel_as_one_window(grid, fused_kernels, monkeypatch):
    """A global block is one window covering its grid. 33 x 33 = 1089 tokens are attended 64 query rows and 512 keys
    at a time, with short last blocks."""
    config = small_sam_config(image_size=grid * 16)
    config._attn_implementation = "sdpa"
    module = randomize_(DeepSeekVLSamAttention(config, window_size=0)).eval()
    hidden_states = torch.randn(2, grid, grid, config.hidden_size)
    plain = original_global_attention(module, hidden_states).detach()
    windows = []
    real = modeling_dsvl_sam.window_attention_kernel
    monkeypatch.setattr(modeling_dsvl_sam, "window_attention_kernel", lambda *args: windows.append(args[7]) or
                        real(*args))
    with torch.inference_mode():
        fast, weights = module(hidden_states)
    assert windows == [grid] and weights is None
    assert plain.abs().max() > 0.1
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)


def test_a_global_grid_other_than_its_tables_takes_the_default_path(fused_kernels, monkeypatch):
    """The kernel reads the tables for a square grid of their size; any other grid takes `onednn_attention`."""
    config = small_sam_config(image_size=8 * 16)
    config._attn_implementation = "sdpa"
    module = randomize_(DeepSeekVLSamAttention(config, window_size=0)).eval()
    calls = []
    monkeypatch.setattr(modeling_dsvl_sam, "window_attention_kernel", lambda *args: calls.append("kernel"))
    real = modeling_dsvl_sam.onednn_attention
    monkeypatch.setattr(modeling_dsvl_sam, "onednn_attention", lambda *args: calls.append("default") or real(*args))
    assert module.fused_kernel_window(8, 8) == 8
    with torch.inference_mode():
        module(torch.randn(1, 6, 8, config.hidden_size))
    assert calls == ["default"] and module.fused_kernel_window(6, 8) == 0
