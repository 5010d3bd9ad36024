"""Image processor of DeepSeek-VL, reproducing the original `VLMImageProcessor` exactly.

Per image (after conversion to an 8-bit RGB PIL image):

1. W, H = size, L = max(W, H); new_h = max(int(H / L * S), min_size), new_w = max(int(W / L * S), min_size),
   evaluated in exactly this order (divide by L, then multiply by S) and truncated with `int()`. Other orders or
   `round` differ for some sizes (e.g. H=49, W=147, S=384: `int(49 / 147 * 384)` = 128, `int(49 * (384 / 147))` =
   127).
2. PIL `Image.resize((new_w, new_h), BICUBIC)`; an image already at that size is used as is.
3. Expand to an S x S square filled with `background_color` (by default `int(m * 255)` for each `image_mean`
   value), pasting the resized image at x=0, y=(new_w - new_h) // 2 (landscape) or x=(new_h - new_w) // 2, y=0
   (portrait).
4. uint8 HWC -> CHW, then float64 * `rescale_factor`, cast to float32.

The released checkpoints normalise inside the model (per vision tower), so `do_normalize` is False by default and the
output is in [0, 1]. For the hybrid (SAM-B + SigLIP) variant (`low_res_image_size` set) the output is
`high_res_pixel_values`; the model makes the low-resolution SigLIP view itself. `return_low_res_view=True` also returns
that view as `pixel_values` (bilinear, antialias, float32, from the [0, 1] tensor, as the original model does); with
`do_normalize=True` each view is normalised with its tower's mean/std, the layout the upstream transformers port
`deepseek_vl_hybrid` expects.

This file is copied next to saved checkpoints for `trust_remote_code=True`: it imports only the standard library,
numpy, PIL, torch and transformers.
"""

from __future__ import annotations

import base64
import copy
import io
import os
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL modes holding more than 8 bits per pixel in an integer. PIL's own convert("RGB") clips them to 255, which turns
# nearly every 16-bit image white, so they are scaled to 8 bits by keeping the high byte (value >> 8) instead.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class DeepSeekVLImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of `DeepSeekVLImageProcessor` (and per-call overrides of its configuration)."""

    image_size: int
    min_size: int
    background_color: Sequence[int] | None
    low_res_image_size: int | None
    low_res_image_mean: Sequence[float]
    low_res_image_std: Sequence[float]
    return_low_res_view: bool


# Keys transformers itself may write into or read from a saved image-processor config.
_SERVICE_KEYS = ("image_processor_type", "processor_class", "_processor_class", "feature_extractor_type", "auto_map")


def _fail(field: str, problem: str, fix: str):
    raise ValueError(f"DeepSeekVLImageProcessor: `{field}` {problem}. {fix}.")


def _as_rgb_triple(field: str, value, lower: float, upper: float, strict_lower: bool = False) -> tuple:
    if isinstance(value, (int, float)):
        value = (value,) * 3
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        _fail(field, f"must be 3 numbers, got {value!r}", "pass one value per RGB channel")
    if len(values) != 3:
        _fail(field, f"must have 3 values (R, G, B), got {len(values)}", "pass one value per RGB channel")
    for v in values:
        if not (lower < v if strict_lower else lower <= v) or v > upper:
            bound = f"({lower}, {upper}]" if strict_lower else f"[{lower}, {upper}]"
            _fail(field, f"has value {v} outside {bound}", f"use values in {bound}")
    return values


