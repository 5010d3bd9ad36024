"""Multi-turn chat with DeepSeek-VL that reuses what earlier turns computed.

Re-running `generate` on the whole conversation at every turn encodes every image again and prefills every earlier
token again; on a CPU that is seconds of vision encoding (SigLIP-L, plus SAM-B for the hybrid) and hundreds of
prefill tokens per turn. `ChatSession` keeps

- the **KV cache** of the token sequence it has already run (earlier prompts and answers), and at the next turn
  prefills only the tokens after the longest prefix that the new full conversation shares with it;
- the **image features** of every image of the conversation, so an image is encoded once even if its tokens ever
  had to be prefilled again.

It produces the same tokens as `model.generate(**processor(text=full_conversation, images=all_images), ...)` at
every turn: the conversation is re-rendered with the chat template and re-tokenised each turn (so an answer whose
text tokenises differently from the generated ids is handled exactly as a full re-run would see it), and the
cache is only trusted for the tokens that match.

    session = ChatSession(model, processor, max_new_tokens=256)
    session.ask("What is in this picture?", images=[image])
    session.ask("And what colour is it?")          # reuses the image and the KV cache of turn 1
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from .image_processing_dsvl import flatten_images


class ChatSession:
    """A conversation with one DeepSeek-VL model that reuses image features and the KV cache across turns.

    Args:
        model: a `DeepSeekVLForConditionalGeneration`.
        processor: its `DeepSeekVLProcessor` (chat template, tokenizer, image processor).
        max_new_tokens: answer length limit of every turn.
        **generate_kwargs: passed to `model.generate` at every turn (`do_sample`, `temperature`, `repetition_penalty`,
            `eos_token_id`, ...), exactly as one would pass them when re-running `generate` on the conversation.

    Attributes:
        messages: the conversation so far, in the transformers chat format (images as `{"type": "image", "image": ...}`
            parts), e.g. for `processor.apply_chat_template(session.messages, ...)`.
        images: the images of the conversation, in order of appearance.
        last_generated_ids: the token ids generated at the last turn (including a final EOS, if any).
        last_reused_tokens: how many prompt tokens the last turn took from the KV cache instead of prefilling.
    """

    def __init__(self, model, processor, max_new_tokens: int = 512, **generate_kwargs):
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
        for name in ("input_ids", "attention_mask", "past_key_values", "pixel_values", "high_res_pixel_values",
                     "inputs_embeds", "max_new_tokens"):
            if name in generate_kwargs:
                raise TypeError(
                    f"ChatSession sets {name!r} itself at every turn; remove it from the generate keyword arguments."
                )
        image_token_id = getattr(processor, "image_token_id", None)
        if image_token_id is None or getattr(processor, "num_image_tokens", None) is None:
            raise TypeError(
                f"processor must be a DeepSeekVLProcessor (with image_token_id and num_image_tokens), got "
                f"{type(processor).__name__}."
            )
        if image_token_id != model.config.image_token_id or processor.num_image_tokens != model.config.num_image_tokens:
            raise ValueError(
                f"The processor's image token ({image_token_id}, {processor.num_image_tokens} per image) does not "
                f"match the model's ({model.config.image_token_id}, {model.config.num_image_tokens} per image). Fix: "
                "use the processor saved with this checkpoint."
            )
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs
        self.reset()

    def reset(self) -> None:
        """Forget the conversation, its images and everything cached."""
        self.messages: list[dict[str, Any]] = []
        self.images: list[Any] = []
        self.last_generated_ids: list[int] = []
        self.last_reused_tokens = 0
        self._image_features: list[torch.Tensor] = []  # one [num_image_tokens, hidden] tensor per image
        self._cache: DynamicCache | None = None
        self._cached_ids: list[int] = []  # the tokens whose keys/values `_cache` holds, in order

    # -- one turn -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def ask(self, text: str, images=None) -> str:
        """Add a user message (`images` go before the text, as in the original's prompts) and return the answer."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}.")
        new_images = flatten_images(images)
        user_message = {
            "role": "user",
            "content": [{"type": "image", "image": image} for image in new_images] + [{"type": "text", "text": text}],
        }
        messages = self.messages + [user_message]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        input_ids = self._token_ids(prompt)

        self._encode_images(new_images)
        all_images = self.images + new_images
        reused = self._extend_cache(input_ids, num_images=len(all_images))

        device = self.model.device
        prompt_ids = torch.tensor([input_ids], device=device)
        output = self.model.generate(
            input_ids=prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            past_key_values=self._cache,
            max_new_tokens=self.max_new_tokens,
            **self.generate_kwargs,
        )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        generated = sequences[0, len(input_ids):].tolist()
        # The cache now holds every token but the last generated one (generation stops before running it).
        self._cached_ids = (input_ids + generated)[: self._cache.get_seq_length()]

        answer = self.processor.tokenizer.decode(generated, skip_special_tokens=True)
        self.messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        self.images = all_images
        self.last_generated_ids = generated
        self.last_reused_tokens = reused
        return answer

    # -- helpers ------------------------------------------------------------------------------------------------------
    def _token_ids(self, prompt: str) -> list[int]:
        """The processor's `input_ids` of one prompt: tokenised with BOS, each placeholder id expanded to
        `num_image_tokens` copies (without processing the images again)."""
        ids = self.processor.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        expanded = []
        for token_id in ids:
            expanded.extend([token_id] * (self.processor.num_image_tokens if token_id == self.processor.image_token_id
                                          else 1))
        return expanded

    def _encode_images(self, images: list) -> None:
        if not images:
            return
        pixels = self.processor.image_processor(images, return_tensors="pt")
        pixels = {name: value.to(self.model.device) for name, value in pixels.items()}
        features = self.model.get_image_features(**pixels)
        self._image_features.extend(features.unbind(0))

    def _image_spans(self, input_ids: list[int]) -> list[tuple[int, int]]:
        """(start, end) of every image's tokens, in order (adjacent images form one run, cut per image)."""
        per_image = self.processor.num_image_tokens
        image_token_id = self.processor.image_token_id
        spans, position = [], 0
        while position < len(input_ids):
            if input_ids[position] != image_token_id:
                position += 1
                continue
            end = position
            while end < len(input_ids) and input_ids[end] == image_token_id:
                end += 1
            if (end - position) % per_image:
                raise ValueError(
                    f"The prompt holds a run of {end - position} image tokens, not a multiple of {per_image}. The "
                    "image token id may not appear in message text; remove it."
                )
            spans.extend((start, start + per_image) for start in range(position, end, per_image))
            position = end
        return spans

    def _extend_cache(self, input_ids: list[int], num_images: int) -> int:
        """Bring the KV cache to all prompt tokens but the last one (which `generate` runs to get the first logits),
        reusing the longest valid cached prefix. Returns the number of reused tokens."""
        spans = self._image_spans(input_ids)
        if len(spans) != num_images:
            raise ValueError(
                f"The conversation has {num_images} image(s) but its prompt holds {len(spans)} image slot(s). The "
                "image token id may not appear in message text; remove it."
            )
        reusable = 0
        for cached, new in zip(self._cached_ids, input_ids):
            if cached != new:
                break
            reusable += 1
        reusable = min(reusable, len(input_ids) - 1)
        # Cached image tokens are only valid for the images that were encoded into the cache (a generated image
        # token id would otherwise pass for a new image), and an image is either wholly cached or wholly prefilled.
        cached_images = sum(1 for start, end in spans if end <= len(self._cached_ids))
        for index, (start, end) in enumerate(spans):
            if start < reusable and (end > reusable or index >= cached_images):
                reusable = start
                break

        if self._cache is None:
            self._cache = DynamicCache()
        elif self._cache.get_seq_length() > reusable:
            # A negative count (tokens to drop) is what both transformers 4.x and 5.x accept.
            self._cache.crop(reusable - self._cache.get_seq_length())

        stop = len(input_ids) - 1
        if stop > reusable:
            embeddings = self._prompt_embeddings(input_ids, spans, reusable, stop)
            self.model(inputs_embeds=embeddings, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        self._cached_ids = input_ids[:stop]
        return reusable

    def _prompt_embeddings(self, input_ids, spans, start: int, stop: int) -> torch.Tensor:
        """Input embeddings of input_ids[start:stop], image positions filled with the stored image features."""
        device = self.model.device
        ids = torch.tensor([input_ids[start:stop]], device=device)
        embeddings = self.model.get_input_embeddings()(ids)
        for image_index, (span_start, span_end) in enumerate(spans):
            if span_start >= start and span_end <= stop:
                features = self._image_features[image_index].to(embeddings.device, embeddings.dtype)
                embeddings[0, span_start - start: span_end - start] = features
        return embeddings


__all__ = ["ChatSession"]
