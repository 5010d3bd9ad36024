"""Held-out evaluation of the demo model: accuracy per question type next to chance, the answers' loss with and
without the image (does the model read it?), and examples answered through `pipeline("image-text-to-text")`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import PIL.Image
import torch
from tqdm.auto import tqdm

from .synthetic import ANSWERS, QUESTION_TYPES


def user_turn(image, question: str) -> list[dict]:
    """One user message with the image first, in the Hugging Face chat format."""
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def first_word(answer: str) -> str:
    """The answer's first word, lower-cased without punctuation ("Red." -> "red")."""
    words = re.findall(r"[a-z0-9]+", answer.lower())
    return words[0] if words else ""


@dataclass
class HeldOutScores:
    """Accuracy per question type, its chance level (one over the number of possible answers), and every answer."""

    accuracy: dict[str, float]
    chance: dict[str, float]
    counts: dict[str, int]
    overall: float
    overall_chance: float
    predictions: list[dict] = field(default_factory=list)

    def table(self) -> str:
        """A Markdown table: type | questions | accuracy | chance."""
        lines = ["| question type | questions | accuracy | chance |", "|---|---:|---:|---:|"]
        for question_type in self.accuracy:
            lines.append(f"| {question_type} | {self.counts[question_type]} | {self.accuracy[question_type]:.1%} | "
                         f"{self.chance[question_type]:.1%} |")
        lines.append(f"| **all** | {sum(self.counts.values())} | **{self.overall:.1%}** | {self.overall_chance:.1%} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"overall_accuracy": self.overall, "overall_chance": self.overall_chance,
                "accuracy": self.accuracy, "chance": self.chance, "questions": self.counts}


@torch.no_grad()
def answer_questions(model, processor, images, questions, batch_size: int = 50, max_new_tokens: int = 4) -> list[str]:
    """Greedy answers to one question per image, in batches (left-padded prompts, the chat template's format)."""
    model.eval()
    answers = []
    for start in tqdm(range(0, len(questions), batch_size), desc="held-out questions", unit="batch",
                      dynamic_ncols=True):
        batch_images = images[start:start + batch_size]
        prompts = [processor.apply_chat_template(user_turn(None, question), add_generation_prompt=True)
                   for question in questions[start:start + batch_size]]
        inputs = processor(text=prompts, images=[[image] for image in batch_images], padding=True,
                           return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=processor.tokenizer.pad_token_id)
        answers += processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1]:])
    return answers


def score_held_out(model, processor, test, batch_size: int = 50) -> HeldOutScores:
    """Answer every held-out question (`test`: `image`, `question`, `answer`, `question_type`) and score the
    answer's first word against the truth."""
    answers = answer_questions(model, processor, test["image"], test["question"], batch_size=batch_size)
    hits: dict[str, list[bool]] = {question_type: [] for question_type in QUESTION_TYPES}
    predictions = []
    for row, answer in zip(test, answers):
        correct = first_word(answer) == row["answer"]
        hits[row["question_type"]].append(correct)
        predictions.append({"question_type": row["question_type"], "question": row["question"],
                            "answer": answer, "truth": row["answer"], "correct": correct})
    hits = {question_type: values for question_type, values in hits.items() if values}
    accuracy = {question_type: sum(values) / len(values) for question_type, values in hits.items()}
    chance = {question_type: 1 / len(ANSWERS[question_type]) for question_type in hits}
    counts = {question_type: len(values) for question_type, values in hits.items()}
    total = sum(counts.values())
    return HeldOutScores(
        accuracy=accuracy,
        chance=chance,
        counts=counts,
        overall=sum(sum(values) for values in hits.values()) / total,
        overall_chance=sum(chance[t] * counts[t] for t in hits) / total,
        predictions=predictions,
    )


def blank_like(image):
    """A light-grey canvas of the image's size: the same prompt with nothing to see."""
    return PIL.Image.new("RGB", image.size, (240, 240, 240))


