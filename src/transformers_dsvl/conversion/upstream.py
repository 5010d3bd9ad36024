"""Conversion between this package's checkpoints and transformers' own DeepSeek-VL ports, weight for weight.

transformers ships two model types for DeepSeek-VL: `deepseek_vl` (`DeepseekVLForConditionalGeneration`, the
SigLIP-only 1.3B) and `deepseek_vl_hybrid` (`DeepseekVLHybridForConditionalGeneration`, SAM-B + SigLIP-L, the 7B).
Both directions here are pure renames: every tensor is copied bit for bit, with the same shape and dtype.

What the two formats put in different places (reference section 5), and what the converters do about it:

- **Normalisation.** Our model normalises inside, per tower, from [0, 1] pixels (as the original); the upstream
  model expects normalised pixels and its *image processor* normalises. `to_upstream` therefore writes the upstream
  image-processor settings (`preprocessor_config.json`: SigLIP mean/std as `image_mean`/`image_std`, SAM mean/std as
  `high_res_image_mean`/`high_res_image_std`, `do_normalize=True`); `from_upstream` moves them back into our config
  (`low_res_image_mean`, ...).
- **The hybrid's low-resolution view.** Our model makes the 384 px SigLIP view itself, from the [0, 1] float 1024 px
  tensor (bilinear with antialias, in float32), as the original does. The upstream port makes it in *preprocessing*:
  its image processor resizes the padded 1024 px 8-bit image to 384 px (PIL BILINEAR, the setting transformers'
  own converter chose) before rescaling, and the model takes it as `pixel_values` next to `high_res_pixel_values`.
  The two views differ by less than one 8-bit step per pixel (measured in `tests/test_upstream_interop.py`).
- **Output-layer tying.** Our checkpoints keep `lm_head` separate (the release does). The upstream config defaults to
  `tie_word_embeddings=True` in transformers 5.x: a model built from such a config shares `lm_head` with the input
  embeddings (5.23 still keeps a stored, different `lm_head` when loading, with a warning), while 4.57 follows the
  text config. `to_upstream` writes `tie_word_embeddings` explicitly (top level and text config). `from_upstream`
  follows the weights: a stored `lm_head.weight` gives an untied model with that matrix, a missing one a tied model.
- **Names.** SigLIP is transformers' `SiglipVisionModel` on both sides (q/k/v already split); upstream files carry it
  as `model.vision_model.vision_model.*` (what transformers 4.x saves and 5.x loads), ours as `model.vision_model.*`.
  Our SAM tower (`model.high_res_vision_model.{patch_embed, pos_embed, layers, neck, global_neck, downsamples,
  global_alpha}`) is split upstream into `model.high_res_vision_model.vision_encoder.*` (ViT + neck),
  `model.high_res_vision_neck` (global neck), `model.high_res_vision_proj.conv{1,2}` (downsamples) and
  `model.high_res_vision_alpha`. Our aligner keeps the original names (`layers.N`, `high_up_proj`, `low_up_proj`);
  upstream uses `linear1`/`linear2` (SigLIP-only) and `high_res_vision_proj`/`vision_proj`/`proj` (hybrid).
- **Architecture limits of the upstream port.** It hard-codes a two-layer aligner, exactly two stride-2 downsample
  convolutions of 2x and 4x the neck width, the global-feature branch at the first global-attention block, neck
  LayerNorms with eps 1e-6, and always runs the global branch. Configurations outside that raise
  `UpstreamConversionError` naming the field.
- **Numerics that stay different** (not a matter of weights): upstream takes SAM's attention softmax in float32
  (ours: working dtype, as the original), resizes SAM features in the working dtype (ours: float32), computes the
  SAM necks' LayerNorm2d with `nn.LayerNorm` (ours: written out in the working dtype, as the original) and
  normalises in float32 in the processor (ours: model dtype). In float32 all of this agrees to float rounding; in
  bfloat16 only the LayerNorm2d and op-order rounding show (PyTorch's reduced-precision softmax and resize compute in
  float32 internally); `tests/test_upstream_interop.py` measures it.
- **Portability.** The written processor files use the layout both transformers 4.57 and 5.x load (image processor
  in `preprocessor_config.json`, `PreTrainedTokenizerFast`, `image_token` as a named special token). Note that
  transformers 4.57's `DeepseekVLHybridImageProcessor` pads non-square images with the low-resolution background
  (int(0.5 * 255) = 127) instead of int(CLIP mean * 255); 5.x pads as the original.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..configuration_dsvl import (
    CLIP_MEAN,
    CLIP_STD,
    HYBRID_ALIGNER_TYPE,
    SIGLIP_MEAN,
    SIGLIP_STD,
    DeepSeekVLConfig,
    DeepSeekVLSamVisionConfig,
)
from .atomic_output import atomic_output_directory
from .streaming import PlannedTensor, ShardedCheckpointWriter, open_checkpoint, parse_size


UPSTREAM_MODEL_TYPE = "deepseek_vl"
UPSTREAM_HYBRID_MODEL_TYPE = "deepseek_vl_hybrid"
# Upstream class names per model type: config, model, image processor, processor.
UPSTREAM_CLASSES = {
    UPSTREAM_MODEL_TYPE: ("DeepseekVLConfig", "DeepseekVLForConditionalGeneration", "DeepseekVLImageProcessor",
                          "DeepseekVLProcessor"),
    UPSTREAM_HYBRID_MODEL_TYPE: ("DeepseekVLHybridConfig", "DeepseekVLHybridForConditionalGeneration",
                                 "DeepseekVLHybridImageProcessor", "DeepseekVLHybridProcessor"),
}
# The upstream SAM neck builds its LayerNorms with this eps whatever the config says.
UPSTREAM_SAM_NECK_EPS = 1e-6
UPSTREAM_ALIGNER_DEPTH = 2
# PIL resampling codes. The upstream converter resizes the hybrid's low-resolution view with BILINEAR (the original
# resizes it bilinearly inside the model) and everything else with BICUBIC (the original processor's filter).
PIL_BILINEAR, PIL_BICUBIC = 2, 3
DEFAULT_MIN_SIZE = 14
DEFAULT_RESCALE_FACTOR = 1 / 255
# Tokenizer class every transformers version can load from a tokenizer.json (5.x writes its own `TokenizersBackend`).
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"

# Weight names: (ours, upstream). A name is renamed by the first entry whose key equals it (entries without a
# trailing dot) or starts it (entries with one), so specific entries come before the general ones.
COMMON_NAMES = [
    ("model.language_model.", "model.language_model."),
    ("lm_head.", "lm_head."),
    # transformers 4.x saves SiglipVisionModel with an inner `vision_model`; 5.x loads that layout too.
    ("model.vision_model.", "model.vision_model.vision_model."),
]
SIGLIP_ONLY_NAMES = [
    ("model.aligner.layers.0.", "model.aligner.linear1."),
    ("model.aligner.layers.2.", "model.aligner.linear2."),
]
HYBRID_NAMES = [
    ("model.aligner.high_up_proj.", "model.aligner.high_res_vision_proj."),
    ("model.aligner.low_up_proj.", "model.aligner.vision_proj."),
    ("model.aligner.layers.1.", "model.aligner.proj."),
    ("model.high_res_vision_model.global_neck.", "model.high_res_vision_neck."),
    ("model.high_res_vision_model.downsamples.0.", "model.high_res_vision_proj.conv1."),
    ("model.high_res_vision_model.downsamples.1.", "model.high_res_vision_proj.conv2."),
    ("model.high_res_vision_model.global_alpha", "model.high_res_vision_alpha"),
    ("model.high_res_vision_model.", "model.high_res_vision_model.vision_encoder."),
]
# transformers 5.x keeps SigLIP flat in memory and in the files it saves: read that layout as well.
UPSTREAM_FLAT_SIGLIP = ("model.vision_model.", "model.vision_model.")


class UpstreamConversionError(ValueError):
    """The checkpoint cannot be expressed in the other format (unsupported architecture, mismatched tensors)."""


@dataclass
class UpstreamConversionResult:
    """What a conversion wrote: the output directory, the tensor count, and notes a user should read."""

    output_dir: Path
    num_tensors: int
    model_type: str
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# transformers' classes
# ---------------------------------------------------------------------------------------------------------------------
def upstream_class(model_type: str, kind: str):
    """One of transformers' DeepSeek-VL classes; kind is `config`, `model`, `image_processor` or `processor`.

    transformers 5.x without torchvision only has the PIL image processors (`...ImageProcessorPil`)."""
    import transformers

    names = dict(zip(("config", "model", "image_processor", "processor"), UPSTREAM_CLASSES[model_type]))
    name = names[kind]
    # The PIL image processor where it exists (transformers 5.x; the default one there needs torchvision), else the
    # NumPy/PIL one of transformers 4.x. Both save the same `image_processor_type`.
    candidates = [name + "Pil", name] if kind == "image_processor" else [name]
    for candidate in candidates:
        cls = getattr(transformers, candidate, None)
        if cls is not None:
            return cls
    raise UpstreamConversionError(
        f"transformers {transformers.__version__} has no {name}, so it cannot run the upstream DeepSeek-VL port. Fix: "
        "install a transformers version that has `deepseek_vl` and `deepseek_vl_hybrid` (4.57 and 5.x both do)."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------
def _fail(field_name: str, problem: str, fix: str):
    raise UpstreamConversionError(f"{field_name}: {problem}. Fix: {fix}.")


def check_upstream_compatible(config: DeepSeekVLConfig) -> None:
    """Raise `UpstreamConversionError` when the upstream port cannot run this architecture exactly."""
    if config.aligner_depth != UPSTREAM_ALIGNER_DEPTH:
        _fail("aligner_depth", f"the upstream port hard-codes a {UPSTREAM_ALIGNER_DEPTH}-layer aligner, this model has "
              f"{config.aligner_depth}", "keep the checkpoint in this package's format (aligner_depth=2 only)")
    if not config.is_hybrid:
        if config.aligner_type != "mlp_gelu":
            _fail("aligner_type", f"the upstream `deepseek_vl` aligner is Linear-GELU-Linear ('mlp_gelu'), this model "
                  f"has {config.aligner_type!r}", "convert only mlp_gelu models")
        return
    sam = config.high_res_vision_config
    neck = sam.neck_channels
    if list(sam.downsample_channels) != [2 * neck, 4 * neck]:
        _fail("high_res_vision_config.downsample_channels", f"the upstream port hard-codes two stride-2 convolutions "
              f"of {2 * neck} and {4 * neck} channels (2x and 4x neck_channels={neck}), this model has "
              f"{list(sam.downsample_channels)}", f"use downsample_channels=[{2 * neck}, {4 * neck}]")
    if not sam.global_attn_indexes:
        _fail("high_res_vision_config.global_attn_indexes", "is empty, but the upstream port takes its global "
              "feature from the first global-attention block", "list at least one global-attention block")
    if sam.global_feature_layer != sam.global_attn_indexes[0]:
        _fail("high_res_vision_config.global_feature_layer", f"the upstream port always takes the global feature from "
              f"the first global-attention block ({sam.global_attn_indexes[0]}), this model from "
              f"{sam.global_feature_layer}", f"use global_feature_layer={sam.global_attn_indexes[0]}")
    if sam.layer_norm_eps != UPSTREAM_SAM_NECK_EPS:
        _fail("high_res_vision_config.layer_norm_eps", f"the upstream SAM necks use eps {UPSTREAM_SAM_NECK_EPS} "
              f"whatever the config says, this model uses {sam.layer_norm_eps}", f"use {UPSTREAM_SAM_NECK_EPS}")


def sam_config_to_upstream(sam: DeepSeekVLSamVisionConfig):
    """transformers' `SamVisionConfig` of our SAM tower (the neck width is its `output_channels`)."""
    from transformers import SamVisionConfig

    return SamVisionConfig(
        hidden_size=sam.hidden_size,
        output_channels=sam.neck_channels,
        num_hidden_layers=sam.num_hidden_layers,
        num_attention_heads=sam.num_attention_heads,
        num_channels=sam.num_channels,
        image_size=sam.image_size,
        patch_size=sam.patch_size,
        hidden_act=sam.hidden_act,
        layer_norm_eps=sam.layer_norm_eps,
        attention_dropout=sam.attention_dropout,
        initializer_range=sam.initializer_range,
        qkv_bias=sam.qkv_bias,
        mlp_dim=sam.intermediate_size,
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=sam.window_size,
        global_attn_indexes=list(sam.global_attn_indexes),
    )


