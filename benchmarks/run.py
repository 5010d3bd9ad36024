"""Benchmarks of transformers_dsvl against transformers' own DeepSeek-VL port, side by side, on this machine.

    python benchmarks/run.py --suite all                # everything (about 45 minutes on 2 cores)
    python benchmarks/run.py --suite vision --repeats 5
    python benchmarks/run.py --suite floor,preprocess
    python benchmarks/run.py --suite all --smoke        # the harness at test sizes, in a minute (numbers meaningless)
    python benchmarks/run.py --report-only              # rewrite docs/benchmarks.md from the saved results
    python benchmarks/run.py --suite vision --allocator default   # glibc's default malloc thresholds
    python benchmarks/run.py --suite vision --cpu-kernels none    # without the fused CPU attention kernels

Suites (letters as in the issue): vision (a), preprocess (b), generation (c), chat (d), memory (e), floor (f).
Every suite runs in its own Python process (a clean heap, one big model at a time). Results are merged into
`benchmarks/results/results.json` (a re-run of one suite replaces only its rows) and rendered into
`docs/benchmarks.md` and `docs/benchmarks.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUITES = ("floor", "vision", "preprocess", "generation", "chat", "memory")
SUITES_RUNNING_OUR_TOWERS = ("vision", "generation", "chat")  # the ones the fused CPU kernels can change
RESULTS = HERE / "results" / "results.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", help=f"comma-separated suites or 'all': {', '.join(SUITES)}")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each workload before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each workload (medians reported)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per call (generation, chat)")
    parser.add_argument("--allocator", choices=("keep-freed", "default"), default="keep-freed",
                        help="keep-freed: each suite's process keeps freed memory for reuse "
                        "(transformers_dsvl.keep_freed_memory, both implementations alike); default: glibc's "
                        "adaptive thresholds, which page-fault freed-and-reallocated buffers in again")
    parser.add_argument("--cpu-kernels", choices=("fused", "none"), default="fused",
                        help="fused: ours runs with transformers_dsvl.enable_fused_cpu_kernels() (compiled once, "
                        "cached by torch; without a compiler the run goes on without them and says so); none: "
                        "torch's own kernels only. Upstream's code never uses them")
    parser.add_argument("--batch-sizes", default="1,4", help="batch sizes of the generation suite")
    parser.add_argument("--vision-variants", default="hybrid,siglip", help="hybrid and/or siglip")
    parser.add_argument("--pythons", default="", help="comma-separated interpreters for the memory suite "
                        "(default: this one), e.g. /opt/venv5/bin/python,/opt/venv457/bin/python")
    parser.add_argument("--memory-repeats", type=int, default=1, help="fresh processes per memory measurement")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the random 1.3B checkpoints are written "
                        "once (about 16 GB; default ~/.cache/transformers_dsvl/benchmarks)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results JSON (merged across runs)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report to (re)write")
    parser.add_argument("--smoke", action="store_true", help="test-size models: check the harness only")
    parser.add_argument("--report-only", action="store_true", help="only render the report from --results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one suite, write JSON here
    args = parser.parse_args(argv)
    args.suites = list(SUITES) if args.suite == "all" else [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)} or 'all'")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.vision_variants = [v for v in args.vision_variants.split(",") if v]
    bad = sorted(set(args.vision_variants) - {"hybrid", "siglip"})
    if bad:
        parser.error(f"unknown vision variant(s) {bad}; use hybrid and/or siglip")
    args.pythons = [p for p in args.pythons.split(",") if p]
    if args.cache_dir is None:
        from models import default_cache_dir

        args.cache_dir = default_cache_dir()
    if args.smoke:  # never overwrite the real results and report
        args.cache_dir = args.cache_dir / "smoke"
        args.results = args.cache_dir / "results.json"
        args.docs = args.cache_dir / "benchmarks.md"
    return args


def run_child(args) -> None:
    """Run one suite in this process and write its rows to args.child."""
    from common import load_average, setup_threads

    from transformers_dsvl import enable_fused_cpu_kernels, keep_freed_memory

    setup_threads(args.threads)
    # The memory suite measures fresh processes of its own, which keep glibc's defaults whatever this one does.
    keep = args.allocator == "keep-freed" and args.suites[0] != "memory"
    allocator = "keep-freed" if keep and keep_freed_memory() else "default"
    cpu_kernels = "none"
    if args.cpu_kernels == "fused" and args.suites[0] in SUITES_RUNNING_OUR_TOWERS:
        try:
            enable_fused_cpu_kernels()
            cpu_kernels = "fused"
        except RuntimeError as error:
            print(f"WARNING: running without the fused CPU kernels: {error}", flush=True)
            cpu_kernels = "none (build failed)"
    module = __import__(f"suite_{args.suites[0]}")
    before = load_average()
    start = time.time()
    rows = module.run(args, log=lambda message: print(message, flush=True))
    payload = {"rows": rows, "load_before": before, "load_after": load_average(), "seconds": time.time() - start,
               "allocator": allocator, "cpu_kernels": cpu_kernels}
    Path(args.child).write_text(json.dumps(payload, default=str))


def child_command(args, suite: str, output: Path) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--suite", suite, "--child", str(output),
               "--threads", str(args.threads), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
               "--new-tokens", str(args.new_tokens), "--allocator", args.allocator, "--cpu-kernels", args.cpu_kernels,
               "--batch-sizes", ",".join(map(str, args.batch_sizes)),
               "--vision-variants", ",".join(args.vision_variants), "--pythons", ",".join(args.pythons),
               "--memory-repeats", str(args.memory_repeats), "--cache-dir", str(args.cache_dir)]
    if args.smoke:
        # The child derives the smoke cache directory itself from the parent's (un-suffixed) one.
        command[command.index("--cache-dir") + 1] = str(args.cache_dir.parent)
        command.append("--smoke")
    return command


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    from common import machine_info
    from report import write_report

    results = json.loads(args.results.read_text()) if args.results.is_file() else {"suites": {}}
    if not args.report_only:
        results["machine"] = machine_info(args.threads)
        for suite in args.suites:
            print(f"=== {suite} (load average {os.getloadavg()[0]:.2f})", flush=True)
            child_out = args.results.with_name(f".{suite}.json")
            child_out.parent.mkdir(parents=True, exist_ok=True)
            command = child_command(args, suite, child_out)
            subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(HERE) + os.pathsep +
                                                    os.environ.get("PYTHONPATH", "")})
            payload = json.loads(child_out.read_text())
            child_out.unlink()
            payload["settings"] = {"threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
                                   "new_tokens": args.new_tokens, "allocator": payload.pop("allocator"),
                                   "cpu_kernels": payload.pop("cpu_kernels")}
            results["suites"][suite] = payload
            args.results.write_text(json.dumps(results, indent=1, default=str))
            print(f"=== {suite} done in {payload['seconds']:.0f} s (load {payload['load_before'][0]:.2f} -> "
                  f"{payload['load_after'][0]:.2f})", flush=True)
    write_report(results, args.docs, smoke=args.smoke)
    print(f"wrote {args.docs}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
