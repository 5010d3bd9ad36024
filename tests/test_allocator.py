"""`keep_freed_memory`: after it, a loop that allocates and frees activations of a few hundred KiB stops
page-faulting (glibc hands those blocks back to the kernel by default, and every reuse faults a fresh page)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

FAULTS_OF_A_LOOP = """
import resource, sys, torch
from transformers_dsvl.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x = torch.randn(64, 1024)
def step():
    kept = [x.repeat(k, 1) for k in (1, 3, 2, 5, 4, 8, 6, 7)]  # blocks of 256 KiB to 2 MiB, all alive at once
    return sum(t.sum() for t in kept)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    # The baseline pins glibc's default mmap threshold (128 KiB): left dynamic, glibc raises it after the first frees
    # by an amount that varies from run to run (once measured 512 faults instead of ~65,000), hiding what is tested.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"} if mode == "default" else None
    run = subprocess.run([sys.executable, "-c", FAULTS_OF_A_LOOP, mode], capture_output=True, text=True, check=True,
                         env=env)
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds exist in glibc only")
def test_freed_memory_is_reused_instead_of_faulted_back_in():
    default, kept = _page_faults("default"), _page_faults("keep")
    # 50 steps of 9 MiB in fresh mmaps: thousands of faults by default; a handful at most once memory is kept.
    assert default > 5000, default
    assert kept < default / 50, (kept, default)


def test_keep_freed_memory_is_public():
    """The README's CPU-inference advice names it at the package's top level."""
    import transformers_dsvl
    from transformers_dsvl.allocator import keep_freed_memory

    assert transformers_dsvl.keep_freed_memory is keep_freed_memory and "keep_freed_memory" in transformers_dsvl.__all__