def _is_byte(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= 255


def _check_positive_int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        _fail(field, f"must be a positive integer, got {value!r}", f"set {field} to a positive integer")
    return int(value)


def resized_size(width: int, height: int, image_size: int, min_size: int) -> tuple[int, int]:
    """(new_width, new_height) of the original rule: long side -> image_size, short side >= min_size.

    `int(side / long_side * image_size)`, in this order, truncated; `round(side * image_size / long_side)` or
    `int(side * (image_size / long_side))` give other results for some sizes, which shifts every pixel.
    """
    long_side = max(width, height)
    new_height = max(int(height / long_side * image_size), min_size)
    new_width = max(int(width / long_side * image_size), min_size)
    return new_width, new_height


def expand_to_square(image: PIL.Image.Image, background_color: tuple[int, int, int]) -> PIL.Image.Image:
    """Pad to a square of the long side with `background_color`, content centred, odd pixel at the bottom/right."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = PIL.Image.new(image.mode, (side, side), background_color)
    if width > height:
        canvas.paste(image, (0, (width - height) // 2))
    else:
        canvas.paste(image, ((height - width) // 2, 0))
    return canvas


def _array_to_pil(array: np.ndarray, prefer_channels_first: bool, index: int) -> PIL.Image.Image:
    """An HWC / CHW / HW array (uint8, uint16, other integers in 0..255, bool, or float in [0, 1]) -> PIL image."""
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        first_is_channel = array.shape[0] in (1, 3, 4)
        last_is_channel = array.shape[-1] in (1, 3, 4)
        # numpy images (as PIL produces them) are HWC, torch images CHW; each only wins when the other is ambiguous.
        if prefer_channels_first:
            channels_last = last_is_channel and not first_is_channel
        else:
            channels_last = last_is_channel
        if not channels_last and not first_is_channel:
            raise ValueError(
                f"Image {index} has shape {tuple(array.shape)}: wrong channel count, no axis of size 1 (grayscale), "
                "3 (RGB) or 4 (RGBA, alpha is dropped). Pass (H, W), (H, W, C) or (C, H, W) images."
            )
        if not channels_last:
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(
            f"Image {index} has {array.ndim} dimensions (shape {tuple(array.shape)}). Pass (H, W), (H, W, C) or "
            "(C, H, W) images; a batch as a list (or a 4-D array, one image per entry)."
        )
    height, width, channels = array.shape
    if height == 0 or width == 0:
        raise ValueError(f"Image {index} is empty ({width}x{height} pixels). Remove it or pass a non-empty image.")
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(
                f"Image {index} is an integer array ({array.dtype}) with values in [{array.min()}, {array.max()}], "
                "outside 0..255. Pass uint8 (0..255), uint16 (scaled by >> 8) or floats in [0, 1]."
            )
        array = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(
                f"Image {index} is a float array with values outside [0, 1] (or not finite). Pass floats in [0, 1] "
                "or uint8 values in 0..255."
            )
        array = np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise TypeError(f"Image {index} has unsupported dtype {array.dtype}. Pass uint8, uint16 or float arrays.")

    if channels == 1:
        return PIL.Image.fromarray(np.ascontiguousarray(array[:, :, 0]))  # mode L
    return PIL.Image.fromarray(np.ascontiguousarray(array))  # mode RGB or RGBA


def _open_image_file(source: str | os.PathLike, index: int) -> PIL.Image.Image:
    source_str = os.fspath(source)
    try:
        if source_str.startswith(("http://", "https://")):
            with urllib.request.urlopen(source_str, timeout=30) as response:  # noqa: S310 (user-given URL)
                data = io.BytesIO(response.read())
            image = PIL.Image.open(data)
        elif source_str.startswith("data:image/") and ";base64," in source_str:
            image = PIL.Image.open(io.BytesIO(base64.b64decode(source_str.split(";base64,", 1)[1])))
        else:
            if not os.path.isfile(source_str):
                raise FileNotFoundError(
                    f"Image {index}: no file at {source_str!r}. Pass an existing image path, a URL or a PIL image."
                )
            image = PIL.Image.open(source_str)
        image.load()
    except FileNotFoundError:
        raise
    except (PIL.UnidentifiedImageError, OSError, ValueError) as error:
        shown = source_str if len(source_str) < 200 else source_str[:200] + "..."
        raise ValueError(
            f"Image {index}: could not read an image from {shown!r} ({error}). Pass a readable image file "
            "(PNG, JPEG, ...), a URL or a PIL image."
        ) from error
    return image


def to_rgb_image(image: Any, index: int = 0) -> PIL.Image.Image:
    """Convert one input image to the 8-bit RGB PIL image the original pipeline works on.

    Accepted: PIL images of any mode (RGBA/LA/PA lose alpha, P/L/CMYK/... are converted, as the original loader's
    `convert("RGB")` does; 16-bit modes I;16* and I keep the high byte, value >> 8, clipped to 0..65535 first for
    I), numpy arrays and torch tensors (HW, HWC or CHW; uint8, uint16 (>> 8), or float in [0, 1], rounded to the
    nearest 8-bit value; numpy arrays are read channels-last and tensors channels-first when both are possible),
    and file paths / URLs / base64 data URIs (opened with PIL, no EXIF rotation, like the original).
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open_image_file(image, index)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float64)  # numpy has no bfloat16
        image = _array_to_pil(tensor.numpy(), prefer_channels_first=True, index=index)
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image, prefer_channels_first=False, index=index)
    if isinstance(image, PIL.Image.Image):
        width, height = image.size
        if width == 0 or height == 0:
            raise ValueError(f"Image {index} is empty ({width}x{height} pixels). Remove it or pass a non-empty image.")
        if image.mode == "RGB":
            return image
        if image.mode in SIXTEEN_BIT_MODES:
            values = np.asarray(image).astype(np.int64)
            values = np.clip(values, 0, 65535) >> 8
            return PIL.Image.fromarray(values.astype(np.uint8)).convert("RGB")
        if image.mode == "F":
            raise ValueError(
                f"Image {index} is a 32-bit float PIL image (mode 'F'), whose value range is not defined. Convert it "
                "to a float numpy array in [0, 1] or to an 8-bit image first."
            )
        try:
            return image.convert("RGB")
        except (ValueError, OSError) as error:
            raise ValueError(
                f"Image {index}: PIL cannot convert mode {image.mode!r} to RGB ({error}). Convert it to RGB first."
            ) from error
    raise TypeError(
        f"Image {index} has unsupported type {type(image).__name__}. Pass a PIL image, a numpy array, a torch "
        "tensor, or a path / URL."
    )


