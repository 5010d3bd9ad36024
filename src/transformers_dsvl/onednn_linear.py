"""Linear layers whose float32 inference on CPU runs through oneDNN rather than MKL.

torch's float32 `F.linear` on CPU calls MKL's sgemm, which takes its AVX2 code on AMD processors; oneDNN picks its
kernels by instruction set alone and runs AVX-512 there. On the Zen 5 machine of docs/benchmarks.md that doubles the
throughput of every linear layer of the model (the towers, the aligner, the language model and its head). The layers
keep their parameters and state-dict keys, and accumulate in float32: outputs agree with `F.linear` to float32
rounding (tests/test_fast_paths.py). With autograd on (training runs, frozen layers included), other dtypes and
devices, tensor subclasses and `torch.compile` they take `F.linear` unchanged.

Set the environment variable `DSVL_ONEDNN_LINEAR=0` (or `onednn_linear.ENABLED = False`) to use `F.linear` everywhere.
"""

from __future__ import annotations

import os

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
ENABLED = os.environ.get("DSVL_ONEDNN_LINEAR", "1").strip().lower() not in ("0", "false", "no", "off")
_PLAIN_TENSOR_TYPES = (torch.Tensor, nn.Parameter)


def onednn_applies(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `OneDNNLinear` sends this call to oneDNN: float32 dense CPU tensors with autograd off
    (`torch.no_grad()`, `torch.inference_mode()`, as `generate` and pipelines run). With autograd on, frozen layers
    included, training runs keep `F.linear`'s rounding (the oneDNN operator has no backward in any case)."""
    if not ENABLED or ONEDNN_LINEAR is None or torch.compiler.is_compiling() or torch.is_grad_enabled():
        return False
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if any(type(tensor) not in _PLAIN_TENSOR_TYPES for tensor in tensors):
        return False
    if any(tensor.device.type != "cpu" or tensor.dtype != torch.float32 or tensor.layout != torch.strided
           for tensor in tensors):
        return False
    return True


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, through oneDNN where `onednn_applies`."""
    if onednn_applies(input, weight, bias):
        return ONEDNN_LINEAR(input, weight, bias, "none", [], "")
    return F.linear(input, weight, bias)


class OneDNNLinear(nn.Linear):
    """`nn.Linear` with float32 CPU inference through oneDNN (see the module docstring); identical otherwise."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)


def route_linears_through_onednn(module: nn.Module) -> nn.Module:
    """Turn every plain `nn.Linear` inside `module` (transformers' SigLIP and LLaMA layers included) into a
    `OneDNNLinear`, in place: same parameters, same state dict. Subclasses of `nn.Linear` are left alone."""
    if ONEDNN_LINEAR is None:
        return module
    for submodule in module.modules():
        if type(submodule) is nn.Linear:
            submodule.__class__ = OneDNNLinear
    return module
