"""(c) Prefill of a one-image prompt and decoding, at the 1.3B shapes (SigLIP-L + 24-layer 2048-wide LM, 102400
vocabulary), batch 1 and 4: ours against transformers' `deepseek_vl` holding the same weight tensors.

One `generate` call per measurement, greedy, a fixed number of new tokens (`min_new_tokens` = `max_new_tokens`);
a streamer records when each token comes out, which splits the call into time-to-first-token (vision encoding +
prefill + first token) and the decode rate of the remaining tokens. Inputs come from each side's own processor,
prepared beforehand (preprocessing is suite (b)).
"""

from __future__ import annotations

import gc
import time

import torch
from transformers.generation.streamers import BaseStreamer

from common import Timing, count_flops, row, time_side_by_side
from models import load_side_by_side
from suite_preprocess import photo

SUITE = "generation"
QUESTION = "Describe this image in detail."


class TokenClock(BaseStreamer):
    """Timestamps of `generate`'s streamer calls: the prompt first, then one call per generated token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def one_image_prompt(processor) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def language_model_bytes(model) -> int:
    """Bytes one decoding step reads at least: every language-model weight and the output layer."""
    parameters = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in parameters if p is not embedding)


def run(args, log=print) -> list[dict]:
    ours, processor, theirs, their_processor = load_side_by_side(args, log)
    prompt = one_image_prompt(processor)
    new_tokens = args.new_tokens
    rows = []
    for batch in args.batch_sizes:
        images = [photo(1024, 768, seed) for seed in range(batch)]
        our_inputs = processor(text=[prompt] * batch, images=images, return_tensors="pt")
        their_inputs = their_processor(text=[prompt] * batch, images=images, return_tensors="pt")
        assert torch.equal(our_inputs["input_ids"], their_inputs["input_ids"]), "both sides must see the same ids"
        prompt_length = our_inputs["input_ids"].shape[1]
        clocks = {"ours": [], "upstream": []}
        outputs = {}

        def generate(name, model, inputs):
            def call():
                clock = TokenClock()
                start = time.perf_counter()
                outputs[name] = model.generate(
                    **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    streamer=clock, pad_token_id=processor.tokenizer.pad_token_id,
                )
                clocks[name].append((start, clock.times))
            return call

        log(f"  batch {batch}: prompt of {prompt_length} tokens ({ours.config.num_image_tokens} image tokens), "
            f"{new_tokens} new tokens")
        timings = time_side_by_side(
            {"ours": generate("ours", ours, our_inputs), "upstream": generate("upstream", theirs, their_inputs)},
            args.warmup, args.repeats, log,
        )
        same_tokens = torch.equal(outputs["ours"], outputs["upstream"])
        prefill_flops = count_flops(lambda: theirs(**their_inputs, logits_to_keep=1))
        with torch.inference_mode():
            cache = theirs(**their_inputs, use_cache=True, logits_to_keep=1).past_key_values
        step = their_inputs["input_ids"][:, -1:]
        mask = torch.cat([their_inputs["attention_mask"], torch.ones_like(step)], dim=1)
        decode_flops = count_flops(lambda: theirs(input_ids=step, attention_mask=mask, past_key_values=cache,
                                                  logits_to_keep=1))
        del cache
        for name in ("ours", "upstream"):
            runs = clocks[name][args.warmup:]  # the timed rounds
            first_token = Timing([times[1] - start for start, times in runs])
            decode_seconds = Timing([(times[-1] - times[1]) / (len(times) - 2) for _, times in runs])
            workload = f"1.3B, one-image prompt, batch {batch}"
            rows.append(row(SUITE, f"prefill (time to first token), batch {batch}", name, first_token,
                            batch=batch, prompt_tokens=prompt_length, flops=prefill_flops, same_tokens=same_tokens,
                            generate_median_s=timings[name].median, workload_group=workload))
            rows.append(row(SUITE, f"decode, batch {batch}", name, decode_seconds, batch=batch,
                            tokens_per_s=batch / decode_seconds.median, flops=decode_flops,
                            bytes_per_step=language_model_bytes(ours), workload_group=workload))
        log(f"  batch {batch}: same tokens from both: {same_tokens}")
        del our_inputs, their_inputs, outputs
        gc.collect()
    return rows
