"""The original DeepSeek-VL checkpoint format (`MultiModalityCausalLM`, config `model_type: multi_modality`) and its
exact correspondence with this package: config translation both ways and the tensor-name mapping both ways.

Nothing here is hard-coded to the released sizes. The original names its vision towers by model name
(`siglip_large_patch16_384`, `sam_b_downsample`) and looks their sizes up in tables, reproduced below. When a tower's
`params` also carry sizes under the original's own field names (`width`, `layers`, `heads`, `mlp_ratio`,
`patch_size`, and for SAM `window_size`, `global_attn_indexes`, `downsample_channels`, `prompt_embed_dim`), those
win, so checkpoints of any size convert. The language model is `LlamaForCausalLM(LlamaConfig(**language_config))`
under transformers 4.38, so every field the file leaves out takes that version's LlamaConfig default.

The tensor mapping is derived from this package's own state dict (built on the meta device, so it costs no memory):
every parameter of the model must be produced by exactly one original tensor, which is what makes the accounting
strict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from transformers import LlamaConfig, SiglipVisionConfig

from ..configuration_dsvl import DeepSeekVLConfig, DeepSeekVLSamVisionConfig

ORIGINAL_MODEL_TYPE = "multi_modality"
SINGLE_TOWER_CLASS = "CLIPVisionTower"
HYBRID_TOWER_CLASS = "HybridVisionTower"
ALIGNER_CLASS = "MlpProjector"

# Original tensor-name prefixes of the towers.
SINGLE_SIGLIP_PREFIX = "vision_model.vision_tower."
HYBRID_SIGLIP_PREFIX = "vision_model.vision_tower_low.vision_tower."
SAM_PREFIX = "vision_model.vision_tower_high.vision_tower."

# deepseek_vl/models/siglip_vit.py: SigLIP_MODEL_CONFIG. (The tables' image sizes are never used by the original:
# the tower is built at `params.image_size`.) The MLP width is int(width * mlp_ratio), as timm's Mlp computes it.
ORIGINAL_SIGLIP_MODELS = {
    "siglip_so400m_patch14_384": dict(width=1152, layers=27, heads=16, patch_size=14, mlp_ratio=3.7362),
    "siglip_so400m_patch14_224": dict(width=1152, layers=27, heads=16, patch_size=14, mlp_ratio=3.7362),
    "siglip_large_patch16_384": dict(width=1024, layers=24, heads=16, patch_size=16, mlp_ratio=4),
}
# deepseek_vl/models/sam.py: SAM_MODEL_CONFIG merged into SAMViTCfg, plus what create_sam_vit fixes (mlp_ratio 4,
# window 14). Only the downsampling SAM can feed the hybrid aligner; the plain SAM entries of the original table
# produce a 96 x 96 token map that no DeepSeek-VL model uses.
ORIGINAL_SAM_MODELS = {
    "sam_b_downsample": dict(width=768, layers=12, heads=12, patch_size=16, window_size=14, mlp_ratio=4,
                             global_attn_indexes=[2, 5, 8, 11], downsample_channels=[512, 1024], prompt_embed_dim=256),
}
# Explicit size fields a tower's `params` may carry (the original's own names); they override the table.
SIGLIP_SIZE_FIELDS = ("width", "layers", "heads", "patch_size", "mlp_ratio")
SAM_SIZE_FIELDS = ("width", "layers", "heads", "patch_size", "window_size", "mlp_ratio", "global_attn_indexes",
                   "downsample_channels", "prompt_embed_dim")
# Fields of a tower's params that the original reads (or stores) and that need no translation.
TOWER_BOOKKEEPING_FIELDS = ("model_name", "image_size", "select_layer", "select_feature", "select_layers",
                            "pixel_mean", "pixel_std", "ckpt_path", "output_dim", "class_token")
# CLIPVisionTower's own defaults, which apply when a tower's params leave the field out.
ORIGINAL_TOWER_DEFAULT_IMAGE_SIZE = 336
ORIGINAL_TOWER_DEFAULT_SELECT_LAYER = -2
# The original SAM tower resizes its neck output to a fixed 96 x 96 before the stride-2 convolutions.
ORIGINAL_SAM_RESIZE = 96

# transformers 4.38 LlamaConfig defaults (what the original gets for every field its language_config omits).
# bos/eos/pad are NOT taken from here: the original passes the tokenizer's ids at generation time.
LLAMA_4_38_DEFAULTS = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=None,  # None means "same as num_attention_heads"
    hidden_act="silu",
    max_position_embeddings=2048,
    initializer_range=0.02,
    rms_norm_eps=1e-6,
    use_cache=True,
    pretraining_tp=1,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    rope_scaling=None,
    attention_bias=False,
    attention_dropout=0.0,
)
# Serialisation bookkeeping in a language_config that carries no architecture.
LANGUAGE_BOOKKEEPING_FIELDS = ("model_type", "torch_dtype", "dtype", "architectures", "transformers_version",
                               "_name_or_path", "bos_token_id", "eos_token_id", "pad_token_id")
# The fields the reverse conversion always writes (as the published files do); others only when not the default.
LANGUAGE_FIELDS_ALWAYS_WRITTEN = ("hidden_size", "intermediate_size", "max_position_embeddings", "num_attention_heads",
                                  "num_hidden_layers", "num_key_value_heads", "vocab_size")


class OriginalConfigError(ValueError):
    """The original config.json describes something this package cannot represent, or is malformed."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match its config: unknown, missing or wrongly shaped tensors."""


