"""DeepSeek-VL (arXiv 2403.05525): hybrid SAM-B + SigLIP-L vision, MLP aligner, LLaMA-style DeepSeek-LLM.

The SigLIP tower and the language model are transformers' own `SiglipVisionModel` and `LlamaModel` (their numerics
match the original once configured with exact GELU and eps 1e-6); the SAM tower lives in `modeling_dsvl_sam.py`.
This file is copied next to saved checkpoints for `trust_remote_code=True`: only relative imports of this folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import ModelOutput, SequenceClassifierOutputWithPast
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipMLP
from transformers.utils.generic import can_return_tuple

from .configuration_dsvl import HYBRID_ALIGNER_TYPE, DeepSeekVLConfig
from .cpu_kernels import attention as attention_kernel
from .cpu_kernels import fused_kernels_apply
from .modeling_dsvl_sam import DeepSeekVLSamVisionModel, init_sam_weights
from .onednn_linear import ONEDNN_LINEAR, linear_gelu_, onednn_applies, route_linears_through_onednn

try:  # transformers 5.x: init functions that leave loaded weights alone
    from transformers import initialization as weight_init
except ImportError:  # transformers 4.x
    weight_init = nn.init

# auto_map entries written next to saved checkpoints, so every Auto class resolves through trust_remote_code.
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_dsvl.DeepSeekVLConfig",
    "AutoModel": "modeling_dsvl.DeepSeekVLModel",
    "AutoModelForImageTextToText": "modeling_dsvl.DeepSeekVLForConditionalGeneration",
    "AutoModelForVision2Seq": "modeling_dsvl.DeepSeekVLForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_dsvl.DeepSeekVLForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_dsvl.DeepSeekVLForSequenceClassification",
}


@dataclass
class DeepSeekVLModelOutputWithPast(ModelOutput):
    """
    last_hidden_state: [batch, seq, hidden] output of the language model's last layer.
    past_key_values: the language model's KV cache (when `use_cache=True`).
    hidden_states / attentions: the language model's per-layer outputs (when requested).
    image_hidden_states: [num_images, num_image_tokens, hidden] aligned image embeddings written into the sequence.
    """

    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class DeepSeekVLCausalLMOutputWithPast(ModelOutput):
    """
    loss: next-token cross-entropy over positions whose label is not -100 (image tokens and padding never count).
    logits: [batch, seq (or logits_to_keep), vocab].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


