"""Processor of DeepSeek-VL: chat template, tokenisation with image-token expansion, batching, image processing.

It reproduces the original `VLChatProcessor`: the prompt is tokenised with BOS prepended once, then every
`<image_placeholder>` id is replaced by `num_image_tokens` copies of itself (576 in the release), and batches are
left-padded with the pad id (EOS when the tokenizer has none). Images are flat over the batch, in order of
appearance; the i-th placeholder of the batch is the i-th image.

The chat template renders the original `deepseek` conversation format byte for byte:

    <system prompt>\\n\\nUser: <image_placeholder>What is it?\\n\\nAssistant: A dog.<｜end▁of▁sentence｜>User: ...

This file is copied next to saved checkpoints for `trust_remote_code=True`: it imports only the standard library,
numpy, torch, transformers and the sibling files `image_processing_dsvl.py` and `tokenization_dsvl.py`.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import MultiModalData, ProcessorMixin
from transformers.utils import logging

from .image_processing_dsvl import DeepSeekVLImageProcessor, flatten_images
from .tokenization_dsvl import EOS_TOKEN, IMAGE_TOKEN, prepare_tokenizer

logger = logging.get_logger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)

# The original `deepseek` conversation template (reference section 3.1), as a Jinja chat template.
#
# - The system prompt (the default one, or the content of a first `system` message) is not one of the indexed
#   messages: it is followed by "\n\n", then the messages i = 0, 1, ... render as
#   `Role: content` + ("\n\n" if i is even else EOS), with content `.strip()`-ed; an empty content renders `Role:`.
#   The separator follows the index parity, not the role.
# - A message's content string is its parts joined with nothing in between, an image part being
#   `<image_placeholder>` where it stands: exactly the string the original expects (README: placeholder right
#   before the text).
# - The original strips the finished string; since contents are already stripped, that only removes leading
#   whitespace of the system prompt and the "\n\n" after a final even-indexed message.
# - `add_generation_prompt` appends `Assistant:` (no trailing space: the model writes the leading space).
# - `{% generation %}` covers " answer" + its separator, so the assistant mask holds the answer tokens (the
#   first one carries the space) and the end-of-sentence token.
CHAT_TEMPLATE = (
    "{%- set default_system_prompt = '" + DEFAULT_SYSTEM_PROMPT + "' -%}"
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- elif content is iterable and content is not mapping -%}"
    "{%- for part in content -%}"
    "{%- if part.type == 'text' -%}{{- part.text -}}"
    "{%- elif part.type == 'image' -%}" + IMAGE_TOKEN + ""
    "{%- else -%}{{- raise_exception('DeepSeek-VL messages hold text and image parts only; got a part of type \"'"
    " ~ part.type ~ '\".') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if messages and (messages[0].role | lower) == 'system' -%}"
    "{%- set system_prompt = render_content(messages[0].content) -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_prompt = default_system_prompt -%}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- if not turns and not add_generation_prompt -%}"
    "{{- system_prompt | trim -}}"
    "{%- else -%}"
    "{%- if system_prompt -%}{{- (system_prompt ~ '\\n\\n').lstrip() -}}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = message.role | lower -%}"
    "{%- if role == 'user' -%}{%- set name = 'User' -%}"
    "{%- elif role == 'assistant' -%}{%- set name = 'Assistant' -%}"
    "{%- elif role == 'system' -%}{{- raise_exception('Only the first message may be a system message.') -}}"
    "{%- else -%}{{- raise_exception('DeepSeek-VL supports the roles system, user and assistant; got \"' ~ "
    "message.role ~ '\".') -}}"
    "{%- endif -%}"
    "{%- set text = render_content(message.content) | trim -%}"
    "{%- set separator = '\\n\\n' if loop.index0 % 2 == 0 else '" + EOS_TOKEN + "' -%}"
    "{%- if loop.last and not add_generation_prompt and loop.index0 % 2 == 0 -%}{%- set separator = '' -%}"
    "{%- endif -%}"
    "{%- if not text -%}{{- name ~ ':' -}}"
    "{%- elif role == 'assistant' -%}{{- name ~ ':' -}}"
    "{%- generation -%}{{- ' ' ~ text ~ separator -}}{%- endgeneration -%}"
    "{%- else -%}{{- name ~ ': ' ~ text ~ separator -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
    "{%- endif -%}"
)

_TEXT_KWARGS = (
    "padding",
    "padding_side",
    "truncation",
    "max_length",
    "pad_to_multiple_of",
    "add_special_tokens",
    "return_attention_mask",
    "return_offsets_mapping",
    "return_mm_token_type_ids",
    "return_text_replacement_offsets",
    "return_token_type_ids",
    "verbose",
)
_IMAGE_KWARGS = DeepSeekVLImageProcessor.config_fields + ("return_low_res_view",)
_NESTED_KWARGS = ("text_kwargs", "images_kwargs", "common_kwargs", "videos_kwargs", "audio_kwargs")
# A tokenizer's model_max_length above this means "no limit" (transformers' VERY_LARGE_INTEGER sentinel).
_NO_LENGTH_LIMIT = int(1e20)


class DeepSeekVLProcessor(ProcessorMixin):
    r"""
    Processor of DeepSeek-VL (arXiv 2403.05525), equivalent to the original `VLChatProcessor`.

    Args:
        image_processor ([`DeepSeekVLImageProcessor`]):
            The image processor.
        tokenizer ([`PreTrainedTokenizerFast`]):
            The tokenizer. It is prepared with `prepare_tokenizer` (in place): `<image_placeholder>` is added when
            missing (with a warning), the pad token falls back to EOS, and the tokenizer pads on the left.
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to the original `deepseek` conversation format (`CHAT_TEMPLATE`).
        num_image_tokens (`int`, *optional*, defaults to 576):
            Image tokens per image, `(siglip_image_size / patch_size) ** 2` (`config.num_image_tokens`).
        image_token (`str`, *optional*, defaults to `"<image_placeholder>"`):
            The placeholder that marks an image in the text.
    """

    # transformers 4.x finds the sub-processors through these; 5.x reads them from the `__init__` signature.
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    return_mm_token_type_ids = False

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        num_image_tokens: int = 576,
        image_token: str = IMAGE_TOKEN,
    ):
        # By name: with trust_remote_code the class may come from a copy of this package's file.
        if not any(base.__name__ == "DeepSeekVLImageProcessor" for base in type(image_processor).__mro__):
            raise TypeError(
                f"image_processor must be a DeepSeekVLImageProcessor, got {type(image_processor).__name__}. Build one "
                "with DeepSeekVLImageProcessor(...) or DeepSeekVLImageProcessor.from_pretrained(path)."
            )
        if tokenizer is None:
            raise TypeError("tokenizer is required: pass the DeepSeek-VL tokenizer (AutoTokenizer.from_pretrained).")
        if isinstance(num_image_tokens, bool) or not isinstance(num_image_tokens, int) or num_image_tokens <= 0:
            raise ValueError(
                f"num_image_tokens must be a positive integer, got {num_image_tokens!r}; use config.num_image_tokens "
                "(576 for the released models)."
            )
        if image_token != IMAGE_TOKEN:
            raise ValueError(
                f"image_token must be {IMAGE_TOKEN!r} (the chat template writes it and the model was trained with "
                f"it), got {image_token!r}."
            )
        prepare_tokenizer(tokenizer)
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if chat_template is None:
            chat_template = CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_model_config(cls, config, tokenizer, **image_processor_kwargs) -> "DeepSeekVLProcessor":
        """Processor matching a `DeepSeekVLConfig` (image sizes, token count), around `tokenizer`.

        The image-token id of the tokenizer must equal `config.image_token_id`.
        """
        image_processor = DeepSeekVLImageProcessor.from_model_config(config, **image_processor_kwargs)
        processor = cls(image_processor, tokenizer, num_image_tokens=config.num_image_tokens)
        if processor.image_token_id != config.image_token_id:
            raise ValueError(
                f"The tokenizer's {IMAGE_TOKEN!r} id is {processor.image_token_id} but config.image_token_id is "
                f"{config.image_token_id}. Build the config with image_token_id={processor.image_token_id}."
            )
        return processor

    # -- loading ---------------------------------------------------------------------------------------------------
    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # Load our own image processor class directly instead of going through the Auto registry, so loading works
        # in transformers 4.x and 5.x whether or not the classes are registered (e.g. with trust_remote_code).
        image_processor = DeepSeekVLImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        try:
            tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        except ValueError as error:
            # transformers 5 saves plain fast tokenizers as "TokenizersBackend", a class transformers 4 lacks.
            if "TokenizersBackend" not in str(error):
                raise
            tokenizer = PreTrainedTokenizerFast.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Save the processor (tokenizer files, processor config, `chat_template.jinja`); see `ProcessorMixin`.

        transformers 5 records a plain fast tokenizer as `"tokenizer_class": "TokenizersBackend"` and its extra
        special tokens as a list under `extra_special_tokens`, neither of which transformers 4 can load; they are
        rewritten as `PreTrainedTokenizerFast` (the same class in transformers 5) and `additional_special_tokens`
        (read by both), so the checkpoint loads with both versions. (With `push_to_hub=True` the upload happens
        before this rewrite.)
        """
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        tokenizer_config = os.path.join(save_directory, "tokenizer_config.json")
        if os.path.isfile(tokenizer_config):
            with open(tokenizer_config, encoding="utf-8") as file:
                config = json.load(file)
            portable = dict(config)
            if portable.get("tokenizer_class") == "TokenizersBackend":
                portable["tokenizer_class"] = "PreTrainedTokenizerFast"
            if isinstance(portable.get("extra_special_tokens"), list):
                # transformers 5 writes a list here; transformers 4 expects a dict here and the list under
                # additional_special_tokens, which transformers 5 also reads.
                portable["additional_special_tokens"] = portable.pop("extra_special_tokens")
            if portable != config:
                config = portable
                with open(tokenizer_config, "w", encoding="utf-8") as file:
                    file.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return files

    @classmethod
    def from_args_and_dict(cls, args, processor_dict: dict[str, Any], **kwargs):
        # transformers 5 nests the image processor's settings in processor_config.json; transformers 4 would pass
        # that dict on as the image_processor argument, so drop the sub-processor entries (already loaded in args).
        processor_dict = {key: value for key, value in processor_dict.items() if key not in cls.attributes}
        return super().from_args_and_dict(args, processor_dict, **kwargs)

    # -- properties used by transformers, TRL, vLLM and lmms-eval -------------------------------------------------
    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] + list(self.image_processor.model_input_names)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens per image (vLLM's Transformers backend): always `num_image_tokens`, one patch each,
        whatever the image size (every image is resized and padded to one square)."""
        vision_data = {}
        if image_sizes is not None:
            vision_data["num_image_tokens"] = [self.num_image_tokens] * len(image_sizes)
            vision_data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**vision_data)

    # -- main call -------------------------------------------------------------------------------------------------
    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        videos=None,
        audio=None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenise `text` (expanding each `<image_placeholder>` into `num_image_tokens` image tokens) and process
        `images`.

        Args:
            images: one image, a flat list in order of appearance over the batch, or one list per sample
                (`[[img], [], [img, img]]`). PIL images, numpy arrays, torch tensors or paths.
            text: a string or a list of strings, each with one `<image_placeholder>` per image.
            videos, audio: not supported; `None` or empty.
            padding (`bool | str`, defaults to `True`): `True`/`"longest"`, `"max_length"`, or `False`.
            padding_side (`str`, defaults to `"left"`): `"left"` (the original, needed for generation) or `"right"`.
            truncation (`bool`, defaults to `False`) / max_length: truncate on the tokenizer's truncation side;
                raises if that would remove any image token.
            pad_to_multiple_of, add_special_tokens (defaults to `True`: BOS prepended once), return_attention_mask,
            return_offsets_mapping, return_mm_token_type_ids, return_tensors (`"pt"`, `"np"` or `None`).
            Image-processor arguments (`return_low_res_view`, `do_normalize`, ...) are passed on to it.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask`, and `pixel_values` (SigLIP-only) or
            `high_res_pixel_values` (hybrid) when there are images; optionally `offset_mapping` (character spans in
            the given text; every image token carries its placeholder's span) and `mm_token_type_ids` (1 on image
            tokens).
        """
        kwargs = self._flatten_kwargs(kwargs)
        legacy_audio = kwargs.pop("audios", None)
        if legacy_audio is not None and audio is None:
            audio = legacy_audio
        for name, value in (("videos", videos), ("audio", audio)):
            if value is not None and len(flatten_images(value)) > 0:
                raise ValueError(f"DeepSeek-VL takes images and text only; got {name}. Remove the {name} input.")

        return_tensors = kwargs.pop("return_tensors", None)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported. Use 'pt', 'np' or None.")
        text_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in _TEXT_KWARGS}
        image_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in _IMAGE_KWARGS}
        if kwargs.pop("sanitize_control_tokens", False):
            raise ValueError("sanitize_control_tokens=True is not supported by the DeepSeek-VL processor.")
        if kwargs:
            raise TypeError(
                f"DeepSeekVLProcessor got unknown arguments {sorted(kwargs)}. Text arguments: "
                f"{', '.join(_TEXT_KWARGS)}; image arguments: {', '.join(_IMAGE_KWARGS)}; and return_tensors."
            )

        if text is None:
            if images is None:
                raise ValueError("DeepSeekVLProcessor needs `text`, `images`, or both.")
            return self.image_processor(flatten_images(images), return_tensors=return_tensors, **image_kwargs)

        texts = self._as_text_list(text)
        placeholder_counts = [sample.count(self.image_token) for sample in texts]
        flat_images = self._match_images_to_text(images, placeholder_counts)

        data = self._tokenize(texts, placeholder_counts, **text_kwargs)
        if flat_images:
            data.update(self.image_processor(flat_images, return_tensors=None, **image_kwargs))
        return BatchFeature(data=self._to_tensors(data, return_tensors))

    # -- helpers of __call__ ---------------------------------------------------------------------------------------
    @staticmethod
    def _flatten_kwargs(kwargs: dict) -> dict:
        """Merge the transformers-style nested `text_kwargs` / `images_kwargs` / `common_kwargs` into one dict."""
        flat = {key: value for key, value in kwargs.items() if key not in _NESTED_KWARGS}
        for nested in _NESTED_KWARGS:
            for key, value in (kwargs.get(nested) or {}).items():
                if key in flat and flat[key] != value:
                    raise ValueError(f"{key!r} is given twice with different values (top level and in {nested}).")
                flat[key] = value
        return flat

    @staticmethod
    def _as_text_list(text) -> list[str]:
        if isinstance(text, str):
            return [text]
        if isinstance(text, (list, tuple)) and len(text) > 0 and all(isinstance(sample, str) for sample in text):
            return list(text)
        raise TypeError(
            "`text` must be a string or a non-empty list of strings (pre-tokenised input is not supported: the "
            f"image placeholders must be expanded by the processor); got {type(text).__name__}."
        )

    def _match_images_to_text(self, images, placeholder_counts: list[int]) -> list:
        """Flat list of images in order of appearance, checked against the placeholders of each sample."""
        total = sum(placeholder_counts)
        is_per_sample = (
            isinstance(images, (list, tuple))
            and len(images) == len(placeholder_counts)
            and len(images) > 0
            and all(isinstance(sample_images, (list, tuple)) for sample_images in images)
        )
        if is_per_sample:
            for index, (sample_images, count) in enumerate(zip(images, placeholder_counts)):
                found = len(flatten_images(sample_images))
                if found != count:
                    raise ValueError(
                        f"Sample {index} has {count} {self.image_token} placeholder(s) but {found} image(s). Put "
                        f"one {self.image_token} in the text (or one {{'type': 'image'}} part in the chat) per image."
                    )
        flat = flatten_images(images)
        if len(flat) != total:
            where = ", ".join(f"sample {i}: {c}" for i, c in enumerate(placeholder_counts))
            raise ValueError(
                f"The text has {total} {self.image_token} placeholder(s) ({where}) but {len(flat)} image(s) were "
                f"given. Pass exactly one image per placeholder, in order of appearance."
            )
        return flat

    def _tokenize(
        self,
        texts: list[str],
        placeholder_counts: list[int],
        padding: bool | str = True,
        padding_side: str | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool | None = None,
        return_offsets_mapping: bool = False,
        return_mm_token_type_ids: bool | None = None,
        return_text_replacement_offsets: bool = False,
        return_token_type_ids: bool | None = None,
        verbose: bool = True,
    ) -> dict[str, Any]:
        # `return_text_replacement_offsets` (transformers 5) describes placeholders expanded in the *text*; here the
        # text is never rewritten (ids are expanded after tokenising) and `offset_mapping` refers to the given
        # text, so there is nothing to shift and no replacement offsets are returned.
        del return_text_replacement_offsets, return_token_type_ids, verbose
        padding_side = "left" if padding_side is None else padding_side
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        if return_mm_token_type_ids is None:
            return_mm_token_type_ids = self.return_mm_token_type_ids

        encoding = self.tokenizer(
            texts,
            add_special_tokens=add_special_tokens,
            padding=False,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_offsets_mapping=return_offsets_mapping,
        )
        all_ids, all_offsets = [], []
        for index, ids in enumerate(encoding["input_ids"]):
            found = ids.count(self.image_token_id)
            if found != placeholder_counts[index]:
                raise ValueError(
                    f"Sample {index}: the text has {placeholder_counts[index]} {self.image_token} placeholder(s) but "
                    f"the tokenizer produced {found} image-token id(s) ({self.image_token_id}). The tokenizer must "
                    f"treat {self.image_token} as one special token: run prepare_tokenizer(tokenizer)."
                )
            offsets = encoding["offset_mapping"][index] if return_offsets_mapping else [None] * len(ids)
            expanded_ids, expanded_offsets = [], []
            for token_id, offset in zip(ids, offsets):
                copies = self.num_image_tokens if token_id == self.image_token_id else 1
                expanded_ids.extend([token_id] * copies)
                expanded_offsets.extend([tuple(offset) if offset is not None else None] * copies)
            all_ids.append(expanded_ids)
            all_offsets.append(expanded_offsets)

        limit = self._truncation_length(truncation, max_length)
        if limit is not None:
            for index in range(len(all_ids)):
                all_ids[index], all_offsets[index] = self._truncate(index, all_ids[index], all_offsets[index], limit)

        target = self._padded_length([len(ids) for ids in all_ids], padding, max_length, pad_to_multiple_of)
        pad_id = self.tokenizer.pad_token_id
        data = {"input_ids": [], "attention_mask": []}
        if return_offsets_mapping:
            data["offset_mapping"] = []
        if return_mm_token_type_ids:
            data["mm_token_type_ids"] = []
        for ids, offsets, sample in zip(all_ids, all_offsets, texts):
            pad = max(0, (target or len(ids)) - len(ids))
            # Zero-width offsets for padding, placed so that the starts stay sorted (transformers 4.x bisects them).
            pad_offset = (0, 0) if padding_side == "left" else (len(sample), len(sample))
            arrange = (lambda real, fill: fill + real) if padding_side == "left" else (lambda real, fill: real + fill)
            data["input_ids"].append(arrange(ids, [pad_id] * pad))
            data["attention_mask"].append(arrange([1] * len(ids), [0] * pad))
            if return_offsets_mapping:
                data["offset_mapping"].append(arrange(offsets, [pad_offset] * pad))
            if return_mm_token_type_ids:
                types = [1 if token_id == self.image_token_id else 0 for token_id in ids]
                data["mm_token_type_ids"].append(arrange(types, [0] * pad))
        if return_attention_mask is False:
            del data["attention_mask"]
        return data

    def _truncation_length(self, truncation, max_length) -> int | None:
        if truncation in (None, False, "do_not_truncate"):
            return None
        if truncation not in (True, "longest_first", "only_first"):
            raise ValueError(f"truncation={truncation!r} is not supported; use True, False or 'longest_first'.")
        if max_length is None:
            max_length = self.tokenizer.model_max_length
            if max_length is None or max_length >= _NO_LENGTH_LIMIT:
                return None
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}.")
        return max_length

    def _truncate(self, index: int, ids: list[int], offsets: list, limit: int):
        if len(ids) <= limit:
            return ids, offsets
        image_positions = [position for position, token_id in enumerate(ids) if token_id == self.image_token_id]
        if self.tokenizer.truncation_side == "left":
            kept = slice(len(ids) - limit, len(ids))
            needed = len(ids) - image_positions[0] if image_positions else 0
        else:
            kept = slice(0, limit)
            needed = image_positions[-1] + 1 if image_positions else 0
        if needed > limit:
            raise ValueError(
                f"Truncating sample {index} ({len(ids)} tokens, {len(image_positions) // self.num_image_tokens} "
                f"image(s) of {self.num_image_tokens} tokens) to max_length={limit} would cut image tokens. Raise "
                f"max_length to at least {needed}, shorten the text, use fewer images, or pass truncation=False."
            )
        return ids[kept], offsets[kept]

    @staticmethod
    def _padded_length(lengths: list[int], padding, max_length, pad_to_multiple_of) -> int | None:
        if padding in (False, None, "do_not_pad"):
            return None
        if padding in (True, "longest"):
            target = max(lengths)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length; pass max_length=... or padding=True.")
            target = max(max_length, max(lengths))
        else:
            raise ValueError(f"padding={padding!r} is not supported; use True, 'longest', 'max_length' or False.")
        if pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        return target

    @staticmethod
    def _to_tensors(data: dict, return_tensors: str | None) -> dict:
        if return_tensors is None:
            return data
        lengths = {len(row) for row in data["input_ids"]}
        if len(lengths) > 1:
            raise ValueError(
                f"The sequences have different lengths {sorted(lengths)} and cannot form a tensor. Pass padding=True "
                "(the default) or return_tensors=None."
            )
        converted = {}
        for key, value in data.items():
            array = np.asarray(value if key != "offset_mapping" else [[tuple(o) for o in row] for row in value])
            if key in ("input_ids", "attention_mask", "mm_token_type_ids", "offset_mapping"):
                array = array.astype(np.int64)
            else:
                array = array.astype(np.float32)
            converted[key] = torch.from_numpy(array) if return_tensors == "pt" else array
        return converted

    # -- chat template and decoding --------------------------------------------------------------------------------
    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """Render (and optionally tokenise) conversations with the `deepseek` template; see `ProcessorMixin`.

        The template does not write the BOS string (the original adds BOS when it encodes the prompt), so when
        tokenising, BOS is added exactly once per sample: `add_special_tokens` is ignored here. (TRL passes
        `add_special_tokens=False` to avoid a double BOS with templates that write it; obeying it would drop the BOS
        the model was trained with.) A custom template that writes BOS itself gets no second one.
        """
        processor_kwargs = kwargs.get("processor_kwargs")
        ignored = "add_special_tokens" in kwargs or (
            isinstance(processor_kwargs, dict) and "add_special_tokens" in processor_kwargs
        )
        if ignored:
            logger.info(
                "DeepSeekVLProcessor.apply_chat_template ignores add_special_tokens: BOS is added once unless the "
                "rendered prompt already starts with it."
            )
            kwargs.pop("add_special_tokens", None)
            if isinstance(processor_kwargs, dict):
                kwargs["processor_kwargs"] = {k: v for k, v in processor_kwargs.items() if k != "add_special_tokens"}
        return super().apply_chat_template(_with_list_contents(conversation), chat_template=chat_template, **kwargs)

    def _adjust_assistant_masks_indices(self, processed_dict, generation_indices):
        """`ProcessorMixin`'s assistant mask (transformers 5.x), the same mask computed per span on whole tensors:
        its loop over every token of every sample was half the time of a TRL SFT batch (about 20 ms of 40)."""
        offset_mapping = processed_dict.pop("offset_mapping")
        input_ids = processed_dict["input_ids"]
        replacement_offsets = processed_dict.pop("text_replacement_offsets", None)
        if replacement_offsets is None or len(replacement_offsets) == 0:
            replacement_offsets = [[]] * len(input_ids)
        assistant_masks = []
        for i in range(len(input_ids)):
            offsets = torch.as_tensor(np.asarray(offset_mapping[i], dtype=np.int64)).reshape(-1, 2)
            token_starts, token_ends = offsets[:, 0], offsets[:, 1]
            mask = torch.zeros(len(input_ids[i]), dtype=torch.bool)
            placeholder_ends = [r["span"][1] for r in replacement_offsets[i]]
            chars_gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacement_offsets[i]]
            for span in generation_indices[i]:
                # Shift the span past any placeholders expanded before it; zero-width tokens never overlap it.
                start_char, end_char = (
                    char + chars_gained[bisect.bisect_right(placeholder_ends, char)] for char in span
                )
                mask[: len(token_starts)] |= (token_starts < end_char) & (token_ends > start_char)
            assistant_masks.append(mask.to(torch.int64).tolist())
        processed_dict["assistant_masks"] = assistant_masks
        return processed_dict

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Decode generated ids: a batch (2-D) gives a list of strings, one sequence (1-D) a string."""
        if isinstance(generated_outputs, (torch.Tensor, np.ndarray)):
            generated_outputs = generated_outputs.tolist()
        if len(generated_outputs) > 0 and isinstance(generated_outputs[0], (list, tuple)):
            return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
        return self.tokenizer.decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


def _with_list_contents(conversation):
    """Copy of the conversation(s) with string contents as one text part each (the template renders both forms
    alike; transformers 4.x's tokenising `apply_chat_template` only reads list contents)."""

    def convert(messages):
        if not isinstance(messages, (list, tuple)):
            return messages  # e.g. a transformers `Chat` object: left to transformers
        converted = []
        for message in messages:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                message = {**message, "content": [{"type": "text", "text": message["content"]}]}
            converted.append(message)
        return converted

    if isinstance(conversation, (list, tuple)) and conversation and isinstance(conversation[0], (list, tuple)):
        return [convert(messages) for messages in conversation]
    return convert(conversation)


__all__ = ["CHAT_TEMPLATE", "DEFAULT_SYSTEM_PROMPT", "DeepSeekVLProcessor"]