@torch.no_grad()
def answer_loss(model, processor, images, questions, answers, batch_size: int = 50) -> float:
    """Mean cross-entropy (nats, summed over an answer's tokens) of the true answers, each the assistant turn as the
    chat template writes it, teacher forced after its question. Compared with the same questions on `blank_like`
    images it shows whether the model reads the image: a broken vision path gives the same loss both ways."""
    if not len(images) == len(questions) == len(answers):
        raise ValueError(f"answer_loss needs one image and one answer per question; got {len(images)} images, "
                         f"{len(questions)} questions and {len(answers)} answers.")
    if not questions:
        raise ValueError("answer_loss needs at least one question.")
    model.eval()
    tokenizer = processor.tokenizer
    total = 0.0
    for start in range(0, len(questions), batch_size):
        batch_questions = questions[start:start + batch_size]
        prompts, suffixes = [], []
        for question, answer in zip(batch_questions, answers[start:start + batch_size]):
            prompt = processor.apply_chat_template(user_turn(None, question), add_generation_prompt=True)
            full = processor.apply_chat_template(
                user_turn(None, question) + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}])
            if not full.startswith(prompt):
                raise ValueError("The chat template does not extend the generation prompt with the answer.")
            prompts.append(prompt)
            suffixes.append(tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"])
        inputs = processor(text=prompts, images=[[image] for image in images[start:start + batch_size]],
                           padding=True, padding_side="left", return_tensors="pt")
        # Prompts are left-padded to one length, so every answer starts at the same position.
        width = max(len(ids) for ids in suffixes)
        answer_ids = torch.full((len(suffixes), width), tokenizer.pad_token_id)
        answer_mask = torch.zeros(len(suffixes), width, dtype=torch.long)
        for row, ids in enumerate(suffixes):
            answer_ids[row, :len(ids)] = torch.tensor(ids)
            answer_mask[row, :len(ids)] = 1
        labels = torch.cat([torch.full_like(inputs["input_ids"], -100), answer_ids.masked_fill(answer_mask == 0, -100)],
                           dim=1)
        batch = dict(inputs)
        batch["input_ids"] = torch.cat([inputs["input_ids"], answer_ids], dim=1)
        batch["attention_mask"] = torch.cat([inputs["attention_mask"], answer_mask], dim=1)
        logits = model(**batch).logits[:, :-1].float()
        targets = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                                   reduction="sum").item()
    return total / len(questions)


def image_reliance(model, processor, test, batch_size: int = 50) -> dict[str, float]:
    """Held-out answer loss with the real images and with blank ones (see `answer_loss`)."""
    questions, answers = list(test["question"]), list(test["answer"])
    images = list(test["image"])
    return {
        "answer_loss_with_images": answer_loss(model, processor, images, questions, answers, batch_size),
        "answer_loss_with_blank_images": answer_loss(model, processor, [blank_like(image) for image in images],
                                                     questions, answers, batch_size),
    }


def pipeline_examples(model, processor, test, per_type: int = 1, max_new_tokens: int = 4) -> list[dict]:
    """Answer `per_type` held-out questions of each type through `pipeline("image-text-to-text")`."""
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    chosen, seen = [], {}
    for row in test:
        if seen.get(row["question_type"], 0) < per_type:
            seen[row["question_type"]] = seen.get(row["question_type"], 0) + 1
            chosen.append(row)
    examples = []
    for row in chosen:
        output = pipe(text=user_turn(row["image"], row["question"]), max_new_tokens=max_new_tokens,
                      return_full_text=False, generate_kwargs={"do_sample": False})
        examples.append({"question_type": row["question_type"], "question": row["question"],
                         "answer": output[0]["generated_text"].strip(), "truth": row["answer"]})
    return examples


__all__ = [
    "HeldOutScores",
    "answer_loss",
    "answer_questions",
    "blank_like",
    "first_word",
    "image_reliance",
    "pipeline_examples",
    "score_held_out",
    "user_turn",
]
