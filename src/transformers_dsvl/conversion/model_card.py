"""Model card (README.md) of a converted checkpoint: where it came from and what the conversion did."""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass, field

PUBLISHED_REPOSITORIES = (
    "deepseek-vl-1.3b-base", "deepseek-vl-1.3b-chat", "deepseek-vl-7b-base", "deepseek-vl-7b-chat",
)


@dataclass
class ConversionRecord:
    """Everything the model card states about one conversion."""

    source_dir: str
    source_repo_id: str | None
    source_files: list[tuple[str, int]]  # (file name, bytes)
    source_dtype: str
    output_dtype: str
    variant: str  # "SigLIP-only (1.3B layout)" or "hybrid SAM + SigLIP (7B layout)"
    num_parameters: int
    num_tensors_read: int
    num_tensors_written: int
    output_files: list[str]
    dropped: list[str]
    dropped_parameters: int
    notes: list[str] = field(default_factory=list)
    command: str | None = None
    versions: dict[str, str] = field(default_factory=dict)


def guess_source_repo_id(directory_name: str) -> str | None:
    """The Hub id of a published checkpoint when the input directory carries its repository name."""
    return f"deepseek-ai/{directory_name}" if directory_name in PUBLISHED_REPOSITORIES else None


def render_model_card(record: ConversionRecord) -> str:
    front_matter = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text",
                    "license: other", "license_name: deepseek", "tags:", "- deepseek-vl", "- transformers_dsvl",
                    "- vision-language"]
    if record.source_repo_id:
        front_matter.append(f"base_model: {record.source_repo_id}")
    front_matter.append("---")
    source = f"[`{record.source_repo_id}`](https://huggingface.co/{record.source_repo_id})" if record.source_repo_id \
        else f"`{record.source_dir}`"
    lines = [
        *front_matter,
        "",
        "# DeepSeek-VL in the transformers_dsvl format",
        "",
        f"Converted from the original deepseek-ai checkpoint {source} ({record.variant}, stored as "
        f"{record.source_dtype}) by `transformers_dsvl`'s converter. The weights are the original values, moved to "
        "this package's parameter names (see the table below); nothing was retrained or re-quantised"
        + ("." if record.output_dtype == record.source_dtype else f", cast to {record.output_dtype}."),
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "import transformers_dsvl  # registers DeepSeek-VL with the Auto classes",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        'path = "<this directory or repository>"',
        "model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16)",
        "processor = AutoProcessor.from_pretrained(path)",
        'content = [{"type": "image"}, {"type": "text", "text": "Describe the image."}]',
        'messages = [{"role": "user", "content": content}]',
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
        'inputs = processor(text=prompt, images=[Image.open("image.png")], return_tensors="pt").to(torch.bfloat16)',
        "output = model.generate(**inputs, max_new_tokens=512)",
        'print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "Without the package installed, the model loads through the code files stored here: "
        "`AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)`. `generation_config.json` "
        "holds the original's settings: greedy decoding, the tokenizer's BOS/EOS/pad ids.",
        "",
        "## Conversion record",
        "",
        f"- source: {source}",
        "- source files: " + ", ".join(f"`{name}` ({size:,} bytes)" for name, size in record.source_files),
        f"- tensors read: {record.num_tensors_read}; tensors written: {record.num_tensors_written} in "
        + ", ".join(f"`{name}`" for name in record.output_files),
        f"- parameters: {record.num_parameters:,} ({record.output_dtype})",
        f"- converted on {datetime.date.today().isoformat()} with "
        + ", ".join(f"{name} {version}" for name, version in record.versions.items())
        + f" (Python {platform.python_version()})",
    ]
    if record.command:
        lines.append(f"- command: `{record.command}`")
    lines += [
        "",
        "Name mapping (original -> this package):",
        "",
        "| original | transformers_dsvl | change |",
        "|---|---|---|",
        "| `vision_model.vision_tower[_low.vision_tower].blocks.N.attn.qkv` | "
        "`model.vision_model.encoder.layers.N.self_attn.{q,k,v}_proj` | split in three equal row blocks (q, k, v) |",
        "| `...pos_embed` [1, N, C] (SigLIP) | `model.vision_model.embeddings.position_embedding.weight` [N, C] | "
        "batch axis removed |",
        "| other SigLIP tensors | `model.vision_model.*` (transformers SigLIP names) | renamed |",
        "| `vision_model.vision_tower_high.vision_tower.*` (SAM) | `model.high_res_vision_model.*` | renamed "
        "(`neck_hd` -> `global_neck`, `hd_alpha_downsamples` -> `global_alpha`) |",
        "| `aligner.*` | `model.aligner.*` | none |",
        "| `language_model.model.*`, `language_model.lm_head.weight` | `model.language_model.*`, `lm_head.weight` | "
        "none (the output layer stays untied, as in the original) |",
        "",
    ]
    if record.dropped:
        lines += [
            f"Dropped ({len(record.dropped)} tensors, {record.dropped_parameters:,} parameters): stored in the "
            "original checkpoint but never used by its forward pass (SigLIP's attention-pool head, built with "
            "`global_pool='map'` and skipped with `ignore_head=True`; in the 7B layout also `high_layer_norm` / "
            "`low_layer_norm`, created by `HybridVisionTower` and never applied):",
            "",
            *[f"- `{name}`" for name in record.dropped],
            "",
        ]
    if record.notes:
        lines += ["Notes from the conversion:", "", *[f"- {note}" for note in record.notes], ""]
    return "\n".join(lines)


__all__ = ["ConversionRecord", "guess_source_repo_id", "render_model_card"]
