"""Sequence packing of the stage-2 language-only data (Table 4: packing in stage 2 only).

Documents are tokenised as `BOS + text + EOS` and packed into rows of at most `max_length` tokens with TRL's
`pack_dataset`:

* `"bfd_split"` (default): best-fit-decreasing bins that keep document boundaries; documents longer than a row are
  split into row-sized fragments (no token is lost). Each row records its documents' lengths (`seq_lengths`).
* `"bfd"`: the same, but an over-long document is truncated to one row.
* `"wrapped"`: documents are concatenated and cut every `max_length` tokens (the classic pretraining packing);
  documents attend to their predecessors in the row.

With the `bfd*` strategies the collator gives every document its own position ids (restarting at 0) and no attention
mask, from which transformers builds a block-diagonal causal mask (its packed-sequence detection, for eager, SDPA and
flex attention; flash-attention uses the position ids as variable-length boundaries): a packed document then sees
exactly what it would see alone, and the first token of a document is never trained to follow the previous one.
"""

from __future__ import annotations

import torch

PACKING_STRATEGIES = ("bfd_split", "bfd", "wrapped")


def tokenize_documents(dataset, tokenizer, text_column: str = "text", map_kwargs: dict | None = None):
    """`input_ids` = BOS + text + EOS per document (the tokenizer adds BOS, as DeepSeek-LLM's does); other columns
    are dropped."""
    from .data import column_names

    columns = column_names(dataset)
    if text_column not in columns:
        raise ValueError(
            f"The language-only dataset has no {text_column!r} column (columns: {sorted(columns)}). Fix: name the "
            "text column 'text' or pass text_column=..."
        )
    eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token; documents must end with one. Set tokenizer.eos_token.")

    def tokenize(batch):
        encoded = tokenizer(batch[text_column], add_special_tokens=True, return_attention_mask=False)
        return {"input_ids": [ids + [eos_token_id] for ids in encoded["input_ids"]]}

    return dataset.map(tokenize, batched=True, remove_columns=sorted(columns), **(map_kwargs or {}))


def pack_documents(dataset, tokenizer, max_length: int, strategy: str = "bfd_split", text_column: str = "text",
                   map_kwargs: dict | None = None):
    """Tokenise (`tokenize_documents`) and pack a text-only dataset (map-style or streaming) into rows of at most
    `max_length` tokens. Rows hold `input_ids` and, for the `bfd*` strategies, `seq_lengths`."""
    from trl.data_utils import pack_dataset

    if strategy not in PACKING_STRATEGIES:
        raise ValueError(f"Unknown packing strategy {strategy!r}. Fix: use one of {PACKING_STRATEGIES}.")
    if max_length <= 1:
        raise ValueError(f"Packing needs max_length > 1, got {max_length}.")
    tokenized = tokenize_documents(dataset, tokenizer, text_column, map_kwargs)
    return pack_dataset(tokenized, seq_length=max_length, strategy=strategy, map_kwargs=map_kwargs)


def position_ids_from_lengths(seq_lengths: list[int], total_length: int) -> list[int]:
    """Positions restarting at 0 for every document; the padding after the last one counts as one more segment."""
    positions = []
    for length in seq_lengths:
        positions.extend(range(length))
    positions.extend(range(total_length - len(positions)))
    return positions


def collate_packed_rows(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch packed rows (right padding). Labels are the inputs, -100 on padding and, when the rows record their
    documents (`seq_lengths`), on the first token of every document; then `position_ids` restart per document and
    no attention mask is returned, so that documents cannot attend to each other."""
    length = max(len(example["input_ids"]) for example in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    isolate = all("seq_lengths" in example for example in examples)
    position_ids = torch.zeros((len(examples), length), dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        if isolate:
            lengths = [int(n) for n in example["seq_lengths"]]
            if sum(lengths) != len(ids):
                raise ValueError(
                    f"A packed row has {len(ids)} tokens but its seq_lengths sum to {sum(lengths)}. Fix: pack with "
                    "pack_documents (or TRL's pack_dataset) and keep the seq_lengths column."
                )
            position_ids[row] = torch.tensor(position_ids_from_lengths(lengths, length))
    if isolate:
        labels[position_ids == 0] = -100
        labels[attention_mask == 0] = -100
        # No attention mask: transformers derives the block-diagonal causal mask from the restarting position ids
        # (it only does so without a mask and without a cache, hence use_cache=False).
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "use_cache": False}
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


__all__ = [
    "PACKING_STRATEGIES",
    "collate_packed_rows",
    "pack_documents",
    "position_ids_from_lengths",
    "tokenize_documents",
]
