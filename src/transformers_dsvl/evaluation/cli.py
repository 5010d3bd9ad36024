"""`dsvl eval`: evaluate a checkpoint on a benchmark stored locally in its public format.

    dsvl eval --task pope --data DIR --model DIR [--output DIR] [--batch-size 8] [--limit N]

The dispatcher (`transformers_dsvl.cli`) calls `add_eval_arguments(parser)` and `main_eval(args)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .benchmarks import TASKS, get_benchmark
from .formats import BenchmarkFormatError
from .parsing import YES_NO_RULES
from .report import render_markdown
from .runner import AnswerCacheMismatchError, evaluate_benchmark

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--task", required=True, choices=TASKS, help="the benchmark.")
    parser.add_argument("--data", required=True,
                        help="benchmark file or folder in its public format (see docs/evaluation.md).")
    parser.add_argument("--model", required=True, help="checkpoint folder saved by transformers_dsvl (model + "
                        "processor), e.g. the demo's output or a converted original checkpoint.")
    parser.add_argument("--output", default=None,
                        help="folder for answers.jsonl, results.json and summary.md (default: eval_results/<task>). "
                             "Running again with the same folder resumes.")
    parser.add_argument("--image-root", default=None,
                        help="folder of the benchmark's images when they are not where the format puts them.")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8).")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer length budget (default: the benchmark's, see docs/evaluation.md).")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions.")
    parser.add_argument("--split", default="test", help="ScienceQA split (default test).")
    parser.add_argument("--no-circular", action="store_true",
                        help="MMBench: plain accuracy on the stored questions instead of CircularEval.")
    parser.add_argument("--yes-no-rule", default="vlmevalkit", choices=YES_NO_RULES,
                        help="POPE answer extraction (default vlmevalkit).")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of MMMU's random fallback letter (default 0).")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu).")
    parser.add_argument("--dtype", default="auto", choices=_DTYPES,
                        help="model dtype (default: bfloat16 on GPU as the reference inference, float32 on CPU).")
    parser.add_argument("--overwrite", action="store_true", help="discard answers already in --output.")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar.")
    parser.add_argument("--no-evaluate-lib", action="store_true",
                        help="compute metrics without trying the `evaluate` library.")
    return parser


def load_model_and_processor(model_dir: str | Path, device: str = "auto", dtype: str = "auto"):
    """A transformers_dsvl checkpoint folder as (model, processor), on `device` in `dtype`."""
    import torch

    from ..modeling_dsvl import DeepSeekVLForConditionalGeneration
    from ..processing_dsvl import DeepSeekVLProcessor

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a checkpoint folder (no config.json). Pass a folder written by save_pretrained, "
            "e.g. `dsvl convert` output or the demo's checkpoint."
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    processor = DeepSeekVLProcessor.from_pretrained(model_dir)
    # Loaded directly in the target dtype: a 7B checkpoint in float32 would need twice the memory first.
    model = DeepSeekVLForConditionalGeneration.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    return model, processor


def main_eval(args: argparse.Namespace) -> int:
    benchmark = get_benchmark(args.task, circular=not args.no_circular, yes_no_rule=args.yes_no_rule,
                              split=args.split, seed=args.seed)
    output = args.output or str(Path("eval_results") / args.task)
    try:
        model, processor = load_model_and_processor(args.model, args.device, args.dtype)
        report = evaluate_benchmark(
            benchmark, args.data, model, processor, output,
            image_root=args.image_root, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            limit=args.limit, overwrite=args.overwrite, progress=not args.no_progress,
            use_evaluate=not args.no_evaluate_lib, model_name=str(Path(args.model).resolve()),
        )
    except (BenchmarkFormatError, AnswerCacheMismatchError, FileNotFoundError) as error:
        raise SystemExit(f"dsvl eval: {error}") from error
    except KeyboardInterrupt:
        print(f"\nInterrupted. Answers so far are saved in {output}; run the same command again to resume.",
              file=sys.stderr)
        return 130
    print(render_markdown(report))
    print(f"Full report: {Path(output) / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_eval_arguments(argparse.ArgumentParser(prog="dsvl eval", description=__doc__.splitlines()[0]))
    return main_eval(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