def sam_config_from_upstream(sam, output_grid_size: int) -> DeepSeekVLSamVisionConfig:
    """Our SAM tower config from transformers' `SamVisionConfig` plus the upstream port's hard-coded parts."""
    for flag in ("use_abs_pos", "use_rel_pos"):
        if not getattr(sam, flag, True):
            _fail(f"high_res_vision_config.{flag}", "is False, but DeepSeek-VL's SAM tower always has absolute and "
                  "relative position embeddings", "convert a checkpoint of the released architecture")
    for name in ("image_size", "patch_size"):
        if not isinstance(getattr(sam, name), int):
            _fail(f"high_res_vision_config.{name}", f"is {getattr(sam, name)!r}; only square sizes are supported",
                  "use one integer")
    if not sam.global_attn_indexes:
        _fail("high_res_vision_config.global_attn_indexes", "is empty; the upstream port needs a global block",
              "list at least one global-attention block")
    return DeepSeekVLSamVisionConfig(
        hidden_size=sam.hidden_size,
        intermediate_size=sam.mlp_dim,
        num_hidden_layers=sam.num_hidden_layers,
        num_attention_heads=sam.num_attention_heads,
        num_channels=sam.num_channels,
        image_size=sam.image_size,
        patch_size=sam.patch_size,
        window_size=sam.window_size,
        global_attn_indexes=list(sam.global_attn_indexes),
        global_feature_layer=sam.global_attn_indexes[0],
        neck_channels=sam.output_channels,
        downsample_channels=[2 * sam.output_channels, 4 * sam.output_channels],
        output_grid_size=output_grid_size,
        hidden_act=sam.hidden_act,
        layer_norm_eps=sam.layer_norm_eps,
        qkv_bias=sam.qkv_bias,
        attention_dropout=sam.attention_dropout,
    )


