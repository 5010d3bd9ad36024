"""`dsvl train`: run one stage of the recipe from a YAML config and/or flags.

    dsvl train --stage 2 --config training/configs/stage2_7b.yaml --model runs/stage1 --output-dir runs/stage2
    accelerate launch --config_file training/accelerate/ddp.yaml -m transformers_dsvl.training.cli --stage 2 ...

Precedence: the preset (`--preset` or the YAML's `preset:`), then the YAML file, then the flags, then `--set`.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from .config import STAGE_PRESETS, StageConfig

_FLAG_FIELDS = (
    "model_name_or_path", "processor_name_or_path", "output_dir", "max_steps", "learning_rate",
    "per_device_train_batch_size", "global_batch_size", "resume_from_checkpoint", "push_to_hub", "hub_model_id",
    "seed",
)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--stage", type=int, choices=(1, 2, 3),
                        help="1: aligner warm-up, 2: joint VL pretraining, 3: SFT (or `stage:` in the YAML config)")
    parser.add_argument("--config", help="YAML stage config (see training/configs/)")
    parser.add_argument("--preset", choices=sorted(STAGE_PRESETS),
                        help="start from a preset: the paper's hyperparameters or `cpu` (tiny runs)")
    parser.add_argument("--model", dest="model_name_or_path", help="checkpoint to start from")
    parser.add_argument("--processor", dest="processor_name_or_path", help="processor (default: the model's)")
    parser.add_argument("--output-dir", dest="output_dir")
    parser.add_argument("--multimodal-data", nargs="+", metavar="PATH", help="image-text data (stages 1-2)")
    parser.add_argument("--text-data", nargs="+", metavar="PATH", help="language-only data (stage 2)")
    parser.add_argument("--sft-data", nargs="+", metavar="PATH", help="conversation data (stage 3)")
    parser.add_argument("--max-steps", dest="max_steps", type=int)
    parser.add_argument("--learning-rate", dest="learning_rate", type=float)
    parser.add_argument("--per-device-train-batch-size", dest="per_device_train_batch_size", type=int)
    parser.add_argument("--global-batch-size", dest="global_batch_size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--lora", action="store_true", help="stage 3: train LoRA adapters on the language model")
    parser.add_argument("--qlora", action="store_true", help="stage 3: QLoRA (4-bit LM; CUDA + bitsandbytes)")
    parser.add_argument("--resume-from-checkpoint", dest="resume_from_checkpoint", nargs="?", const=True,
                        metavar="CHECKPOINT", help="resume (a checkpoint folder, or the last one in output-dir)")
    parser.add_argument("--push-to-hub", dest="push_to_hub", action="store_true", default=None)
    parser.add_argument("--hub-model-id", dest="hub_model_id")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set any stage-config field (value parsed as YAML), e.g. --set language_ratio=0.6")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def config_from_args(args: argparse.Namespace) -> StageConfig:
    values: dict = {}
    if args.config:
        with open(args.config, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"dsvl train: {args.config} must hold a YAML mapping of stage-config fields.")
    if args.stage is not None:
        if "stage" in values and values["stage"] != args.stage:
            raise SystemExit(f"dsvl train: --stage {args.stage} contradicts `stage: {values['stage']}` in "
                             f"{args.config}. Fix: drop one of them.")
        values["stage"] = args.stage
    if "stage" not in values:
        raise SystemExit("dsvl train: say which stage to run: --stage 1|2|3 (or `stage:` in the --config file).")
    if args.preset:
        values["preset"] = args.preset
    for name in _FLAG_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    for flag, name in (("multimodal_data", "multimodal_data"), ("text_data", "text_data"), ("sft_data", "sft_data")):
        if getattr(args, flag):
            values[name] = list(getattr(args, flag))
    if args.lora or args.qlora:
        values["lora"] = {**(values.get("lora") or {}), "load_in_4bit": bool(args.qlora)}
    for override in args.overrides:
        key, separator, raw = override.partition("=")
        if not separator or not key:
            raise SystemExit(f"dsvl train: --set expects KEY=VALUE, got {override!r}.")
        values[key.strip()] = yaml.safe_load(raw)
    try:
        return StageConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"dsvl train: invalid stage config: {error}") from error


def main_train(args: argparse.Namespace) -> int:
    from .recipe import run_stage

    config = config_from_args(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    result = run_stage(config)
    if result.trainer.is_world_process_zero():
        losses = result.losses()
        final = f"final logged loss {losses[-1][1]:.4f} at step {losses[-1][0]}; " if losses else ""
        print(f"dsvl train: stage {config.stage} done; {final}{result.freezing.summary()}")
        print(f"dsvl train: model and processor saved to {result.output_dir}"
              + (f"; merged LoRA checkpoint in {result.merged_dir}" if result.merged_dir else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsvl train", description="Run one stage of the DeepSeek-VL recipe.")
    add_train_arguments(parser)
    return main_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
