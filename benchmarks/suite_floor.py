"""(f) The machine's limits: fp32 matrix-multiply throughput (the floor of compute-bound work: vision encoding,
prefill) and the bandwidth of a matrix-vector product over a matrix far larger than the caches (the floor of
memory-bound work: decoding one token reads every weight once).

Each is measured with both matrix libraries torch has on CPU: MKL (`torch.matmul`, `torch.mv`, what upstream's layers
run) and oneDNN (the operator of `transformers_dsvl.onednn_linear`, what ours run), the matmul also with its weight
packed beforehand into oneDNN's blocked layout (`onednn_linear.pack_weight`, which ours use for weights applied to
several chunks); the peak is the best of them, so no implementation can exceed it by picking the faster library or
layout.

The FLOPs of each workload are counted in its own suite (torch's FlopCounterMode); the report divides them by the
measured times and by the peak measured here.
"""

from __future__ import annotations

import torch
from common import Timing, row, time_once

from transformers_dsvl import onednn_linear

SUITE = "floor"
MATMUL_SIZES = (4096, 3072)  # square fp32 products; the best median is the peak
GEMV_BYTES = 2**30  # a 1 GiB float32 matrix: far beyond any cache


def _best_of(products: dict, repeats: int) -> dict:
    """{library: Timing} of each zero-argument product, after 2 untimed calls."""
    timings = {}
    for library, product in products.items():
        for _ in range(2):
            product()
        timings[library] = Timing([time_once(product) for _ in range(repeats)])
    return timings


def matmul_products(size: int) -> dict:
    """{library: zero-argument fp32 product of two size x size matrices}, MKL and (where torch has them) oneDNN with a
    plain and a packed weight."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    b_transposed = b.t().contiguous()  # oneDNN's linear computes a @ weight^T
    out = torch.empty(size, size)
    products = {"MKL, torch.matmul": lambda: torch.matmul(a, b, out=out)}
    if onednn_linear.ONEDNN_LINEAR is not None:
        products["oneDNN"] = lambda: onednn_linear.ONEDNN_LINEAR(a, b_transposed, None, "none", [], "")
    if onednn_linear.ONEDNN_PACK_WEIGHT is not None:
        with torch.inference_mode():
            b_packed = onednn_linear.pack_weight(b_transposed, size)
        products["oneDNN, packed weight"] = lambda: onednn_linear.ONEDNN_LINEAR(a, b_packed, None, "none", [], "")
    return products


def _matrix_vector_products(rows_count: int, columns: int) -> dict:
    matrix, vector = torch.randn(rows_count, columns), torch.randn(columns)
    result = torch.empty(rows_count)
    products = {"MKL, torch.mv": lambda: torch.mv(matrix, vector, out=result)}
    if onednn_linear.ONEDNN_LINEAR is not None:
        products["oneDNN"] = lambda: onednn_linear.ONEDNN_LINEAR(vector[None], matrix, None, "none", [], "")
    return products


def run(args, log=print) -> list[dict]:
    rows = []
    size_list = (512,) if args.smoke else MATMUL_SIZES
    repeats = max(5, args.repeats)
    with torch.inference_mode():
        for size in size_list:
            for library, timing in _best_of(matmul_products(size), repeats).items():
                gflops = 2 * size**3 / timing.median / 1e9
                log(f"  matmul {size}^3 ({library}): {gflops:.1f} GFLOP/s (median of {repeats})")
                rows.append(row(SUITE, f"fp32 matmul {size}x{size}x{size} ({library})", "machine", timing,
                                flops=2 * size**3, gflops_per_s=gflops))

        columns = 8192
        rows_count = (2**20 if args.smoke else GEMV_BYTES) // (4 * columns)
        gibibytes = rows_count * columns * 4 / 2**30
        for library, timing in _best_of(_matrix_vector_products(rows_count, columns), repeats).items():
            bandwidth = rows_count * columns * 4 / timing.median / 1e9
            log(f"  fp32 matrix-vector over {gibibytes:.2f} GiB ({library}): {bandwidth:.1f} GB/s")
            rows.append(row(SUITE, f"fp32 matrix-vector (memory bandwidth, {library})", "machine", timing,
                            bytes=rows_count * columns * 4, gbytes_per_s=bandwidth))
    return rows
