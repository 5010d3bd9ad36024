"""An independent re-implementation of the original DeepSeek-VL forward pass, on ORIGINAL state-dict names.

Test oracle only: written from the reference description (timm SigLIP with fused qkv, segment-anything SAM with
`add_decomposed_rel_pos`, `MlpProjector`, `prepare_inputs_embeds` with images_seq_mask / images_emb_mask), sharing
no code with the package. The language model is transformers' LlamaForCausalLM, exactly as the original builds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _linear(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _layer_norm(sd, name, x, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def siglip_forward(sd: dict, pixel_values: torch.Tensor, num_heads: int) -> torch.Tensor:
    """timm VisionTransformer (no class token, learned pos_embed, final norm, head ignored)."""
    x = F.conv2d(pixel_values, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=sd["patch_embed.proj.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"]
    batch, tokens, width = x.shape
    block = 0
    while f"blocks.{block}.norm1.weight" in sd:
        p = f"blocks.{block}"
        y = _layer_norm(sd, f"{p}.norm1", x)
        qkv = _linear(sd, f"{p}.attn.qkv", y).reshape(batch, tokens, 3, num_heads, width // num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + _linear(sd, f"{p}.attn.proj", y)
        y = _linear(sd, f"{p}.mlp.fc1", _layer_norm(sd, f"{p}.norm2", x))
        x = x + _linear(sd, f"{p}.mlp.fc2", F.gelu(y))
        block += 1
    return _layer_norm(sd, "norm", x)


def _get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def _sam_attention(sd, p, x, num_heads):
    batch, height, width, _ = x.shape
    qkv = _linear(sd, f"{p}.attn.qkv", x).reshape(batch, height * width, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * num_heads, height * width, -1).unbind(0)
    head_dim = q.shape[-1]
    attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    rh = _get_rel_pos(height, height, sd[f"{p}.attn.rel_pos_h"])
    rw = _get_rel_pos(width, width, sd[f"{p}.attn.rel_pos_w"])
    r_q = q.reshape(batch * num_heads, height, width, head_dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    attn = (attn.view(-1, height, width, height, width) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :])
    attn = attn.view(-1, height * width, height * width).softmax(dim=-1)
    out = (attn @ v).view(batch, num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return _linear(sd, f"{p}.attn.proj", out)


def _layer_norm_2d(sd, name, x, eps=1e-6):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + eps)
    return sd[f"{name}.weight"][:, None, None] * x + sd[f"{name}.bias"][:, None, None]


def _neck(sd, name, x):
    x = F.conv2d(x.permute(0, 3, 1, 2), sd[f"{name}.0.weight"])
    x = _layer_norm_2d(sd, f"{name}.1", x)
    x = F.conv2d(x, sd[f"{name}.2.weight"], padding=1)
    return _layer_norm_2d(sd, f"{name}.3", x)


def sam_forward(sd, pixel_values, num_heads, window_size, global_attn_indexes, resize_size, hd_layer=2):
    x = F.conv2d(pixel_values, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=sd["patch_embed.proj.weight"].shape[-1]).permute(0, 2, 3, 1)
    x = x + sd["pos_embed"]
    block, global_features = 0, None
    while f"blocks.{block}.norm1.weight" in sd:
        p = f"blocks.{block}"
        shortcut = x
        y = _layer_norm(sd, f"{p}.norm1", x)
        if block not in global_attn_indexes:
            batch, height, width, channels = y.shape
            pad_h = (window_size - height % window_size) % window_size
            pad_w = (window_size - width % window_size) % window_size
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
            hp, wp = height + pad_h, width + pad_w
            y = y.view(batch, hp // window_size, window_size, wp // window_size, window_size, channels)
            y = y.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
            y = _sam_attention(sd, p, y, num_heads)
            y = y.view(batch, hp // window_size, wp // window_size, window_size, window_size, -1)
            y = y.permute(0, 1, 3, 2, 4, 5).reshape(batch, hp, wp, -1)[:, :height, :width, :]
        else:
            y = _sam_attention(sd, p, y, num_heads)
        x = shortcut + y
        x = x + _linear(sd, f"{p}.mlp.lin2", F.gelu(_linear(sd, f"{p}.mlp.lin1", _layer_norm(sd, f"{p}.norm2", x))))
        if block == hd_layer:
            global_features = x
        block += 1

    def down(feature_map):
        dtype = feature_map.dtype
        feature_map = F.interpolate(feature_map.float(), size=(resize_size, resize_size), mode="bilinear",
                                    align_corners=False).to(dtype)
        index = 0
        while f"downsamples.{index}.weight" in sd:
            feature_map = F.conv2d(feature_map, sd[f"downsamples.{index}.weight"], stride=2, padding=1)
            index += 1
        return feature_map

    out = down(_neck(sd, "neck", x))
    if global_features is not None and "neck_hd.0.weight" in sd:
        out = out + down(_neck(sd, "neck_hd", global_features)) * sd["hd_alpha_downsamples"]
    return out.flatten(2).transpose(1, 2)


def _normalize(x, mean, std):
    mean = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def _strip(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def original_image_embeddings(sd: dict, images: torch.Tensor, cfg: dict) -> torch.Tensor:
    """vision_model + aligner of the original, on [N,3,S,S] images in [0,1]. cfg: siglip_heads, and for the hybrid
    sam_heads, window_size, global_attn_indexes, resize_size, low_res_size, hd_layer (2 in the release)."""
    if "vision_model.vision_tower.pos_embed" in sd:  # 1.3B: CLIPVisionTower
        low = siglip_forward(_strip(sd, "vision_model.vision_tower."), _normalize(images, (0.5,) * 3, (0.5,) * 3),
                             cfg["siglip_heads"])
        return _aligner(sd, low)
    high = sam_forward(_strip(sd, "vision_model.vision_tower_high.vision_tower."),
                       _normalize(images, CLIP_MEAN, CLIP_STD), cfg["sam_heads"], cfg["window_size"],
                       cfg["global_attn_indexes"], cfg["resize_size"], cfg["hd_layer"])
    size = cfg["low_res_size"]
    low_images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False).to(images.dtype)
    low = siglip_forward(_strip(sd, "vision_model.vision_tower_low.vision_tower."),
                         _normalize(low_images, (0.5,) * 3, (0.5,) * 3), cfg["siglip_heads"])
    return _aligner(sd, low, high)


def _aligner(sd, low, high=None):
    if high is not None:
        x = torch.cat([_linear(sd, "aligner.high_up_proj", high), _linear(sd, "aligner.low_up_proj", low)], dim=-1)
        index = 0
    else:
        x = _linear(sd, "aligner.layers.0", low)
        index = 1
    while f"aligner.layers.{index + 1}.weight" in sd:
        x = _linear(sd, f"aligner.layers.{index + 1}", F.gelu(x))
        index += 2
    return x


def original_prepare_inputs_embeds(sd, language_model, input_ids, pixel_values, images_seq_mask, images_emb_mask, cfg):
    """`prepare_inputs_embeds`: pixel_values [B,N,3,S,S] with zero padding images, explicit masks."""
    batch, num_images = pixel_values.shape[:2]
    images = pixel_values.flatten(0, 1)
    image_embeds = original_image_embeddings(sd, images, cfg)
    image_embeds = image_embeds.reshape(batch, num_images * image_embeds.shape[1], -1)
    emb_mask = images_emb_mask.reshape(batch, -1)
    input_ids = input_ids.clone()
    input_ids[input_ids < 0] = 0
    inputs_embeds = language_model.get_input_embeddings()(input_ids)
    inputs_embeds[images_seq_mask] = image_embeds[emb_mask]
    return inputs_embeds