def config_to_upstream(config: DeepSeekVLConfig):
    """The upstream `DeepseekVLConfig` / `DeepseekVLHybridConfig` of one of our configs (after checking the upstream
    port can run it). Tying is written explicitly at the top level and in the text config, so that neither
    transformers 5.x (top-level default True) nor 4.x (text config decides) ties a separate `lm_head`."""
    check_upstream_compatible(config)
    model_type = UPSTREAM_HYBRID_MODEL_TYPE if config.is_hybrid else UPSTREAM_MODEL_TYPE
    text_config = copy.deepcopy(config.text_config)
    text_config.tie_word_embeddings = config.tie_word_embeddings
    kwargs = dict(
        text_config=text_config,
        vision_config=copy.deepcopy(config.vision_config),
        image_token_id=config.image_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    if config.is_hybrid:
        kwargs["high_res_vision_config"] = sam_config_to_upstream(config.high_res_vision_config)
    upstream_config = upstream_class(model_type, "config")(**kwargs)
    upstream_config.architectures = [upstream_class(model_type, "model").__name__]
    return upstream_config


def config_from_upstream(upstream_config, normalization: dict | None = None, tie_word_embeddings=None):
    """Our `DeepSeekVLConfig` of an upstream config.

    `normalization` holds the mean/std the upstream *processor* applies (`low_res_image_mean`, `low_res_image_std`,
    `high_res_image_mean`, `high_res_image_std`; see `normalization_from_upstream_processor`); they become our
    in-model normalisation. Missing values take the released ones. `tie_word_embeddings` (when not None) overrides
    the upstream config's flag: the caller decides it from the weights.
    """
    model_type = upstream_config.model_type
    if model_type not in UPSTREAM_CLASSES:
        raise UpstreamConversionError(
            f"model_type {model_type!r} is not one of transformers' DeepSeek-VL ports {sorted(UPSTREAM_CLASSES)}. "
            "Fix: point at a deepseek_vl / deepseek_vl_hybrid checkpoint."
        )
    hybrid = model_type == UPSTREAM_HYBRID_MODEL_TYPE
    vision_config = copy.deepcopy(upstream_config.vision_config)
    text_config = copy.deepcopy(upstream_config.text_config)
    if tie_word_embeddings is None:
        tie_word_embeddings = bool(getattr(upstream_config, "tie_word_embeddings", False))
    grid = vision_config.image_size // vision_config.patch_size
    sam = sam_config_from_upstream(upstream_config.high_res_vision_config, grid) if hybrid else None
    normalization = dict(normalization or {})
    return DeepSeekVLConfig(
        text_config=text_config,
        vision_config=vision_config,
        high_res_vision_config=sam,
        aligner_type=HYBRID_ALIGNER_TYPE if hybrid else "mlp_gelu",
        aligner_depth=UPSTREAM_ALIGNER_DEPTH,
        image_token_id=upstream_config.image_token_id,
        low_res_image_mean=normalization.get("low_res_image_mean", SIGLIP_MEAN),
        low_res_image_std=normalization.get("low_res_image_std", SIGLIP_STD),
        high_res_image_mean=normalization.get("high_res_image_mean", CLIP_MEAN),
        high_res_image_std=normalization.get("high_res_image_std", CLIP_STD),
        tie_word_embeddings=tie_word_embeddings,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Weight names
# ---------------------------------------------------------------------------------------------------------------------
def name_table(hybrid: bool) -> list[tuple[str, str]]:
    return (HYBRID_NAMES if hybrid else SIGLIP_ONLY_NAMES) + COMMON_NAMES


def _rename(name: str, table: Iterable[tuple[str, str]]) -> str | None:
    for source, target in table:
        if source.endswith("."):
            if name.startswith(source):
                return target + name[len(source):]
        elif name == source:
            return target
    return None


def upstream_name(name: str, hybrid: bool) -> str:
    """The upstream file name of one of our weight names (KeyError for a name outside our layout)."""
    renamed = _rename(name, name_table(hybrid))
    if renamed is None:
        raise KeyError(name)
    return renamed


def name_from_upstream(name: str, hybrid: bool) -> str:
    """Our name of an upstream weight name, in the nested (4.x, Hub) or flat (5.x) SigLIP layout."""
    table = [(theirs, ours) for ours, theirs in name_table(hybrid)] + [UPSTREAM_FLAT_SIGLIP]
    renamed = _rename(name, table)
    if renamed is None:
        raise KeyError(name)
    return renamed


def canonical_upstream_name(name: str) -> str:
    """Upstream names with SigLIP flattened (transformers 5.x's in-memory layout), to compare across versions."""
    nested = "model.vision_model.vision_model."
    return "model.vision_model." + name[len(nested):] if name.startswith(nested) else name


def state_dict_to_upstream(state_dict: dict[str, torch.Tensor], config: DeepSeekVLConfig) -> dict[str, torch.Tensor]:
    """Our state dict (of `DeepSeekVLForConditionalGeneration`) under the upstream file names; same tensors."""
    plan = plan_renames({name: (t.dtype, tuple(t.shape)) for name, t in state_dict.items()}, config, to_upstream=True)
    return {target: state_dict[source] for source, target in plan}


def state_dict_from_upstream(
    state_dict: dict[str, torch.Tensor], upstream_config, tie_word_embeddings: bool | None = None
) -> dict[str, torch.Tensor]:
    """An upstream state dict (either SigLIP layout) under our names; same tensors. The output layer counts as tied
    when `tie_word_embeddings` says so, or (None) when the state dict has no `lm_head.weight`."""
    if tie_word_embeddings is None:
        tie_word_embeddings = "lm_head.weight" not in state_dict
    config = config_from_upstream(upstream_config, tie_word_embeddings=tie_word_embeddings)
    plan = plan_renames({name: (t.dtype, tuple(t.shape)) for name, t in state_dict.items()}, config, to_upstream=False)
    return {target: state_dict[source] for source, target in plan}


def expected_shapes(config: DeepSeekVLConfig, upstream: bool) -> dict[str, tuple[int, ...]]:
    """Every persistent weight of the model a config describes (ours, or the upstream port with canonical names),
    from a model built on the meta device. Tied output layers are left out, as save_pretrained leaves them out."""
    if upstream:
        upstream_config = config_to_upstream(config)
        model_type = upstream_config.model_type
        with torch.device("meta"):
            model = upstream_class(model_type, "model")(upstream_config)
        names = {canonical_upstream_name(n): tuple(t.shape) for n, t in model.state_dict().items()}
    else:
        from ..modeling_dsvl import DeepSeekVLForConditionalGeneration

        with torch.device("meta"):
            model = DeepSeekVLForConditionalGeneration(copy.deepcopy(config))
        names = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        names.pop("lm_head.weight", None)
    return names


def plan_renames(
    tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]], config: DeepSeekVLConfig, to_upstream: bool
) -> list[tuple[str, str]]:
    """(source name, target name) for every tensor, after checking both sides are complete.

    `tensors` maps the source names to (dtype, shape); `config` is OUR config of the model in both directions. A
    source tensor without a counterpart, a missing tensor or a shape that differs is an error listing all of them.
    A tied output layer (`config.tie_word_embeddings`) is dropped if the source still holds it.
    """
    source_expected = expected_shapes(config, upstream=not to_upstream)
    target_expected = expected_shapes(config, upstream=to_upstream)
    rename = (lambda n: upstream_name(n, config.is_hybrid)) if to_upstream else (
        lambda n: name_from_upstream(n, config.is_hybrid))
    canonical = canonical_upstream_name if to_upstream else (lambda n: n)
    source_canonical = (lambda n: n) if to_upstream else canonical_upstream_name

    plan, unknown, wrong_shape, seen = [], [], [], set()
    for name, (_dtype, shape) in tensors.items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue  # the tied copy of the input embeddings
        expected = source_expected.get(source_canonical(name))
        if expected is None:
            unknown.append(name)
            continue
        seen.add(source_canonical(name))
        if tuple(shape) != expected:
            wrong_shape.append(f"{name} {list(shape)} (expected {list(expected)})")
            continue
        plan.append((name, rename(name)))
    missing = sorted(set(source_expected) - seen)
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} tensor(s) {'our' if to_upstream else 'the upstream'} model does not have: "
                        f"{_preview(unknown)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) with the wrong shape: {_preview(wrong_shape)}")
    if missing:
        problems.append(f"{len(missing)} tensor(s) the model needs but the checkpoint lacks: {_preview(missing)}")
    if problems:
        raise UpstreamConversionError(
            "The weights do not match the configuration: " + "; ".join(problems) + ". Fix: convert a complete "
            "checkpoint whose config.json belongs to its weights."
        )
    # The rename tables must cover the target model exactly; anything else is a bug here, not in the checkpoint.
    produced = {canonical(target): expected for target, expected in
                ((target, source_expected[source_canonical(name)]) for name, target in plan)}
    if produced != target_expected:
        raise RuntimeError(
            "The name mapping does not produce the target model's weights exactly (bug in transformers_dsvl's "
            f"upstream tables): missing {_preview(sorted(set(target_expected) - set(produced)))}; extra "
            f"{_preview(sorted(set(produced) - set(target_expected)))}."
        )
    return plan


