"""Command line of the converter: `dsvl convert ...` and `python conversion/convert_deepseek_vl_original.py ...`.

    dsvl convert --input_dir deepseek-vl-7b-chat --output_dir deepseek-vl-7b-chat-dsvl [--dtype auto] [--verify]
    dsvl convert --direction to-original --input_dir my-finetune --output_dir my-finetune-original
"""

from __future__ import annotations

import argparse
import sys

from .convert import DTYPES, command_line, convert_dsvl_to_original, convert_original_to_dsvl
from .original_format import CheckpointMismatchError, OriginalConfigError
from .processor_files import ProcessorFilesError
from .streaming import CheckpointFormatError, PickleCheckpointRefused
from .verify import VerificationError

DIRECTIONS = ("to-dsvl", "to-original")
# Failures a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (CheckpointMismatchError, OriginalConfigError, ProcessorFilesError, CheckpointFormatError,
               PickleCheckpointRefused, VerificationError, FileNotFoundError, FileExistsError, ValueError)


def add_convert_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = (
        "Convert an original deepseek-ai DeepSeek-VL checkpoint (config.json model_type 'multi_modality': "
        "deepseek-vl-1.3b/7b, base or chat) into the transformers_dsvl format, or back with --direction to-original. "
        "Every tensor is accounted for (unknown, missing or mis-shaped tensors are errors; the known unused ones are "
        "dropped by name and listed), tensors are streamed one at a time, and the output directory appears only "
        "when complete."
    )
    parser.add_argument("--input_dir", "--input-dir", required=True,
                        help="the source checkpoint directory (config.json, weights, tokenizer, processor configs)")
    parser.add_argument("--output_dir", "--output-dir", required=True,
                        help="where to write the converted checkpoint (must not exist or be empty, see --overwrite)")
    parser.add_argument("--direction", choices=DIRECTIONS, default="to-dsvl",
                        help="to-dsvl: original -> transformers_dsvl (default); to-original: back to the original "
                        "layout, e.g. for a fine-tuned model")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                        help="weight dtype of the output; auto keeps the stored dtype (default)")
    parser.add_argument("--max_shard_size", "--max-shard-size", default="5GB",
                        help="largest output shard, e.g. 5GB (default), 2GB, 500MB, 10GiB")
    parser.add_argument("--safe_serialization", "--safe-serialization", action=argparse.BooleanOptionalAction,
                        default=True, help="write safetensors (default); --no-safe_serialization writes pickle .bin")
    parser.add_argument("--allow-pickle", "--allow_pickle", dest="allow_pickle", action="store_true",
                        help="read pytorch_model.bin weights (torch.load with weights_only=True). Off by default: "
                        "unpickling can run code hidden in the file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --output_dir (only after the new checkpoint is complete)")
    parser.add_argument("--verify", action="store_true",
                        help="reload the result, compare every parameter with its source, run one forward pass on a "
                        "generated image and prompt (needs memory for the whole model)")
    parser.add_argument("--verify_device", "--verify-device", default=None,
                        help="device of the --verify forward pass (default: cuda when available, else cpu)")
    parser.add_argument("--push_to_hub", "--push-to-hub", metavar="REPO_ID", default=None,
                        help="upload the result to this Hugging Face Hub repository (needs network and a token)")
    parser.add_argument("--private", action="store_true", help="create the --push_to_hub repository as private")
    parser.add_argument("--source_repo_id", "--source-repo-id", default=None,
                        help="Hub id of the source for the model card (default: deepseek-ai/<dir name> when the "
                        "input directory carries a published repository's name)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main_convert(args: argparse.Namespace) -> int:
    log = (lambda message: None) if args.quiet else print
    try:
        if args.direction == "to-original":
            if args.verify or args.push_to_hub:
                raise ValueError("--verify and --push_to_hub apply to --direction to-dsvl only.")
            result = convert_dsvl_to_original(
                args.input_dir, args.output_dir, dtype=args.dtype, max_shard_size=args.max_shard_size,
                safe_serialization=args.safe_serialization, allow_pickle=args.allow_pickle, overwrite=args.overwrite,
                progress=not args.quiet, log=log,
            )
        else:
            result = convert_original_to_dsvl(
                args.input_dir, args.output_dir, dtype=args.dtype, max_shard_size=args.max_shard_size,
                safe_serialization=args.safe_serialization, allow_pickle=args.allow_pickle, overwrite=args.overwrite,
                verify=args.verify, verify_device=args.verify_device, push_to_hub=args.push_to_hub,
                private=args.private,
                source_repo_id=args.source_repo_id, command=command_line(), progress=not args.quiet, log=log,
            )
    except USER_ERRORS as error:
        print(f"dsvl convert: error: {error}", file=sys.stderr)
        return 1
    log(result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_convert_arguments(argparse.ArgumentParser(prog="convert_deepseek_vl_original"))
    return main_convert(parser.parse_args(argv))


__all__ = ["add_convert_arguments", "main", "main_convert"]
