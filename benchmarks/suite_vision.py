"""(a) Vision encoding of one image: the hybrid (SAM-B 1024 px + SigLIP-L 384 px + aligner) and the SigLIP-only
variant (SigLIP-L 384 px + aligner), ours against transformers' port with the same weights.

Both sides get what their own processor would hand them: ours a [0, 1] image (the model normalises and, for the
hybrid, makes the 384 px view itself), upstream normalised pixels (and, for the hybrid, the 384 px view made in its
preprocessing). The work timed is `get_image_features` on each side: towers + aligner.
"""

from __future__ import annotations

import gc

import torch

from common import count_flops, row, time_side_by_side
from models import build_ours, upstream_twin, vision_config
from suite_floor import MATMUL_SIZES, matmul_products
from transformers_dsvl import disable_fused_cpu_kernels, enable_fused_cpu_kernels, fused_cpu_kernels_enabled
from transformers_dsvl.modeling_dsvl import low_res_view, normalize_pixels

SUITE = "vision"


def inputs(config, generator):
    """(our kwargs, upstream kwargs) for one image."""
    image = torch.rand(1, 3, config.image_size, config.image_size, generator=generator)
    if config.is_hybrid:
        low = low_res_view(image, config.vision_config.image_size)
        ours = {"high_res_pixel_values": image}
        theirs = {
            "pixel_values": normalize_pixels(low, config.low_res_image_mean, config.low_res_image_std),
            "high_res_pixel_values": normalize_pixels(image, config.high_res_image_mean, config.high_res_image_std),
        }
    else:
        ours = {"pixel_values": image}
        theirs = {"pixel_values": normalize_pixels(image, config.low_res_image_mean, config.low_res_image_std)}
    return ours, theirs


def executed_flops(model, config, encode) -> int:
    """The FLOPs our encoding executes. torch's counter sees only torch operators, not the fused CPU kernels: count
    the default path, which runs the same products, less the padding tokens' q/k/v products that the fused window
    kernel skips (it gives padding the qkv bias instead of projecting zeros)."""
    fused = fused_cpu_kernels_enabled()
    disable_fused_cpu_kernels()
    try:
        counted = count_flops(encode)
    finally:
        if fused:
            enable_fused_cpu_kernels()
    if not fused or not config.is_hybrid:
        return counted
    sam = config.high_res_vision_config
    grid, window, channels = sam.grid_size, sam.window_size, sam.hidden_size
    padded_tokens = (-(-grid // window) * window) ** 2 - grid**2
    window_blocks = sam.num_hidden_layers - len(sam.global_attn_indexes)
    return counted - window_blocks * 2 * padded_tokens * channels * 3 * channels


def run(args, log=print) -> list[dict]:
    rows = []
    for variant in args.vision_variants:
        config = vision_config(variant, args.smoke)
        ours = build_ours(config)
        theirs = upstream_twin(ours)
        generator = torch.Generator().manual_seed(0)
        our_inputs, their_inputs = inputs(config, generator)

        def encode_ours():
            return ours.model.get_image_features(**our_inputs)

        def encode_theirs():
            return theirs.model.get_image_features(**their_inputs).pooler_output

        with torch.inference_mode():
            difference = (encode_ours() - encode_theirs()).abs().max().item()
            scale = encode_theirs().abs().max().item()
        log(f"  {variant}: max |ours - upstream| = {difference:.2e} (output scale {scale:.2f})")
        flops = count_flops(encode_theirs)
        our_flops = executed_flops(ours, config, encode_ours)
        workload = "hybrid 1024px (SAM-B + SigLIP-L + aligner)" if config.is_hybrid else \
            "SigLIP-only 384px (SigLIP-L + aligner)"
        # The matmul peak is probed between the rounds too: the machine's speed drifts by 10-20% within minutes, and
        # the workload's fraction of peak divides by the best of the floor suite and these probes.
        size = 512 if args.smoke else MATMUL_SIZES[0]
        probes = {f"matmul probe ({library})": product for library, product in matmul_products(size).items()}
        workloads = {"ours": encode_ours, "upstream": encode_theirs, **probes}
        timings = time_side_by_side(workloads, args.warmup, args.repeats, log)
        for name, timing in timings.items():
            if name in probes:
                rows.append(row(SUITE, f"fp32 matmul {size}x{size}x{size}, between the {variant} rounds "
                                f"({name.removeprefix('matmul probe (').rstrip(')')})", "machine", timing,
                                variant=variant, flops=2 * size**3, gflops_per_s=2 * size**3 / timing.median / 1e9))
                continue
            rows.append(row(SUITE, workload, name, timing, variant=variant, flops=flops,
                            executed_flops=our_flops if name == "ours" else flops,
                            max_abs_difference=difference, output_scale=scale))
        del ours, theirs, encode_ours, encode_theirs
        gc.collect()
    return rows
