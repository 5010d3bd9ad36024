"""High-resolution SAM-B tower of the hybrid DeepSeek-VL ("sam_b_downsample" of the original).

Written here rather than reusing transformers' `SamVisionEncoder` for two reasons: the original takes the attention
softmax in the working dtype (transformers' SAM upcasts to float32), and transformers' SAM materialises a dense
relative-position bias outside any fused kernel; this tower routes attention through the attention interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_dsvl import DeepSeekVLSamVisionConfig
from .cpu_kernels import fused_kernels_apply
from .cpu_kernels import window_attention as window_attention_kernel
from .onednn_linear import (
    ONEDNN_LINEAR,
    ONEDNN_LINEAR_ADD,
    ONEDNN_PACK_WEIGHT,
    linear,
    linear_gelu_,
    onednn_applies,
    pack_weight,
    weight_packed,
)

# Attention backends that accept an additive float mask; the others get the bias folded into query and key.
BIAS_AS_MASK_IMPLEMENTATIONS = ("eager", "sdpa")
# The sdpa path materialises the dense relative-position bias for a chunk of query rows at a time, at most this many
# bytes. A global block's full bias is 12 x 4096 x 4096 floats (805 MB); in chunks that stay in the last-level cache
# the bias is written and read by the attention kernel without a round trip through memory, and (below glibc's
# 32 MB mmap threshold) the buffer comes from the heap instead of fresh page-faulted memory.
SDPA_BIAS_CHUNK_BYTES = 16 * 2**20
# With autograd on (training runs, frozen towers included) the chunks training runs were tuned with: autograd holds
# every chunk's bias for the backward anyway, so smaller chunks would only mean more kernel calls and other rounding.
AUTOGRAD_SDPA_BIAS_CHUNK_BYTES = 64 * 2**20
# `onednn_attention` holds a head's scores for this many bytes of query rows (whole grid rows) at a time: small
# enough that its temporaries are reused on the heap rather than handed back to the kernel and page-faulted in again.
ONEDNN_SCORES_CHUNK_BYTES = 4 * 2**20
# Outside autograd the MLP runs over chunks of tokens whose hidden activation is at most this many bytes (heap memory).
MLP_CHUNK_BYTES = 16 * 2**20


class DeepSeekVLSamLayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map, written out as the original computes it (biased variance)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mean = hidden_states.mean(1, keepdim=True)
        variance = (hidden_states - mean).pow(2).mean(1, keepdim=True)
        hidden_states = (hidden_states - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * hidden_states + self.bias[:, None, None]


class DeepSeekVLSamPatchEmbeddings(nn.Module):
    def __init__(self, config: DeepSeekVLSamVisionConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values).permute(0, 2, 3, 1)  # NHWC, as the original keeps it


class DeepSeekVLSamMLP(nn.Module):
    def __init__(self, config: DeepSeekVLSamVisionConfig):
        super().__init__()
        self.lin1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.lin2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.exact_gelu = config.hidden_act == "gelu"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.exact_gelu or (torch.is_grad_enabled() and hidden_states.requires_grad):
            return self.lin2(self.act(self.lin1(hidden_states)))
        if torch.is_grad_enabled():  # a frozen tower inside a training run: in place, in one piece (its rounding)
            return self.lin2(torch.ops.aten.gelu_(self.lin1(hidden_states)))
        # Inference (autograd off): GELU fused into the first product (or in place), over chunks of tokens. SAM-B's
        # whole [4096, 3072] activation (50 MB) is above glibc's mmap threshold, i.e. fresh memory page-faulted in at
        # every block; a chunk is not.
        tokens = hidden_states.reshape(-1, hidden_states.shape[-1])
        num_chunks = -(-tokens.shape[0] * self.lin1.out_features * tokens.element_size() // MLP_CHUNK_BYTES)
        if num_chunks <= 1:
            return self.lin2(linear_gelu_(self.lin1, hidden_states))
        output = tokens.new_empty(tokens.shape[0], self.lin2.out_features)
        chunk_tokens = -(-tokens.shape[0] // num_chunks)
        with weight_packed(self.lin1, chunk_tokens), weight_packed(self.lin2, chunk_tokens):
            for chunk_input, chunk_output in zip(tokens.chunk(num_chunks), output.chunk(num_chunks)):
                chunk_output.copy_(self.lin2(linear_gelu_(self.lin1, chunk_input)))
        return output.view(*hidden_states.shape[:-1], self.lin2.out_features)


def relative_position_terms(
    query: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decomposed relative positions (MViTv2): per query, its dot products with the height and width tables.

    query: [B, heads, height*width, head_dim] (unscaled, as the original uses it). Returns rel_h [B, heads, N, height]
    and rel_w [B, heads, N, width] such that bias[i, j] = rel_h[i, row(j)] + rel_w[i, col(j)].
    """
    coords_h = torch.arange(height, device=query.device)
    coords_w = torch.arange(width, device=query.device)
    # Table rows for offsets (i - j) + K - 1; the table length is exactly 2K - 1, so no interpolation is needed.
    table_h = rel_pos_h[(coords_h[:, None] - coords_h[None, :]) + height - 1].to(query.dtype)  # [h_q, h_k, d]
    table_w = rel_pos_w[(coords_w[:, None] - coords_w[None, :]) + width - 1].to(query.dtype)  # [w_q, w_k, d]
    batch, heads, _, head_dim = query.shape
    grid_query = query.reshape(batch, heads, height, width, head_dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_query, table_h).reshape(batch, heads, height * width, height)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_query, table_w).reshape(batch, heads, height * width, width)
    return rel_h, rel_w


