"""`dsvl`: the package's command line. Each subcommand lives with its library code; this file only dispatches."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, add-arguments function, main function, one-line help, pip extra it needs)
SUBCOMMANDS = {
    "demo": ("transformers_dsvl.demo.cli", "add_demo_arguments", "main_demo",
             "train a tiny DeepSeek-VL from scratch on generated data (all three stages), evaluate it, chat with it",
             "training"),
    "chat": ("transformers_dsvl.chat_cli", "add_chat_arguments", "main_chat",
             "chat with a checkpoint, one-shot or interactive, images kept across turns", None),
    "to-upstream": ("transformers_dsvl.conversion.upstream_cli", "add_to_upstream_arguments", "main_to_upstream",
                    "convert a checkpoint of this package to transformers' own deepseek_vl / deepseek_vl_hybrid", None),
    "from-upstream": ("transformers_dsvl.conversion.upstream_cli", "add_from_upstream_arguments",
                      "main_from_upstream",
                      "convert a transformers deepseek_vl / deepseek_vl_hybrid checkpoint into this package", None),
    "train": ("transformers_dsvl.training.cli", "add_train_arguments", "main_train",
              "run one stage of the paper's three-stage training recipe", "training"),
    "convert": ("transformers_dsvl.conversion.cli", "add_convert_arguments", "main_convert",
                "convert an original deepseek-ai DeepSeek-VL checkpoint into this package's format", None),
    "eval": ("transformers_dsvl.evaluation.cli", "add_eval_arguments", "main_eval",
             "evaluate a checkpoint on local benchmark files (MMBench, POPE, ScienceQA, SEED, OCRBench, MMMU, VQA)",
             "eval"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (training, evaluation and the demo pull in heavy
    optional dependencies that the other subcommands do not need)."""
    parser = argparse.ArgumentParser(prog="dsvl", description="DeepSeek-VL for Hugging Face Transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, add_arguments, main_name, help_text, extra) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            if (error.name or "").startswith("transformers_dsvl"):
                raise  # our own module failing to import is a bug to see, not a missing extra
            hint = f"pip install 'transformers_dsvl[{extra}]'" if extra else "reinstall transformers_dsvl"
            subparser.set_defaults(handler=_missing_dependency(name, error, hint))
            continue
        getattr(module, add_arguments)(subparser)
        subparser.set_defaults(handler=getattr(module, main_name))
    return parser


def _missing_dependency(command: str, error: ImportError, hint: str):
    def handler(_args):
        raise SystemExit(f"dsvl {command}: a dependency is missing ({error}). Fix: {hint}")

    return handler


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if arg in SUBCOMMANDS), None)
    args = build_parser(command).parse_args(argv)
    result = args.handler(args)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
