"""(f) The machine's limits: fp32 matrix-multiply throughput (the floor of compute-bound work: vision encoding,
prefill) and the bandwidth of a matrix-vector product over a matrix far larger than the caches (the floor of
memory-bound work: decoding one token reads every weight once).

The FLOPs of each workload are counted in its own suite (torch's FlopCounterMode); the report divides them by the
measured times and by the peak measured here.
"""

from __future__ import annotations

import torch

from common import Timing, row, time_once

SUITE = "floor"
MATMUL_SIZES = (4096, 3072)  # square fp32 products; the best median is the peak
GEMV_BYTES = 2**30  # a 1 GiB float32 matrix: far beyond any cache


def run(args, log=print) -> list[dict]:
    rows = []
    size_list = (512,) if args.smoke else MATMUL_SIZES
    repeats = max(5, args.repeats)
    with torch.inference_mode():
        for size in size_list:
            a, b = torch.randn(size, size), torch.randn(size, size)
            out = torch.empty(size, size)
            for _ in range(2):
                torch.matmul(a, b, out=out)
            timing = Timing([time_once(lambda: torch.matmul(a, b, out=out)) for _ in range(repeats)])
            gflops = 2 * size**3 / timing.median / 1e9
            log(f"  matmul {size}^3: {gflops:.1f} GFLOP/s (median of {repeats})")
            rows.append(row(SUITE, f"fp32 matmul {size}x{size}x{size}", "machine", timing,
                            flops=2 * size**3, gflops_per_s=gflops))
            del a, b, out

        columns = 8192
        rows_count = (2**20 if args.smoke else GEMV_BYTES) // (4 * columns)
        matrix, vector = torch.randn(rows_count, columns), torch.randn(columns)
        result = torch.empty(rows_count)
        for _ in range(2):
            torch.mv(matrix, vector, out=result)
        timing = Timing([time_once(lambda: torch.mv(matrix, vector, out=result)) for _ in range(repeats)])
        bandwidth = matrix.numel() * 4 / timing.median / 1e9
        log(f"  fp32 matrix-vector over {matrix.numel() * 4 / 2**30:.2f} GiB: {bandwidth:.1f} GB/s")
        rows.append(row(SUITE, "fp32 matrix-vector (memory bandwidth)", "machine", timing,
                        bytes=matrix.numel() * 4, gbytes_per_s=bandwidth))
    return rows
