"""`dsvl demo`: train a tiny hybrid DeepSeek-VL from scratch on synthetic data (warm-ups, stages 1-3), evaluate it on
held-out images, answer a few questions through the pipeline, and save a checkpoint `dsvl chat` can talk to."""

from __future__ import annotations

import argparse

from .run import DemoSettings


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--output-dir", default="dsvl-demo",
                        help="where data, plots and the checkpoint (OUTPUT_DIR/model) go (default: ./dsvl-demo)")
    parser.add_argument("--preset", default="full", choices=sorted(DemoSettings.PRESETS),
                        help="full: the documented run (about 9.5 minutes on 2 cores); "
                             "quick: the test suite's 90-second variant, shape scenes only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR/model")
    return parser


def main_demo(args: argparse.Namespace) -> int:
    from .run import run_demo

    settings = DemoSettings.preset(args.preset, output_dir=args.output_dir, seed=args.seed, threads=args.threads,
                                   overwrite=args.overwrite)
    result = run_demo(settings)
    print(f"\nHeld-out accuracy ({len(result.scores.predictions)} questions on unseen images):\n")
    print(result.scores.table())
    print(f"\nTrue answers' loss (nats per answer): {result.reliance['answer_loss_with_images']:.3f} with the images, "
          f"{result.reliance['answer_loss_with_blank_images']:.3f} with blank images.")
    print("\nThrough pipeline('image-text-to-text'):")
    for example in result.examples:
        print(f"  Q: {example['question']}\n  A: {example['answer']!r}   (truth: {example['truth']})")
    print(f"\nWall time {result.wall_seconds / 60:.1f} min, peak RSS {result.peak_rss_gib:.2f} GiB.")
    print(f"Checkpoint, model card and metrics: {result.model_dir}; loss curves: {result.output_dir / 'plots'}")
    print(f"Chat with it: dsvl chat --model {result.model_dir} --image IMAGE.png --prompt 'What colour is the shape?'")
    return 0


__all__ = ["add_demo_arguments", "main_demo"]