def flipped_relative_tables(rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Both relative-position tables reversed and stacked, [(2H - 1) + (2W - 1), d]: the right-hand side of the
    product form of the relative-position terms (see `relative_terms_views`)."""
    return torch.cat([rel_pos_h.flip(0), rel_pos_w.flip(0)]).to(dtype)


def relative_terms_views(products: torch.Tensor, height: int, width: int, first_row: int = 0):
    """rel_h [..., rows, width, height] and rel_w [..., rows, width, width] as strided views of `products`, the dot
    products [..., tokens, (2H - 1) + (2W - 1)] of queries with `flipped_relative_tables` (contiguous last dim), the
    tokens being whole grid rows from `first_row` on.

    For a query in grid row qh the needed rows (qh - k) + H - 1 of the height table are, reversed, the K columns from
    H - 1 - qh on: an address affine in (qh, qw, k), so a view reads them without a gather (likewise for widths).
    """
    *lead, tokens, _ = products.shape
    *lead_strides, per_token, _ = products.stride()
    rows, offset = tokens // width, products.storage_offset()
    rel_h = products.as_strided((*lead, rows, width, height), (*lead_strides, width * per_token - 1, per_token, 1),
                                offset + height - 1 - first_row)
    rel_w = products.as_strided((*lead, rows, width, width), (*lead_strides, width * per_token, per_token - 1, 1),
                                offset + 2 * height + width - 2)
    return rel_h, rel_w


def relative_position_terms_by_product(
    query: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`relative_position_terms` as one product of every query with both flipped tables, read back through
    `relative_terms_views` instead of einsum's permute copies (~3x faster at window size 14)."""
    batch, heads, tokens, _ = query.shape
    tables = flipped_relative_tables(rel_pos_h, rel_pos_w, query.dtype)
    products = linear(query.transpose(1, 2), tables).transpose(1, 2)  # [B, heads, N, (2H - 1) + (2W - 1)]
    rel_h, rel_w = relative_terms_views(products, height, width)
    return rel_h.reshape(batch, heads, tokens, height), rel_w.reshape(batch, heads, tokens, width)


def dense_relative_bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    batch, heads, queries, height = rel_h.shape
    width = rel_w.shape[-1]
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(batch, heads, queries, height * width)


def fold_bias_into_query_key(query, key, value, rel_h, rel_w, scaling):
    """Rewrite q.k*s + rel_h[row] + rel_w[col] as one dot product of widened vectors, for bias-free kernels.

    q' = [q*s, rel_h, rel_w], k' = [k, onehot(row), onehot(col)]; value is zero-padded to the same width (kernels
    such as flash-attention need equal head dims) and the caller slices the padding off the output.
    """
    batch, heads, keys, head_dim = key.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    rows = torch.arange(keys, device=key.device) // width
    cols = torch.arange(keys, device=key.device) % width
    onehot_rows = F.one_hot(rows, height).to(key.dtype).expand(batch, heads, keys, height)
    onehot_cols = F.one_hot(cols, width).to(key.dtype).expand(batch, heads, keys, width)
    wide_query = torch.cat([query * scaling, rel_h, rel_w], dim=-1)
    wide_key = torch.cat([key, onehot_rows, onehot_cols], dim=-1)
    wide_value = F.pad(value, (0, height + width))
    return wide_query, wide_key, wide_value


def sam_eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's arithmetic: (q*s) k^T + bias, softmax in the working dtype (no float32 upcast)."""
    attn_weights = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = attn_weights.softmax(dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class DeepSeekVLSamAttention(nn.Module):
    """Multi-head attention with decomposed relative positions (fused qkv, as the original), over the whole token map
    (global blocks, `window_size=0`) or over non-overlapping windows of it.

    Windowed blocks work as the original's: the map is zero-padded at the bottom/right to a multiple of the window,
    every window attends within itself (padding tokens included, as keys and values), and the result is cropped.
    In inference q, k and v are three products with thirds of the fused weight: at SAM-B's 1024 px a [tokens, 3 x 768]
    map (38-45 MB) is above glibc's mmap threshold, i.e. fresh memory page-faulted in at every block, where a third
    stays on the heap. With autograd on (training runs, frozen towers included) it keeps one fused product on the
    real tokens, the padding getting the qkv bias (what the original's zero tokens get), so training runs keep their
    rounding. The values agree to float32 rounding.
    """

    def __init__(self, config: DeepSeekVLSamVisionConfig, window_size: int = 0):
        super().__init__()
        self.config = config
        self.window_size = window_size
        input_size = window_size if window_size else config.grid_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))

    def project_fused(self, hidden_states: torch.Tensor):
        """Autograd on: one fused product on the real tokens; window padding gets the qkv bias (what the original's
        zero tokens get). Returns query, key, value [windows, heads, N, head_dim] and the padded size (or None)."""
        qkv = self.qkv(hidden_states)
        padded_hw = None
        if self.window_size:
            qkv = pad_with_bias(qkv, self.window_size, self.qkv.bias)
            qkv, padded_hw = window_partition(qkv, self.window_size)
        windows, size_h, size_w = qkv.shape[:3]
        qkv = qkv.reshape(windows, size_h * size_w, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return query, key, value, padded_hw

    def project_in_thirds(self, hidden_states: torch.Tensor):
        """Autograd off: zero-pad and cut windows first (as the original), then q, k and v as three products, each
        [tokens, C] map below glibc's mmap threshold (see the class docstring). Same returns as `project_fused`."""
        padded_hw = None
        if self.window_size:
            hidden_states, padded_hw = window_partition(hidden_states, self.window_size)
        windows, size_h, size_w, channels = hidden_states.shape
        tokens = hidden_states.reshape(windows, size_h * size_w, channels)
        biases = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None,) * 3
        query, key, value = (
            linear(tokens, weight, bias).view(windows, size_h * size_w, self.num_heads, self.head_dim).transpose(1, 2)
            for weight, bias in zip(self.qkv.weight.chunk(3), biases)
        )
        return query, key, value, padded_hw

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        """hidden_states: [B, height, width, C] -> ([B, height, width, C], attention weights or None)."""
        batch, height, width, channels = hidden_states.shape
        implementation = self.config._attn_implementation or "eager"
        if output_attentions and implementation != "eager":
            raise ValueError(
                f"output_attentions=True needs the eager attention, but the SAM tower runs {implementation!r}. "
                "Fix: load the model with attn_implementation='eager'."
            )
        dropout = self.config.attention_dropout if self.training else 0.0
        kernel_window = self.fused_kernel_window(height, width)
        if kernel_window and implementation == "sdpa" and not dropout and fused_kernels_apply(hidden_states):
            return self.proj(self.fused_window_attention(hidden_states, kernel_window)), None
        if torch.is_grad_enabled():
            query, key, value, padded_hw = self.project_fused(hidden_states)
        else:
            query, key, value, padded_hw = self.project_in_thirds(hidden_states)
        windows = query.shape[0]
        size_h, size_w = (self.window_size, self.window_size) if self.window_size else (height, width)
        if implementation == "sdpa" and not dropout and not self.window_size and onednn_attention_applies(query, key):
            attn_output = onednn_attention(
                query, key, value, self.rel_pos_h, self.rel_pos_w, self.scaling, height, width
            )
            attn_weights = None
        else:
            attn_output, attn_weights = self.attend(query, key, value, size_h, size_w, implementation, dropout)

        attn_output = attn_output.reshape(windows, size_h, size_w, channels)
        if self.window_size:
            attn_output = window_unpartition(attn_output, self.window_size, padded_hw, (height, width))
        return self.proj(attn_output), attn_weights

    def fused_kernel_window(self, height: int, width: int) -> int:
        """The window the fused kernel attends over: the block's window, or for a global block the whole grid when
        it is square with tables of its size (always in SAM: the grid is image_size / patch_size); 0 where the kernel
        does not apply."""
        if self.window_size:
            return self.window_size
        whole_grid = height == width and self.rel_pos_h.shape[0] == self.rel_pos_w.shape[0] == 2 * height - 1
        return height if whole_grid else 0

    def fused_window_attention(self, hidden_states: torch.Tensor, window_size: int) -> torch.Tensor:
        """Under `enable_fused_cpu_kernels()`: q, k and v of the real tokens only, then the kernel cuts the windows
        itself (the padding getting the qkv bias, what the original's zero tokens get), attends and writes the
        cropped map: no padded map, no window copies, no padded tokens projected. A global block is one window."""
        biases = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None,) * 3
        weights = self.qkv.weight.chunk(3)
        query, key, value = (linear(hidden_states, weight, bias) for weight, bias in zip(weights, biases))
        tables = flipped_relative_tables(self.rel_pos_h, self.rel_pos_w, hidden_states.dtype)
        return window_attention_kernel(query, key, value, *biases, tables, window_size, self.num_heads, self.scaling)

    def attend(self, query, key, value, size_h: int, size_w: int, implementation: str, dropout: float):
        """Attention of [windows, heads, N, head_dim] queries over a size_h x size_w grid with the relative-position
        terms, through `implementation`. Returns the output [windows, N, heads, head_dim] and the weights or None."""
        # eager is the original's arithmetic, and autograd keeps the training runs' rounding: both take the einsum.
        by_product = self.window_size and implementation != "eager" and not torch.is_grad_enabled()
        terms = relative_position_terms_by_product if by_product else relative_position_terms
        rel_h, rel_w = terms(query, self.rel_pos_h, self.rel_pos_w, size_h, size_w)
        if implementation == "eager":
            bias = dense_relative_bias(rel_h, rel_w)
            return sam_eager_attention_forward(self, query, key, value, bias, scaling=self.scaling, dropout=dropout)
        if implementation == "sdpa" and not dropout and self.window_size and per_window_attention_applies(query):
            return per_window_attention(query, key, value, rel_h, rel_w, self.scaling), None
        if implementation == "sdpa":
            chunk_bytes = AUTOGRAD_SDPA_BIAS_CHUNK_BYTES if torch.is_grad_enabled() else SDPA_BIAS_CHUNK_BYTES
            return chunked_sdpa(query, key, value, rel_h, rel_w, self.scaling, dropout, chunk_bytes), None
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS[implementation]
        wide_query, wide_key, wide_value = fold_bias_into_query_key(query, key, value, rel_h, rel_w, self.scaling)
        attn_output, attn_weights = attention_interface(
            self, wide_query, wide_key, wide_value, None, dropout=dropout, scaling=1.0, is_causal=False
        )
        return attn_output[..., : self.head_dim], attn_weights


