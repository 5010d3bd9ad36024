"""Every performance optimisation keeps outputs within 1e-4 of the plain path it replaces.

- SAM attention, `sdpa`: the relative-position bias is built per chunk of query rows (into one reused buffer outside
  autograd) instead of densely; outside autograd the global blocks run `onednn_attention` (per head and chunk of
  rows, products through oneDNN); plain path: the original's arithmetic (eager, dense bias).
- SAM attention: q, k and v as three products with thirds of the fused qkv weight; plain path: the fused product.
- SAM MLP: GELU fused into the first product's oneDNN call (or in place) outside autograd, over chunks of tokens;
  plain path: the out-of-place activation.
- SAM window blocks outside autograd: relative-position terms as one product read through strided views (plain
  path: the einsum), and attention one window at a time through batched products (`per_window_attention`; plain
  path: the dense eager attention). The residual stream is made contiguous outside autograd; plain path: the conv's
  memory layout.
- SigLIP MLP (`DeepSeekVLSiglipMLP`): the GELU fused into fc1's oneDNN call outside autograd; plain path:
  transformers' `SiglipMLP`.
- Every linear layer of the model (towers, aligner, language model, head): float32 CPU inference through oneDNN
  (`OneDNNLinear`); plain path: `F.linear`.
- The whole SAM tower and the model's image features: fast paths (inference mode, sdpa) against the plain ones.
  Outside autograd the global-feature branch is added before the resize and downsampling (both linear), which then
  run once; plain path: each branch resized and downsampled, then added.
- Image preprocessing: the processor's batched table-lookup path is bit-identical to the original's per-image
  arithmetic (`process_one`), with one and with several threads.
- Multi-turn chat that reuses the KV cache and image features: tests/test_chat_session.py (identical tokens).
- The opt-in fused CPU attention kernels (`enable_fused_cpu_kernels`): tests/test_cpu_kernels.py.
"""

from __future__ import annotations

import copy

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from model_helpers import prompt_ids, random_images, randomize_, tiny_model
from processor_helpers import noise_rgb, tiny_image_processor
from transformers.activations import ACT2FN
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipMLP

from transformers_dsvl import modeling_dsvl, modeling_dsvl_sam, onednn_linear
from transformers_dsvl.configuration_dsvl import DeepSeekVLSamVisionConfig
from transformers_dsvl.modeling_dsvl import DeepSeekVLSiglipAttention, DeepSeekVLSiglipMLP
from transformers_dsvl.modeling_dsvl_sam import (
    DeepSeekVLSamAttention,
    DeepSeekVLSamMLP,
    DeepSeekVLSamVisionModel,
    chunked_sdpa,
    dense_relative_bias,
    onednn_attention,
    onednn_attention_applies,
    per_window_attention,
    per_window_attention_applies,
    relative_position_terms,
    relative_position_terms_by_product,
    sam_eager_attention_forward,
    window_partition,
    window_unpartition,
)
from transformers_dsvl.onednn_linear import (
    OneDNNLinear,
    linear_gelu_,
    onednn_applies,
    route_linears_through_onednn,
    weight_packed,
    weight_packing_applies,
)

TOLERANCE = 1e-4


def small_sam_config(**overrides) -> DeepSeekVLSamVisionConfig:
    """Big enough for several windows with padding (grid 14, window 4 -> 16) and several query chunks."""
    settings = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4, image_size=224,
                    patch_size=16, window_size=4, global_attn_indexes=[1, 3], global_feature_layer=1,
                    neck_channels=16, downsample_channels=[32, 64], output_grid_size=4)
    settings.update(overrides)
    return DeepSeekVLSamVisionConfig(**settings)


def random_attention_inputs(batch=2, heads=3, size=9, head_dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query, key, value = (torch.randn(batch, heads, size * size, head_dim, generator=generator) for _ in range(3))
    rel_pos_h = torch.randn(2 * size - 1, head_dim, generator=generator)
    rel_pos_w = torch.randn(2 * size - 1, head_dim, generator=generator)
    rel_h, rel_w = relative_position_terms(query, rel_pos_h, rel_pos_w, size, size)
    return query, key, value, rel_h, rel_w


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 2**10, 10 * 2**10, 2**30], ids=["1-row", "4KiB", "10KiB", "whole"])
def test_chunked_sdpa_equals_the_dense_eager_attention(chunk_bytes, monkeypatch):
    query, key, value, rel_h, rel_w = random_attention_inputs()
    scaling = query.shape[-1] ** -0.5
    plain, _ = sam_eager_attention_forward(torch.nn.Module(), query, key, value, dense_relative_bias(rel_h, rel_w),
                                           scaling)
    monkeypatch.setattr(modeling_dsvl_sam, "SDPA_BIAS_CHUNK_BYTES", chunk_bytes)
    with torch.inference_mode():  # the reused-buffer path
        fast = chunked_sdpa(query, key, value, rel_h, rel_w, scaling)
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)
    # With autograd (training) every chunk gets its own bias, and gradients flow to the relative positions.
    leaves = [t.clone().requires_grad_() for t in (query, key, value, rel_h, rel_w)]
    differentiable = chunked_sdpa(*leaves, scaling)
    torch.testing.assert_close(differentiable.detach(), plain, atol=TOLERANCE, rtol=TOLERANCE)
    differentiable.square().sum().backward()
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves)


