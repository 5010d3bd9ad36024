"""(b) Image preprocessing throughput (images/s) on a batch of photo-sized images of mixed sizes and aspect ratios,
for both variants: upstream's image processor (transformers' PIL backend, the one available without torchvision,
with the settings the interop converter writes) and our `DeepSeekVLImageProcessor` (its batched table-lookup path,
bit-identical to the original's per-image arithmetic: tests/test_fast_paths.py).

The hybrid's upstream processor also makes the 384 px SigLIP view (a second resize); ours leaves that view to the
model (it is part of the vision-encoding time in suite (a)), as the original does.
"""

from __future__ import annotations

import numpy as np
import PIL.Image

from common import row, time_side_by_side
from models import upstream_image_processor, vision_config
from transformers_dsvl.image_processing_dsvl import DeepSeekVLImageProcessor

SUITE = "preprocess"
# Phone photos (4:3 both ways), HD frames, a square, a portrait crop, a thumbnail, a panorama.
PHOTO_SIZES = [(4032, 3024), (3024, 4032), (1920, 1080), (1280, 720), (1080, 1350), (800, 800), (640, 480),
               (2400, 600)]


def photo(width: int, height: int, seed: int) -> PIL.Image.Image:
    """A deterministic photo-like RGB image: smooth gradients plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 97.0)], axis=-1) * 200
    noise = rng.normal(0, 12, size=(height, width, 3))
    return PIL.Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def run(args, log=print) -> list[dict]:
    sizes = [(w // 16, h // 16) for w, h in PHOTO_SIZES] if args.smoke else PHOTO_SIZES
    images = [photo(width, height, seed) for seed, (width, height) in enumerate(sizes)]
    for image in images:
        image.load()
    rows = []
    for variant in args.vision_variants:
        config = vision_config(variant, args.smoke)
        ours = DeepSeekVLImageProcessor.from_model_config(config)
        theirs = upstream_image_processor(config, ours)
        functions = {
            "upstream": lambda: theirs(images, return_tensors="pt"),
            "ours": lambda: ours(images, return_tensors="pt"),
        }
        timings = time_side_by_side(functions, args.warmup, args.repeats, log)
        workload = f"{variant}: {len(images)} photos of mixed sizes -> {config.image_size}px"
        for name, timing in timings.items():
            rows.append(row(SUITE, workload, name, timing, variant=variant, images=len(images),
                            images_per_s=len(images) / timing.median))
    return rows
