"""Shared measurement helpers of the benchmark suites: thread setup, timing (medians after warm-up, interleaved
side by side), machine description, FLOP counting.

Nothing here is DeepSeek-VL specific; `models.py` builds the models being compared.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch


def setup_threads(threads: int) -> None:
    """The same intra-op thread count for every implementation (and one inter-op thread, nothing runs in parallel)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict:
    import transformers

    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


@dataclass
class Timing:
    """Wall-clock samples of one workload, after warm-up."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.samples), max(self.samples)

    def as_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.spread[0], "max_s": self.spread[1], "samples_s": self.samples}


def time_once(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def time_side_by_side(functions: dict[str, Callable[[], object]], warmup: int, repeats: int,
                      log: Callable[[str], None] = print) -> dict[str, Timing]:
    """Run every function `warmup` times, then `repeats` rounds of all of them in turn (A B A B ...), so that slow
    drifts of the machine (other processes, thermal state) affect every implementation alike."""
    timings = {name: Timing() for name in functions}
    with torch.inference_mode():
        for _ in range(warmup):
            for function in functions.values():
                function()
        for round_index in range(repeats):
            for name, function in functions.items():
                gc.collect()
                seconds = time_once(function)
                timings[name].samples.append(seconds)
                log(f"    round {round_index + 1}/{repeats} {name}: {seconds:.3f} s (load {load_average()[0]:.2f})")
    return timings


def _onednn_linear_flops(input_shape, *args, out_shape=None, **kwargs) -> int:
    """torch.ops.mkldnn._linear_pointwise (both overloads): input [..., K] times weight^T [K, N] -> out [..., N]."""
    return 2 * math.prod(input_shape) * out_shape[-1]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """sdpa's CPU kernel (torch's counter knows only the CUDA ones): q.k^T and the weighted sum of v."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(function: Callable[[], object]) -> int:
    """FLOPs of the matrix products, convolutions and attention one call runs (torch's FlopCounterMode, taught sdpa's
    CPU kernel and the oneDNN linear operator our layers call; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.mkldnn._linear_pointwise: _onednn_linear_flops,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    })
    with torch.inference_mode(), counter:
        function()
    return int(counter.get_total_flops())


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm", encoding="utf-8") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def row(suite: str, workload: str, implementation: str, timing: Timing | None = None, **extra) -> dict:
    """One result row: what was measured, by which implementation, and its numbers."""
    result = {"suite": suite, "workload": workload, "implementation": implementation}
    if timing is not None:
        result.update(timing.as_dict())
    result.update(extra)
    return result


def free(*objects) -> None:
    """Drop references and collect, so the next model is built in freed memory."""
    del objects
    gc.collect()


__all__ = [
    "Timing",
    "asdict",
    "count_flops",
    "current_rss_bytes",
    "free",
    "load_average",
    "machine_info",
    "peak_rss_bytes",
    "row",
    "setup_threads",
    "time_once",
    "time_side_by_side",
]