def chunked_sdpa(query, key, value, rel_h, rel_w, scaling: float, dropout: float = 0.0,
                 chunk_bytes: int | None = None) -> torch.Tensor:
    """SDPA with the decomposed relative-position bias as its additive mask, built for a chunk of query rows at a
    time (see `SDPA_BIAS_CHUNK_BYTES`). Returns [B, N, heads, head_dim].

    Outside autograd one bias buffer is filled in place for every chunk: a fresh buffer per chunk would be a fresh
    allocation each time, and writing into newly mapped memory costs a page fault per 4 KiB.
    """
    batch, heads, queries, _ = query.shape
    keys = key.shape[2]
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    row_bytes = batch * heads * keys * query.element_size()
    # Equal chunks (no small tail call), each within the byte budget.
    num_chunks = -(-queries // max(1, (chunk_bytes or SDPA_BIAS_CHUNK_BYTES) // row_bytes))
    chunk = -(-queries // num_chunks)
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value, rel_h, rel_w))
    buffer = None if differentiable else query.new_empty(batch, heads, chunk, height, width)
    outputs = []
    for start in range(0, queries, chunk):
        stop = min(start + chunk, queries)
        rows_h, rows_w = rel_h[:, :, start:stop, :, None], rel_w[:, :, start:stop, None, :]
        if buffer is None:
            bias = rows_h + rows_w
        else:
            bias = torch.add(rows_h, rows_w, out=buffer[:, :, : stop - start])
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, start:stop], key, value, attn_mask=bias.view(batch, heads, stop - start, keys),
                dropout_p=dropout, scale=scaling,
            )
        )
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.transpose(1, 2)