def _preview(items: list, limit: int = 8) -> str:
    items = sorted(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ---------------------------------------------------------------------------------------------------------------------
# Processor settings
# ---------------------------------------------------------------------------------------------------------------------
def upstream_image_processor_settings(config: DeepSeekVLConfig, image_processor=None) -> dict:
    """Settings of the upstream image processor that feeds the upstream model what ours computes inside.

    The upstream processor normalises (per view for the hybrid) and, for the hybrid, makes the low-resolution view
    from the padded high-resolution 8-bit image (BILINEAR) in preprocessing; ours leaves pixels in [0, 1] and the
    model does both. `image_processor` (our `DeepSeekVLImageProcessor`) supplies min_size and the rescale factor.
    """
    min_size = getattr(image_processor, "min_size", DEFAULT_MIN_SIZE)
    rescale_factor = getattr(image_processor, "rescale_factor", DEFAULT_RESCALE_FACTOR)
    low = config.vision_config.image_size
    settings = dict(
        do_resize=True, do_rescale=True, do_normalize=True, do_pad=True, min_size=min_size,
        rescale_factor=rescale_factor, size={"height": low, "width": low},
        image_mean=list(config.low_res_image_mean), image_std=list(config.low_res_image_std),
    )
    if config.is_hybrid:
        high = config.image_size
        settings.update(
            resample=PIL_BILINEAR, high_res_resample=PIL_BICUBIC, high_res_size={"height": high, "width": high},
            high_res_image_mean=list(config.high_res_image_mean), high_res_image_std=list(config.high_res_image_std),
        )
    else:
        settings.update(resample=PIL_BICUBIC)
    return settings


def normalization_from_upstream_processor(image_processor) -> dict:
    """Our in-model normalisation from an upstream image processor (mean 0 / std 1 when it does not normalise)."""
    if image_processor is None:
        return {}
    if not getattr(image_processor, "do_normalize", True):
        identity = dict(mean=[0.0] * 3, std=[1.0] * 3)
        return dict(low_res_image_mean=identity["mean"], low_res_image_std=identity["std"],
                    high_res_image_mean=identity["mean"], high_res_image_std=identity["std"])
    normalization = {}
    for ours, theirs in (("low_res_image_mean", "image_mean"), ("low_res_image_std", "image_std"),
                         ("high_res_image_mean", "high_res_image_mean"), ("high_res_image_std", "high_res_image_std")):
        value = getattr(image_processor, theirs, None)
        if value is not None:
            normalization[ours] = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3)]
    return normalization


