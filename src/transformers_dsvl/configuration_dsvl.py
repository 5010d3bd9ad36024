"""Configuration of DeepSeek-VL (arXiv 2403.05525): SigLIP-only (deepseek-vl-1.3b) and SAM-B + SigLIP-L (deepseek-vl-7b).

This file is copied next to saved checkpoints for `trust_remote_code=True`: it may import only transformers,
torch and files of this folder through relative imports.
"""

from __future__ import annotations

import copy

from transformers import LlamaConfig, PretrainedConfig, SiglipVisionConfig

ALIGNER_TYPES = ("identity", "linear", "mlp_gelu", "low_high_hybrid_split_mlp_gelu")
HYBRID_ALIGNER_TYPE = "low_high_hybrid_split_mlp_gelu"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# The published tower sizes, as the original's model tables define them.
SIGLIP_LARGE_PATCH16_384 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_channels=3,
    image_size=384,
    patch_size=16,
    hidden_act="gelu",  # exact erf GELU; SigLIP's own default (tanh approximation) would not match the original
    layer_norm_eps=1e-6,
    vision_use_head=False,  # the original stores an attention-pool head but never runs it
)
SAM_B_DOWNSAMPLE = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=1024,
    patch_size=16,
    window_size=14,
    global_attn_indexes=[2, 5, 8, 11],
    global_feature_layer=2,
    neck_channels=256,
    downsample_channels=[512, 1024],
    output_grid_size=24,
)
DEEPSEEK_LLM_1_3B = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=102400,
    max_position_embeddings=16384,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    hidden_act="silu",
    attention_bias=False,
    tie_word_embeddings=False,
    bos_token_id=100000,
    eos_token_id=100001,
    pad_token_id=100001,
)
DEEPSEEK_LLM_7B = dict(DEEPSEEK_LLM_1_3B, hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                       num_attention_heads=32, num_key_value_heads=32)


class DeepSeekVLSamVisionConfig(PretrainedConfig):
    r"""High-resolution SAM-B tower of the hybrid DeepSeek-VL ("sam_b_downsample" in the original).

    A ViT with windowed and global attention and decomposed relative positions, followed by a convolutional neck,
    a bilinear resize to `output_grid_size * 2**len(downsample_channels)` and stride-2 convolutions down to an
    `output_grid_size` x `output_grid_size` grid of `downsample_channels[-1]` features. When `global_feature_layer`
    is set, the output of that block goes through a second neck (`global_neck`) and the same downsampling, scaled by
    the learned scalar `global_alpha`, and is added to the main branch.
    """

    model_type = "dsvl_sam_vision"
    base_config_key = "high_res_vision_config"

    def __init__(
        self,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_channels: int = 3,
        image_size: int = 1024,
        patch_size: int = 16,
        window_size: int = 14,
        global_attn_indexes=(2, 5, 8, 11),
        global_feature_layer: int | None = 2,
        neck_channels: int = 256,
        downsample_channels=(512, 1024),
        output_grid_size: int = 24,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_channels = num_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.window_size = window_size
        self.global_attn_indexes = list(global_attn_indexes)
        self.global_feature_layer = global_feature_layer
        self.neck_channels = neck_channels
        self.downsample_channels = list(downsample_channels)
        self.output_grid_size = output_grid_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_sam()

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def output_channels(self) -> int:
        return self.downsample_channels[-1] if self.downsample_channels else self.neck_channels

    @property
    def resize_size(self) -> int:
        """Side of the map the neck output is resized to before the stride-2 convolutions (96 for SAM-B)."""
        return self.output_grid_size * 2 ** len(self.downsample_channels)

    def validate_sam(self):
        def fail(field, problem, fix):
            raise ValueError(f"DeepSeekVLSamVisionConfig.{field}: {problem}. Fix: {fix}.")

        if self.image_size % self.patch_size:
            fail("image_size", f"{self.image_size} is not a multiple of patch_size={self.patch_size}",
                 "choose an image_size divisible by patch_size")
        if self.hidden_size % self.num_attention_heads:
            fail("num_attention_heads", f"hidden_size={self.hidden_size} is not divisible by {self.num_attention_heads}",
                 "pick a head count that divides hidden_size")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.num_hidden_layers]
        if bad:
            fail("global_attn_indexes", f"{bad} are outside 0..{self.num_hidden_layers - 1}",
                 "list block indices that exist")
        if self.global_feature_layer is not None and not 0 <= self.global_feature_layer < self.num_hidden_layers:
            fail("global_feature_layer", f"{self.global_feature_layer} is outside 0..{self.num_hidden_layers - 1}",
                 "use a block index that exists, or None to disable the global-feature branch")
        if self.window_size <= 0:
            fail("window_size", f"{self.window_size} must be positive", "use e.g. 14")
        if self.output_grid_size <= 0:
            fail("output_grid_size", f"{self.output_grid_size} must be positive", "use the SigLIP grid side, e.g. 24")