# ---------------------------------------------------------------------------------------------------------------------
# Config: original -> ours
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class OriginalConfigTranslation:
    """The DeepSeekVLConfig built from an original config.json, with what the translation decided and why."""

    config: DeepSeekVLConfig
    original: dict
    siglip_prefix: str
    notes: list[str] = field(default_factory=list)


def config_from_original(
    original: dict,
    *,
    image_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
) -> OriginalConfigTranslation:
    """Translate an original `config.json` (model_type `multi_modality`) into a `DeepSeekVLConfig`.

    The special-token ids come from the checkpoint's tokenizer: the original's language_config keeps LlamaConfig's
    1/2 defaults, which are not this tokenizer's ids (the original passes the right ones at generation time).
    """
    if original.get("model_type") != ORIGINAL_MODEL_TYPE:
        raise OriginalConfigError(
            f"config.json has model_type {original.get('model_type')!r}, expected {ORIGINAL_MODEL_TYPE!r} (the "
            "original deepseek-ai DeepSeek-VL format). Fix: point the converter at an original deepseek-vl "
            "checkpoint; a transformers_dsvl checkpoint (model_type 'dsvl') converts back with --direction to-original."
        )
    for section in ("vision_config", "aligner_config", "language_config"):
        if not isinstance(original.get(section), dict):
            raise OriginalConfigError(f"config.json has no {section!r} object. Fix: restore the original config.json.")
    notes: list[str] = []

    text_config = _text_config_from_original(original["language_config"], notes, bos_token_id, eos_token_id,
                                             pad_token_id)
    vision = original["vision_config"]
    vision_class = str(vision.get("cls", ""))
    params = vision.get("params") or {}
    if HYBRID_TOWER_CLASS in vision_class:
        if params.get("concat_type", "tuple") != "tuple":
            raise OriginalConfigError(
                f"vision_config.params.concat_type is {params.get('concat_type')!r}; only 'tuple' (the release, "
                "feeding the hybrid aligner) is supported."
            )
        for name in ("high_res_cfg", "low_res_cfg"):
            if not isinstance(params.get(name), dict):
                raise OriginalConfigError(f"vision_config.params has no {name!r} object. Fix: restore config.json.")
        _note_ignored(notes, "vision_config.params", params,
                      ("high_res_cfg", "low_res_cfg", "concat_type", "freeze_high", "freeze_low"))
        siglip_config, low_mean, low_std = _siglip_from_original(
            params["low_res_cfg"], "vision_config.params.low_res_cfg", notes
        )
        sam_config, high_mean, high_std = _sam_from_original(params["high_res_cfg"], siglip_config, notes)
        siglip_prefix = HYBRID_SIGLIP_PREFIX
    elif SINGLE_TOWER_CLASS in vision_class:
        siglip_config, low_mean, low_std = _siglip_from_original(params, "vision_config.params", notes)
        sam_config, high_mean, high_std = None, None, None
        siglip_prefix = SINGLE_SIGLIP_PREFIX
    else:
        raise OriginalConfigError(
            f"vision_config.cls is {vision_class!r}; DeepSeek-VL uses {SINGLE_TOWER_CLASS!r} (SigLIP, 1.3B) or "
            f"{HYBRID_TOWER_CLASS!r} (SAM + SigLIP, 7B)."
        )

    aligner_type, aligner_depth = _aligner_from_original(original["aligner_config"], siglip_config, sam_config,
                                                        text_config)
    extra = {}
    if sam_config is not None:
        extra.update(high_res_image_mean=high_mean, high_res_image_std=high_std)
    try:
        config = DeepSeekVLConfig(
            text_config=text_config,
            vision_config=siglip_config,
            high_res_vision_config=sam_config,
            aligner_type=aligner_type,
            aligner_depth=aligner_depth,
            image_token_id=image_token_id,
            low_res_image_mean=low_mean,
            low_res_image_std=low_std,
            tie_word_embeddings=text_config.tie_word_embeddings,
            **extra,
        )
    except ValueError as error:
        raise OriginalConfigError(f"The original config translates into an invalid DeepSeekVLConfig: {error}") from None
    return OriginalConfigTranslation(config=config, original=original, siglip_prefix=siglip_prefix, notes=notes)


