"""Tokenizer and processor files of a conversion, in both directions.

The original ships `tokenizer.json` (+ `tokenizer_config.json`, `special_tokens_map.json`), a
`preprocessor_config.json` read by `VLMImageProcessor` and a `processor_config.json` read by `VLChatProcessor`.
The converted checkpoint carries a `DeepSeekVLProcessor` with the same settings: same tokenizer (with
`<image_placeholder>` at its original id and the pad token falling back to end-of-sentence, as the original pads),
the same image rule (size, minimum side, background colour, rescale, normalisation switch) and the `deepseek` chat
template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from ..configuration_dsvl import CLIP_MEAN, CLIP_STD, DeepSeekVLConfig
from ..image_processing_dsvl import DeepSeekVLImageProcessor
from ..processing_dsvl import DeepSeekVLProcessor
from ..tokenization_dsvl import IMAGE_TOKEN

PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# VLMImageProcessor's constructor defaults, which apply to fields a preprocessor_config.json leaves out.
ORIGINAL_IMAGE_PROCESSOR_DEFAULTS = dict(min_size=14, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
                                         rescale_factor=1.0 / 255.0, do_normalize=True)
# VLMImageProcessor paints the padding this grey when image_mean is null.
NULL_MEAN_BACKGROUND = (127, 127, 127)
# VLChatProcessor's constructor defaults (the published processor_config.json holds exactly these, plus 576 tokens).
ORIGINAL_PROCESSOR_DEFAULTS = dict(image_tag=IMAGE_TOKEN, add_special_token=False, sft_format="deepseek",
                                   mask_prompt=True, ignore_id=-100)
# The tokenizer class the original repositories name (VLChatProcessor accepts LlamaTokenizer / LlamaTokenizerFast).
ORIGINAL_TOKENIZER_CLASS = "LlamaTokenizerFast"


class ProcessorFilesError(ValueError):
    """The checkpoint's tokenizer or processor files are missing or hold settings this package cannot reproduce."""


@dataclass
class SpecialTokenIds:
    image: int
    bos: int
    eos: int
    pad: int


@dataclass
class OriginalProcessorFiles:
    tokenizer: PreTrainedTokenizerBase
    preprocessor: dict
    processor: dict
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ProcessorFilesError(
            f"{path} ({what}) is not valid JSON: {error}. Fix: restore the original file."
        ) from None


def _load_original_tokenizer(input_dir: Path) -> PreTrainedTokenizerBase:
    # AutoTokenizer also reads config.json, whose model_type `multi_modality` transformers does not know; its
    # warning about "instantiating a model of type ''" is noise here, so transformers' logging is quieted meanwhile.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(input_dir))
    finally:
        transformers_logging.set_verbosity(verbosity)


def load_original_processor_files(input_dir: str | Path) -> OriginalProcessorFiles:
    input_dir = Path(input_dir)
    notes: list[str] = []
    try:
        tokenizer = _load_original_tokenizer(input_dir)
    except (OSError, ValueError, TypeError) as error:
        raise ProcessorFilesError(
            f"Cannot load the tokenizer of {input_dir}: {error}. Fix: download the checkpoint's tokenizer.json, "
            "tokenizer_config.json and special_tokens_map.json next to its config.json."
        ) from None
    preprocessor_path = input_dir / PREPROCESSOR_CONFIG_FILE
    if not preprocessor_path.is_file():
        raise ProcessorFilesError(
            f"{input_dir} has no {PREPROCESSOR_CONFIG_FILE}; the image settings (size, mean, normalisation) come from "
            "it. Fix: download it from the checkpoint's Hub repository."
        )
    preprocessor = _read_json(preprocessor_path, "image processor settings")
    processor_path = input_dir / PROCESSOR_CONFIG_FILE
    if processor_path.is_file():
        processor = _read_json(processor_path, "processor settings")
    else:
        processor = {}
        notes.append(f"no {PROCESSOR_CONFIG_FILE}: VLChatProcessor's defaults apply (image tag {IMAGE_TOKEN!r}, "
                     "sft_format 'deepseek', one image token per SigLIP patch)")
    return OriginalProcessorFiles(tokenizer=tokenizer, preprocessor=preprocessor, processor=processor, notes=notes)