def _background_note(config: DeepSeekVLConfig, image_processor) -> list[str]:
    """The upstream processors derive the padding colour from the mean; say so when ours paints another one."""
    if image_processor is None:
        return []
    ours = tuple(image_processor.effective_background_color)
    mean = config.high_res_image_mean if config.is_hybrid else config.low_res_image_mean
    theirs = tuple(int(m * 255) for m in mean)
    if ours == theirs:
        return []
    return [f"Our processor pads with {ours}; the upstream one pads with int(mean * 255) = {theirs} and has no setting "
            "for it, so padded images differ in the border."]


def _load_our_image_processor(source_dir: Path | None, config: DeepSeekVLConfig):
    from ..image_processing_dsvl import DeepSeekVLImageProcessor

    if source_dir is not None and (source_dir / "preprocessor_config.json").is_file():
        return DeepSeekVLImageProcessor.from_pretrained(str(source_dir))
    return DeepSeekVLImageProcessor.from_model_config(config)


def _load_tokenizer(source_dir: Path | None):
    if source_dir is None or not (source_dir / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source_dir))


def write_upstream_processor(directory: Path, config: DeepSeekVLConfig, image_processor=None, tokenizer=None,
                             chat_template: str | None = None) -> list[str]:
    """Write the upstream image processor (always) and, with a tokenizer, the upstream processor: the tokenizer
    gets `image_token` (the upstream processor reads `tokenizer.image_token`) and EOS as its pad token.
    Returns notes for the user."""
    from ..tokenization_dsvl import IMAGE_TOKEN

    model_type = UPSTREAM_HYBRID_MODEL_TYPE if config.is_hybrid else UPSTREAM_MODEL_TYPE
    settings = upstream_image_processor_settings(config, image_processor)
    upstream_image_processor = upstream_class(model_type, "image_processor")(**settings)
    notes = _background_note(config, image_processor)
    if tokenizer is None:
        upstream_image_processor.save_pretrained(str(directory))
        notes.append("No tokenizer was given: only the upstream image processor was written.")
        return notes
    from transformers import AutoTokenizer

    tokenizer_dir = directory / ".tokenizer"
    tokenizer.save_pretrained(str(tokenizer_dir))
    special = {"image_token": IMAGE_TOKEN}
    upstream_tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), extra_special_tokens=special)
    if upstream_tokenizer.pad_token is None:
        upstream_tokenizer.pad_token = upstream_tokenizer.eos_token
    image_token_id = upstream_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id != config.image_token_id:
        raise UpstreamConversionError(
            f"The tokenizer's {IMAGE_TOKEN!r} id is {image_token_id} but config.image_token_id is "
            f"{config.image_token_id}. Fix: convert the checkpoint together with its own tokenizer."
        )
    processor = upstream_class(model_type, "processor")(
        image_processor=upstream_image_processor, tokenizer=upstream_tokenizer, chat_template=chat_template,
        num_image_tokens=config.num_image_tokens,
    )
    processor.save_pretrained(str(directory))
    shutil.rmtree(tokenizer_dir)
    make_processor_files_portable(directory)
    return notes