class DeepSeekVLAligner(nn.Module):
    """The original `MlpProjector`, with its parameter names (`layers.N`, `high_up_proj`, `low_up_proj`).

    The hybrid type projects each tower to half the LM width, concatenates high-resolution first, then applies
    GELU and the remaining Linear layers; there is no activation between an up-projection and the concatenation.
    """

    def __init__(self, config: DeepSeekVLConfig):
        super().__init__()
        self.aligner_type = config.aligner_type
        low_dim, out_dim = config.vision_config.hidden_size, config.text_config.hidden_size
        if config.aligner_type == "identity":
            self.layers = nn.Identity()
        elif config.aligner_type == "linear":
            self.layers = nn.Linear(low_dim, out_dim)
        elif config.aligner_type == "mlp_gelu":
            modules = [nn.Linear(low_dim, out_dim)]
            for _ in range(1, config.aligner_depth):
                modules += [nn.GELU(), nn.Linear(out_dim, out_dim)]
            self.layers = nn.Sequential(*modules)
        else:  # HYBRID_ALIGNER_TYPE
            high_dim = config.high_res_vision_config.output_channels
            self.high_up_proj = nn.Linear(high_dim, out_dim // 2)
            self.low_up_proj = nn.Linear(low_dim, out_dim // 2)
            modules = []
            for _ in range(1, config.aligner_depth):
                modules += [nn.GELU(), nn.Linear(out_dim, out_dim)]
            self.layers = nn.Sequential(*modules)

    def forward(self, low_res_features: torch.Tensor, high_res_features: torch.Tensor | None = None) -> torch.Tensor:
        if self.aligner_type == HYBRID_ALIGNER_TYPE:
            hidden_states = torch.cat(
                [self.high_up_proj(high_res_features), self.low_up_proj(low_res_features)], dim=-1
            )
        else:
            hidden_states = low_res_features
        return self.layers(hidden_states)


# In-place variants of the activations SigLIP checkpoints use (transformers' ACT2FN names).
# hidden_act -> F.gelu's `approximate`, for the activations the inference path fuses into fc1 (see linear_gelu_).
GELU_APPROXIMATIONS = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}


class DeepSeekVLSiglipMLP(SiglipMLP):
    """transformers' `SiglipMLP` with the GELU fused into fc1's oneDNN product, or applied in place, when autograd is
    off (inference), the same values: SigLIP-L's [576, 4096] activation is 9.4 MB, above glibc's mmap threshold, so a
    second one is fresh memory page-faulted in at every layer (the SigLIP-L tower runs ~10% faster in place).
    Training keeps the original."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        approximate = GELU_APPROXIMATIONS.get(self.config.hidden_act)
        if approximate is None or torch.is_grad_enabled():
            return super().forward(hidden_states)
        return self.fc2(linear_gelu_(self.fc1, hidden_states, approximate))


def per_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """Unmasked softmax attention of float32 CPU tensors [B, N, heads, head_dim] outside autograd, one head at a time
    through oneDNN products, on head-major copies of the scaled queries, the keys and the transposed values (oneDNN
    is slow on strided operands; packing 2 x heads small weights costs more than these copies). Softmax in place.
    Returns [B, N, heads, head_dim].

    Written out because sdpa's CPU kernel does its products through MKL (AVX2 on AMD, see onednn_linear) in small
    tiles: a SigLIP-L layer's attention takes ~0.85x its time, the SigLIP-L tower ~0.92x (paired runs). With
    `enable_fused_cpu_kernels()` the whole of it is the fused kernel's `attention` instead.
    """
    if fused_kernels_apply(query):
        return attention_kernel(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scaling)
    batch, tokens, heads, head_dim = query.shape
    scaled_query = query.new_empty(batch, heads, tokens, head_dim)
    torch.mul(query.transpose(1, 2), scaling, out=scaled_query)
    head_keys = key.transpose(1, 2).contiguous()
    head_values_t = value.permute(0, 2, 3, 1).contiguous()
    output = query.new_empty(batch, tokens, heads, head_dim)
    for sample in range(batch):
        for head in range(heads):
            scores = ONEDNN_LINEAR(scaled_query[sample, head], head_keys[sample, head], None, "none", [], "")
            torch.ops.aten._softmax.out(scores, -1, False, out=scores)
            output[sample, :, head] = ONEDNN_LINEAR(scores, head_values_t[sample, head], None, "none", [], "")
    return output


class DeepSeekVLSiglipAttention(SiglipAttention):
    """transformers' `SiglipAttention` (same parameters); under sdpa, without mask or dropout, float32 CPU inference
    runs its attention core through `per_head_attention`. Everything else is the original."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        dropout = self.dropout if self.training else 0.0
        if (self.config._attn_implementation != "sdpa" or attention_mask is not None or dropout
                or ONEDNN_LINEAR is None or not onednn_applies(hidden_states, self.q_proj.weight, None)):
            return super().forward(hidden_states, attention_mask, **kwargs)
        shape = (*hidden_states.shape[:-1], self.num_heads, self.head_dim)
        query, key, value = (projection(hidden_states).view(shape)
                             for projection in (self.q_proj, self.k_proj, self.v_proj))
        attended = per_head_attention(query, key, value, self.scale)
        return self.out_proj(attended.flatten(-2)), None  # sdpa returns no attention weights either


def build_siglip_tower(config) -> nn.Module:
    """transformers' SigLIP vision transformer, with the same parameter names under 4.x and 5.x.

    transformers 5 flattened `SiglipVisionModel` into the transformer itself, while 4.x wraps it as `.vision_model`;
    taking the inner transformer on 4.x keeps checkpoints loadable across both versions. Its MLPs and attentions
    become `DeepSeekVLSiglipMLP` and `DeepSeekVLSiglipAttention` (same parameters).
    """
    try:
        from transformers.models.siglip.modeling_siglip import SiglipVisionTransformer  # transformers 4.x
    except ImportError:
        from transformers import SiglipVisionModel as SiglipVisionTransformer
    tower = SiglipVisionTransformer(config)
    for module in tower.modules():
        if type(module) is SiglipMLP:
            module.__class__ = DeepSeekVLSiglipMLP
        elif type(module) is SiglipAttention:
            module.__class__ = DeepSeekVLSiglipAttention
    return tower


def normalize_pixels(pixel_values: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std in the input dtype, with mean and std cast to it first, as the original does."""
    shape = (1, -1, 1, 1)
    mean = torch.tensor(mean, dtype=pixel_values.dtype, device=pixel_values.device).view(shape)
    std = torch.tensor(std, dtype=pixel_values.dtype, device=pixel_values.device).view(shape)
    return (pixel_values - mean) / std


def low_res_view(high_res_pixel_values: torch.Tensor, size: int) -> torch.Tensor:
    """The hybrid's SigLIP input: the [0,1] high-resolution image resized as torchvision's `Resize(size,
    antialias=True)` does on a tensor (bilinear with antialias), computed in float32 and cast back."""
    resized = F.interpolate(
        high_res_pixel_values.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.to(high_res_pixel_values.dtype)


class DeepSeekVLPreTrainedModel(PreTrainedModel):
    config_class = DeepSeekVLConfig
    config: DeepSeekVLConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "SiglipEncoderLayer", "DeepSeekVLSamBlock"]
    _skip_keys_device_placement = "past_key_values"
    _supports_sdpa = True
    # SigLIP and LLaMA take flash-attention directly; the SAM tower folds its relative-position bias into q/k for it.
    _supports_flash_attn = True
    _supports_attention_backend = True
    _supports_flex_attn = False
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.text_config.initializer_range
        init_sam_weights(module, std, weight_init)

    def post_init(self):
        super().post_init()
        route_linears_through_onednn(self)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if getattr(self, "_auto_class", None) is not None:
            self.config.auto_map = {**REMOTE_CODE_AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)


class DeepSeekVLModel(DeepSeekVLPreTrainedModel):
    def __init__(self, config: DeepSeekVLConfig):
        super().__init__(config)
        # transformers 4.x resolves the attention implementation on the top config only; the SigLIP and SAM towers
        # are plain modules that read their own sub-configs, so the setter hands it down to them.
        self.config._attn_implementation = self.config._attn_implementation
        self.vision_model = build_siglip_tower(config.vision_config)
        self.high_res_vision_model = (
            DeepSeekVLSamVisionModel(config.high_res_vision_config) if config.is_hybrid else None
        )
        self.aligner = DeepSeekVLAligner(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # -- vision ---------------------------------------------------------------------------------------------------
    def get_image_features(
        self, pixel_values: torch.Tensor | None = None, high_res_pixel_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode images into LM-space embeddings [num_images, num_image_tokens, text hidden size].

        Inputs are rescaled to [0,1] and not normalised. SigLIP-only: `pixel_values`. Hybrid: `high_res_pixel_values`
        (the model derives the low-resolution view unless `pixel_values` is given as well).
        """
        return self.aligner(*self.get_vision_tower_features(pixel_values, high_res_pixel_values))

    def get_vision_tower_features(
        self, pixel_values: torch.Tensor | None = None, high_res_pixel_values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The towers' outputs before the aligner: SigLIP's last hidden state [num_images, num_image_tokens, vision
        hidden size] and, for the hybrid, SAM's [num_images, num_image_tokens, high-res output channels] (else None).
        Same inputs as `get_image_features`."""
        config = self.config
        low_size = config.vision_config.image_size
        high_res_features = None
        if config.is_hybrid:
            if high_res_pixel_values is None:
                raise ValueError(
                    "This is a hybrid (SAM + SigLIP) DeepSeek-VL model: it needs `high_res_pixel_values` "
                    f"[num_images, 3, {config.image_size}, {config.image_size}], got only `pixel_values`. Fix: use the "
                    "checkpoint's DeepSeekVLProcessor, which emits high_res_pixel_values for hybrid models."
                )
            high_res_pixel_values = high_res_pixel_values.to(self.high_res_vision_model.pos_embed.dtype)
            if pixel_values is None:
                pixel_values = low_res_view(high_res_pixel_values, low_size)
            high_res_features = self.high_res_vision_model(
                normalize_pixels(high_res_pixel_values, config.high_res_image_mean, config.high_res_image_std)
            ).last_hidden_state
        elif high_res_pixel_values is not None:
            raise ValueError(
                "`high_res_pixel_values` was given, but this SigLIP-only DeepSeek-VL model has no high-resolution "
                "tower. Fix: pass the images as `pixel_values` (use this checkpoint's processor)."
            )
        expected = (config.vision_config.num_channels, low_size, low_size)
        if pixel_values is None or pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            got = None if pixel_values is None else list(pixel_values.shape)
            raise ValueError(
                f"pixel_values must have shape [num_images, {expected[0]}, {expected[1]}, {expected[2]}], got {got}. "
                "Fix: preprocess images with this checkpoint's DeepSeekVLImageProcessor (images are flattened over "
                "the batch in order of appearance)."
            )
        pixel_values = pixel_values.to(self.vision_model.embeddings.patch_embedding.weight.dtype)
        low_res_features = self.vision_model(
            pixel_values=normalize_pixels(pixel_values, config.low_res_image_mean, config.low_res_image_std)
        ).last_hidden_state
        return low_res_features, high_res_features

    def merge_image_features(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Write image embeddings, in order, into the positions that hold the image token."""
        image_mask = self.image_token_mask(input_ids, inputs_embeds)
        num_image_tokens = int(image_mask.sum())
        num_features = image_features.shape[0] * image_features.shape[1]
        if num_image_tokens != num_features:
            per_image = self.config.num_image_tokens
            raise ValueError(
                f"The inputs hold {num_image_tokens} image tokens (= {num_image_tokens / per_image:g} images of "
                f"{per_image} tokens), but {image_features.shape[0]} images were given ({num_features} image "
                "features). Fix: write exactly one <image_placeholder> per image and let DeepSeekVLProcessor expand "
                f"it to {per_image} image tokens; pass every image of the batch, flattened in order."
            )
        image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_features)

    def image_token_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embedding).all(-1)

    # -- forward --------------------------------------------------------------------------------------------------
    def check_context_length(self, new_tokens: int, past_key_values: Cache | None) -> int:
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        context = self.config.text_config.max_position_embeddings
        if past_length + new_tokens > context:
            raise ValueError(
                f"The sequence is {past_length + new_tokens} tokens long ({past_length} cached + {new_tokens} new), "
                f"but this model's context is {context} tokens (text_config.max_position_embeddings). Fix: shorten "
                "the prompt (each image takes "
                f"{self.config.num_image_tokens} tokens) or lower max_new_tokens."
            )
        return past_length

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        high_res_pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> DeepSeekVLModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        past_length = self.check_context_length(inputs_embeds.shape[1], past_key_values)

        image_features = None
        if pixel_values is not None or high_res_pixel_values is not None:
            image_features = self.get_image_features(pixel_values, high_res_pixel_values)
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        elif past_length == 0 and input_ids is not None and bool((input_ids == self.config.image_token_id).any()):
            raise ValueError(
                f"The prompt holds {int((input_ids == self.config.image_token_id).sum())} image tokens but no images "
                "were given. Fix: pass the images (pixel_values / high_res_pixel_values from the processor), or "
                "remove <image_placeholder> from the text."
            )

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return DeepSeekVLModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


class DeepSeekVLForConditionalGeneration(DeepSeekVLPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: DeepSeekVLConfig):
        super().__init__(config)
        self.model = DeepSeekVLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @property
    def language_model(self):
        return self.model.language_model

    @property
    def vision_model(self):
        return self.model.vision_model

    @property
    def high_res_vision_model(self):
        return self.model.high_res_vision_model

    @property
    def aligner(self):
        return self.model.aligner

    def get_image_features(self, pixel_values=None, high_res_pixel_values=None) -> torch.Tensor:
        return self.model.get_image_features(pixel_values, high_res_pixel_values)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        high_res_pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> DeepSeekVLCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            high_res_pixel_values=high_res_pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, kept, :])

        loss = None
        if labels is not None:
            labels = self.mask_untrainable_labels(labels, input_ids, attention_mask)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return DeepSeekVLCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    def mask_untrainable_labels(self, labels, input_ids, attention_mask):
        """Image-token positions and padding are never trained on, whatever the collator put there."""
        if input_ids is not None:
            labels = labels.masked_fill(input_ids == self.config.image_token_id, -100)
        if attention_mask is not None and attention_mask.dim() == 2:
            labels = labels.masked_fill(attention_mask == 0, -100)
        return labels

    def prepare_inputs_for_generation(
        self,
        input_ids,
        past_key_values=None,
        inputs_embeds=None,
        pixel_values=None,
        high_res_pixel_values=None,
        attention_mask=None,
        logits_to_keep=None,
        **kwargs,
    ):
        # transformers 5.x flags the prefill with `is_first_iteration` (absent on decode steps), 4.x via cache_position.
        is_first_iteration = kwargs.get("is_first_iteration")
        cache_position = kwargs.get("cache_position")
        if is_first_iteration is None:
            if cache_position is not None:
                is_first_iteration = int(cache_position[0]) == 0
            else:
                is_first_iteration = past_key_values is None or past_key_values.get_seq_length() == 0
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        # Images are encoded once, at prefill; later steps reuse the KV cache of their positions.
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["high_res_pixel_values"] = high_res_pixel_values
        else:
            model_inputs.pop("pixel_values", None)
            model_inputs.pop("high_res_pixel_values", None)
        return model_inputs