def flatten_images(images: Any) -> list:
    """Images in order of appearance: one image, a list, a list of per-sample lists, or a 4-D array/tensor."""
    if images is None:
        return []
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        flat = []
        for item in images:
            if isinstance(item, (list, tuple)) or (isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4):
                flat.extend(flatten_images(item))
            else:
                flat.append(item)
        return flat
    return [images]


class DeepSeekVLImageProcessor(BaseImageProcessor):
    r"""
    Image processor of DeepSeek-VL (arXiv 2403.05525): resize the long side to `image_size` (PIL bicubic, short side
    at least `min_size`), pad to a square with the mean colour, rescale to [0, 1]. Bit-for-bit the original
    `VLMImageProcessor`.

    Args:
        image_size (`int`, *optional*, defaults to 384):
            Side S of the square output (384 for deepseek-vl-1.3b, 1024 for the hybrid deepseek-vl-7b).
        min_size (`int`, *optional*, defaults to 14):
            Lower bound of the resized short side.
        image_mean (`tuple[float]`, *optional*, defaults to `(0.5, 0.5, 0.5)`):
            Mean used by `do_normalize` for `pixel_values` (SigLIP-only) or `high_res_pixel_values` (hybrid), and the
            source of the default background colour. The release uses 0.5 (1.3B) and the CLIP mean (7B).
        image_std (`tuple[float]`, *optional*, defaults to `(0.5, 0.5, 0.5)`):
            Standard deviation used by `do_normalize` together with `image_mean`.
        rescale_factor (`float`, *optional*, defaults to 1/255):
            Factor applied to the 8-bit values (in float64, then cast to float32).
        do_normalize (`bool`, *optional*, defaults to `False`):
            Normalise in the processor. The released models normalise inside, so leave this off for them; turn it on
            only for models that expect normalised input (e.g. the upstream transformers `deepseek_vl*` ports).
        background_color (`tuple[int]`, *optional*):
            RGB fill of the square padding; defaults to `int(m * 255)` per `image_mean` value (the original rule).
        low_res_image_size (`int`, *optional*):
            Side of the SigLIP view of the hybrid model (384 for deepseek-vl-7b); `None` for the SigLIP-only model.
            When set, the output key is `high_res_pixel_values`.
        low_res_image_mean (`tuple[float]`, *optional*, defaults to `(0.5, 0.5, 0.5)`):
            Mean used by `do_normalize` for the low-resolution view (`return_low_res_view=True`).
        low_res_image_std (`tuple[float]`, *optional*, defaults to `(0.5, 0.5, 0.5)`):
            Standard deviation used by `do_normalize` for the low-resolution view.
    """

    valid_kwargs = DeepSeekVLImageProcessorKwargs
    config_fields = (
        "image_size",
        "min_size",
        "image_mean",
        "image_std",
        "rescale_factor",
        "do_normalize",
        "background_color",
        "low_res_image_size",
        "low_res_image_mean",
        "low_res_image_std",
    )

    def __init__(
        self,
        image_size: int = 384,
        min_size: int = 14,
        image_mean: Sequence[float] = SIGLIP_MEAN,
        image_std: Sequence[float] = SIGLIP_STD,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = False,
        background_color: Sequence[int] | None = None,
        low_res_image_size: int | None = None,
        low_res_image_mean: Sequence[float] = SIGLIP_MEAN,
        low_res_image_std: Sequence[float] = SIGLIP_STD,
        **kwargs,
    ):
        service = {key: kwargs.pop(key) for key in list(kwargs) if key in _SERVICE_KEYS}
        if kwargs:
            raise TypeError(
                f"DeepSeekVLImageProcessor got unknown arguments {sorted(kwargs)}. Valid ones: "
                f"{', '.join(self.config_fields)}."
            )
        auto_map = service.get("auto_map")
        super().__init__(**({"auto_map": auto_map} if auto_map is not None else {}))
        settings = self._validated(
            dict(
                image_size=image_size,
                min_size=min_size,
                image_mean=image_mean,
                image_std=image_std,
                rescale_factor=rescale_factor,
                do_normalize=do_normalize,
                background_color=background_color,
                low_res_image_size=low_res_image_size,
                low_res_image_mean=low_res_image_mean,
                low_res_image_std=low_res_image_std,
            )
        )
        for name, value in settings.items():
            setattr(self, name, value)

    @classmethod
    def from_model_config(cls, config, **overrides) -> "DeepSeekVLImageProcessor":
        """The released settings for the variant of a `DeepSeekVLConfig`: SigLIP-only: S = SigLIP size, mean/std
        of the SigLIP tower; hybrid: S = SAM size, mean/std of the SAM tower, low-res view at the SigLIP size."""
        if config.is_hybrid:
            settings = dict(
                image_size=config.image_size,
                image_mean=tuple(config.high_res_image_mean),
                image_std=tuple(config.high_res_image_std),
                low_res_image_size=config.vision_config.image_size,
                low_res_image_mean=tuple(config.low_res_image_mean),
                low_res_image_std=tuple(config.low_res_image_std),
            )
        else:
            settings = dict(
                image_size=config.image_size,
                image_mean=tuple(config.low_res_image_mean),
                image_std=tuple(config.low_res_image_std),
            )
        settings["min_size"] = min(14, settings["image_size"])
        settings.update(overrides)
        return cls(**settings)

    @staticmethod
    def _validated(settings: dict) -> dict:
        settings = dict(settings)
        settings["image_size"] = _check_positive_int("image_size", settings["image_size"])
        settings["min_size"] = _check_positive_int("min_size", settings["min_size"])
        if settings["min_size"] > settings["image_size"]:
            _fail(
                "min_size",
                f"({settings['min_size']}) is larger than image_size ({settings['image_size']})",
                "use min_size <= image_size (the release uses 14)",
            )
        for name in ("image_mean", "low_res_image_mean"):
            settings[name] = _as_rgb_triple(name, settings[name], 0.0, 1.0)
        for name in ("image_std", "low_res_image_std"):
            settings[name] = _as_rgb_triple(name, settings[name], 0.0, float("inf"), strict_lower=True)
        factor = settings["rescale_factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            _fail("rescale_factor", f"must be a positive number, got {factor!r}", "use 1/255 as the release does")
        settings["rescale_factor"] = float(factor)
        if not isinstance(settings["do_normalize"], (bool, np.bool_)):
            _fail("do_normalize", f"must be True or False, got {settings['do_normalize']!r}", "pass a bool")
        settings["do_normalize"] = bool(settings["do_normalize"])
        color = settings["background_color"]
        if color is not None:
            if not isinstance(color, (list, tuple)) or len(color) != 3 or not all(_is_byte(c) for c in color):
                _fail("background_color", f"must be 3 integers in 0..255, got {color!r}", "pass e.g. (127, 127, 127)")
            settings["background_color"] = tuple(int(c) for c in color)
        if settings["low_res_image_size"] is not None:
            settings["low_res_image_size"] = _check_positive_int("low_res_image_size", settings["low_res_image_size"])
        return settings

    # ------------------------------------------------------------------------------------------------------------
    @property
    def is_hybrid(self) -> bool:
        """True for the SAM-B + SigLIP model (deepseek-vl-7b), whose processor output is `high_res_pixel_values`."""
        return self.low_res_image_size is not None

    @property
    def model_input_names(self) -> list[str]:
        return ["high_res_pixel_values"] if self.is_hybrid else ["pixel_values"]

    @property
    def size(self) -> dict[str, int]:
        """Output size in the usual transformers form (read-only; set `image_size` instead)."""
        return {"height": self.image_size, "width": self.image_size}

    @property
    def effective_background_color(self) -> tuple[int, int, int]:
        if self.background_color is not None:
            return tuple(self.background_color)
        return tuple(int(m * 255) for m in self.image_mean)

    def to_dict(self) -> dict[str, Any]:
        output = {name: copy.deepcopy(getattr(self, name)) for name in self.config_fields}
        output = {k: list(v) if isinstance(v, tuple) else v for k, v in output.items()}
        output["image_processor_type"] = type(self).__name__
        for key in ("auto_map", "_processor_class"):
            if self.__dict__.get(key) is not None:
                output[key] = copy.deepcopy(self.__dict__[key])
        return output

    # ------------------------------------------------------------------------------------------------------------
    def process_one(self, image: Any, index: int = 0, settings: dict | None = None) -> np.ndarray:
        """One image -> float32 CHW array in [0, 1] (before any normalisation), by the original rule."""
        settings = settings or {name: getattr(self, name) for name in self.config_fields}
        image = to_rgb_image(image, index)
        size, min_size = settings["image_size"], settings["min_size"]
        new_size = resized_size(image.width, image.height, size, min_size)
        if new_size != image.size:
            image = image.resize(new_size, PIL.Image.Resampling.BICUBIC)
        color = settings["background_color"]
        if color is None:
            color = tuple(int(m * 255) for m in settings["image_mean"])
        image = expand_to_square(image, tuple(color))
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        return (pixels.astype(np.float64) * settings["rescale_factor"]).astype(np.float32)

    def _rescaled_batch(self, flat: list, settings: dict, workers: int | None = None) -> np.ndarray:
        """`np.stack([process_one(image) ...])`, bit for bit, written straight into one [N, 3, S, S] array.

        Rescaling is a 256-entry table of the per-pixel arithmetic, so only the resized content is converted (the
        padding is filled with the background's entry), with no float64 pass and no per-image copies; images are
        spread over `torch.get_num_threads()` threads, since PIL's resize and NumPy's copies release the GIL.
        """
        size = settings["image_size"]
        output = np.empty((len(flat), 3, size, size), dtype=np.float32)
        table = (np.arange(256, dtype=np.float64) * settings["rescale_factor"]).astype(np.float32)
        color = settings["background_color"]
        if color is None:
            color = tuple(int(m * 255) for m in settings["image_mean"])
        background = table[np.asarray(color, dtype=np.uint8)][:, None, None]

        def write(index: int) -> None:
            image = to_rgb_image(flat[index], index)
            new_size = resized_size(image.width, image.height, size, settings["min_size"])
            if new_size != image.size:
                image = image.resize(new_size, PIL.Image.Resampling.BICUBIC)
            width, height = image.size  # the long side is exactly `size`: int(L / L * S) == S
            # expand_to_square's placement: content centred, the odd pixel of padding at the bottom/right.
            top = (width - height) // 2 if width > height else 0
            left = (height - width) // 2 if height > width else 0
            target = output[index]
            target[:, :top, :] = background
            target[:, top + height:, :] = background
            target[:, :, :left] = background
            target[:, :, left + width:] = background
            content = table[np.asarray(image, dtype=np.uint8)]  # HWC
            target[:, top:top + height, left:left + width] = content.transpose(2, 0, 1)

        workers = min(len(flat), workers or torch.get_num_threads())
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(write, range(len(flat))))
        else:
            for index in range(len(flat)):
                write(index)
        return output

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = None,
        return_low_res_view: bool = False,
        **overrides,
    ) -> BatchFeature:
        """Process one image or a (possibly nested) list of images, in order of appearance.

        Args:
            images: PIL image, numpy array, torch tensor, path / URL, or a list (or list of per-sample lists) of them.
            return_tensors: `"pt"` (torch), `"np"` (numpy), or `None` (list of numpy arrays).
            return_low_res_view: hybrid only: also return the low-resolution SigLIP view as `pixel_values`.
            **overrides: per-call values for any configuration field (`image_size`, `do_normalize`, ...).

        Returns:
            `BatchFeature` with `pixel_values` [N, 3, S, S] (SigLIP-only), or `high_res_pixel_values` [N, 3, S, S]
            and, with `return_low_res_view=True`, `pixel_values` [N, 3, s, s] (hybrid).
        """
        unknown = sorted(set(overrides) - set(self.config_fields))
        if unknown:
            raise TypeError(
                f"DeepSeekVLImageProcessor got unknown arguments {unknown}. Valid per-call arguments: return_tensors, "
                f"return_low_res_view, {', '.join(self.config_fields)}."
            )
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported. Use 'pt', 'np' or None.")
        settings = {name: getattr(self, name) for name in self.config_fields}
        if overrides:
            settings = self._validated({**settings, **overrides})
        hybrid = settings["low_res_image_size"] is not None
        if return_low_res_view and not hybrid:
            raise ValueError(
                "return_low_res_view=True needs a hybrid processor: set low_res_image_size (384 for deepseek-vl-7b)."
            )

        flat = flatten_images(images)
        pixels = self._rescaled_batch(flat, settings)

        data = {}
        main_key = "high_res_pixel_values" if hybrid else "pixel_values"
        data[main_key] = self._normalized(pixels, settings["image_mean"], settings["image_std"], settings)
        if return_low_res_view:
            low = settings["low_res_image_size"]
            view = torch.from_numpy(pixels)
            if len(flat):
                view = F.interpolate(view, size=(low, low), mode="bilinear", align_corners=False, antialias=True)
            else:
                view = view.new_zeros((0, 3, low, low))
            data["pixel_values"] = self._normalized(
                view.numpy(), settings["low_res_image_mean"], settings["low_res_image_std"], settings
            )

        if return_tensors == "pt":
            data = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in data.items()}
        elif return_tensors is None:
            data = {key: list(value) for key, value in data.items()}
        return BatchFeature(data=data)

    def __call__(self, images: Any, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    @staticmethod
    def _normalized(pixels: np.ndarray, mean, std, settings: dict) -> np.ndarray:
        if not settings["do_normalize"]:
            return pixels
        mean = np.asarray(mean, dtype=np.float32)[None, :, None, None]
        std = np.asarray(std, dtype=np.float32)[None, :, None, None]
        return ((pixels - mean) / std).astype(np.float32)


__all__ = ["DeepSeekVLImageProcessor", "expand_to_square", "resized_size", "to_rgb_image"]
