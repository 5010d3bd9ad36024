"""Linear layers whose float32 inference on CPU runs through oneDNN rather than MKL.

torch's float32 `F.linear` on CPU calls MKL's sgemm, which takes its AVX2 code on AMD processors; oneDNN picks its
kernels by instruction set alone and runs AVX-512 there. On the Zen 5 machine of docs/benchmarks.md that doubles the
throughput of every linear layer of the model (the towers, the aligner, the language model and its head). The layers
keep their parameters and state-dict keys, and accumulate in float32: outputs agree with `F.linear` to float32
rounding (tests/test_fast_paths.py). With autograd on (training runs, frozen layers included), other dtypes and
devices, tensor subclasses and `torch.compile` they take `F.linear` unchanged.

Where one forward applies the same weight to several inputs (a layer run chunk by chunk, attention keys shared by
every chunk of queries), `pack_weight` reorders it once into oneDNN's blocked layout: a plain weight is reordered
inside every call, which costs 3-10% of a product at SAM-B's and SigLIP-L's shapes. Packed copies live for one forward
only, so no weight is held twice between calls.

The towers' MLPs apply their GELU as oneDNN's post-op on the first product (`linear_gelu_`), while the product's
output is still in cache, instead of a second pass over it.

Set the environment variable `DSVL_ONEDNN_LINEAR=0` (or `onednn_linear.ENABLED = False`) to use `F.linear` everywhere.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn


def _find_onednn_linear(overload: str = "default"):
    """torch's oneDNN linear operator (the one inductor uses): `default` computes x.W^T + b, `binary` x.W^T + other."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return getattr(torch.ops.mkldnn._linear_pointwise, overload)
    except (AttributeError, RuntimeError):  # a torch build without the oneDNN operators
        return None


ONEDNN_LINEAR = _find_onednn_linear()
ONEDNN_LINEAR_ADD = _find_onednn_linear("binary")
ONEDNN_PACK_WEIGHT = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if ONEDNN_LINEAR is not None else None
ENABLED = os.environ.get("DSVL_ONEDNN_LINEAR", "1").strip().lower() not in ("0", "false", "no", "off")
_PLAIN_TENSOR_TYPES = (torch.Tensor, nn.Parameter)


def onednn_applies(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `OneDNNLinear` sends this call to oneDNN: float32 dense CPU tensors with autograd off
    (`torch.no_grad()`, `torch.inference_mode()`, as `generate` and pipelines run). With autograd on, frozen layers
    included, training runs keep `F.linear`'s rounding (the oneDNN operator has no backward in any case)."""
    return _onednn_takes(input, weight, bias) and not _has_row_gaps(weight)


def weight_packing_applies(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether packing this layer's weight can serve its calls: `onednn_applies` as far as the weight and bias decide
    (each call still checks its own input before it uses the packed copy)."""
    return ONEDNN_PACK_WEIGHT is not None and _onednn_takes(weight, bias) and not _has_row_gaps(weight)


def _onednn_takes(*tensors: torch.Tensor | None) -> bool:
    """oneDNN is enabled, autograd off, not compiling, and every given tensor a plain float32 dense CPU tensor."""
    if not ENABLED or ONEDNN_LINEAR is None or torch.compiler.is_compiling() or torch.is_grad_enabled():
        return False
    return all(
        type(tensor) in _PLAIN_TENSOR_TYPES
        and tensor.device.type == "cpu"
        and tensor.dtype == torch.float32
        and tensor.layout == torch.strided
        for tensor in tensors
        if tensor is not None
    )


def _has_row_gaps(weight: torch.Tensor) -> bool:
    """A matrix that is a slice of a wider one, neither it nor its transpose contiguous: oneDNN's linear takes a path
    hundreds of times slower for it (361 ms against 0.1 ms for a 576 x 64 slice of a 576 x 1024 map), F.linear not."""
    return weight.dim() == 2 and not (weight.is_contiguous() or weight.t().is_contiguous())


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, through oneDNN where `onednn_applies`."""
    if onednn_applies(input, weight, bias):
        return ONEDNN_LINEAR(input, weight, bias, "none", [], "")
    return F.linear(input, weight, bias)


def linear_gelu_(layer: nn.Module, input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU(layer(input)) outside autograd. For a `OneDNNLinear` that oneDNN takes (and no module hooks to run), the
    GELU is oneDNN's post-op on the product's output while it is in cache (~1 ms of a 16 ms SAM-B or SigLIP-L MLP
    product saved); otherwise GELU in place on the layer's output. `approximate` as in `F.gelu`."""
    if isinstance(layer, OneDNNLinear) and not (layer._forward_hooks or layer._forward_pre_hooks):
        weight = layer._packed_weight if layer._packed_weight is not None else layer.weight
        if onednn_applies(input, layer.weight, layer.bias):
            return ONEDNN_LINEAR(input, weight, layer.bias, "gelu", [], approximate)
    return torch.ops.aten.gelu_(layer(input), approximate=approximate)


def pack_weight(weight: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`weight` [out, in] (any strides) reordered into oneDNN's blocked layout for inputs of about `batch_size` rows,
    for repeated `ONEDNN_LINEAR` calls: only where `onednn_applies` to those calls, and for the current forward only
    (the packed copy does not follow later changes of `weight`)."""
    return ONEDNN_PACK_WEIGHT(weight, batch_size)


class OneDNNLinear(nn.Linear):
    """`nn.Linear` with float32 CPU inference through oneDNN (see the module docstring); identical otherwise."""

    _packed_weight: torch.Tensor | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._packed_weight is not None and onednn_applies(input, self.weight, self.bias):
            return ONEDNN_LINEAR(input, self._packed_weight, self.bias, "none", [], "")
        return linear(input, self.weight, self.bias)

    @contextmanager
    def weight_packed(self, batch_size: int):
        """Within the block, calls that go to oneDNN use the weight packed once (see `pack_weight`): for a layer
        applied to several chunks of about `batch_size` rows in one forward. Module hooks still run on every call."""
        if not weight_packing_applies(self.weight, self.bias):
            yield self
            return
        self._packed_weight = pack_weight(self.weight, batch_size)
        try:
            yield self
        finally:
            self._packed_weight = None


def weight_packed(layer: nn.Module, batch_size: int):
    """`layer.weight_packed(batch_size)` for a `OneDNNLinear`, a context that changes nothing for any other layer."""
    return layer.weight_packed(batch_size) if isinstance(layer, OneDNNLinear) else nullcontext(layer)


def route_linears_through_onednn(module: nn.Module) -> nn.Module:
    """Turn every plain `nn.Linear` inside `module` (transformers' SigLIP and LLaMA layers included) into a
    `OneDNNLinear`, in place: same parameters, same state dict. Subclasses of `nn.Linear` are left alone."""
    if ONEDNN_LINEAR is None:
        return module
    for submodule in module.modules():
        if type(submodule) is nn.Linear:
            submodule.__class__ = OneDNNLinear
    return module