def _text_config_from_original(language: dict, notes, bos_token_id, eos_token_id, pad_token_id) -> LlamaConfig:
    if language.get("model_type", "llama") != "llama":
        raise OriginalConfigError(
            f"language_config.model_type is {language.get('model_type')!r}; the original always builds a "
            "LlamaForCausalLM. Fix: restore config.json."
        )
    fields = {name: language.get(name, default) for name, default in LLAMA_4_38_DEFAULTS.items()}
    defaulted = sorted(name for name in LLAMA_4_38_DEFAULTS if name not in language)
    if defaulted:
        notes.append("language_config leaves out " + ", ".join(defaulted) + "; they take transformers 4.38 "
                     "LlamaConfig defaults, as the original gets them")
    if fields["num_key_value_heads"] is None:
        fields["num_key_value_heads"] = fields["num_attention_heads"]
    _note_ignored(notes, "language_config", language, (*LLAMA_4_38_DEFAULTS, *LANGUAGE_BOOKKEEPING_FIELDS))
    notes.append(f"special tokens from the tokenizer: bos {bos_token_id}, eos {eos_token_id}, pad {pad_token_id} "
                 "(the original language_config keeps LlamaConfig's 1/2, which are not this tokenizer's ids)")
    return LlamaConfig(**fields, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def _tower_sizes(params: dict, where: str, table: dict, size_fields: tuple, notes: list) -> dict:
    model_name = params.get("model_name")
    explicit = {name: params[name] for name in size_fields if name in params}
    if model_name in table:
        sizes = {**table[model_name], **explicit}
        source = f"the original's table entry {model_name!r}"
    elif all(name in explicit for name in size_fields):
        sizes = dict(explicit)
        source = "explicit params"
    else:
        missing = [name for name in size_fields if name not in explicit]
        raise OriginalConfigError(
            f"{where}.model_name is {model_name!r}, which the original's tables do not define "
            f"(known: {sorted(table)}), and the params do not give the sizes explicitly (missing {missing}). Fix: use "
            "a known model_name or add the explicit size fields."
        )
    overridden = {k: v for k, v in explicit.items() if model_name in table and table[model_name].get(k) != v}
    if overridden:
        notes.append(f"{where}: explicit params {overridden} override {source}")
    else:
        notes.append(f"{where}: tower sizes from {source}")
    return sizes


def _mean_std(params: dict, where: str, notes: list, channels: int = 3):
    mean, std = params.get("pixel_mean"), params.get("pixel_std")
    if mean is None or std is None:
        # The original builds no Normalize when either is missing: the tower sees the [0,1] pixels as they are.
        notes.append(f"{where}: no pixel_mean/pixel_std, so the tower sees unnormalised [0,1] pixels (mean 0, std 1)")
        return [0.0] * channels, [1.0] * channels
    return [float(v) for v in mean], [float(v) for v in std]


def _siglip_from_original(params: dict, where: str, notes: list):
    sizes = _tower_sizes(params, where, ORIGINAL_SIGLIP_MODELS, SIGLIP_SIZE_FIELDS, notes)
    if not str(params.get("model_name", "siglip")).startswith("siglip"):
        raise OriginalConfigError(
            f"{where}.model_name is {params.get('model_name')!r}: the low-resolution / single tower must be a SigLIP "
            "ViT (the original builds a SAM-only or a Hub CLIP tower that DeepSeek-VL never released)."
        )
    if params.get("class_token"):
        raise OriginalConfigError(f"{where}.class_token is true; DeepSeek-VL's SigLIP has no class token.")
    if params.get("select_layers"):
        raise OriginalConfigError(f"{where}.select_layers is set; only select_layer is supported.")
    _note_ignored(notes, where, params, (*SIGLIP_SIZE_FIELDS, *TOWER_BOOKKEEPING_FIELDS))
    image_size = params.get("image_size", ORIGINAL_TOWER_DEFAULT_IMAGE_SIZE)
    if "image_size" not in params:
        notes.append(f"{where}: no image_size; the original tower defaults to {ORIGINAL_TOWER_DEFAULT_IMAGE_SIZE}")
    select_layer = params.get("select_layer", ORIGINAL_TOWER_DEFAULT_SELECT_LAYER)
    depth = int(sizes["layers"])
    # create_siglip_vit builds only the blocks that the selected layer needs.
    kept = min(depth, depth + select_layer + 1) if select_layer <= 0 else min(depth, select_layer)
    if kept < 1:
        raise OriginalConfigError(f"{where}.select_layer={select_layer} keeps {kept} of {depth} blocks.")
    if kept != depth:
        notes.append(f"{where}: select_layer={select_layer} keeps {kept} of {depth} SigLIP blocks")
    width = int(sizes["width"])
    config = SiglipVisionConfig(
        hidden_size=width,
        intermediate_size=int(width * sizes["mlp_ratio"]),
        num_hidden_layers=kept,
        num_attention_heads=int(sizes["heads"]),
        num_channels=3,
        image_size=int(image_size),
        patch_size=int(sizes["patch_size"]),
        hidden_act="gelu",  # timm's nn.GELU: the exact erf form
        layer_norm_eps=1e-6,  # create_siglip_vit forces eps 1e-6 on every LayerNorm
        vision_use_head=False,  # the attention-pool head is stored but never run (ignore_head=True)
    )
    mean, std = _mean_std(params, where, notes)
    return config, mean, std


def _sam_from_original(params: dict, siglip: SiglipVisionConfig, notes: list):
    where = "vision_config.params.high_res_cfg"
    if not str(params.get("model_name", "sam")).startswith("sam"):
        raise OriginalConfigError(f"{where}.model_name is {params.get('model_name')!r}; the high-resolution tower "
                                  "must be a SAM ViT.")
    sizes = _tower_sizes(params, where, ORIGINAL_SAM_MODELS, SAM_SIZE_FIELDS, notes)
    _note_ignored(notes, where, params, (*SAM_SIZE_FIELDS, *TOWER_BOOKKEEPING_FIELDS))
    image_size = params.get("image_size", ORIGINAL_TOWER_DEFAULT_IMAGE_SIZE)
    layers = int(sizes["layers"])
    global_indexes = sorted(int(i) for i in sizes["global_attn_indexes"])
    in_range = [i for i in global_indexes if 0 <= i < layers]
    if not in_range:
        raise OriginalConfigError(
            f"{where}: no global-attention block among {layers} blocks (global_attn_indexes {global_indexes}); the "
            "original's high-definition branch reads the first global block, so it cannot run without one."
        )
    if in_range != global_indexes:
        notes.append(f"{where}: global_attn_indexes {global_indexes} beyond the {layers} blocks are never used")
    siglip_grid = siglip.image_size // siglip.patch_size
    downsample_channels = [int(c) for c in sizes["downsample_channels"]]
    resize = siglip_grid * 2 ** len(downsample_channels)
    if resize != ORIGINAL_SAM_RESIZE:
        notes.append(
            f"{where}: the SAM neck output is resized to {resize} x {resize} so that the stride-2 convolutions land "
            f"on the SigLIP grid ({siglip_grid} x {siglip_grid}); the original code always resizes to "
            f"{ORIGINAL_SAM_RESIZE} x {ORIGINAL_SAM_RESIZE}, so it cannot run a checkpoint of these sizes"
        )
    width = int(sizes["width"])
    try:
        config = DeepSeekVLSamVisionConfig(
            hidden_size=width,
            intermediate_size=int(width * sizes["mlp_ratio"]),
            num_hidden_layers=layers,
            num_attention_heads=int(sizes["heads"]),
            num_channels=3,
            image_size=int(image_size),
            patch_size=int(sizes["patch_size"]),
            window_size=int(sizes["window_size"]),
            global_attn_indexes=in_range,
            # The original's "hd" branch takes the output of the first global-attention block.
            global_feature_layer=in_range[0],
            neck_channels=int(sizes["prompt_embed_dim"]),
            downsample_channels=downsample_channels,
            output_grid_size=siglip_grid,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
            qkv_bias=True,
        )
    except ValueError as error:
        raise OriginalConfigError(f"{where} translates into an invalid SAM config: {error}") from None
    mean, std = _mean_std(params, where, notes)
    return config, mean, std


def _aligner_from_original(aligner: dict, siglip, sam, text) -> tuple[str, int]:
    if ALIGNER_CLASS not in str(aligner.get("cls", "")):
        raise OriginalConfigError(f"aligner_config.cls is {aligner.get('cls')!r}; expected {ALIGNER_CLASS!r}.")
    params = aligner.get("params") or {}
    projector_type = params.get("projector_type")
    if projector_type is None:
        raise OriginalConfigError("aligner_config.params has no projector_type. Fix: restore config.json.")
    depth = int(params.get("depth", 1))  # MlpProjector's default
    if projector_type == "identity":
        return projector_type, depth
    for name in ("input_dim", "n_embed"):
        if name not in params:
            raise OriginalConfigError(f"aligner_config.params has no {name!r}. Fix: restore config.json.")
    input_dim, n_embed = int(params["input_dim"]), int(params["n_embed"])
    if input_dim != siglip.hidden_size:
        raise OriginalConfigError(
            f"aligner_config.params.input_dim={input_dim} but the SigLIP tower is {siglip.hidden_size} wide; the "
            "aligner could not take its output."
        )
    if sam is not None and input_dim != sam.output_channels:
        raise OriginalConfigError(
            f"aligner_config.params.input_dim={input_dim} but the SAM tower outputs {sam.output_channels} channels; "
            "the original's hybrid aligner uses input_dim for both up-projections."
        )
    if n_embed != text.hidden_size:
        raise OriginalConfigError(
            f"aligner_config.params.n_embed={n_embed} but the language model's hidden_size is {text.hidden_size}; "
            "image embeddings must have the LM width."
        )
    return projector_type, depth


def _note_ignored(notes: list, where: str, params: dict, known: tuple) -> None:
    ignored = sorted(set(params) - set(known))
    if ignored:
        notes.append(f"{where}: fields {ignored} have no effect on the model (the original ignores them too) and "
                     "are not carried over")


# ---------------------------------------------------------------------------------------------------------------------
# Config: ours -> original
# ---------------------------------------------------------------------------------------------------------------------
def config_to_original(config: DeepSeekVLConfig, torch_dtype: str, transformers_version: str) -> dict:
    """The original `config.json` for `config`: published model names where the sizes match the original's tables
    (what the original code can build), explicit size params otherwise (readable back by this converter)."""
    siglip_params = _siglip_to_original(config.vision_config, config.low_res_image_mean, config.low_res_image_std)
    if config.is_hybrid:
        sam_params = _sam_to_original(config)
        siglip_params.update(ckpt_path="", output_dim=config.vision_config.hidden_size)
        vision_config = {
            "cls": HYBRID_TOWER_CLASS,
            "model_type": "vision",
            "params": {
                "concat_type": "tuple",
                "freeze_high": True,
                "freeze_low": True,
                "high_res_cfg": dict(sorted(sam_params.items())),
                "low_res_cfg": dict(sorted(siglip_params.items())),
            },
        }
    else:
        vision_config = {"cls": SINGLE_TOWER_CLASS, "model_type": "vision",
                         "params": dict(sorted(siglip_params.items()))}
    aligner_params = {"depth": config.aligner_depth, "projector_type": config.aligner_type}
    if config.aligner_type != "identity":
        aligner_params.update(input_dim=config.vision_config.hidden_size, n_embed=config.text_config.hidden_size)
    return {
        "aligner_config": {"cls": ALIGNER_CLASS, "model_type": "aligner",
                           "params": dict(sorted(aligner_params.items()))},
        "architectures": ["MultiModalityCausalLM"],
        "language_config": _text_config_to_original(config, torch_dtype),
        "model_type": ORIGINAL_MODEL_TYPE,
        "torch_dtype": torch_dtype,
        "transformers_version": transformers_version,
        "vision_config": vision_config,
    }


def rope_theta_of(text_config) -> float:
    theta = getattr(text_config, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(text_config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _rope_scaling_of(text_config):
    parameters = getattr(text_config, "rope_parameters", None)
    if parameters is not None:
        scaling = {k: v for k, v in parameters.items() if k != "rope_theta"}
        return None if scaling.get("rope_type", "default") == "default" else scaling
    return getattr(text_config, "rope_scaling", None)


def _text_config_to_original(config: DeepSeekVLConfig, torch_dtype: str) -> dict:
    text = config.text_config
    values = {
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": text.hidden_act,
        "max_position_embeddings": text.max_position_embeddings,
        "initializer_range": text.initializer_range,
        "rms_norm_eps": text.rms_norm_eps,
        "use_cache": text.use_cache,
        "pretraining_tp": getattr(text, "pretraining_tp", 1),
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_theta": rope_theta_of(text),
        "rope_scaling": _rope_scaling_of(text),
        "attention_bias": text.attention_bias,
        "attention_dropout": text.attention_dropout,
    }
    head_dim = getattr(text, "head_dim", None)
    if head_dim is not None and head_dim != text.hidden_size // text.num_attention_heads:
        raise OriginalConfigError(
            f"text_config.head_dim={head_dim} differs from hidden_size/num_attention_heads; transformers 4.38 "
            "LlamaConfig (which the original uses) cannot express it."
        )
    if getattr(text, "mlp_bias", False):
        raise OriginalConfigError("text_config.mlp_bias=True cannot be expressed in transformers 4.38 LlamaConfig.")
    language = {"model_type": "llama", "torch_dtype": torch_dtype}
    for name, value in values.items():
        if name in LANGUAGE_FIELDS_ALWAYS_WRITTEN or value != LLAMA_4_38_DEFAULTS[name]:
            language[name] = value
    return dict(sorted(language.items()))


def _mean_std_to_original(mean, std) -> dict:
    if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
        return {"pixel_mean": None, "pixel_std": None}
    return {"pixel_mean": list(mean), "pixel_std": list(std)}


def _table_entry_matching(table: dict, sizes: dict) -> str | None:
    for name, entry in table.items():
        if all(entry[k] == v for k, v in sizes.items() if k in entry):
            return name
    return None


def _siglip_to_original(vision: SiglipVisionConfig, mean, std) -> dict:
    width = vision.hidden_size
    mlp_ratio = vision.intermediate_size / width
    params = {
        "image_size": vision.image_size,
        "select_feature": "same",
        **_mean_std_to_original(mean, std),
    }
    for name, entry in ORIGINAL_SIGLIP_MODELS.items():
        same_sizes = (entry["width"] == width and entry["heads"] == vision.num_attention_heads
                      and entry["patch_size"] == vision.patch_size
                      and int(width * entry["mlp_ratio"]) == vision.intermediate_size
                      and vision.num_hidden_layers <= entry["layers"])
        if same_sizes:
            # select_layer -1 keeps every block; each block fewer is one more step back.
            params.update(model_name=name, select_layer=vision.num_hidden_layers - entry["layers"] - 1)
            return params
    params.update(
        model_name="siglip_large_patch16_384",
        select_layer=-1,
        width=width,
        layers=vision.num_hidden_layers,
        heads=vision.num_attention_heads,
        patch_size=vision.patch_size,
        mlp_ratio=int(mlp_ratio) if mlp_ratio == int(mlp_ratio) else mlp_ratio,
    )
    return params


def _sam_to_original(config: DeepSeekVLConfig) -> dict:
    sam = config.high_res_vision_config
    if sam.global_feature_layer is None or sam.global_feature_layer != min(sam.global_attn_indexes):
        raise OriginalConfigError(
            f"high_res_vision_config.global_feature_layer={sam.global_feature_layer}, but the original's "
            f"high-definition branch always reads the first global-attention block ({min(sam.global_attn_indexes)})."
        )
    mlp_ratio = sam.intermediate_size / sam.hidden_size
    sizes = dict(
        width=sam.hidden_size, layers=sam.num_hidden_layers, heads=sam.num_attention_heads,
        patch_size=sam.patch_size, window_size=sam.window_size,
        mlp_ratio=int(mlp_ratio) if mlp_ratio == int(mlp_ratio) else mlp_ratio,
        global_attn_indexes=list(sam.global_attn_indexes), downsample_channels=list(sam.downsample_channels),
        prompt_embed_dim=sam.neck_channels,
    )
    params = {
        "image_size": sam.image_size,
        "select_feature": "same",
        "select_layer": -1,
        "ckpt_path": "",
        "output_dim": sam.output_channels,
        **_mean_std_to_original(config.high_res_image_mean, config.high_res_image_std),
    }
    name = _table_entry_matching(ORIGINAL_SAM_MODELS, sizes)
    if name is not None and ORIGINAL_SAM_MODELS[name] == sizes:
        params["model_name"] = name
    else:
        params.update(model_name="sam_b_downsample", **sizes)
    return params


# ---------------------------------------------------------------------------------------------------------------------
# Tensor names
# ---------------------------------------------------------------------------------------------------------------------
COPY = "copy"
ADD_BATCH_DIM = "add_batch_dim"  # original [1, N, C] <-> ours [N, C]
FUSED_QKV = "fused_qkv"  # original fused [3D, ...] <-> ours q, k, v [D, ...] (equal chunks along dim 0, in that order)
QKV_PARTS = ("q", "k", "v")

OUR_SIGLIP_PREFIX = "model.vision_model."
# The nested SigLIP names that transformers 4.x SiglipVisionModel produced; read as an alias of the flat ones.
NESTED_SIGLIP_PREFIX = "model.vision_model.vision_model."
OUR_SAM_PREFIX = "model.high_res_vision_model."

# (regex on our name after the tower prefix, original name after the tower prefix, transform)
SIGLIP_NAME_RULES = [
    (r"embeddings\.patch_embedding\.(weight|bias)", "patch_embed.proj.{0}", COPY),
    (r"embeddings\.position_embedding\.weight", "pos_embed", ADD_BATCH_DIM),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", "blocks.{0}.norm{1}.{2}", COPY),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", "blocks.{0}.attn.qkv.{1}", FUSED_QKV),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", "blocks.{0}.attn.proj.{1}", COPY),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", "blocks.{0}.mlp.{1}.{2}", COPY),
    (r"post_layernorm\.(weight|bias)", "norm.{0}", COPY),
]
SAM_NAME_RULES = [
    (r"patch_embed\.projection\.(weight|bias)", "patch_embed.proj.{0}", COPY),
    (r"pos_embed", "pos_embed", COPY),
    (r"layers\.(\d+)\.layer_norm([12])\.(weight|bias)", "blocks.{0}.norm{1}.{2}", COPY),
    (r"layers\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", "blocks.{0}.attn.{1}.{2}", COPY),
    (r"layers\.(\d+)\.attn\.(rel_pos_h|rel_pos_w)", "blocks.{0}.attn.{1}", COPY),
    (r"layers\.(\d+)\.mlp\.(lin[12])\.(weight|bias)", "blocks.{0}.mlp.{1}.{2}", COPY),
    (r"downsamples\.(\d+)\.weight", "downsamples.{0}.weight", COPY),
    (r"global_alpha", "hd_alpha_downsamples", COPY),
]
# The original's necks are nn.Sequential(conv, LayerNorm2d, conv, LayerNorm2d): positions 0-3.
for _our_neck, _original_neck in (("neck", "neck"), ("global_neck", "neck_hd")):
    for _position, _module in enumerate(("conv1", "layer_norm1", "conv2", "layer_norm2")):
        SAM_NAME_RULES.append((rf"{_our_neck}\.{_module}\.(weight|bias)", f"{_original_neck}.{_position}.{{0}}", COPY))
OTHER_NAME_RULES = [
    (r"model\.aligner\.(.+)", "aligner.{0}", COPY),
    (r"model\.language_model\.(.+)", "language_model.model.{0}", COPY),
    (r"lm_head\.weight", "language_model.lm_head.weight", COPY),
]


def canonical_name(name: str) -> str:
    """Our parameter name as checkpoints store it: the SigLIP tower's parameters sit directly under
    `model.vision_model.` (the package builds the flat SigLIP transformer under transformers 4.x and 5.x alike); the
    nested `model.vision_model.vision_model.` form of 4.x `SiglipVisionModel` is accepted as an alias."""
    if name.startswith(NESTED_SIGLIP_PREFIX):
        return OUR_SIGLIP_PREFIX + name[len(NESTED_SIGLIP_PREFIX):]
    return name


def original_name_for(our_name: str, siglip_prefix: str) -> tuple[str, str, int]:
    """(original name, transform, part index) of one of our parameters; part indexes q/k/v of a fused qkv."""
    if our_name.startswith(OUR_SIGLIP_PREFIX):
        rules, ours, prefix = SIGLIP_NAME_RULES, our_name[len(OUR_SIGLIP_PREFIX):], siglip_prefix
    elif our_name.startswith(OUR_SAM_PREFIX):
        rules, ours, prefix = SAM_NAME_RULES, our_name[len(OUR_SAM_PREFIX):], SAM_PREFIX
    else:
        rules, ours, prefix = OTHER_NAME_RULES, our_name, ""
    for pattern, template, transform in rules:
        match = re.fullmatch(pattern, ours)
        if match:
            groups = list(match.groups())
            part = 0
            if transform == FUSED_QKV:
                part = QKV_PARTS.index(groups.pop(1))  # the q/k/v letter selects the chunk
            return prefix + template.format(*groups), transform, part
    raise KeyError(
        f"No original-format name is known for the model parameter {our_name!r}. The model gained a parameter that "
        "the conversion tables (transformers_dsvl/conversion/original_format.py) do not place; extend them."
    )


@dataclass(frozen=True)
class TensorMapping:
    """One original tensor and the parameter(s) of ours it becomes."""

    original_name: str
    original_shape: tuple[int, ...]
    our_names: tuple[str, ...]  # three names (q, k, v) for a fused qkv, one otherwise
    our_shape: tuple[int, ...]  # shape of each of our tensors
    transform: str

    def to_ours(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.transform == FUSED_QKV:
            return list(tensor.chunk(3, dim=0))
        if self.transform == ADD_BATCH_DIM:
            return [tensor[0]]
        return [tensor]

    def to_original(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if self.transform == FUSED_QKV:
            return torch.cat(tensors, dim=0)
        if self.transform == ADD_BATCH_DIM:
            return tensors[0].unsqueeze(0)
        return tensors[0]


def our_parameter_shapes(config: DeepSeekVLConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of `DeepSeekVLForConditionalGeneration(config)`, in state-dict order, built on
    the meta device (no memory, any size) and under the names checkpoints store."""
    from ..modeling_dsvl import DeepSeekVLForConditionalGeneration

    with torch.device("meta"):
        model = DeepSeekVLForConditionalGeneration(config)
    shapes = {canonical_name(name): tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)  # tied: stored once, as the input embeddings
    return shapes


def build_tensor_mappings(config: DeepSeekVLConfig, siglip_prefix: str | None = None) -> list[TensorMapping]:
    """Every original tensor the model needs, with the parameter(s) it becomes, in our state-dict order."""
    if siglip_prefix is None:
        siglip_prefix = HYBRID_SIGLIP_PREFIX if config.is_hybrid else SINGLE_SIGLIP_PREFIX
    groups: dict[str, dict] = {}
    for our_name, shape in our_parameter_shapes(config).items():
        original_name, transform, part = original_name_for(our_name, siglip_prefix)
        group = groups.setdefault(original_name, {"transform": transform, "parts": {}, "shape": shape})
        if group["transform"] != transform or group["shape"] != shape or part in group["parts"]:
            raise ValueError(f"Conflicting mapping for {original_name!r}; this is a bug in the name rules.")
        group["parts"][part] = our_name
    mappings = []
    for original_name, group in groups.items():
        shape = group["shape"]
        if group["transform"] == FUSED_QKV:
            if sorted(group["parts"]) != [0, 1, 2]:
                raise ValueError(f"{original_name!r} lacks one of q/k/v in the model; this is a bug.")
            original_shape = (3 * shape[0], *shape[1:])
        elif group["transform"] == ADD_BATCH_DIM:
            original_shape = (1, *shape)
        else:
            original_shape = shape
        our_names = tuple(group["parts"][i] for i in sorted(group["parts"]))
        mappings.append(TensorMapping(original_name, original_shape, our_names, shape, group["transform"]))
    return mappings


def unused_original_tensor_names(config: DeepSeekVLConfig, siglip_prefix: str | None = None) -> list[str]:
    """The tensors the original stores but never runs, by exact name (dropped and reported, never matched by a
    wildcard): SigLIP's attention-pool head (built with global_pool='map', skipped with ignore_head=True), and in
    the hybrid the two LayerNorms HybridVisionTower creates and never applies."""
    if siglip_prefix is None:
        siglip_prefix = HYBRID_SIGLIP_PREFIX if config.is_hybrid else SINGLE_SIGLIP_PREFIX
    attn_pool = ["latent", "q.weight", "q.bias", "kv.weight", "kv.bias", "proj.weight", "proj.bias", "norm.weight",
                 "norm.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    names = [f"{siglip_prefix}attn_pool.{suffix}" for suffix in attn_pool]
    if config.is_hybrid:
        names += [f"vision_model.{norm}.{part}" for norm in ("high_layer_norm", "low_layer_norm")
                  for part in ("weight", "bias")]
    return names


@dataclass
class TensorAccounting:
    """Result of matching a checkpoint's tensors against what the config needs."""

    unknown: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unknown or self.missing or self.wrong_shape)

    def raise_for_problems(self, checkpoint: str, fix: str) -> None:
        if self.ok:
            return
        lines = [f"The tensors of {checkpoint} do not match its config:"]
        for label, names in (("unknown (map nowhere)", self.unknown), ("missing", self.missing),
                             ("wrong shape", self.wrong_shape)):
            if names:
                lines.append(f"  {len(names)} {label}:")
                lines += [f"    {name}" for name in names[:50]]
                if len(names) > 50:
                    lines.append(f"    ... and {len(names) - 50} more")
        lines.append(f"Fix: {fix}")
        raise CheckpointMismatchError("\n".join(lines))


def account_tensors(
    available: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], droppable: list[str] = ()
) -> TensorAccounting:
    """Compare a checkpoint's name -> shape with the expected name -> shape; `droppable` names may be present and
    are then dropped (listed), never matched by pattern."""
    droppable = set(droppable)
    accounting = TensorAccounting()
    for name, shape in available.items():
        if name in expected:
            if tuple(shape) != tuple(expected[name]):
                accounting.wrong_shape.append(f"{name}: found {list(shape)}, expected {list(expected[name])}")
        elif name in droppable:
            accounting.dropped.append(name)
        else:
            accounting.unknown.append(name)
    accounting.missing = [name for name in expected if name not in available]
    return accounting


__all__ = [
    "CheckpointMismatchError",
    "OriginalConfigError",
    "OriginalConfigTranslation",
    "TensorAccounting",
    "TensorMapping",
    "account_tensors",
    "build_tensor_mappings",
    "canonical_name",
    "config_from_original",
    "config_to_original",
    "original_name_for",
    "our_parameter_shapes",
    "unused_original_tensor_names",
]
