"""Tokenizer helpers for DeepSeek-VL: the special tokens of the release, a small trainable stand-in tokenizer for
tests and demos, and `prepare_tokenizer`, which gives any tokenizer what the DeepSeek-VL processor relies on.

The released tokenizer is DeepSeek-LLM's byte-level BPE (100016 entries) with `<｜begin▁of▁sentence｜>`
(100000) prepended by `encode`, `<｜end▁of▁sentence｜>` (100001) never appended, and `<image_placeholder>`
(100015) as an additional special token. No pad token is defined; the original processor pads
with the EOS id.

This file is copied next to saved checkpoints (the processor imports it), so at module level it imports only the
standard library and transformers. `train_tokenizer` imports the `tokenizers` library (a transformers dependency)
when called.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import AddedToken, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import logging

logger = logging.get_logger(__name__)

# U+FF5C (fullwidth vertical bar) and U+2581 (lower one eighth block), exactly as in the released tokenizer.
BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
IMAGE_TOKEN = "<image_placeholder>"

# Ids in the released 100016-entry tokenizer (the tiny tokenizers made by `train_tokenizer` use 0, 1, 2).
RELEASED_BOS_TOKEN_ID = 100000
RELEASED_EOS_TOKEN_ID = 100001
RELEASED_IMAGE_TOKEN_ID = 100015


def _image_added_token() -> AddedToken:
    # As released: special, matched on the raw text (normalized=False), no stripping of neighbouring spaces.
    return AddedToken(IMAGE_TOKEN, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    min_frequency: int = 1,
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer laid out like DeepSeek-LLM's, for tests and demos.

    The special tokens take the first ids, in the order BOS (0), EOS (1), `<image_placeholder>` (2), which is what
    the `"tiny"` model presets expect (`bos_token_id=0`, `eos_token_id=1`, `image_token_id=2`). Like the release,
    encoding prepends BOS and appends nothing, no pad token is set (`prepare_tokenizer` makes EOS the pad token),
    and byte-level pre-tokenisation keeps every input encodable and offsets exact.

    Args:
        texts: training corpus (any iterable of strings; it is consumed once).
        vocab_size: total vocabulary size including the 256 byte symbols and the 3 special tokens.
        min_frequency: minimum pair frequency for a merge.
        model_max_length: the tokenizer's `model_max_length`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    minimum = len(pre_tokenizers.ByteLevel.alphabet()) + 3
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level tokenizer needs at least {minimum} entries "
            f"(256 byte symbols + 3 special tokens). Pass vocab_size >= {minimum}."
        )
    if isinstance(texts, str):
        raise TypeError("`texts` must be an iterable of strings, not a single string: wrap it in a list.")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[
            AddedToken(BOS_TOKEN, special=True, normalized=False),
            AddedToken(EOS_TOKEN, special=True, normalized=False),
            _image_added_token(),
        ],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # BOS once in front, nothing at the end (LLaMA style, as the release's add_bos_token=True, add_eos_token=False).
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN}:0 $A:0",
        pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({"additional_special_tokens": [_image_added_token()]})
    return fast


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make `tokenizer` usable by `DeepSeekVLProcessor` (in place, and returned).

    - adds `<image_placeholder>` as an additional special token (normalized=False) when it is missing, with a
      warning, because the vocabulary (and so the model's embedding matrix) grows by one;
    - sets the pad token to the EOS token when none is defined, as the original processor pads with EOS;
    - sets `padding_side="left"`: the original left-pads every batch, and generation (also the batching of
      `pipeline(...)`, which pads with the tokenizer's own side) needs left padding.
    """
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(
            f"Expected a transformers tokenizer (PreTrainedTokenizerBase), got {type(tokenizer).__name__}. "
            "Load one with AutoTokenizer.from_pretrained(...) or make one with train_tokenizer(...)."
        )
    vocab = tokenizer.get_vocab()
    if IMAGE_TOKEN not in vocab:
        logger.warning(
            f"The tokenizer has no {IMAGE_TOKEN!r} token; adding it as an additional special token with id "
            f"{len(tokenizer)}. Resize the model's token embeddings (model.resize_token_embeddings(len(tokenizer))) "
            "and set config.image_token_id to that id."
        )
    if IMAGE_TOKEN not in tokenizer.all_special_tokens:
        # Also for a vocabulary entry that is not registered as special: it must never be split or skipped wrongly.
        # Keep the existing additional special tokens (transformers 4 names them additional_special_tokens,
        # transformers 5 extra_special_tokens; setting the list replaces it in both).
        existing = getattr(tokenizer, "additional_special_tokens", None)
        if existing is None:
            existing = getattr(tokenizer, "extra_special_tokens", None)
        existing = list(existing) if isinstance(existing, (list, tuple)) else []
        tokenizer.add_special_tokens({"additional_special_tokens": existing + [_image_added_token()]})
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "The tokenizer defines neither a pad token nor an EOS token; DeepSeek-VL pads with EOS. Set "
                f"tokenizer.eos_token (the release uses {EOS_TOKEN!r}) before building the processor."
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    # init_kwargs is what save_pretrained writes, so a saved tokenizer keeps the left padding.
    tokenizer.init_kwargs["padding_side"] = "left"
    return tokenizer


__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "IMAGE_TOKEN",
    "RELEASED_BOS_TOKEN_ID",
    "RELEASED_EOS_TOKEN_ID",
    "RELEASED_IMAGE_TOKEN_ID",
    "prepare_tokenizer",
    "train_tokenizer",
]
