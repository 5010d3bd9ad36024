"""Command lines of the conversion to and from transformers' own DeepSeek-VL ports (`deepseek_vl`,
`deepseek_vl_hybrid`). The work is done by `transformers_dsvl.conversion.upstream`; this file only parses arguments
and reports."""

from __future__ import annotations

import argparse

from .upstream import UpstreamConversionResult, from_upstream, to_upstream


def _add_common_arguments(parser: argparse.ArgumentParser, source: str, target: str) -> None:
    parser.add_argument("--input_dir", required=True, help=f"{source} checkpoint directory (config.json + weights).")
    parser.add_argument("--output_dir", required=True, help=f"where to write the {target} checkpoint.")
    parser.add_argument("--max_shard_size", default="5GB", help="largest weight file, e.g. 5GB or 500MiB.")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty output directory (only once the new checkpoint is complete).")


def add_to_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common_arguments(parser, "transformers_dsvl", "transformers deepseek_vl / deepseek_vl_hybrid")


def add_from_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common_arguments(parser, "transformers deepseek_vl / deepseek_vl_hybrid", "transformers_dsvl")


def _report(result: UpstreamConversionResult) -> int:
    print(f"Wrote {result.num_tensors} tensors ({result.model_type}) to {result.output_dir}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def main_to_upstream(args: argparse.Namespace) -> int:
    return _report(to_upstream(args.input_dir, args.output_dir, max_shard_size=args.max_shard_size,
                               overwrite=args.overwrite))


def main_from_upstream(args: argparse.Namespace) -> int:
    return _report(from_upstream(args.input_dir, args.output_dir, max_shard_size=args.max_shard_size,
                                 overwrite=args.overwrite))


def run_to_upstream(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a transformers_dsvl checkpoint into transformers' deepseek_vl / deepseek_vl_hybrid format."
    )
    add_to_upstream_arguments(parser)
    return main_to_upstream(parser.parse_args(argv))


def run_from_upstream(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a transformers deepseek_vl / deepseek_vl_hybrid checkpoint into transformers_dsvl."
    )
    add_from_upstream_arguments(parser)
    return main_from_upstream(parser.parse_args(argv))


__all__ = ["add_from_upstream_arguments", "add_to_upstream_arguments", "main_from_upstream", "main_to_upstream",
           "run_from_upstream", "run_to_upstream"]