class DeepSeekVLForSequenceClassification(DeepSeekVLPreTrainedModel):
    """Image+text classification or regression from the LM state of the last non-padding token."""

    def __init__(self, config: DeepSeekVLConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = DeepSeekVLModel(config)
        self.score = nn.Linear(config.text_config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        high_res_pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            high_res_pixel_values=high_res_pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch_size = logits.shape[0]
        last_positions = self.last_token_positions(input_ids, attention_mask, batch_size, logits.shape[1])
        pooled_logits = logits[torch.arange(batch_size, device=logits.device), last_positions]

        loss = None
        if labels is not None:
            loss = self.classification_loss(pooled_logits, labels.to(pooled_logits.device))
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled_logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def last_token_positions(self, input_ids, attention_mask, batch_size, seq_len) -> torch.Tensor:
        # The attention mask finds the last real token under left or right padding alike.
        if attention_mask is not None and attention_mask.dim() == 2:
            return seq_len - 1 - attention_mask.flip(-1).int().argmax(-1)
        pad_token_id = self.config.text_config.pad_token_id
        if input_ids is None or pad_token_id is None:
            if batch_size != 1:
                raise ValueError(
                    "Cannot find the last token of padded sequences without an attention_mask or a pad_token_id. "
                    "Fix: pass attention_mask (the processor returns it)."
                )
            return torch.full((1,), seq_len - 1, dtype=torch.long)
        positions = torch.arange(seq_len, device=input_ids.device)
        return ((input_ids != pad_token_id).int() * positions).argmax(-1)

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
            self.config.problem_type = problem_type
        if problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        raise ValueError(
            f"Unknown problem_type {problem_type!r}. Fix: use 'regression', 'single_label_classification' or "
            "'multi_label_classification'."
        )


__all__ = [
    "DeepSeekVLPreTrainedModel",
    "DeepSeekVLModel",
    "DeepSeekVLForConditionalGeneration",
    "DeepSeekVLForSequenceClassification",
]
