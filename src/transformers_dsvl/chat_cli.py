"""`dsvl chat`: one-shot or interactive multi-turn chat with any DeepSeek-VL checkpoint.

Images given with `--image` go before the first question (as in the original's prompts) and stay in the
conversation; in interactive mode
`/image PATH` attaches an image to the next question and `/reset` starts over. The session reuses image features
and the KV cache of earlier turns (`ChatSession`), so a follow-up question does not re-encode the image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The original's CLI defaults (reference section 1.8): greedy when temperature is 0.
DEFAULT_MAX_NEW_TOKENS = 512


def add_chat_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="checkpoint directory (this package's format, with processor)")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="image for the first question; repeat for several images (order = placeholder order)")
    parser.add_argument("--prompt", default=None,
                        help="ask this one question and exit; without it, chat interactively on standard input")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the original README's setting)")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="load through the checkpoint's own code instead of the installed package")
    parser.add_argument("--fused-cpu-kernels", action="store_true",
                        help="float32 CPU inference through the package's fused attention kernels "
                        "(enable_fused_cpu_kernels: compiled once, about 30 s; needs a C++ compiler and ninja)")
    return parser


def generation_kwargs(args: argparse.Namespace) -> dict:
    if args.temperature > 0:
        return {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p,
                "repetition_penalty": args.repetition_penalty}
    return {"do_sample": False, "repetition_penalty": args.repetition_penalty}


def load_session(args: argparse.Namespace):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import transformers_dsvl  # noqa: F401  (registers the Auto classes)

    from .chat import ChatSession

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"dsvl chat: {model_dir} has no config.json. Fix: pass a checkpoint directory "
                         "(e.g. the demo's runs/demo/checkpoint or the output of `dsvl convert`).")
    if args.fused_cpu_kernels:
        try:
            transformers_dsvl.enable_fused_cpu_kernels()
        except RuntimeError as error:
            raise SystemExit(f"dsvl chat: {error} (Or leave out --fused-cpu-kernels.)") from error
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype,
                                                        trust_remote_code=args.trust_remote_code).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=args.trust_remote_code)
    return ChatSession(model, processor, max_new_tokens=args.max_new_tokens, **generation_kwargs(args))


def open_images(paths: list[str]):
    from PIL import Image

    images = []
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"dsvl chat: image {path!r} does not exist. Fix: give the path of an image file.")
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def main_chat(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    session = load_session(args)
    pending_images = open_images(args.image)
    if args.prompt is not None:
        print(session.ask(args.prompt, images=pending_images or None),
              file=stdout)
        return 0

    print("dsvl chat: type a question; /image PATH attaches an image, /reset starts over, /quit ends.", file=stdout)
    while True:
        print("User: ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            session.reset()
            pending_images = []
            print("(conversation cleared)", file=stdout)
            continue
        if line.startswith("/image "):
            pending_images += open_images([line[len("/image "):].strip()])
            print(f"({len(pending_images)} image(s) attached to the next question)", file=stdout)
            continue
        answer = session.ask(line, images=pending_images or None)
        pending_images = []
        print(f"Assistant: {answer}", file=stdout, flush=True)