def special_token_ids(files: OriginalProcessorFiles) -> SpecialTokenIds:
    """The ids the converted config and generation config need, read from the original tokenizer."""
    tokenizer, processor = files.tokenizer, files.processor
    image_tag = processor.get("image_tag", IMAGE_TOKEN)
    if image_tag != IMAGE_TOKEN:
        raise ProcessorFilesError(
            f"processor_config.json sets image_tag={image_tag!r}; DeepSeek-VL's chat template and processor use "
            f"{IMAGE_TOKEN!r}. Fix: restore the original processor_config.json."
        )
    vocab = tokenizer.get_vocab()
    if IMAGE_TOKEN in vocab:
        image_id = vocab[IMAGE_TOKEN]
    else:
        # VLChatProcessor adds the tag at load time when the vocabulary lacks it; the converted tokenizer keeps it.
        image_id = len(tokenizer)
        files.notes.append(f"the tokenizer lacks {IMAGE_TOKEN!r}; it is added with id {image_id}, as the original "
                           "VLChatProcessor does when loading")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ProcessorFilesError(
            "The tokenizer defines no BOS or EOS token; DeepSeek-VL's prompts start with BOS and end turns with EOS. "
            "Fix: restore the original tokenizer_config.json / special_tokens_map.json."
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return SpecialTokenIds(image=image_id, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=pad)


def build_processor(files: OriginalProcessorFiles, config: DeepSeekVLConfig) -> DeepSeekVLProcessor:
    """The DeepSeekVLProcessor equivalent to the original VLChatProcessor + VLMImageProcessor of `files`."""
    settings = {**ORIGINAL_IMAGE_PROCESSOR_DEFAULTS, **files.preprocessor}
    for name in ORIGINAL_IMAGE_PROCESSOR_DEFAULTS:
        if name not in files.preprocessor:
            files.notes.append(f"{PREPROCESSOR_CONFIG_FILE} leaves out {name}; VLMImageProcessor's default "
                               f"{ORIGINAL_IMAGE_PROCESSOR_DEFAULTS[name]!r} applies")
    if "image_size" not in settings:
        raise ProcessorFilesError(f"{PREPROCESSOR_CONFIG_FILE} has no image_size (the original has no default). "
                                  "Fix: restore the original file.")
    if int(settings["image_size"]) != config.image_size:
        raise ProcessorFilesError(
            f"{PREPROCESSOR_CONFIG_FILE} resizes images to {settings['image_size']} px, but the model's "
            f"{'SAM' if config.is_hybrid else 'SigLIP'} tower takes {config.image_size} px. Fix: use the "
            "preprocessor_config.json that belongs to this checkpoint."
        )
    image_mean, image_std = settings["image_mean"], settings["image_std"]
    do_normalize = bool(settings["do_normalize"])
    if image_mean is None:
        # VLMImageProcessor: grey padding; it could not normalise with a null mean, so nothing is normalised.
        background = NULL_MEAN_BACKGROUND
        if do_normalize:
            files.notes.append("image_mean is null, so no normalisation happens in the processor (the original "
                               "could not normalise with a null mean)")
        do_normalize = False
        image_mean, image_std = config.low_res_image_mean, config.low_res_image_std  # unused without normalisation
    else:
        # VLMImageProcessor derives the padding colour from image_mean and ignores a stored background_color.
        background = tuple(int(m * 255) for m in image_mean)
    stored = files.preprocessor.get("background_color")
    if stored is not None and tuple(stored) != background:
        files.notes.append(f"{PREPROCESSOR_CONFIG_FILE} stores background_color {list(stored)}, but the original "
                           f"pads with {list(background)} (derived from image_mean); the latter is kept")
    if image_std is None:
        raise ProcessorFilesError(f"{PREPROCESSOR_CONFIG_FILE} has image_std null but image_mean set. Fix: restore "
                                  "the original file.")
    image_processor_settings = dict(
        image_size=int(settings["image_size"]),
        min_size=int(settings["min_size"]),
        image_mean=tuple(image_mean),
        image_std=tuple(image_std),
        rescale_factor=float(settings["rescale_factor"]),
        do_normalize=do_normalize,
        background_color=background,
    )
    if config.is_hybrid:
        image_processor_settings.update(
            low_res_image_size=config.vision_config.image_size,
            low_res_image_mean=tuple(config.low_res_image_mean),
            low_res_image_std=tuple(config.low_res_image_std),
        )
    try:
        image_processor = DeepSeekVLImageProcessor(**image_processor_settings)
    except (TypeError, ValueError) as error:
        raise ProcessorFilesError(
            f"{PREPROCESSOR_CONFIG_FILE} holds settings the image processor rejects: {error}"
        ) from None

    processor_settings = {**ORIGINAL_PROCESSOR_DEFAULTS, **files.processor}
    expected_tokens = processor_settings.get("num_image_tokens", config.num_image_tokens)
    if expected_tokens != config.num_image_tokens:
        raise ProcessorFilesError(
            f"{PROCESSOR_CONFIG_FILE} expands each image to {expected_tokens} tokens, but the model produces "
            f"{config.num_image_tokens} per image. Fix: use the processor_config.json of this checkpoint."
        )
    if processor_settings["add_special_token"]:
        raise ProcessorFilesError(
            f"{PROCESSOR_CONFIG_FILE} sets add_special_token=true (keep the tag token before the image tokens); the "
            "released models use false and this package's processor reproduces only that."
        )
    if processor_settings["sft_format"] != "deepseek":
        raise ProcessorFilesError(
            f"{PROCESSOR_CONFIG_FILE} uses sft_format={processor_settings['sft_format']!r}; the chat template "
            "reproduces the original 'deepseek' format only."
        )
    return DeepSeekVLProcessor(image_processor, files.tokenizer, num_image_tokens=config.num_image_tokens)


def set_tokenizer_class(directory: str | Path, class_name: str) -> None:
    """Name `class_name` in tokenizer_config.json and keep the extra special tokens where every transformers
    version reads them (transformers 5 writes a list under `extra_special_tokens`, which 4.x cannot load)."""
    path = Path(directory) / TOKENIZER_CONFIG_FILE
    if path.is_file():
        tokenizer_config = json.loads(path.read_text(encoding="utf-8"))
        tokenizer_config["tokenizer_class"] = class_name
        if isinstance(tokenizer_config.get("extra_special_tokens"), list):
            tokenizer_config["additional_special_tokens"] = tokenizer_config.pop("extra_special_tokens")
        path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# ours -> original
# ---------------------------------------------------------------------------------------------------------------------
def write_original_processor_files(
    input_dir: str | Path, output_dir: str | Path, config: DeepSeekVLConfig
) -> list[str]:
    """Tokenizer, preprocessor_config.json and processor_config.json as the original VLChatProcessor reads them.
    Returns notes (what could not be carried over)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    notes: list[str] = []
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(input_dir))
    except (OSError, ValueError, TypeError) as error:
        notes.append(f"no tokenizer written: the checkpoint's tokenizer does not load ({error})")
        return notes
    tokenizer.save_pretrained(str(output_dir))
    set_tokenizer_class(output_dir, ORIGINAL_TOKENIZER_CLASS)
    try:
        # transformers 4 saves the image settings in preprocessor_config.json, 5 nests them in processor_config.json.
        image_processor = DeepSeekVLImageProcessor.from_pretrained(str(input_dir))
    except (OSError, ValueError, TypeError) as error:
        image_processor = None
        notes.append(f"no {PREPROCESSOR_CONFIG_FILE} written: the checkpoint's image processor does not load ({error})")
    if image_processor is not None:
        mean = list(image_processor.image_mean)
        background = list(image_processor.effective_background_color)
        if background != [int(m * 255) for m in mean]:
            notes.append(f"the padding colour {background} cannot be expressed in the original format, which always "
                         f"pads with int(image_mean * 255) = {[int(m * 255) for m in mean]}")
        preprocessor = {
            "background_color": background,
            "do_normalize": image_processor.do_normalize,
            "image_mean": mean,
            "image_processor_type": "VLMImageProcessor",
            "image_size": image_processor.image_size,
            "image_std": list(image_processor.image_std),
            "min_size": image_processor.min_size,
            "processor_class": "VLChatProcessor",
            "rescale_factor": image_processor.rescale_factor,
        }
        (output_dir / PREPROCESSOR_CONFIG_FILE).write_text(json.dumps(preprocessor, indent=2) + "\n")
    processor = {**ORIGINAL_PROCESSOR_DEFAULTS, "num_image_tokens": config.num_image_tokens,
                 "processor_class": "VLChatProcessor"}
    (output_dir / PROCESSOR_CONFIG_FILE).write_text(json.dumps(dict(sorted(processor.items())), indent=2) + "\n")
    return notes


__all__ = [
    "OriginalProcessorFiles",
    "ProcessorFilesError",
    "SpecialTokenIds",
    "build_processor",
    "load_original_processor_files",
    "special_token_ids",
    "write_original_processor_files",
]
