"""(d) A follow-up turn about the same image (turn 2 of a chat) at the 1.3B shapes.

Ours: `ChatSession.ask(...)` after turn 1 was asked through the same session; it reuses the image features and the
KV cache of the conversation so far and prefills only the new tokens. Upstream: what a user of transformers' port
does, re-running the processor (image included) and `generate` on the whole conversation. Both start from the
same turn-1 state (our session's, restored from a snapshot before every measurement), generate the same number of
tokens greedily, and are timed from the question text to the answer text.
"""

from __future__ import annotations

import copy
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from common import Timing, row, time_side_by_side
from models import load_side_by_side
from suite_generation import TokenClock
from suite_preprocess import photo
from transformers_dsvl.chat import ChatSession

SUITE = "chat"
FIRST_QUESTION = "Describe this image in detail."
SECOND_QUESTION = "Which colours dominate it, and where?"
SESSION_STATE = ("messages", "images", "last_generated_ids", "last_reused_tokens", "_image_features", "_cache",
                 "_cached_ids")


class VocabularyLimit(LogitsProcessor):
    """Random weights put most probability on ids the small stand-in tokenizer does not have; keep generation inside
    its vocabulary so that answers are real text that goes back into the conversation."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, input_ids, scores):
        scores[:, self.size:] = float("-inf")
        return scores


def run(args, log=print) -> list[dict]:
    ours, processor, theirs, their_processor = load_side_by_side(args, log)
    new_tokens = args.new_tokens
    clock = TokenClock()
    generate_kwargs = dict(
        min_new_tokens=new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id,
        logits_processor=LogitsProcessorList([VocabularyLimit(len(processor.tokenizer))]), streamer=clock,
    )
    image = photo(1024, 768, 0)

    session = ChatSession(ours, processor, max_new_tokens=new_tokens, **generate_kwargs)
    with torch.inference_mode():
        session.ask(FIRST_QUESTION, images=[image])
    turn_one = {name: copy.deepcopy(getattr(session, name)) for name in SESSION_STATE}
    answers, first_token = {}, {"ours": [], "upstream": []}

    def ours_turn_two():
        for name, value in turn_one.items():
            setattr(session, name, copy.deepcopy(value))
        clock.times = []
        start = time.perf_counter()
        answers["ours"] = session.ask(SECOND_QUESTION)
        first_token["ours"].append(clock.times[1] - start)

    def upstream_turn_two():
        messages = turn_one["messages"] + [
            {"role": "user", "content": [{"type": "text", "text": SECOND_QUESTION}]}
        ]
        clock.times = []
        start = time.perf_counter()
        prompt = their_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = their_processor(text=prompt, images=[image], return_tensors="pt")
        output = theirs.generate(**inputs, max_new_tokens=new_tokens, **generate_kwargs)
        answers["upstream"] = their_processor.decode(output[0, inputs["input_ids"].shape[1]:],
                                                     skip_special_tokens=True)
        first_token["upstream"].append(clock.times[1] - start)

    timings = time_side_by_side({"ours": ours_turn_two, "upstream": upstream_turn_two}, args.warmup, args.repeats,
                                log)
    same_answer = answers["ours"] == answers["upstream"]
    prompt_tokens = len(session._cached_ids) + 1 - len(session.last_generated_ids)
    log(f"  turn 2: {prompt_tokens} prompt tokens, {session.last_reused_tokens} reused from the cache; "
        f"same answer from both: {same_answer}")
    rows = []
    for name, timing in timings.items():
        rows.append(row(SUITE, f"turn 2 ({new_tokens} new tokens), text in -> text out", name, timing,
                        prompt_tokens=prompt_tokens, reused_tokens=session.last_reused_tokens
                        if name == "ours" else 0, same_answer=same_answer))
        rows.append(row(SUITE, "turn 2, time to first token", name, Timing(first_token[name][args.warmup:])))
    return rows