def make_processor_files_portable(directory: Path) -> None:
    """Rewrite the processor files in the layout both transformers 4.57 and 5.x load (the layout of the Hub
    checkpoints): the image processor in its own preprocessor_config.json (5.x nests it in processor_config.json,
    which 4.x cannot read), a tokenizer class both know, the image token as a named extra special token, and no
    `auto_map` pointing at this package's remote code (the upstream classes are built into transformers)."""
    processor_path = directory / "processor_config.json"
    if processor_path.is_file():
        processor_config = json.loads(processor_path.read_text(encoding="utf-8"))
        image_processor = processor_config.pop("image_processor", None)
        if image_processor is not None:
            (directory / "preprocessor_config.json").write_text(
                json.dumps(image_processor, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            processor_path.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer_path = directory / "tokenizer_config.json"
    if tokenizer_path.is_file():
        from ..tokenization_dsvl import IMAGE_TOKEN

        tokenizer_config = json.loads(tokenizer_path.read_text(encoding="utf-8"))
        tokenizer_config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        tokenizer_config.pop("auto_map", None)
        named = tokenizer_config.get("extra_special_tokens")
        named = dict(named) if isinstance(named, dict) else {}
        named["image_token"] = IMAGE_TOKEN
        tokenizer_config["extra_special_tokens"] = named
        tokenizer_config.pop("model_specific_special_tokens", None)
        tokenizer_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_our_processor(directory: Path, config: DeepSeekVLConfig, upstream_image_processor=None, tokenizer=None):
    """Our image processor (and processor, with a tokenizer) equivalent to the upstream one. Returns notes."""
    from ..image_processing_dsvl import DeepSeekVLImageProcessor
    from ..processing_dsvl import DeepSeekVLProcessor

    overrides = {}
    if upstream_image_processor is not None:
        overrides["min_size"] = min(int(getattr(upstream_image_processor, "min_size", DEFAULT_MIN_SIZE)),
                                    config.image_size)
        overrides["rescale_factor"] = float(getattr(upstream_image_processor, "rescale_factor",
                                                    DEFAULT_RESCALE_FACTOR))
    image_processor = DeepSeekVLImageProcessor.from_model_config(config, **overrides)
    if tokenizer is None:
        image_processor.save_pretrained(str(directory))
        return ["No tokenizer in the upstream checkpoint: only our image processor was written."]
    processor = DeepSeekVLProcessor(image_processor, tokenizer, num_image_tokens=config.num_image_tokens)
    if processor.image_token_id != config.image_token_id:
        raise UpstreamConversionError(
            f"The tokenizer's <image_placeholder> id is {processor.image_token_id} but the upstream config's "
            f"image_token_id is {config.image_token_id}. Fix: convert the checkpoint with its own tokenizer."
        )
    processor.save_pretrained(str(directory))
    return []


def _chat_template_note(source_dir: Path | None) -> list[str]:
    """Our processor always gets the original `deepseek` template; say so when the upstream one was different."""
    from ..processing_dsvl import CHAT_TEMPLATE

    if source_dir is None:
        return []
    template = None
    if (source_dir / "chat_template.jinja").is_file():
        template = (source_dir / "chat_template.jinja").read_text(encoding="utf-8")
    else:
        for file_name in ("processor_config.json", "chat_template.json", "tokenizer_config.json"):
            path = source_dir / file_name
            if path.is_file():
                template = json.loads(path.read_text(encoding="utf-8")).get("chat_template") or template
    if template is None or template == CHAT_TEMPLATE:
        return []
    return ["The checkpoint's chat template was replaced by the original `deepseek` template (the upstream port's "
            "template leaves out the end-of-sentence string after a final assistant answer)."]


# ---------------------------------------------------------------------------------------------------------------------
# Whole checkpoints
# ---------------------------------------------------------------------------------------------------------------------
class _InMemoryWeights:
    """A model's state dict behind the reading interface of `streaming.open_checkpoint`."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.state_dict = state_dict
        self.tensors = {name: _TensorShape(t.dtype, tuple(t.shape)) for name, t in state_dict.items()}

    def read(self, name: str) -> torch.Tensor:
        return self.state_dict[name].detach().cpu()

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _TensorShape:
    dtype: torch.dtype
    shape: tuple[int, ...]


def _write_weights(directory: Path, source, plan: list[tuple[str, str]], max_shard_size) -> None:
    planned = [PlannedTensor(target, source.tensors[name].dtype, tuple(source.tensors[name].shape))
               for name, target in plan]
    writer = ShardedCheckpointWriter(directory, planned, parse_size(max_shard_size))
    try:
        for name, target in plan:
            writer.write(target, source.read(name))
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def _weights_dtype(source) -> torch.dtype | None:
    dtypes = {info.dtype for info in source.tensors.values() if info.dtype.is_floating_point}
    return dtypes.pop() if len(dtypes) == 1 else None


def _set_dtype(config, dtype: torch.dtype | None) -> None:
    if dtype is not None:
        config.dtype = dtype  # transformers 4.57 and 5.x both write it as "dtype"


def write_upstream_config(upstream_config, directory: Path) -> None:
    """config.json with `tie_word_embeddings` spelled out at the top level and in the text config: transformers 4.x
    leaves values equal to a default out of the file, and the defaults differ between versions (5.x ties)."""
    upstream_config.save_pretrained(str(directory))
    path = directory / "config.json"
    written = json.loads(path.read_text(encoding="utf-8"))
    tie = bool(upstream_config.tie_word_embeddings)
    written["tie_word_embeddings"] = tie
    written["text_config"]["tie_word_embeddings"] = tie
    path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_generation_config(source_dir: Path | None, config: DeepSeekVLConfig, directory: Path) -> None:
    from transformers import GenerationConfig

    if source_dir is not None and (source_dir / "generation_config.json").is_file():
        generation_config = GenerationConfig.from_pretrained(str(source_dir))
    else:
        text = config.text_config
        generation_config = GenerationConfig(bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                                             pad_token_id=text.pad_token_id)
    generation_config.save_pretrained(str(directory))


def to_upstream(
    model_or_dir,
    out_dir: str | Path,
    *,
    tokenizer=None,
    chat_template: str | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> UpstreamConversionResult:
    """Convert one of our checkpoints (a `DeepSeekVLForConditionalGeneration` or its directory) into transformers'
    `deepseek_vl` (SigLIP-only) or `deepseek_vl_hybrid` format, loadable with
    `DeepseekVL[Hybrid]ForConditionalGeneration.from_pretrained(out_dir)` and `AutoProcessor.from_pretrained(out_dir)`.

    Every tensor is copied unchanged under its upstream name. The upstream model expects *normalised* pixels and,
    for the hybrid, a separate 384 px view, so the written upstream image processor normalises with our config's
    mean/std and makes the low-resolution view in preprocessing (from the padded 8-bit image, BILINEAR), where our
    model normalises inside and makes that view from the [0, 1] tensor. The processor (tokenizer, chat template) is
    written when the source directory holds a tokenizer or `tokenizer` is given; the chat template defaults to our
    original-format one. The output appears only once complete.
    """
    from ..modeling_dsvl import DeepSeekVLForConditionalGeneration

    source_dir = None
    if isinstance(model_or_dir, torch.nn.Module):
        if not isinstance(model_or_dir, DeepSeekVLForConditionalGeneration):
            raise TypeError(f"to_upstream converts a DeepSeekVLForConditionalGeneration, got "
                            f"{type(model_or_dir).__name__}. Fix: pass the generation model or its directory.")
        config = model_or_dir.config
        source = _InMemoryWeights(model_or_dir.state_dict())
    else:
        source_dir = Path(model_or_dir)
        config = DeepSeekVLConfig.from_pretrained(str(source_dir))
        source = open_checkpoint(source_dir)
    try:
        upstream_config = config_to_upstream(config)
        plan = plan_renames({n: (i.dtype, tuple(i.shape)) for n, i in source.tensors.items()}, config,
                            to_upstream=True)
        _set_dtype(upstream_config, _weights_dtype(source))
        image_processor = _load_our_image_processor(source_dir, config)
        if tokenizer is None:
            tokenizer = _load_tokenizer(source_dir)
        if chat_template is None and tokenizer is not None:
            from ..processing_dsvl import CHAT_TEMPLATE

            chat_template = CHAT_TEMPLATE
        with atomic_output_directory(out_dir, overwrite=overwrite) as staging:
            _write_weights(staging, source, plan, max_shard_size)
            write_upstream_config(upstream_config, staging)
            _copy_generation_config(source_dir, config, staging)
            notes = write_upstream_processor(staging, config, image_processor, tokenizer, chat_template)
    finally:
        source.close()
    return UpstreamConversionResult(Path(out_dir), len(plan), upstream_config.model_type, notes)


def from_upstream(
    model_or_dir,
    out_dir: str | Path,
    *,
    tokenizer=None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> UpstreamConversionResult:
    """Convert a transformers `deepseek_vl` / `deepseek_vl_hybrid` checkpoint (a model or its directory) into this
    package's format (with remote code, loadable with `trust_remote_code=True`).

    Every tensor is copied unchanged under our name. The mean/std the upstream image processor applies become our
    in-model normalisation (`low_res_image_*`, `high_res_image_*`; released values when the checkpoint has no image
    processor); our processor then emits [0, 1] pixels and the model makes the hybrid's low-resolution view itself.
    Tying follows the weights: a stored `lm_head.weight` gives a separate output layer (even where transformers 5.x
    would tie it because the config does not say otherwise), no `lm_head.weight` a tied one.
    """
    source_dir = None
    upstream_image_processor = None
    if isinstance(model_or_dir, torch.nn.Module):
        upstream_config = model_or_dir.config
        state_dict = model_or_dir.state_dict()
        embeddings = model_or_dir.get_input_embeddings().weight
        tied = model_or_dir.get_output_embeddings().weight.data_ptr() == embeddings.data_ptr()
        if tied:
            state_dict.pop("lm_head.weight", None)
        source = _InMemoryWeights(state_dict)
    else:
        from transformers import AutoConfig

        source_dir = Path(model_or_dir)
        upstream_config = AutoConfig.from_pretrained(str(source_dir))
        source = open_checkpoint(source_dir)
        tied = "lm_head.weight" not in source.tensors
        upstream_image_processor = _load_upstream_image_processor(source_dir, upstream_config.model_type)
    try:
        notes = []
        if upstream_image_processor is None:
            notes.append("No upstream image processor found: the released normalisation (SigLIP mean/std 0.5, SAM CLIP "
                         "mean/std) is assumed.")
        config = config_from_upstream(upstream_config, normalization_from_upstream_processor(upstream_image_processor),
                                      tie_word_embeddings=tied)
        stated_tie = getattr(upstream_config, "tie_word_embeddings", None)
        if not tied and stated_tie:
            notes.append("The upstream config says tie_word_embeddings=True (transformers 5.x's default) but the weights "
                         "hold a separate lm_head; the converted model keeps that lm_head untied.")
        plan = plan_renames({n: (i.dtype, tuple(i.shape)) for n, i in source.tensors.items()}, config,
                            to_upstream=False)
        _set_dtype(config, _weights_dtype(source))
        if tokenizer is None:
            tokenizer = _load_tokenizer(source_dir)
        from .convert import write_config_and_remote_code

        with atomic_output_directory(out_dir, overwrite=overwrite) as staging:
            _write_weights(staging, source, plan, max_shard_size)
            write_config_and_remote_code(config, staging)
            _copy_generation_config(source_dir, config, staging)
            notes += write_our_processor(staging, config, upstream_image_processor, tokenizer)
            if tokenizer is not None:
                notes += _chat_template_note(source_dir)
    finally:
        source.close()
    return UpstreamConversionResult(Path(out_dir), len(plan), config.model_type, notes)


def _load_upstream_image_processor(source_dir: Path, model_type: str):
    """The upstream image processor of a checkpoint directory, or None when it has none."""
    has_settings = (source_dir / "preprocessor_config.json").is_file()
    if not has_settings and (source_dir / "processor_config.json").is_file():
        has_settings = "image_processor" in json.loads((source_dir / "processor_config.json").read_text())
    if not has_settings:
        return None
    return upstream_class(model_type, "image_processor").from_pretrained(str(source_dir))


__all__ = [
    "UpstreamConversionError",
    "UpstreamConversionResult",
    "check_upstream_compatible",
    "config_from_upstream",
    "config_to_upstream",
    "from_upstream",
    "name_from_upstream",
    "normalization_from_upstream_processor",
    "state_dict_from_upstream",
    "state_dict_to_upstream",
    "to_upstream",
    "upstream_image_processor_settings",
    "upstream_name",
]
