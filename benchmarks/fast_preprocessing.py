"""Proposed fast path for `DeepSeekVLImageProcessor` (for the processor's owner to adopt; the benchmark measures it
next to the current processor and upstream's, and tests/test_fast_paths.py checks it is bit-identical).

The current hot path per image is: PIL resize (bicubic) -> paste onto a new square canvas -> `np.asarray` -> HWC to
CHW -> float64 -> multiply -> float32, then `np.stack` of the batch and a final copy into a torch tensor. After the
resize (which stays PIL's, bit for bit) every step is a full pass over a 3 x S x S array in float64 or float32.

Here the batch output is allocated once and each image is written into it directly:

- `rescale` becomes a 256-entry lookup table computed exactly as the original computes each pixel
  (`float32(float64(v) * rescale_factor)`), so the result is identical for every possible 8-bit value;
- the padding bands are filled with the background colour's table entry, and only the resized content is
  converted (no canvas, no paste, no conversion of the padding);
- the content goes through the table straight into its place in the [N, 3, S, S] batch (no float64 pass, no
  `np.stack`, no extra copy into torch);
- the images of a batch are processed by a pool of `torch.get_num_threads()` threads: PIL's resampling and NumPy's
  copies release the GIL, and each image writes its own slice of the output.

After this, PIL's bicubic resize is nearly all of the time (~130 ms for a 12 MP photo to 1024 px on one core).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import torch

from transformers_dsvl.image_processing_dsvl import flatten_images, resized_size, to_rgb_image


def rescale_table(rescale_factor: float) -> np.ndarray:
    """float32 value of every 8-bit input, computed as the original does per pixel (float64 product, then float32)."""
    return (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)


def fast_pixel_values(image_processor, images, workers: int | None = None) -> torch.Tensor:
    """`image_processor(images, return_tensors="pt")[main key]` for `do_normalize=False` (the released setting),
    computed with the table and direct writes described above. Returns [N, 3, S, S] float32."""
    if image_processor.do_normalize:
        raise ValueError("fast_pixel_values covers do_normalize=False (the released setting) only.")
    flat = flatten_images(images)
    size = image_processor.image_size
    table = rescale_table(image_processor.rescale_factor)
    background = table[np.asarray(image_processor.effective_background_color, dtype=np.uint8)]
    output = np.empty((len(flat), 3, size, size), dtype=np.float32)
    workers = min(len(flat), workers or torch.get_num_threads())
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda item: _write_one(output, item[0], item[1], image_processor, table, background),
                          enumerate(flat)))
    else:
        for index, image in enumerate(flat):
            _write_one(output, index, image, image_processor, table, background)
    return torch.from_numpy(output)


def _write_one(output, index, image, image_processor, table, background) -> None:
    """Resize one image (PIL bicubic, exactly as the processor) and write it, padded and rescaled, to output[index]."""
    size = image_processor.image_size
    image = to_rgb_image(image, index)
    new_size = resized_size(image.width, image.height, size, image_processor.min_size)
    if new_size != image.size:
        image = image.resize(new_size, PIL.Image.Resampling.BICUBIC)
    width, height = image.size  # the long side is exactly `size` (int(L / L * S) == S)
    # expand_to_square: content centred, the odd pixel of padding at the bottom/right.
    top = (width - height) // 2 if width > height else 0
    left = (height - width) // 2 if height > width else 0
    target = output[index]
    if height < size:
        target[:, :top, :] = background[:, None, None]
        target[:, top + height:, :] = background[:, None, None]
    if width < size:
        target[:, :, :left] = background[:, None, None]
        target[:, :, left + width:] = background[:, None, None]
    pixels = np.asarray(image, dtype=np.uint8)  # HWC
    target[:, top:top + height, left:left + width] = np.moveaxis(table[pixels], -1, 0)


__all__ = ["fast_pixel_values", "rescale_table"]
