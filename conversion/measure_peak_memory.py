"""Measure the peak memory of converting a checkpoint with the real DeepSeek-VL shapes (random values).

    python conversion/measure_peak_memory.py --variant 1.3b --workdir /tmp/dsvl-memory

1. writes an original-format checkpoint with the published shapes of the variant
   (tests/original_checkpoint_generator.py; 1.3B: one 3.95 GB model.safetensors in float16; 7B: three shards,
   14.7 GB) unless it is already there;
2. runs `conversion/convert_deepseek_vl_original.py` on it in a child process and reads the child's peak resident set
   size (os.wait4 of that child: the kernel's high-water mark of the whole process, interpreter included);
3. prints it next to the bound the converter promises: 1.5 x the largest input shard + the largest output shard.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=["1.3b", "7b"], default="1.3b")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--workdir", default="/tmp/dsvl-memory")
    parser.add_argument("--max_shard_size", default="5GB", help="passed to the converter")
    parser.add_argument("--keep", action="store_true", help="keep the generated and converted checkpoints")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    source = workdir / f"deepseek-vl-{args.variant}-random-{args.dtype}"
    output = workdir / f"deepseek-vl-{args.variant}-random-{args.dtype}-dsvl"
    if not (source / "config.json").is_file():
        print(f"writing a {args.variant} checkpoint with the published shapes to {source} ...", flush=True)
        num_shards = 1 if args.variant == "1.3b" else 3
        generate = (
            "import sys, torch; sys.path.insert(0, {tests!r});"
            "from original_checkpoint_generator import write_original_checkpoint;"
            "write_original_checkpoint({source!r}, {variant!r}, 'published', dtype=torch.{dtype}, num_shards={n})"
        ).format(tests=str(REPO / "tests"), source=str(source), variant=args.variant, dtype=args.dtype, n=num_shards)
        subprocess.run([sys.executable, "-c", generate], check=True)
    if output.exists():
        shutil.rmtree(output)

    inputs = sorted(source.glob("*.safetensors"))
    largest_input = max(p.stat().st_size for p in inputs)
    command = [sys.executable, str(REPO / "conversion" / "convert_deepseek_vl_original.py"), "--input_dir",
               str(source), "--output_dir", str(output), "--max_shard_size", args.max_shard_size, "--quiet"]
    print("running:", " ".join(command), flush=True)
    start = time.time()
    child = subprocess.Popen(command)
    # wait4 returns this child's own resource usage (RUSAGE_CHILDREN would also count the generator above).
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"the conversion failed with exit status {child.returncode}")
    seconds = time.time() - start
    peak = usage.ru_maxrss * 1024  # Linux reports KiB
    outputs = sorted(output.glob("*.safetensors"))
    largest_output = max(p.stat().st_size for p in outputs)
    bound = 1.5 * largest_input + largest_output
    report = {
        "variant": args.variant,
        "dtype": args.dtype,
        "input_shards_bytes": [p.stat().st_size for p in inputs],
        "output_shards_bytes": [p.stat().st_size for p in outputs],
        "peak_rss_bytes": peak,
        "bound_bytes": bound,
        "peak_over_bound": round(peak / bound, 3),
        "peak_over_largest_input_shard": round(peak / largest_input, 3),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(report, indent=2))
    print(f"peak RSS {peak / 1e9:.2f} GB vs bound {bound / 1e9:.2f} GB (1.5 x {largest_input / 1e9:.2f} GB input "
          f"shard + {largest_output / 1e9:.2f} GB output shard): {'OK' if peak < bound else 'EXCEEDED'}")
    if not args.keep:
        shutil.rmtree(output)
        shutil.rmtree(source)
    return 0 if peak < bound else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
