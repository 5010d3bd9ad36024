"""The demo's outputs besides the checkpoint: a loss-curve PNG per phase and the model card."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curve(losses: list[tuple[int, float]], title: str, path: str | Path, series: dict | None = None) -> Path:
    """Write a PNG of `losses` ((step, loss) pairs); `series` adds named curves (e.g. stage 2's per-modality loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    if losses:
        axis.plot(*zip(*losses), label="training loss", color="tab:blue")
    for name, points in (series or {}).items():
        if points:
            axis.plot(*zip(*points), label=name, linewidth=1, alpha=0.8)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


def render_model_card(*, phases: list[dict], scores, reliance: dict[str, float], examples: list[dict], settings: dict,
                      wall_seconds: float, peak_rss_gib: float | None, parameters: int) -> str:
    """README.md of the demo checkpoint: what it is, how it was trained, and the run's held-out results."""
    phase_rows = "\n".join(
        f"| {p['name']} | {p['trains']} | {p['steps']} | {p['seconds']:.0f} s | {p['final_loss']:.3f} |" for p in phases
    )
    example_rows = "\n".join(f"| {e['question_type']} | {e['question']} | {e['answer']} | {e['truth']} |"
                             for e in examples)
    rss = f"{peak_rss_gib:.2f} GiB" if peak_rss_gib is not None else "not measured"
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags:
- deepseek-vl
- transformers_dsvl
- demo
- synthetic-data
---

# transformers_dsvl demo model (tiny hybrid DeepSeek-VL)

A {parameters / 1e6:.2f}M-parameter DeepSeek-VL with the real 7B structure at toy size: a SAM-style high-resolution
tower (window and global attention) on {settings['high_res_image_size']} px images, a SigLIP-style tower on a
{settings['low_res_image_size']} px view, the two-branch MLP aligner and a LLaMA-style LLM. It was trained from
scratch by `dsvl demo` on synthetic data (shapes, colours, counts, positions, rendered words and digits, bar charts),
through the three stages of the DeepSeek-VL recipe, and answers one-word questions about such images. It knows
nothing else: it is a demonstration of the training and inference code, not a useful model.

Load it with `trust_remote_code=True` where `transformers_dsvl` is not installed:

```python
from transformers import pipeline

pipe = pipeline("image-text-to-text", model="path/to/this/folder", trust_remote_code=True)
messages = [{{"role": "user", "content": [{{"type": "image", "image": "shapes.png"}},
                                         {{"type": "text", "text": "What colour is the shape?"}}]}}]
print(pipe(text=messages, max_new_tokens=4, return_full_text=False)[0]["generated_text"])
```

## Training (seed {settings['seed']}, {wall_seconds / 60:.1f} min on this machine, peak RSS {rss})

| phase | trains | steps | time | final loss |
|---|---|---:|---:|---:|
{phase_rows}

The warm-ups stand in for the pretrained DeepSeek-LLM, SigLIP-L and SAM-B that the paper starts from.

## Held-out evaluation

{len(scores.predictions)} questions on images never seen in training (greedy decoding, first word of the answer
against the truth); chance is one over the number of possible answers of each type.

{scores.table()}

Does it read the image? The true answers' loss (teacher forced, nats per answer) is
{reliance['answer_loss_with_images']:.3f} with the held-out images and {reliance['answer_loss_with_blank_images']:.3f}
with the same questions on blank images.

Examples answered through `pipeline("image-text-to-text")`:

| type | question | answer | truth |
|---|---|---|---|
{example_rows}
"""


__all__ = ["plot_loss_curve", "render_model_card"]
