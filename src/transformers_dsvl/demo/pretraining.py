"""What the paper starts from and the demo does not have: a pretrained LLM and pretrained vision towers.

DeepSeek-VL freezes a pretrained DeepSeek-LLM in stage 1, and pretrained SigLIP-L and SAM-B backbones throughout
stages 1-2. The demo builds small stand-ins first, on its own synthetic data:

- the LLM: next-token prediction on the text corpus (`pretrain_language_model`);
- both vision towers: caption-token prediction on image-caption pairs (`pretrain_vision_towers`): from each tower's
  attention-pooled output, a multi-label classifier predicts which tokens the image's caption contains. With only a
  few hundred distinct captions, a contrastive batch is mostly near-duplicate pairs; predicting the caption's tokens
  gives every attribute (colour, shape, count, position, word, digit, tallest bar) its own gradient. The real SAM-B
  is pretrained on segmentation, which the demo's data cannot teach; the warm-up gives the SAM-style tower the same
  role: features that the frozen backbone hands to stages 1-3.

The pooling heads and classifiers are discarded afterwards; only the towers' weights carry over.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

from ..training.freezing import apply_freezing


@dataclass
class WarmupResult:
    """Loss curve of a warm-up: `(step, mean loss over the last logging interval)`, and its wall time."""

    name: str
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def _train(
    name: str,
    parameters: list[nn.Parameter],
    loss_of_step: Callable[[int], torch.Tensor],
    steps: int,
    learning_rate: float,
    warmup_steps: int,
    log_every: int,
) -> WarmupResult:
    """AdamW (the recipe's betas), linear warm-up then cosine decay, gradient clipping at 1, a progress bar."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    result, window, start = WarmupResult(name), [], time.perf_counter()
    with tqdm(range(steps), desc=name, unit="step", dynamic_ncols=True) as bar:
        for step in bar:
            loss = loss_of_step(step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window.append(loss.item())
            if (step + 1) % log_every == 0 or step + 1 == steps:
                result.losses.append((step + 1, sum(window) / len(window)))
                bar.set_postfix(loss=f"{result.losses[-1][1]:.3f}")
                window = []
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------------------------------
# The LLM
# ---------------------------------------------------------------------------------------------------------------------
def pretrain_language_model(
    model,
    tokenizer,
    documents: list[str],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    max_length: int = 256,
    seed: int = 0,
    warmup_steps: int = 20,
    log_every: int = 10,
) -> WarmupResult:
    """Next-token prediction on `documents` (each ending with EOS), training only the language-model group."""
    apply_freezing(model, ("language_model",))
    model.train()
    rng = random.Random(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]

    def loss_of_step(step: int) -> torch.Tensor:
        texts = [documents[rng.randrange(len(documents))] + tokenizer.eos_token for _ in range(batch_size)]
        batch = tokenizer(texts, padding=True, padding_side="right", truncation=True, max_length=max_length,
                          return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss

    return _train("warm-up: LLM on the text corpus", parameters, loss_of_step, steps, learning_rate, warmup_steps,
                  log_every)


# ---------------------------------------------------------------------------------------------------------------------
# The vision towers
# ---------------------------------------------------------------------------------------------------------------------
class CaptionTokenHeads(nn.Module):
    """Per tower: SigLIP's attention-pooling head and a linear layer scoring every vocabulary token for "this token is
    in the image's caption" (caption-token prediction, a multi-label objective on image-caption pairs)."""

    def __init__(self, config, vocab_size: int):
        super().__init__()
        widths = [config.vision_config.hidden_size]
        if config.is_hybrid:
            widths.append(config.high_res_vision_config.output_channels)
        self.pools = nn.ModuleList(
            SiglipMultiheadAttentionPoolingHead(
                SiglipVisionConfig(hidden_size=width, intermediate_size=2 * width, num_attention_heads=4)
            )
            for width in widths
        )
        self.classifiers = nn.ModuleList(nn.Linear(width, vocab_size) for width in widths)

    def forward(self, tower_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Caption-token logits [num_images, vocab_size] per tower."""
        return [classifier(pool(features))
                for pool, classifier, features in zip(self.pools, self.classifiers, tower_features)]


def caption_token_targets(token_lists: list[list[int]], vocab_size: int) -> torch.Tensor:
    """Multi-hot [num_captions, vocab_size]: 1 where the token occurs in the caption."""
    targets = torch.zeros(len(token_lists), vocab_size)
    for row, ids in enumerate(token_lists):
        targets[row, ids] = 1.0
    return targets


def caption_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over the vocabulary, averaged over images."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def pretrain_vision_towers(
    model,
    processor,
    captions,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    warmup_steps: int = 20,
    log_every: int = 10,
) -> WarmupResult:
    """Train SigLIP (and, for the hybrid, the whole SAM-style tower) on caption-token prediction from `captions`, a
    dataset with `image` and `caption`. Only the towers change in `model`; the heads are dropped at the end."""
    config = model.config
    groups = ("low_res_vision", "high_res_vision", "high_res_adaptor") if config.is_hybrid else ("low_res_vision",)
    apply_freezing(model, groups)
    model.train()
    tokenizer = processor.tokenizer
    heads = CaptionTokenHeads(config, len(tokenizer))
    parameters = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    rng = random.Random(seed)
    inner = model.model

    def loss_of_step(step: int) -> torch.Tensor:
        rows = captions[sorted(rng.sample(range(len(captions)), batch_size))]
        pixels = processor.image_processor(rows["image"], return_tensors="pt")
        tower_features = [f for f in inner.get_vision_tower_features(**pixels) if f is not None]
        targets = caption_token_targets(tokenizer(rows["caption"], add_special_tokens=False)["input_ids"],
                                        len(tokenizer))
        return sum(caption_token_loss(logits, targets) for logits in heads(tower_features))

    name = "warm-up: SigLIP + SAM towers, caption tokens" if config.is_hybrid else "warm-up: SigLIP, caption tokens"
    return _train(name, parameters, loss_of_step, steps, learning_rate, warmup_steps, log_every)


__all__ = [
    "CaptionTokenHeads",
    "WarmupResult",
    "caption_token_loss",
    "caption_token_targets",
    "pretrain_language_model",
    "pretrain_vision_towers",
]
