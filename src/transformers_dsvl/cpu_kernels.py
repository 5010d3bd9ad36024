"""Opt-in fused CPU kernels for the vision towers' attention, compiled on demand.

`enable_fused_cpu_kernels()` compiles `csrc/attention_kernels.cpp` with torch's C++ extension loader (about 30 s on
first use; torch caches the build under `TORCH_EXTENSIONS_DIR`, by default ~/.cache/torch_extensions) and routes
float32 CPU inference through it:
- SAM's attention blocks (`window_attention`) and SigLIP's attention (`attention`) run each (window or sample,
  head) pair as one task: both products through torch's batch-reduce GEMM (oneDNN's AVX-512 micro-kernels, where
  torch's batched products take MKL's AVX2 code on AMD), the relative-position bias and softmax in between on scores
  that stay in the core's cache (the dense bias, 201 million floats per global block, is never written). The window
  kernel cuts the windows from the unpadded q, k and v maps itself and writes the cropped output map, so no padded
  map or window copies are made and no padding token is projected; a global block is one window covering the grid.
Values agree with the default path to float32 rounding (tests/test_cpu_kernels.py).

Written because torch has no CPU kernel that adds a decomposed bias inside softmax, nor one that keeps an
attention's scores in cache between its two products, nor a batched product in oneDNN's AVX-512 code. It is opt-in,
as `keep_freed_memory` is, because it needs a C++ compiler and ninja at run time and its first call stalls while it
compiles; without it the model computes the same values.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "attention_kernels.cpp"
# at::vec's instruction set is chosen at compile time: build for the one torch's own kernels use on this machine.
_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512",
               "-DCPU_CAPABILITY=AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}
_KERNELS = None  # the extension module while enabled
_BUILT = None  # the extension module once loaded in this process


def enable_fused_cpu_kernels(verbose: bool = False) -> None:
    """Compile (or load torch's cached build of) the fused kernels and use them in float32 CPU inference from now on.

    Raises `RuntimeError` naming the cause when they cannot be built; the model then keeps its default path.
    """
    global _KERNELS, _BUILT
    if _BUILT is None:
        _BUILT = _build(verbose)
    _KERNELS = _BUILT


def disable_fused_cpu_kernels() -> None:
    """Go back to the default path (torch's products and softmax)."""
    global _KERNELS
    _KERNELS = None


def fused_cpu_kernels_enabled() -> bool:
    return _KERNELS is not None


def fused_kernels_apply(query: torch.Tensor) -> bool:
    """Whether attention over this query takes the fused kernels: enabled, float32 on CPU, autograd off (the kernels
    have no backward), not while `torch.compile` traces."""
    return (_KERNELS is not None and query.device.type == "cpu" and query.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling())


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """softmax(scaling * q.k^T) v for query, key, value [N, heads, tokens, head_dim] (any strides but a contiguous
    last dimension). Returns [N, queries, heads, head_dim]. Only while `fused_cpu_kernels_enabled()`."""
    return _loaded().attention(query, key, value, scaling)


def window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, query_bias: torch.Tensor | None,
                     key_bias: torch.Tensor | None, value_bias: torch.Tensor | None, tables: torch.Tensor,
                     window_size: int, heads: int, scaling: float) -> torch.Tensor:
    """SAM's windowed attention from the unpadded q, k and v maps [B, height, width, heads * head_dim] (contiguous
    channels) to the cropped output map of the same shape: the kernel cuts the windows itself, a token past the map's
    edge getting the qkv bias (zeros without one), what the original's zero-padded tokens get from the projection.
    A global block is the window the size of its (square) grid. `tables` are `flipped_relative_tables`
    [2 * (2 * window_size - 1), head_dim]. Only while `fused_cpu_kernels_enabled()`."""
    return _loaded().window_attention(query, key, value, query_bias, key_bias, value_bias, tables.t().contiguous(),
                                      window_size, heads, scaling)


def _loaded():
    if _KERNELS is None:
        raise RuntimeError("The fused CPU kernels are not loaded. Fix: call "
                           "transformers_dsvl.enable_fused_cpu_kernels() first.")
    return _KERNELS


def extension_name() -> str:
    """The build's module name. torch caches builds by name and rebuilds when the build's arguments change, so the
    name carries torch's version, the instruction set and the torch installation (environments with their own torch
    keep their own builds instead of rebuilding each other's)."""
    installation = hashlib.sha1(str(Path(torch.__file__).resolve().parent).encode()).hexdigest()[:8]
    name = f"transformers_dsvl_cpu_kernels_torch{torch.__version__}_{_capability()}_{installation}"
    return re.sub(r"\W", "_", name.lower())


def _capability() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _CAPABILITY_FLAGS else "DEFAULT"


def _build(verbose: bool):
    from torch.utils import cpp_extension

    flags = ["-O3", *_CAPABILITY_FLAGS.get(_capability(), ["-DCPU_CAPABILITY=DEFAULT"])]
    link_flags = []
    if sys.platform.startswith("linux"):  # at::parallel_for runs on OpenMP threads only when compiled with it
        flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    logger.info("Compiling transformers_dsvl's fused CPU kernels %s (about 30 s the first time, cached by torch)",
                extension_name())
    try:
        return cpp_extension.load(extension_name(), [str(SOURCE)], extra_cflags=flags, extra_ldflags=link_flags,
                                  verbose=verbose)
    except Exception as error:  # compiler, ninja or headers missing, or a failed build
        detail = str(error).strip().splitlines()
        raise RuntimeError(
            f"Could not build transformers_dsvl's fused CPU kernels ({type(error).__name__}: "
            f"{detail[-1] if detail else 'no message'}). Fix: install a C++ compiler, ninja (`pip install ninja`) and "
            "Python's development headers, then call enable_fused_cpu_kernels(verbose=True) to see the build; or do "
            "without it: the default path computes the same values."
        ) from error


__all__ = [
    "attention",
    "window_attention",
    "disable_fused_cpu_kernels",
    "enable_fused_cpu_kernels",
    "fused_cpu_kernels_enabled",
    "fused_kernels_apply",
]