def onednn_attention_applies(query: torch.Tensor, key: torch.Tensor) -> bool:
    """As the oneDNN linears: float32 dense CPU tensors with autograd off (see `onednn_applies`)."""
    return ONEDNN_LINEAR_ADD is not None and ONEDNN_PACK_WEIGHT is not None and onednn_applies(query, key, None)


def onednn_attention(query, key, value, rel_pos_h, rel_pos_w, scaling: float, height: int, width: int) -> torch.Tensor:
    """Attention with the decomposed relative-position bias for the global blocks (a height x width grid), outside
    autograd, per head: the head's relative-position terms in one oneDNN product (read through
    `relative_terms_views`), then per chunk of whole grid rows of queries (`ONEDNN_SCORES_CHUNK_BYTES` of scores)
    q.k^T plus their bias in another, softmax in place, times v in a third. Returns [B, N, heads, head_dim].

    Written out because sdpa's CPU kernel does its products through MKL (AVX2 on AMD, see onednn_linear) in small
    tiles: at SAM-B's 4096 tokens this runs a global block's attention in ~0.6x the time. Per head, the terms need no
    [heads, N, 64] temporaries of the whole grid (fresh, page-faulted memory at SAM-B's size). Each head's keys and
    values are packed once for all of its chunks (`pack_weight`). (With `enable_fused_cpu_kernels()` the global
    blocks take `DeepSeekVLSamAttention.fused_window_attention`, the grid as one window.)
    """
    batch, heads, queries, head_dim = query.shape
    keys = key.shape[2]
    grid_rows = max(1, ONEDNN_SCORES_CHUNK_BYTES // (width * keys * query.element_size()))
    grid_rows = -(-height // -(-height // grid_rows))  # equal chunks, no small tail call
    rows = grid_rows * width
    # The terms are products of the unscaled query with the tables: the scaled query times tables / scaling.
    tables = flipped_relative_tables(rel_pos_h, rel_pos_w, query.dtype) / scaling
    output = query.new_empty(batch, queries, heads, head_dim)
    bias = query.new_empty(grid_rows, width, height, width)
    for sample in range(batch):
        for head in range(heads):
            scaled_query = query[sample, head] * scaling
            head_key = pack_weight(key[sample, head], rows)
            head_value_t = pack_weight(value[sample, head].t(), rows)
            products = ONEDNN_LINEAR(scaled_query, tables, None, "none", [], "")
            for start in range(0, queries, rows):
                stop = min(start + rows, queries)
                chunk_query = scaled_query[start:stop]
                rel_h, rel_w = relative_terms_views(products[start:stop], height, width, first_row=start // width)
                chunk_bias = bias[: (stop - start) // width]
                torch.add(rel_h[..., :, None], rel_w[..., None, :], out=chunk_bias)
                scores = ONEDNN_LINEAR_ADD(chunk_query, chunk_bias.view(stop - start, keys), head_key, None, "add")
                torch.ops.aten._softmax.out(scores, -1, False, out=scores)
                output[sample, start:stop, head] = ONEDNN_LINEAR(scores, head_value_t, None, "none", [], "")
    return output


def per_window_attention_applies(query: torch.Tensor) -> bool:
    """CPU tensors with autograd off (the plain path, sdpa, has a backward and CUDA kernels)."""
    return query.device.type == "cpu" and not torch.is_grad_enabled()


def per_window_attention(query, key, value, rel_h, rel_w, scaling: float) -> torch.Tensor:
    """Attention of the window blocks outside autograd on CPU, one window (every head) at a time: the bias is written
    into the scores buffer, `baddbmm` adds s.q.k^T to it in place, softmax in place, then one batched product with v
    copied into the output. Returns [windows, N, heads, head_dim].

    Written out because sdpa's CPU kernel tiles these 196-token windows finely: ~0.75x its time at SAM-B's 14 x 14.
    (With `enable_fused_cpu_kernels()` the window blocks take `DeepSeekVLSamAttention.fused_window_attention`.)
    """
    windows, heads, tokens, head_dim = query.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    output = query.new_empty(windows, tokens, heads, head_dim)
    bias = query.new_empty(heads, tokens, height, width)
    # bmm writes a contiguous buffer faster than the strided output (~2 ms per SAM-B block), the copy costs 0.1 ms.
    attended = query.new_empty(heads, tokens, head_dim)
    for window in range(windows):
        scores = torch.add(rel_h[window, :, :, :, None], rel_w[window, :, :, None, :], out=bias).view(heads, tokens, -1)
        scores.baddbmm_(query[window], key[window].transpose(1, 2), alpha=scaling)
        torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        output[window].copy_(torch.bmm(scores, value[window], out=attended).transpose(0, 1))
    return output


def pad_with_bias(qkv: torch.Tensor, window_size: int, bias: torch.Tensor | None) -> torch.Tensor:
    """Pad the NHWC qkv map at the bottom/right to a multiple of the window with what the original's zero-padded
    tokens get from the qkv projection: the bias (zeros without one). Only the padding is filled."""
    batch, height, width, channels = qkv.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if not pad_h and not pad_w:
        return qkv
    fill = bias if bias is not None else qkv.new_zeros(channels)
    padded = qkv.new_empty(batch, height + pad_h, width + pad_w, channels)
    padded[:, :height, :width] = qkv
    padded[:, height:] = fill
    padded[:, :height, width:] = fill
    return padded


def window_partition(hidden_states: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad NHWC at the bottom/right to a multiple of the window and cut it into windows."""
    batch, height, width, channels = hidden_states.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    hidden_states = F.pad(hidden_states, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    hidden_states = hidden_states.reshape(
        batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels
    )
    windows = hidden_states.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(windows, window_size, padded_hw, original_hw) -> torch.Tensor:
    """Windows [B * rows * cols, window, window, C] back into the NHWC map, cropped to `original_hw`, in one pass
    (no padded map is built and cropped again: at SAM-B's size that was a second fresh 12 MB buffer per block).
    """
    padded_h, padded_w = padded_hw
    height, width = original_hw
    rows, cols = padded_h // window_size, padded_w // window_size
    batch = windows.shape[0] // (rows * cols)
    # [B, window row, row within it, window column, column within it, C]
    grid = windows.reshape(batch, rows, cols, window_size, window_size, -1).permute(0, 1, 3, 2, 4, 5)
    output = windows.new_empty(batch, height, width, grid.shape[-1])
    whole_cols = width // window_size
    cut_w = width - whole_cols * window_size
    # Band by band of window rows: only the whole windows of a band split its width into (window, column) as a view.
    for row in range(rows):
        band = output[:, row * window_size : (row + 1) * window_size]
        kept_h = band.shape[1]
        band[:, :, : whole_cols * window_size].unflatten(2, (whole_cols, window_size)).copy_(
            grid[:, row, :kept_h, :whole_cols]
        )
        if cut_w:
            band[:, :, whole_cols * window_size :].copy_(grid[:, row, :kept_h, whole_cols, :cut_w])
    return output


class DeepSeekVLSamBlock(GradientCheckpointingLayer):
    def __init__(self, config: DeepSeekVLSamVisionConfig, layer_index: int):
        super().__init__()
        self.window_size = 0 if layer_index in config.global_attn_indexes else config.window_size
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = DeepSeekVLSamAttention(config, window_size=self.window_size)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DeepSeekVLSamMLP(config)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        attn_output, attn_weights = self.attn(self.layer_norm1(hidden_states), output_attentions=output_attentions)
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        return hidden_states, attn_weights


class DeepSeekVLSamNeck(nn.Module):
    def __init__(self, config: DeepSeekVLSamVisionConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(config.hidden_size, config.neck_channels, kernel_size=1, bias=False)
        self.layer_norm1 = DeepSeekVLSamLayerNorm2d(config.neck_channels, eps=config.layer_norm_eps)
        self.conv2 = nn.Conv2d(config.neck_channels, config.neck_channels, kernel_size=3, padding=1, bias=False)
        self.layer_norm2 = DeepSeekVLSamLayerNorm2d(config.neck_channels, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.layer_norm1(self.conv1(hidden_states.permute(0, 3, 1, 2)))
        return self.layer_norm2(self.conv2(hidden_states))


@dataclass
class DeepSeekVLSamVisionOutput(ModelOutput):
    """
    last_hidden_state: [batch, output_grid_size**2, output_channels], the tower's tokens in row-major grid order.
    hidden_states: the NHWC token map after the embeddings and after each block (when requested).
    attentions: per-block attention weights (eager only, when requested).
    """

    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class DeepSeekVLSamVisionModel(nn.Module):
    """SAM-B ViT + neck + resize + stride-2 downsampling, plus the global-feature branch of block
    `global_feature_layer`: out = D(I(N(h_last))) + alpha * D(I(N_global(h_global)))."""

    def __init__(self, config: DeepSeekVLSamVisionConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.patch_embed = DeepSeekVLSamPatchEmbeddings(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size, config.grid_size, config.hidden_size))
        self.layers = nn.ModuleList(DeepSeekVLSamBlock(config, i) for i in range(config.num_hidden_layers))
        self.neck = DeepSeekVLSamNeck(config)
        channels = [config.neck_channels, *config.downsample_channels]
        self.downsamples = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], kernel_size=3, stride=2, padding=1, bias=False)
            for i in range(len(config.downsample_channels))
        )
        if config.global_feature_layer is not None:
            self.global_neck = DeepSeekVLSamNeck(config)
            self.global_alpha = nn.Parameter(torch.zeros(1))

    def resize_and_downsample(self, feature_map: torch.Tensor) -> torch.Tensor:
        size = self.config.resize_size
        # Bilinear resize in float32 and back, as the original does, whatever the working dtype.
        feature_map = F.interpolate(feature_map.float(), size=(size, size), mode="bilinear", align_corners=False)
        feature_map = feature_map.to(self.neck.conv1.weight.dtype)
        for conv in self.downsamples:
            feature_map = conv(feature_map)
        return feature_map

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> DeepSeekVLSamVisionOutput:
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"high_res_pixel_values must have shape [num_images, {expected[0]}, {expected[1]}, {expected[2]}], got "
                f"{list(pixel_values.shape)}. Fix: preprocess images with DeepSeekVLImageProcessor of this checkpoint."
            )
        hidden_states = self.patch_embed(pixel_values) + self.pos_embed
        if not torch.is_grad_enabled():
            # The conv's NCHW memory seen as NHWC: every LayerNorm and residual add would walk it with a 4096-float
            # stride (LayerNorm ~13x slower at SAM-B's 1024 px). Training keeps it as is, for its rounding.
            hidden_states = hidden_states.contiguous()
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        global_features = None
        for index, layer in enumerate(self.layers):
            hidden_states, attn_weights = layer(hidden_states, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
            if index == self.config.global_feature_layer:
                global_features = hidden_states

        output = self.neck(hidden_states)
        if global_features is not None and not torch.is_grad_enabled() and output.dtype == torch.float32:
            # Inference: the resize and the bias-free convolutions are linear, so D(I(a)) + alpha D(I(b)) =
            # D(I(a + alpha b)), one pass instead of two (float32 rounding; training keeps the original's order).
            output = self.resize_and_downsample(output + self.global_alpha * self.global_neck(global_features))
        else:
            output = self.resize_and_downsample(output)
            if global_features is not None:
                output = output + self.global_alpha * self.resize_and_downsample(self.global_neck(global_features))
        output = output.flatten(2).transpose(1, 2)  # [B, C, g, g] -> [B, g*g, C], row-major grid order
        return DeepSeekVLSamVisionOutput(
            last_hidden_state=output, hidden_states=all_hidden_states, attentions=all_attentions
        )


def init_sam_weights(module: nn.Module, std: float, init) -> None:
    """Initialise the SAM-specific parameters; `init` is transformers.initialization (5.x) or torch.nn.init (4.x)."""
    if isinstance(module, DeepSeekVLSamVisionModel):
        init.normal_(module.pos_embed, mean=0.0, std=std)
        if module.config.global_feature_layer is not None:
            init.zeros_(module.global_alpha)
    elif isinstance(module, DeepSeekVLSamAttention):
        init.normal_(module.rel_pos_h, mean=0.0, std=std)
        init.normal_(module.rel_pos_w, mean=0.0, std=std)
    elif isinstance(module, DeepSeekVLSamLayerNorm2d):
        init.ones_(module.weight)
        init.zeros_(module.bias)


__all__ = ["DeepSeekVLSamVisionModel", "init_sam_weights"]