@pytest.mark.parametrize("height,width", [(9, 9), (5, 7)])
@pytest.mark.parametrize("grid_rows", [1, 4, 100], ids=["1-grid-row", "4-grid-rows", "whole"])
def test_onednn_attention_equals_the_dense_eager_attention(grid_rows, height, width, packed_weights, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, height * width, 8, generator=generator) for _ in range(3))
    rel_pos_h, rel_pos_w = torch.randn(2 * height - 1, 8, generator=generator), torch.randn(2 * width - 1, 8)
    rel_h, rel_w = relative_position_terms(query, rel_pos_h, rel_pos_w, height, width)
    scaling = 0.3  # not a power of two: the terms' products use tables / scaling
    plain, _ = sam_eager_attention_forward(torch.nn.Module(), query, key, value, dense_relative_bias(rel_h, rel_w),
                                           scaling)
    # A chunk holds whole grid rows of queries: grid_rows x width queries, each with height x width keys.
    monkeypatch.setattr(modeling_dsvl_sam, "ONEDNN_SCORES_CHUNK_BYTES", grid_rows * width * height * width * 4)
    with torch.inference_mode():
        assert onednn_attention_applies(query, key)
        fast = onednn_attention(query, key, value, rel_pos_h, rel_pos_w, scaling, height, width)
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)
    # Packed once for all chunks: each (sample, head)'s keys and transposed values.
    assert packed_weights == [(height * width, 8), (8, height * width)] * 2 * 3
    assert not onednn_attention_applies(query.requires_grad_(), key)  # training keeps sdpa (it has a backward)


def test_per_window_attention_equals_the_dense_eager_attention():
    query, key, value, rel_h, rel_w = random_attention_inputs(batch=5, heads=3, size=4)  # 5 windows of 4 x 4
    scaling = query.shape[-1] ** -0.5
    plain, _ = sam_eager_attention_forward(torch.nn.Module(), query, key, value, dense_relative_bias(rel_h, rel_w),
                                           scaling)
    with torch.inference_mode():
        assert per_window_attention_applies(query)
        fast = per_window_attention(query, key, value, rel_h, rel_w, scaling)
    assert fast.shape == plain.shape  # [windows, N, heads, head_dim]
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)
    assert not per_window_attention_applies(query)  # autograd on: sdpa, which has a backward


def test_attention_dropout_keeps_sdpa(monkeypatch):
    """A SAM tower in training mode with attention dropout, even without autograd, never takes the hand-written
    attentions (they have no dropout)."""
    config = small_sam_config(attention_dropout=0.5)
    config._attn_implementation = "sdpa"
    tower = randomize_(DeepSeekVLSamVisionModel(config), scale=0.1).train()
    calls = []
    for name in ("onednn_attention", "per_window_attention"):
        monkeypatch.setattr(modeling_dsvl_sam, name, lambda *args, name=name: calls.append(name))
    with torch.no_grad():
        tower(torch.randn(1, 3, config.image_size, config.image_size))
    assert calls == []


