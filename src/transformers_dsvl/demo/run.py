"""`dsvl demo`: a tiny hybrid DeepSeek-VL trained from scratch on this machine, through the paper's three stages, on
data the project generates itself, then evaluated on held-out images and asked questions through the pipeline.

    result = run_demo(DemoSettings.preset("full", output_dir="dsvl-demo"))

Phases (each prints a progress bar; each writes a loss-curve PNG under `output_dir/plots`):

0. data: `synthetic.py` -> `datasets` folders under `output_dir/data`; a byte-level BPE tokenizer trained on it.
1. warm-ups for what the paper takes pretrained: the LLM on the text corpus, the two vision towers on
   caption-token prediction.
2. stage 1 (aligner only), stage 2 (LLM + aligner + SAM neck on text and captions, one modality per batch, text-heavy
   first), stage 3 (SFT with TRL on conversations): all through `training.run_stage`, the code `dsvl train` runs.
3. held-out accuracy per question type next to chance, and the true answers' loss with the images and with blank
   ones (does the model read the image?); a few held-out questions through `pipeline("image-text-to-text")`; the
   checkpoint (remote code, processor, model card with the metrics) is moved into `output_dir/model` only when
   complete.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..allocator import keep_freed_memory
from ..configuration_dsvl import DeepSeekVLConfig
from ..conversion.atomic_output import atomic_output_directory, check_output_directory
from ..modeling_dsvl import DeepSeekVLForConditionalGeneration
from ..processing_dsvl import DEFAULT_SYSTEM_PROMPT, DeepSeekVLProcessor
from ..tokenization_dsvl import prepare_tokenizer, train_tokenizer
from ..training.config import StageConfig
from ..training.recipe import run_stage
from . import synthetic
from .data import DemoDataSizes, build_datasets, tokenizer_corpus
from .evaluation import image_reliance, pipeline_examples, score_held_out
from .pretraining import pretrain_language_model, pretrain_vision_towers
from .report import plot_loss_curve, render_model_card


@dataclass
class DemoSettings:
    """Everything a demo run depends on. `DemoSettings.preset("full" | "quick", **overrides)`."""

    output_dir: str = "dsvl-demo"
    seed: int = 0
    overwrite: bool = False
    data: DemoDataSizes = field(default_factory=DemoDataSizes)
    image_kinds: tuple[str, ...] = synthetic.IMAGE_KINDS
    vocab_size: int = 1024
    # The model: the 7B's structure at toy size.
    text_hidden_size: int = 128
    text_layers: int = 3
    low_res_image_size: int = 64
    low_res_hidden_size: int = 96
    low_res_layers: int = 3
    high_res_image_size: int = 128
    high_res_patch_size: int = 16
    high_res_hidden_size: int = 96
    high_res_layers: int = 4
    # Steps, batch sizes and learning rates of each phase.
    language_warmup_steps: int = 200
    vision_warmup_steps: int = 3200
    stage1_steps: int = 200
    stage2_steps: int = 300
    stage3_steps: int = 1450
    batch_size: int = 32
    sft_batch_size: int = 16
    vision_warmup_batch_size: int = 16
    language_warmup_lr: float = 3e-3
    vision_warmup_lr: float = 3e-3
    stage1_lr: float = 3e-3
    stage2_lr: float = 1e-3
    stage3_lr: float = 1e-3
    stage2_language_ratio: float = 0.3
    max_length: int = 160
    examples_per_type: int = 1
    threads: int | None = None

    PRESETS = {
        "full": {},
        # The short variant: the same model and phases on a smaller world, shape scenes only (colour, shape, count,
        # position); in about 80 s the full world's seven tasks stay near chance, this one does not.
        "quick": dict(
            image_kinds=("shapes",), data=DemoDataSizes(captions=1500, text=600, conversations=1500, test=200),
            language_warmup_steps=60, vision_warmup_steps=300, stage1_steps=60, stage2_steps=120, stage3_steps=250,
            batch_size=16, stage3_lr=2e-3,
        ),
    }

    @classmethod
    def preset(cls, name: str, **overrides) -> "DemoSettings":
        if name not in cls.PRESETS:
            raise ValueError(f"Unknown demo preset {name!r}; use one of {sorted(cls.PRESETS)}.")
        return cls(**{**cls.PRESETS[name], **overrides})

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = DemoDataSizes(**self.data)
        self.image_kinds = synthetic.check_image_kinds(self.image_kinds)
        self.data.check_test_size(self.image_kinds)
        for name in ("language_warmup_steps", "vision_warmup_steps", "stage1_steps", "stage2_steps", "stage3_steps",
                     "batch_size", "sft_batch_size", "vision_warmup_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DemoSettings.{name} must be a positive integer, got {value!r}.")
        if self.vision_warmup_batch_size > self.data.captions:
            raise ValueError(f"vision_warmup_batch_size={self.vision_warmup_batch_size} exceeds the "
                             f"{self.data.captions} captions; generate more captions or use a smaller batch.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def demo_config(settings: DemoSettings, vocab_size: int) -> DeepSeekVLConfig:
    """The tiny hybrid: SAM-style tower (window + global attention) on 128 px, SigLIP-style on a 64 px view, both
    giving 4 x 4 = 16 tokens, the two-branch aligner, and a LLaMA-style LLM."""
    text, low, high = settings.text_hidden_size, settings.low_res_hidden_size, settings.high_res_hidden_size
    return DeepSeekVLConfig.from_preset(
        "tiny-hybrid",
        text_config=dict(hidden_size=text, intermediate_size=int(2.75 * text), num_hidden_layers=settings.text_layers,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab_size,
                         max_position_embeddings=512),
        vision_config=dict(hidden_size=low, intermediate_size=2 * low, num_hidden_layers=settings.low_res_layers,
                           num_attention_heads=4, image_size=settings.low_res_image_size,
                           patch_size=settings.low_res_image_size // 4),
        high_res_vision_config=dict(hidden_size=high, intermediate_size=2 * high,
                                    num_hidden_layers=settings.high_res_layers, num_attention_heads=4,
                                    image_size=settings.high_res_image_size, patch_size=settings.high_res_patch_size,
                                    window_size=4,
                                    global_attn_indexes=[1, 3], global_feature_layer=1, neck_channels=64,
                                    downsample_channels=[96, 128], output_grid_size=4),
    )


def peak_rss_gib() -> float:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**3 if sys.platform == "darwin" else 1024**2)


@dataclass
class DemoResult:
    output_dir: Path
    model_dir: Path
    scores: object
    reliance: dict[str, float]  # held-out answer loss with the images and with blank ones
    examples: list[dict]
    phases: list[dict]
    wall_seconds: float
    peak_rss_gib: float


def _stage_config(settings: DemoSettings, stage: int, output_dir: Path, **overrides) -> StageConfig:
    steps = getattr(settings, f"stage{stage}_steps")
    batch_size = settings.sft_batch_size if stage == 3 else settings.batch_size
    values = dict(
        output_dir=str(output_dir), max_steps=steps, global_batch_size=batch_size,
        per_device_train_batch_size=batch_size, learning_rate=getattr(settings, f"stage{stage}_lr"),
        warmup_steps=max(1, steps // 10), logging_steps=max(1, steps // 50), save_steps=10 * steps,
        max_length=settings.max_length, seed=settings.seed,
        training_args={"dataloader_pin_memory": False, "save_strategy": "no"},
    )
    values.update(overrides)
    return StageConfig.from_preset("cpu", stage, **values)


def _phase(slug: str, name: str, trains: str, steps: int, seconds: float, losses: list) -> dict:
    return {"slug": slug, "name": name, "trains": trains, "steps": steps, "seconds": seconds,
            "final_loss": losses[-1][1] if losses else float("nan"), "losses": losses}


def run_demo(settings: DemoSettings, log=print) -> DemoResult:
    """Run the whole demo (see the module docstring); the console shows one progress bar per phase."""
    import datasets
    from transformers.utils import logging as transformers_logging

    # The per-phase bars replace the libraries' own (dataset saving and mapping, shard writing).
    datasets_bars = datasets.is_progress_bar_enabled()
    transformers_bars = transformers_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        return _run_demo(settings, log)
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers_logging.enable_progress_bar()


def _run_demo(settings: DemoSettings, log) -> DemoResult:
    start = time.perf_counter()
    output_dir = Path(settings.output_dir)
    check_output_directory(output_dir / "model", settings.overwrite)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    keep_freed_memory()  # no page fault per freed-and-reallocated activation: 5-8% faster steps here
    torch.manual_seed(settings.seed)
    work = output_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    plots = output_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    phases: list[dict] = []

    # -- data, tokenizer, model ------------------------------------------------------------------------------------
    log(f"[data] generating the synthetic datasets under {work / 'data'} (seed {settings.seed})")
    data = build_datasets(work / "data", settings.seed, settings.data, image_kinds=settings.image_kinds,
                          progress=lambda split, size: log(f"  {split}: {size} examples"))
    # The default system prompt is in every conversation: the tokenizer learns it too.
    tokenizer = prepare_tokenizer(train_tokenizer(tokenizer_corpus(data) + [DEFAULT_SYSTEM_PROMPT] * 500,
                                                  vocab_size=settings.vocab_size))
    config = demo_config(settings, vocab_size=len(tokenizer))
    processor = DeepSeekVLProcessor.from_model_config(config, tokenizer)
    model = DeepSeekVLForConditionalGeneration(config)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"[model] tiny hybrid DeepSeek-VL, {parameters / 1e6:.2f}M parameters; tokenizer of {len(tokenizer)} tokens")

    # -- warm-ups: stand-ins for the pretrained LLM and vision towers ----------------------------------------------
    log("[warm-up] the paper starts from a pretrained LLM, SigLIP and SAM; the demo pretrains small ones first")
    warmup = pretrain_language_model(model, tokenizer, list(data["text"]["text"]),
                                     steps=settings.language_warmup_steps, batch_size=settings.batch_size,
                                     learning_rate=settings.language_warmup_lr, seed=settings.seed)
    phases.append(_phase("warmup_llm", "warm-up: LLM", "LLM", settings.language_warmup_steps, warmup.seconds,
                         warmup.losses))
    warmup = pretrain_vision_towers(model, processor, data["captions"], steps=settings.vision_warmup_steps,
                                    batch_size=settings.vision_warmup_batch_size,
                                    learning_rate=settings.vision_warmup_lr, seed=settings.seed)
    phases.append(_phase("warmup_vision", "warm-up: vision towers", "SigLIP, SAM (caption tokens)",
                         settings.vision_warmup_steps,
                         warmup.seconds, warmup.losses))

    # -- the three stages, through the training code -----------------------------------------------------------------
    stage_inputs = {
        1: ("stage 1: aligner", "aligner", dict(multimodal_data=data["captions"]), {}),
        2: ("stage 2: joint pretraining", "LLM, aligner, SAM neck", dict(multimodal_data=data["captions"],
                                                                          text_data=data["text"]),
            dict(language_ratio=settings.stage2_language_ratio, modality_warmup_steps=settings.stage2_steps // 3,
                 modality_warmup_start=0.9, packing=True)),
        3: ("stage 3: SFT (TRL)", "LLM, aligner, SigLIP", dict(conversations=data["conversations"]), {}),
    }
    for stage, (name, trains, inputs, overrides) in stage_inputs.items():
        config_ = _stage_config(settings, stage, work / f"stage{stage}", **overrides)
        result = run_stage(config_, model, processor, progress_description=name, **inputs)
        model = result.model
        series = {}
        if stage == 2:
            for key, label in (("loss_language", "language steps"), ("loss_multimodal", "multimodal steps")):
                series[label] = [(e["step"], e[key]) for e in result.log_history if key in e]
        phases.append(_phase(f"stage{stage}", name, trains, config_.max_steps, result.metrics.get("train_runtime", 0.0),
                             result.losses()))
        phases[-1]["series"] = series
        if result.modality_history:
            modalities = [modality for _, modality in result.modality_history]  # one micro-batch per step here
            phases[-1]["steps_per_modality"] = {m: modalities.count(m) for m in sorted(set(modalities))}

    for index, phase in enumerate(phases):
        phase["plot"] = str(plot_loss_curve(phase["losses"], phase["name"], plots / f"{index}_{phase['slug']}.png",
                                            series=phase.get("series")))

    # -- evaluation ------------------------------------------------------------------------------------------------
    log(f"[eval] {len(data['test'])} held-out questions")
    scores = score_held_out(model, processor, data["test"])
    reliance = image_reliance(model, processor, data["test"])
    examples = pipeline_examples(model, processor, data["test"], per_type=settings.examples_per_type)

    wall, rss = time.perf_counter() - start, peak_rss_gib()
    with atomic_output_directory(output_dir / "model", overwrite=settings.overwrite) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        card = render_model_card(phases=phases, scores=scores, reliance=reliance, examples=examples,
                                 settings=settings.to_dict(),
                                 wall_seconds=wall, peak_rss_gib=rss, parameters=parameters)
        (staging / "README.md").write_text(card)
        metrics = {"held_out": {**scores.to_dict(), **reliance}, "wall_seconds": wall, "peak_rss_gib": rss,
                   "phases": [{k: v for k, v in p.items() if k != "series"} for p in phases],
                   "settings": settings.to_dict()}
        (staging / "demo_metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    (output_dir / "held_out_predictions.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in scores.predictions))
    for stage in (1, 2, 3):  # the trainers' own outputs; the final model is output_dir/model, the data stay
        shutil.rmtree(work / f"stage{stage}", ignore_errors=True)
    return DemoResult(output_dir=output_dir, model_dir=output_dir / "model", scores=scores, reliance=reliance,
                      examples=examples,
                      phases=phases, wall_seconds=wall, peak_rss_gib=rss)


__all__ = ["DemoResult", "DemoSettings", "demo_config", "peak_rss_gib", "run_demo"]