class _SubConfigs:
    """`sub_configs` that leaves out the optional SAM tower when an instance has none (SigLIP-only variant):
    transformers walks `config.sub_configs` and expects a config object behind every name."""

    ALL = {"text_config": LlamaConfig, "vision_config": SiglipVisionConfig}

    def __get__(self, instance, owner):
        sub_configs = dict(self.ALL)
        if instance is None or getattr(instance, "__dict__", {}).get("high_res_vision_config") is not None:
            sub_configs["high_res_vision_config"] = DeepSeekVLSamVisionConfig
        return sub_configs


class DeepSeekVLConfig(PretrainedConfig):
    r"""Configuration of a DeepSeek-VL model.

    Args:
        text_config (`dict` or `LlamaConfig`): the DeepSeek-LLM (LLaMA layout) language model.
        vision_config (`dict` or `SiglipVisionConfig`): the low-resolution SigLIP tower (384 px in the release).
        high_res_vision_config (`dict` or `DeepSeekVLSamVisionConfig`, *optional*): the high-resolution SAM tower
            (1024 px in the release). `None` builds the SigLIP-only variant (deepseek-vl-1.3b).
        aligner_type (`str`): one of `identity`, `linear`, `mlp_gelu`, `low_high_hybrid_split_mlp_gelu` (the
            original's `projector_type`). The hybrid variant needs the split type, the SigLIP-only one any other.
        aligner_depth (`int`): number of Linear layers of the aligner (2 in both releases).
        image_token_id (`int`): id of `<image_placeholder>` (100015 in the release).
        low_res_image_mean / low_res_image_std: normalisation applied inside the model before SigLIP.
        high_res_image_mean / high_res_image_std: normalisation applied inside the model before SAM.
        tie_word_embeddings (`bool`): the release keeps a separate output layer, so `False`.

    Pixel inputs are rescaled to [0, 1] but not normalised, as the original processor emits them; the model
    normalises per tower, in the input dtype, as the original does.
    """

    model_type = "dsvl"
    sub_configs = _SubConfigs()

    def __init__(
        self,
        text_config=None,
        vision_config=None,
        high_res_vision_config=None,
        aligner_type: str | None = None,
        aligner_depth: int = 2,
        image_token_id: int = 100015,
        low_res_image_mean=SIGLIP_MEAN,
        low_res_image_std=SIGLIP_STD,
        high_res_image_mean=CLIP_MEAN,
        high_res_image_std=CLIP_STD,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        if text_config is None:
            text_config = LlamaConfig(**DEEPSEEK_LLM_1_3B)
        elif isinstance(text_config, dict):
            text_config = LlamaConfig(**{**DEEPSEEK_LLM_1_3B, **_without_model_type(text_config)})
        if vision_config is None:
            vision_config = SiglipVisionConfig(**SIGLIP_LARGE_PATCH16_384)
        elif isinstance(vision_config, dict):
            vision_config = SiglipVisionConfig(**{**SIGLIP_LARGE_PATCH16_384, **_without_model_type(vision_config)})
        if isinstance(high_res_vision_config, dict):
            high_res_vision_config = DeepSeekVLSamVisionConfig(**_without_model_type(high_res_vision_config))

        self.text_config = text_config
        self.vision_config = vision_config
        self.high_res_vision_config = high_res_vision_config
        if aligner_type is None:
            aligner_type = HYBRID_ALIGNER_TYPE if high_res_vision_config is not None else "mlp_gelu"
        self.aligner_type = aligner_type
        self.aligner_depth = aligner_depth
        self.image_token_id = image_token_id
        self.low_res_image_mean = list(low_res_image_mean)
        self.low_res_image_std = list(low_res_image_std)
        self.high_res_image_mean = list(high_res_image_mean)
        self.high_res_image_std = list(high_res_image_std)
        # The LM's own flag decides tying in transformers 4.x, the top-level one in 5.x: keep them equal.
        self.text_config.tie_word_embeddings = tie_word_embeddings
        kwargs.setdefault("bos_token_id", self.text_config.bos_token_id)
        kwargs.setdefault("eos_token_id", self.text_config.eos_token_id)
        kwargs.setdefault("pad_token_id", self.text_config.pad_token_id)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate()

    # -- derived sizes -------------------------------------------------------------------------------------------
    @property
    def is_hybrid(self) -> bool:
        return self.high_res_vision_config is not None

    @property
    def num_image_tokens(self) -> int:
        """Number of LM positions one image occupies (576 in both releases)."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @property
    def image_size(self) -> int:
        """Side of the square image the processor produces (1024 for the hybrid, 384 for SigLIP-only)."""
        return self.high_res_vision_config.image_size if self.is_hybrid else self.vision_config.image_size

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    # -- validation ----------------------------------------------------------------------------------------------
    def validate(self):
        def fail(field, problem, fix):
            raise ValueError(f"DeepSeekVLConfig.{field}: {problem}. Fix: {fix}.")

        vision, text = self.vision_config, self.text_config
        if self.aligner_type not in ALIGNER_TYPES:
            fail("aligner_type", f"unknown aligner type {self.aligner_type!r}", f"use one of {ALIGNER_TYPES}")
        if self.is_hybrid and self.aligner_type != HYBRID_ALIGNER_TYPE:
            fail("aligner_type", f"the hybrid (SAM + SigLIP) model needs {HYBRID_ALIGNER_TYPE!r}, got "
                 f"{self.aligner_type!r}", f"set aligner_type={HYBRID_ALIGNER_TYPE!r} or high_res_vision_config=None")
        if not self.is_hybrid and self.aligner_type == HYBRID_ALIGNER_TYPE:
            fail("aligner_type", f"{HYBRID_ALIGNER_TYPE!r} needs a high-resolution tower",
                 "pass high_res_vision_config or use aligner_type='mlp_gelu'")
        if self.aligner_depth < 1:
            fail("aligner_depth", f"{self.aligner_depth} must be at least 1", "use 2 as both releases do")
        if self.aligner_type == "identity" and vision.hidden_size != text.hidden_size:
            fail("aligner_type", f"'identity' needs vision hidden_size ({vision.hidden_size}) == text hidden_size "
                 f"({text.hidden_size})", "use 'mlp_gelu'")
        if self.is_hybrid and text.hidden_size % 2:
            fail("text_config.hidden_size", f"{text.hidden_size} is odd; the hybrid aligner splits it in two halves",
                 "use an even hidden_size")
        if vision.image_size % vision.patch_size:
            fail("vision_config.image_size", f"{vision.image_size} is not a multiple of patch_size "
                 f"{vision.patch_size}", "choose sizes that divide")
        if self.is_hybrid:
            sam = self.high_res_vision_config
            if sam.output_grid_size ** 2 != self.num_image_tokens:
                fail("high_res_vision_config.output_grid_size",
                     f"the SAM tower gives {sam.output_grid_size ** 2} tokens per image but SigLIP gives "
                     f"{self.num_image_tokens}", f"set output_grid_size={vision.image_size // vision.patch_size}")
            if sam.image_size < vision.image_size:
                fail("high_res_vision_config.image_size", f"{sam.image_size} is smaller than the low-resolution view "
                     f"{vision.image_size}", "the high-resolution tower must see the larger image")
        if not 0 <= self.image_token_id < text.vocab_size:
            fail("image_token_id", f"{self.image_token_id} is outside the vocabulary (size {text.vocab_size})",
                 "use the tokenizer's <image_placeholder> id and a vocab_size above it")
        for name in ("low_res_image_mean", "low_res_image_std", "high_res_image_mean", "high_res_image_std"):
            value = getattr(self, name)
            if len(value) != vision.num_channels:
                fail(name, f"has {len(value)} entries for {vision.num_channels} channels", "give one per channel")
        if any(s <= 0 for s in self.low_res_image_std + self.high_res_image_std):
            fail("image_std", "contains a non-positive value", "use positive standard deviations")

    def to_dict(self):
        output = super().to_dict()
        output["high_res_vision_config"] = (
            self.high_res_vision_config.to_dict() if self.high_res_vision_config is not None else None
        )
        # transformers 5 keeps RoPE settings only in `rope_parameters`, 4.x only reads `rope_theta`: write both so a
        # checkpoint keeps its RoPE base under either version.
        text = output["text_config"]
        rope_parameters = text.get("rope_parameters")
        if isinstance(rope_parameters, dict) and "rope_theta" in rope_parameters:
            text.setdefault("rope_theta", rope_parameters["rope_theta"])
        return output

    def to_diff_dict(self):
        # Every field is written: the file then documents the whole architecture, and transformers 4.x cannot diff
        # an absent optional sub-config (the SigLIP-only variant's high_res_vision_config=None).
        return self.to_dict()

    # -- presets -------------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "DeepSeekVLConfig":
        """`deepseek-vl-1.3b` (SigLIP-only) and `deepseek-vl-7b` (hybrid) reproduce the published shapes; `tiny` and
        `tiny-hybrid` keep the same structure at test sizes (override `text_config=dict(vocab_size=...)` and
        `image_token_id` to fit a tokenizer)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown DeepSeek-VL preset {name!r}. Fix: use one of {sorted(PRESETS)}.")
        fields = copy.deepcopy(PRESETS[name])
        for key, value in kwargs.items():
            # A dict override of a sub-config refines the preset's sizes instead of replacing them wholesale.
            if isinstance(value, dict) and isinstance(fields.get(key), dict):
                fields[key] = {**fields[key], **value}
            else:
                fields[key] = value
        return cls(**fields)


def _without_model_type(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "model_type"}


PRESETS = {
    "deepseek-vl-1.3b": dict(
        text_config=DEEPSEEK_LLM_1_3B,
        vision_config=SIGLIP_LARGE_PATCH16_384,
        high_res_vision_config=None,
        aligner_type="mlp_gelu",
        low_res_image_mean=SIGLIP_MEAN,
        low_res_image_std=SIGLIP_STD,
    ),
    "deepseek-vl-7b": dict(
        text_config=DEEPSEEK_LLM_7B,
        vision_config=SIGLIP_LARGE_PATCH16_384,
        high_res_vision_config=SAM_B_DOWNSAMPLE,
        aligner_type=HYBRID_ALIGNER_TYPE,
        low_res_image_mean=SIGLIP_MEAN,
        low_res_image_std=SIGLIP_STD,
        high_res_image_mean=CLIP_MEAN,
        high_res_image_std=CLIP_STD,
    ),
}

TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    vocab_size=1024, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
    attention_bias=False, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=1,
)
TINY_SIGLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_channels=3,
    image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6, vision_use_head=False,
)
TINY_SAM = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=128, patch_size=16,
    window_size=3, global_attn_indexes=[1, 3], global_feature_layer=1, neck_channels=16, downsample_channels=[32, 64],
    output_grid_size=4,
)
PRESETS["tiny"] = dict(text_config=TINY_TEXT, vision_config=TINY_SIGLIP, high_res_vision_config=None,
                       aligner_type="mlp_gelu", image_token_id=2)
PRESETS["tiny-hybrid"] = dict(text_config=TINY_TEXT, vision_config=TINY_SIGLIP, high_res_vision_config=TINY_SAM,
                              aligner_type=HYBRID_ALIGNER_TYPE, image_token_id=2)

__all__ = ["DeepSeekVLConfig", "DeepSeekVLSamVisionConfig", "PRESETS"]