def original_window_unpartition(windows, window_size, padded_hw, original_hw) -> torch.Tensor:
    """The original's form: rebuild the padded map, then crop it."""
    (padded_h, padded_w), (height, width) = padded_hw, original_hw
    batch = windows.shape[0] // ((padded_h // window_size) * (padded_w // window_size))
    grid = windows.reshape(batch, padded_h // window_size, padded_w // window_size, window_size, window_size, -1)
    padded = grid.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return padded[:, :height, :width, :].contiguous()


@pytest.mark.parametrize("height, width", [(8, 8), (10, 7), (3, 9), (2, 2)])
def test_window_unpartition_equals_the_original(height, width):
    """Straight into the cropped map, band by band: the same values (and gradients) as building the padded map and
    cropping it, with and without padding, grids narrower than a window included."""
    window_size = 4
    hidden_states = torch.randn(2, height, width, 3)
    windows, padded_hw = window_partition(hidden_states, window_size)
    windows = (windows * 2).requires_grad_()
    ours = window_unpartition(windows, window_size, padded_hw, (height, width))
    original = original_window_unpartition(windows, window_size, padded_hw, (height, width))
    assert ours.shape == original.shape == hidden_states.shape and ours.is_contiguous()
    assert torch.equal(ours, original)
    assert torch.equal(ours, hidden_states * 2)  # partition and unpartition are inverses on the real tokens
    upstream = torch.randn_like(ours)
    (ours_grad,) = torch.autograd.grad(ours, windows, upstream)
    (original_grad,) = torch.autograd.grad(original, windows, upstream)
    assert torch.equal(ours_grad, original_grad)


def original_window_attention(module: DeepSeekVLSamAttention, hidden_states: torch.Tensor) -> torch.Tensor:
    """The original block's attention: zero-pad the map, cut windows, project every padded token, attend, project,
    crop (eager arithmetic)."""
    height, width = hidden_states.shape[1:3]
    windows, padded_hw = window_partition(hidden_states, module.window_size)
    count, size = windows.shape[0], module.window_size
    qkv = module.qkv(windows).reshape(count, size * size, 3, module.num_heads, module.head_dim)
    query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    rel_h, rel_w = relative_position_terms(query, module.rel_pos_h, module.rel_pos_w, size, size)
    output, _ = sam_eager_attention_forward(module, query, key, value, dense_relative_bias(rel_h, rel_w),
                                            module.scaling)
    output = module.proj(output.reshape(count, size, size, -1))
    return original_window_unpartition(output, size, padded_hw, (height, width))


@pytest.mark.parametrize("autograd", [False, True], ids=["no-grad", "autograd"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_window_attention_equals_the_original(implementation, qkv_bias, autograd):
    """no-grad: windows cut first, q/k/v in thirds; autograd: the fused product on the real tokens, padding = bias."""
    config = small_sam_config(qkv_bias=qkv_bias)
    config._attn_implementation = implementation
    module = randomize_(DeepSeekVLSamAttention(config, window_size=config.window_size)).eval()
    hidden_states = torch.randn(2, config.grid_size, config.grid_size, config.hidden_size)
    assert config.grid_size % config.window_size, "the case under test needs padding"
    with torch.set_grad_enabled(autograd):
        plain = original_window_attention(module, hidden_states)
        fast, _ = module(hidden_states)
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)
    if implementation == "eager":  # the same arithmetic on the same numbers
        assert (fast - plain).abs().max() <= 1e-6


@pytest.mark.parametrize("onednn", [False, True], ids=["nn.Linear", "OneDNNLinear"])
@pytest.mark.parametrize("chunk_bytes", [2**30, 20 * 192 * 4], ids=["whole", "3-chunks"])
def test_inference_gelu_equals_the_plain_mlp(chunk_bytes, onednn, packed_weights, post_ops, monkeypatch):
    """GELU fused into lin1's oneDNN product (OneDNNLinear), or in place (nn.Linear), over chunks of tokens."""
    monkeypatch.setattr(modeling_dsvl_sam, "MLP_CHUNK_BYTES", chunk_bytes)  # 50 tokens of 192 hidden floats
    config = small_sam_config()
    mlp = randomize_(DeepSeekVLSamMLP(config)).eval()
    if onednn:
        route_linears_through_onednn(mlp)
    hidden_states = torch.randn(2, 5, 5, config.hidden_size)
    plain = mlp.lin2(mlp.act(mlp.lin1(hidden_states)))
    calls = []
    real_linear_gelu_ = modeling_dsvl_sam.linear_gelu_
    monkeypatch.setattr(modeling_dsvl_sam, "linear_gelu_", lambda layer, tokens: calls.append(tokens.shape) or
                        real_linear_gelu_(layer, tokens))
    with torch.inference_mode():
        fast = mlp(hidden_states)
    assert len(calls) == (3 if chunk_bytes < 2**30 else 1)
    assert post_ops == (["gelu", "none"] * len(calls) if onednn else [])  # lin1 with the GELU, then lin2
    # Chunks share one packed copy of each weight (oneDNN layers only); one chunk needs none.
    assert len(packed_weights) == (2 if onednn and chunk_bytes < 2**30 else 0)
    assert fast.shape == plain.shape
    torch.testing.assert_close(fast, plain.detach(), atol=TOLERANCE, rtol=TOLERANCE)
    monkeypatch.undo()
    # Under autograd the out-of-place activation is kept (GELU's backward needs its input).
    trained = mlp(hidden_states.requires_grad_())
    trained.sum().backward()
    assert torch.equal(trained.detach(), plain.detach()) and hidden_states.grad is not None


def test_sam_tower_fast_path_equals_the_original_arithmetic(monkeypatch):
    config = small_sam_config()
    torch.manual_seed(0)
    plain_tower = randomize_(DeepSeekVLSamVisionModel(config), scale=0.1).eval()
    plain_tower.config._attn_implementation = "eager"
    fast_tower = copy.deepcopy(plain_tower)  # the copy's modules share one (copied) config
    fast_tower.config._attn_implementation = "sdpa"
    assert all(layer.attn.config is fast_tower.config for layer in fast_tower.layers)
    pixels = torch.randn(2, 3, config.image_size, config.image_size)
    # Plain: the original's windows (every padded token projected), dense bias, out-of-place GELU, with autograd on.
    hidden = plain_tower.patch_embed(pixels) + plain_tower.pos_embed
    global_features = None
    for index, layer in enumerate(plain_tower.layers):
        normed = layer.layer_norm1(hidden)
        if layer.window_size:
            attended = original_window_attention(layer.attn, normed)
        else:
            attended, _ = layer.attn(normed)
        hidden = hidden + attended
        hidden = hidden + layer.mlp.lin2(layer.mlp.act(layer.mlp.lin1(layer.layer_norm2(hidden))))
        if index == config.global_feature_layer:
            global_features = hidden
    plain = plain_tower.resize_and_downsample(plain_tower.neck(hidden))
    global_branch = plain_tower.resize_and_downsample(plain_tower.global_neck(global_features))
    plain = plain + plain_tower.global_alpha * global_branch
    plain = plain.flatten(2).transpose(1, 2).detach()
    # Several chunks everywhere: window sdpa, global oneDNN attention, MLP.
    for name in ("SDPA_BIAS_CHUNK_BYTES", "ONEDNN_SCORES_CHUNK_BYTES", "MLP_CHUNK_BYTES"):
        monkeypatch.setattr(modeling_dsvl_sam, name, 16 * 2**10)
    global_calls, window_term_calls = [], []
    real_onednn_attention = modeling_dsvl_sam.onednn_attention
    monkeypatch.setattr(modeling_dsvl_sam, "onednn_attention",
                        lambda *args: global_calls.append(args[0].shape) or real_onednn_attention(*args))
    real_terms = modeling_dsvl_sam.relative_position_terms_by_product
    monkeypatch.setattr(modeling_dsvl_sam, "relative_position_terms_by_product",
                        lambda *args: window_term_calls.append(args[0].shape) or real_terms(*args))
    window_calls = []
    real_per_window = modeling_dsvl_sam.per_window_attention
    monkeypatch.setattr(modeling_dsvl_sam, "per_window_attention",
                        lambda *args: window_calls.append(args[0].shape) or real_per_window(*args))
    downsample_inputs = []
    fast_tower.downsamples[0].register_forward_pre_hook(lambda module, args: downsample_inputs.append(args[0].shape))
    with torch.inference_mode():
        fast = fast_tower(pixels).last_hidden_state
    window_layers = config.num_hidden_layers - len(config.global_attn_indexes)
    assert len(global_calls) == len(config.global_attn_indexes)
    assert len(window_term_calls) == len(window_calls) == window_layers
    # The global-feature branch is added before the (linear) resize and downsampling: one pass instead of two.
    assert len(downsample_inputs) == 1 and plain_tower.global_alpha.abs().item() > 0.05
    assert global_branch.abs().max() > 0.1
    assert plain.abs().max() > 0.1
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("height,width", [(4, 4), (3, 5), (14, 14)])
def test_relative_position_terms_by_product_equal_the_einsum(height, width):
    generator = torch.Generator().manual_seed(0)
    # Queries laid out as the q/k/v projections leave them: [B, N, heads, d] in memory, seen as [B, heads, N, d].
    query = torch.randn(3, height * width, 4, 16, generator=generator).transpose(1, 2)
    rel_pos_h = torch.randn(2 * height - 1, 16, generator=generator)
    rel_pos_w = torch.randn(2 * width - 1, 16, generator=generator)
    plain_h, plain_w = relative_position_terms(query, rel_pos_h, rel_pos_w, height, width)
    for layout in (query, query.contiguous()):
        with torch.inference_mode():
            fast_h, fast_w = relative_position_terms_by_product(layout, rel_pos_h, rel_pos_w, height, width)
        assert fast_h.shape == plain_h.shape and fast_w.shape == plain_w.shape
        torch.testing.assert_close(fast_h, plain_h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast_w, plain_w, atol=1e-5, rtol=1e-5)


def test_sam_residual_stream_is_contiguous_in_inference_only():
    """Inference copies the patch embedding into NHWC memory (LayerNorms and adds ~10x faster on SAM-B's map);
    with autograd on it stays a view of the conv's NCHW output, as the original's, for training runs' rounding."""
    config = small_sam_config()
    tower = randomize_(DeepSeekVLSamVisionModel(config), scale=0.1).eval()
    pixels = torch.randn(2, 3, config.image_size, config.image_size)
    seen = []
    tower.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.inference_mode():
        fast = tower(pixels).last_hidden_state
    plain = tower(pixels).last_hidden_state.detach()
    assert seen == [True, False]
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("activation", ["gelu", "gelu_pytorch_tanh", "quick_gelu"])
def test_siglip_mlp_inference_activation_gives_the_same_values(activation, post_ops):
    """gelu and gelu_pytorch_tanh are fused into fc1's oneDNN product outside autograd; other activations keep
    transformers' forward."""
    model = tiny_model("tiny-hybrid")
    mlps = [module for module in model.modules() if isinstance(module, SiglipMLP)]
    assert mlps and all(type(module) is DeepSeekVLSiglipMLP for module in mlps)
    mlp = mlps[0]
    mlp.config = copy.copy(mlp.config)
    mlp.config.hidden_act = activation
    mlp.activation_fn = ACT2FN[activation]
    hidden_states = torch.randn(2, 7, mlp.fc1.in_features)
    plain = SiglipMLP.forward(mlp, hidden_states).detach()
    with torch.inference_mode():
        fast = mlp(hidden_states)
    if activation == "quick_gelu":
        assert post_ops == ["none", "none"] and torch.equal(fast, plain)  # the same kernels on the same numbers
    else:
        assert post_ops == ["gelu", "none"]
        torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)
    post_ops.clear()
    # Under autograd transformers' forward runs (the activation's backward needs its input), gradients flow.
    trained = mlp(hidden_states.requires_grad_())
    assert torch.equal(trained.detach(), plain)
    trained.sum().backward()
    assert hidden_states.grad is not None and hidden_states.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["tiny", "tiny-hybrid"])
