"""(e) Peak resident memory of `from_pretrained` for a float32 checkpoint with the 1.3B shapes, against the bytes of
its weights: ours and transformers' `deepseek_vl` (the same tensors, converted), each loaded in a fresh Python
process (`ru_maxrss`, which counts file pages a memory-mapped load touches as well as anonymous memory).

The import of torch/transformers alone takes some hundreds of MB; it is reported separately ("baseline").
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import row
from models import checkpoint_tensor_bytes, ensure_checkpoints

SUITE = "memory"

LOAD_SCRIPT = r"""
import json, resource, sys, time
import torch
import transformers
import transformers_dsvl
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
kind, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if kind == "ours":
    from transformers_dsvl import DeepSeekVLForConditionalGeneration as cls
else:
    cls = transformers.DeepseekVLForConditionalGeneration
model = cls.from_pretrained(path, dtype=torch.float32)
seconds = time.perf_counter() - start
parameters = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "baseline": baseline,
                  "rss_after": rss(), "seconds": seconds, "parameter_bytes": parameters,
                  "transformers": transformers.__version__}))
"""


def measure(python: str, kind: str, path) -> dict:
    result = subprocess.run([python, "-c", LOAD_SCRIPT, kind, str(path)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"loading {kind} with {python} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(args, log=print) -> list[dict]:
    our_dir, their_dir = ensure_checkpoints(args.cache_dir, args.smoke, log)
    weights = checkpoint_tensor_bytes(our_dir)
    rows = []
    for python in args.pythons or [sys.executable]:
        for kind, path in (("ours", our_dir), ("upstream", their_dir)):
            samples = [measure(python, kind, path) for _ in range(max(1, args.memory_repeats))]
            best = min(samples, key=lambda sample: sample["peak_rss"])
            log(f"  {kind} (transformers {best['transformers']}): peak RSS {best['peak_rss'] / 2**30:.2f} GiB for "
                f"{weights / 2**30:.2f} GiB of weights ({best['peak_rss'] / weights:.2f}x), load "
                f"{best['seconds']:.1f} s")
            rows.append(row(SUITE, f"from_pretrained, 1.3B fp32 (transformers {best['transformers']})", kind,
                            peak_rss_bytes=best["peak_rss"], baseline_rss_bytes=best["baseline"],
                            rss_after_bytes=best["rss_after"], weight_bytes=weights,
                            ratio=best["peak_rss"] / weights, load_seconds=best["seconds"],
                            samples=[s["peak_rss"] for s in samples]))
    return rows