def test_siglip_per_head_attention_equals_sdpa_and_eager(variant, monkeypatch):
    """Inference under sdpa runs the per-head oneDNN attention; masks, eager, dropout and autograd keep
    transformers'."""
    model = tiny_model(variant, attn_implementation="sdpa")
    attentions = [module for module in model.modules() if isinstance(module, SiglipAttention)]
    assert attentions and all(type(module) is DeepSeekVLSiglipAttention for module in attentions)
    attention = randomize_(attentions[0], 0).eval()
    generator = torch.Generator().manual_seed(0)
    hidden_states = torch.randn(3, 11, attention.embed_dim, generator=generator)
    calls = []
    real_per_head = modeling_dsvl.per_head_attention
    monkeypatch.setattr(modeling_dsvl, "per_head_attention", lambda *args: calls.append(args[0].shape) or
                        real_per_head(*args))
    sdpa = SiglipAttention.forward(attention, hidden_states)[0].detach()
    config = copy.copy(attention.config)
    config._attn_implementation = "eager"
    eager_attention = copy.copy(attention)
    eager_attention.config = config
    eager, eager_weights = SiglipAttention.forward(eager_attention, hidden_states)
    with torch.inference_mode():
        fast, weights = attention(hidden_states)
    assert calls == [(3, 11, attention.num_heads, attention.head_dim)] and weights is None
    assert sdpa.abs().max() > 0.1
    torch.testing.assert_close(fast, sdpa, atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(fast, eager.detach(), atol=TOLERANCE, rtol=TOLERANCE)
    with torch.inference_mode():
        # A mask (padding), the eager implementation (attention weights) and dropout in training take the original.
        mask = torch.zeros(3, 1, 11, 11)
        mask[:, :, :, -3:] = torch.finfo(torch.float32).min
        masked = attention(hidden_states, attention_mask=mask)[0]
        torch.testing.assert_close(masked, SiglipAttention.forward(attention, hidden_states, attention_mask=mask)[0])
        assert not torch.allclose(masked, fast, atol=1e-3)
        torch.testing.assert_close(eager_attention(hidden_states)[1], eager_weights.detach())
        attention.dropout = 0.5
        attention.train()(hidden_states)
    assert len(calls) == 1
    # Autograd on: transformers' forward, gradients flow.
    trained = attention.eval()(hidden_states.requires_grad_())[0]
    trained.sum().backward()
    assert len(calls) == 1 and hidden_states.grad is not None and hidden_states.grad.abs().sum() > 0
    torch.testing.assert_close(trained.detach(), sdpa, atol=TOLERANCE, rtol=TOLERANCE)


def test_model_image_features_fast_equals_plain():
    """Inference mode + sdpa (every fast path) against autograd + eager (every plain path), whole model."""
    plain_model = tiny_model("tiny-hybrid", attn_implementation="eager")
    fast_model = tiny_model("tiny-hybrid", attn_implementation="sdpa")
    images = random_images(plain_model.config, 2)
    plain = plain_model.get_image_features(high_res_pixel_values=images).detach()
    with torch.inference_mode():
        fast = fast_model.get_image_features(high_res_pixel_values=images)
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)


# -- linear layers through oneDNN ---------------------------------------------------------------------------------
@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the calls that reach the oneDNN kernel (and still runs it)."""
    if onednn_linear.ONEDNN_LINEAR is None:
        pytest.fail("this torch build has no oneDNN linear operator (torch.ops.mkldnn._linear_pointwise); the project "
                    "pins torch 2.13.0 CPU, which has it")
    calls = []
    kernel = onednn_linear.ONEDNN_LINEAR

    def counting_kernel(*args):
        calls.append(args[0].shape)
        return kernel(*args)

    monkeypatch.setattr(onednn_linear, "ONEDNN_LINEAR", counting_kernel)
    return calls


@pytest.fixture
def post_ops(monkeypatch):
    """The post-op (`"none"`, `"gelu"`) of each call that reaches the oneDNN kernel (and still runs it)."""
    calls = []
    kernel = onednn_linear.ONEDNN_LINEAR
    monkeypatch.setattr(onednn_linear, "ONEDNN_LINEAR", lambda *args: calls.append(args[3]) or kernel(*args))
    return calls


@pytest.fixture
def packed_weights(monkeypatch):
    """Shapes of the weights packed for oneDNN (`pack_weight`)."""
    calls = []
    pack = onednn_linear.ONEDNN_PACK_WEIGHT

    def counting_pack(weight, batch_size):
        calls.append(tuple(weight.shape))
        return pack(weight, batch_size)

    monkeypatch.setattr(onednn_linear, "ONEDNN_PACK_WEIGHT", counting_pack)
    return calls


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_onednn_linear_equals_f_linear(bias, onednn_calls):
    generator = torch.Generator().manual_seed(0)
    layer = route_linears_through_onednn(torch.nn.Sequential(torch.nn.Linear(320, 96, bias=bias)))[0].eval()
    assert type(layer) is OneDNNLinear
    randomize_(layer, 0)
    inputs = [
        torch.randn(7, 320, generator=generator),  # 2-D
        torch.randn(2, 5, 320, generator=generator),  # batch x sequence
        torch.randn(3, 320, 4, generator=generator).transpose(1, 2),  # not contiguous
        torch.randn(1, 320, generator=generator),  # one token (decoding)
        torch.randn(0, 320, generator=generator),  # empty
    ]
    with torch.inference_mode():
        for hidden in inputs:
            expected = F.linear(hidden, layer.weight, layer.bias)
            torch.testing.assert_close(layer(hidden), expected, atol=TOLERANCE, rtol=TOLERANCE)
    assert len(onednn_calls) == len(inputs)
    with torch.no_grad():
        layer(inputs[0])
    assert len(onednn_calls) == len(inputs) + 1
    # Autograd on, weights frozen (a frozen tower in a training run): F.linear's rounding.
    assert torch.equal(layer.requires_grad_(False)(inputs[0]), F.linear(inputs[0], layer.weight, layer.bias))
    assert len(onednn_calls) == len(inputs) + 1


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_linear_gelu_fuses_the_gelu_into_onednn_and_otherwise_runs_the_layer(approximate, post_ops):
    generator = torch.Generator().manual_seed(0)
    layer = randomize_(route_linears_through_onednn(torch.nn.Sequential(torch.nn.Linear(96, 200)))[0], 0).eval()
    hidden = torch.randn(2, 17, 96, generator=generator)
    expected = F.gelu(F.linear(hidden, layer.weight, layer.bias), approximate=approximate)
    with torch.inference_mode():
        fused = linear_gelu_(layer, hidden, approximate)
        with weight_packed(layer, 34):
            fused_packed = linear_gelu_(layer, hidden, approximate)
        assert post_ops == ["gelu", "gelu"]
        # A layer with hooks runs as a module (its hooks see its output), the GELU then in place.
        hook_calls = []
        handle = layer.register_forward_hook(lambda module, args, output: hook_calls.append(output.shape))
        hooked = linear_gelu_(layer, hidden, approximate)
        handle.remove()
        assert post_ops == ["gelu", "gelu", "none"] and hook_calls == [(2, 17, 200)]
    for result in (fused, fused_packed, hooked):
        torch.testing.assert_close(result, expected, atol=TOLERANCE, rtol=TOLERANCE)
    # Autograd on (frozen weights): the layer's F.linear, then GELU in place; the same numbers as unfused.
    layer.requires_grad_(False)
    assert torch.equal(linear_gelu_(layer, hidden, approximate), expected) and post_ops[3:] == []


def test_packed_weight_gives_the_plain_outputs_for_one_forward_only(onednn_calls, packed_weights):
    generator = torch.Generator().manual_seed(0)
    layer = randomize_(route_linears_through_onednn(torch.nn.Sequential(torch.nn.Linear(96, 200)))[0], 0).eval()
    hook_calls = []
    layer.register_forward_hook(lambda module, args, output: hook_calls.append(output.shape))
    chunks = [torch.randn(16, 96, generator=generator), torch.randn(9, 96, generator=generator),
              torch.randn(96, 5, generator=generator).t(), torch.randn(2, 3, 96, generator=generator)]
    with torch.inference_mode():
        with weight_packed(layer, 16):
            assert layer._packed_weight is not None and layer._packed_weight.is_mkldnn
            packed = [layer(chunk) for chunk in chunks]
        assert layer._packed_weight is None
        plain = [F.linear(chunk, layer.weight, layer.bias) for chunk in chunks]
    assert packed_weights == [(200, 96)] and len(onednn_calls) == len(hook_calls) == len(chunks)
    for fast, expected in zip(packed, plain):
        torch.testing.assert_close(fast, expected, atol=TOLERANCE, rtol=TOLERANCE)
    # The copy is for one forward: a weight changed afterwards is what the next call uses.
    with torch.no_grad():
        layer.weight.mul_(2)
        torch.testing.assert_close(layer(chunks[0]), F.linear(chunks[0], layer.weight, layer.bias),
                                   atol=TOLERANCE, rtol=TOLERANCE)
    # Autograd on: nothing is packed, F.linear's arithmetic exactly; a plain nn.Linear is left alone.
    with weight_packed(layer, 16):
        assert layer._packed_weight is None
        assert torch.equal(layer(chunks[0]), F.linear(chunks[0], layer.weight, layer.bias))
    plain_layer = torch.nn.Linear(96, 200)
    with torch.inference_mode(), weight_packed(plain_layer, 16) as same:
        assert same is plain_layer and type(plain_layer) is torch.nn.Linear
    assert packed_weights == [(200, 96)]


def test_only_weights_that_onednn_takes_are_packed(packed_weights, monkeypatch):
    layer = route_linears_through_onednn(torch.nn.Sequential(torch.nn.Linear(16, 8)))[0]
    bf16_layer = route_linears_through_onednn(torch.nn.Sequential(torch.nn.Linear(16, 8)))[0].bfloat16()
    hidden = torch.randn(4, 16)
    with torch.inference_mode():
        assert weight_packing_applies(layer.weight, layer.bias)
        assert not weight_packing_applies(torch.randn(8, 40)[:, 8:24], None)  # gaps between rows: F.linear's
        with weight_packed(bf16_layer, 4):
            assert bf16_layer._packed_weight is None
            assert torch.equal(bf16_layer(hidden.bfloat16()), F.linear(hidden.bfloat16(), bf16_layer.weight,
                                                                      bf16_layer.bias))
        monkeypatch.setattr(onednn_linear, "ENABLED", False)
        assert not weight_packing_applies(layer.weight, layer.bias)
        monkeypatch.setattr(onednn_linear, "ENABLED", True)
    assert not weight_packing_applies(layer.weight, layer.bias)  # autograd on
    assert packed_weights == []


def test_onednn_linear_leaves_autograd_and_other_dtypes_to_f_linear(onednn_calls, monkeypatch):
    layer = route_linears_through_onednn(torch.nn.Sequential(torch.nn.Linear(16, 8)))[0]
    hidden = torch.randn(4, 16)
    # Training: the plain path, exactly, with gradients.
    output = layer(hidden)
    assert torch.equal(output, F.linear(hidden, layer.weight, layer.bias))
    output.sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None
    with torch.no_grad():
        assert torch.equal(layer.double()(hidden.double()), F.linear(hidden.double(), layer.weight, layer.bias))
        assert not onednn_applies(hidden.bfloat16(), layer.weight, None)
    assert onednn_calls == []
    # A weight sliced out of a wider matrix (gaps between its rows) would take oneDNN's slow path: F.linear takes it.
    wide = torch.randn(8, 40)
    with torch.no_grad():
        assert torch.equal(onednn_linear.linear(hidden, wide[:, 8:24]), F.linear(hidden, wide[:, 8:24]))
        assert onednn_applies(hidden, wide[:, 8:24].t().contiguous().t(), None)  # a transposed matrix is dense
    assert onednn_calls == []
    # Frozen weights but an input that needs a gradient (e.g. an adapter below): still autograd, still F.linear.
    layer = route_linears_through_onednn(torch.nn.Sequential(torch.nn.Linear(16, 8)))[0].requires_grad_(False).eval()
    assert not onednn_applies(hidden.requires_grad_(), layer.weight, layer.bias)
    monkeypatch.setattr(onednn_linear, "ENABLED", False)  # DSVL_ONEDNN_LINEAR=0
    with torch.no_grad():
        layer(hidden)
    assert onednn_calls == []


@pytest.mark.parametrize("variant", ["tiny", "tiny-hybrid"])
def test_every_model_linear_runs_through_onednn_with_the_same_outputs(variant, onednn_calls, monkeypatch):
    model = tiny_model(variant, attn_implementation="sdpa")
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert linears and all(type(module) is OneDNNLinear for module in linears)  # SigLIP, LLaMA, head, aligner, SAM
    images = random_images(model.config, 2)
    pixels = {"high_res_pixel_values": images} if model.config.is_hybrid else {"pixel_values": images}
    input_ids = torch.tensor([prompt_ids(model.config, [17, 23], 1, [9, 40])] * 2)
    with torch.inference_mode():
        fast = model(input_ids=input_ids, **pixels).logits
    assert len(onednn_calls) >= len(linears)
    monkeypatch.setattr(onednn_linear, "ENABLED", False)
    calls_before = len(onednn_calls)
    with torch.inference_mode():
        plain = model(input_ids=input_ids, **pixels).logits
    assert len(onednn_calls) == calls_before
    assert plain.abs().max() > 0.1
    torch.testing.assert_close(fast, plain, atol=TOLERANCE, rtol=TOLERANCE)


# -- image preprocessing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hybrid", [False, True], ids=["siglip", "hybrid"])
def test_batched_preprocessing_is_bit_identical_to_the_per_image_arithmetic(hybrid):
    processor = tiny_image_processor(hybrid=hybrid)
    images = [
        noise_rgb(300, 200, 1),  # landscape
        noise_rgb(90, 333, 2),  # portrait
        noise_rgb(64, 64, 3),  # square
        noise_rgb(997, 7, 4),  # extreme: the short side is clamped to min_size
        noise_rgb(5, 3, 5),  # upscaled
        noise_rgb(128, 127, 6).convert("L"),  # another mode
        np.asarray(noise_rgb(40, 30, 7)),  # numpy HWC
        torch.from_numpy(np.asarray(noise_rgb(31, 45, 8)).copy()).permute(2, 0, 1),  # torch CHW
        noise_rgb(50, 40, 9).convert("RGBA"),
        PIL.Image.new("RGB", (processor.image_size, processor.image_size // 2), (10, 20, 30)),  # resize skipped
    ]
    for candidate in (processor, tiny_image_processor(hybrid=hybrid, image_size=384, background_color=(1, 2, 3)),
                      tiny_image_processor(hybrid=hybrid, rescale_factor=1 / 3)):
        settings = {name: getattr(candidate, name) for name in candidate.config_fields}
        expected = np.stack([candidate.process_one(image, index, settings) for index, image in enumerate(images)])
        for workers in (1, 2):
            assert np.array_equal(candidate._rescaled_batch(images, settings, workers=workers), expected)
        key = "high_res_pixel_values" if hybrid else "pixel_values"
        assert torch.equal(candidate(images, return_tensors="pt")[key], torch.from_numpy(expected))


def test_sdpa_bias_chunks_are_equal_and_within_budget(monkeypatch):
    """The chunking itself: equal chunks within the byte budget (no tiny tail call)."""
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[2], attn_mask.numel() * attn_mask.element_size()))
        return real_sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    query, key, value, rel_h, rel_w = random_attention_inputs(size=10)  # 100 queries
    row_bytes = 2 * 3 * 100 * 4
    monkeypatch.setattr(modeling_dsvl_sam, "SDPA_BIAS_CHUNK_BYTES", 30 * row_bytes)
    monkeypatch.setattr(modeling_dsvl_sam.F, "scaled_dot_product_attention", recording_sdpa)
    with torch.inference_mode():
        chunked_sdpa(query, key, value, rel_h, rel_w, 0.5)
    assert [rows for rows, _ in calls] == [25, 25, 25, 25]
    assert all(size <= 30 * row_bytes for _, size in calls)
