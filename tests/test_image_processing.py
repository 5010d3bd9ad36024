"""DeepSeekVLImageProcessor reproduces the original VLMImageProcessor (reference section 2)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from processor_helpers import (
    CLIP_MEAN,
    CLIP_STD,
    SHARED_IMAGES,
    eight_bit_rgb_reference,
    noise_rgb,
    original_pixel_values,
    original_size,
    sample_images,
)

from transformers_dsvl.image_processing_dsvl import DeepSeekVLImageProcessor, resized_size, to_rgb_image

RELEASE_SETTINGS = {
    "deepseek-vl-1.3b": dict(image_size=384, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
    "deepseek-vl-7b": dict(image_size=1024, image_mean=CLIP_MEAN, image_std=CLIP_STD, low_res_image_size=384),
}
IMAGES = sample_images()


def main_key(processor: DeepSeekVLImageProcessor) -> str:
    return "high_res_pixel_values" if processor.low_res_image_size else "pixel_values"


# ---------------------------------------------------------------------------------------------------------------------
# Numerics against the original rule
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("release", sorted(RELEASE_SETTINGS))
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_pixel_values_equal_the_original_rule(release, name):
    settings = RELEASE_SETTINGS[release]
    processor = DeepSeekVLImageProcessor(**settings)
    image = IMAGES[name]
    got = processor(image, return_tensors="np")[main_key(processor)]
    expected = original_pixel_values(eight_bit_rgb_reference(image), settings["image_size"], settings["image_mean"])
    assert got.shape == (1, 3, settings["image_size"], settings["image_size"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-6)
    # The rule is bitwise reproducible: not just close, identical.
    assert np.array_equal(got[0], expected)


def test_released_background_colours():
    small = DeepSeekVLImageProcessor(**RELEASE_SETTINGS["deepseek-vl-1.3b"])
    large = DeepSeekVLImageProcessor(**RELEASE_SETTINGS["deepseek-vl-7b"])
    assert small.effective_background_color == (127, 127, 127)
    assert large.effective_background_color == (122, 116, 104)
    wide = small(noise_rgb(300, 100), return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(wide[:, 0, 0], np.float32(np.array([127, 127, 127]) / 255))
    custom = DeepSeekVLImageProcessor(image_size=64, background_color=(1, 2, 3))
    corner = custom(noise_rgb(64, 20), return_tensors="np")["pixel_values"][0][:, 0, 0]
    np.testing.assert_array_equal(corner, np.float32(np.array([1, 2, 3]) / 255))


def test_image_of_the_target_size_is_used_as_is():
    image = noise_rgb(384, 384, 21)
    got = DeepSeekVLImageProcessor()(image, return_tensors="np")["pixel_values"][0]
    expected = (np.asarray(image).transpose(2, 0, 1).astype(np.float64) / 255).astype(np.float32)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(not os.path.isdir(SHARED_IMAGES), reason="real test images (../shared/images) are not present")
def test_real_images_equal_the_original_rule():
    paths = sorted(p for p in Path(SHARED_IMAGES).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    assert paths, "the shared image folder holds no images"
    for release, settings in RELEASE_SETTINGS.items():
        processor = DeepSeekVLImageProcessor(**settings)
        for path in paths:
            got = processor(str(path), return_tensors="np")[main_key(processor)][0]
            expected = original_pixel_values(
                PIL.Image.open(path).convert("RGB"), settings["image_size"], settings["image_mean"]
            )
            assert np.array_equal(got, expected), (release, path.name)


# ---------------------------------------------------------------------------------------------------------------------
# The resize rule
# ---------------------------------------------------------------------------------------------------------------------
def test_resize_sizes_equal_the_original_for_1000_random_sizes():
    rng = random.Random(1234)
    for _ in range(1000):
        width, height = rng.randint(1, 6000), rng.randint(1, 6000)
        image_size = rng.choice([384, 1024, 128, 32])
        expected = original_size(width, height, image_size, min(14, image_size))
        assert resized_size(width, height, image_size, min(14, image_size)) == expected, (width, height, image_size)
        assert max(expected) == image_size


def test_named_sizes_where_other_roundings_differ():
    # (width, height, S): the original int(h / L * S) against the variants used elsewhere.
    # int(h * (S / L)) (the reference's counter-example) truncates to one less:
    for width, height, image_size, original, other in [
        (147, 49, 384, 128, 127),
        (88, 55, 384, 240, 239),
        (98, 49, 1024, 512, 511),
        (196, 147, 1024, 768, 767),
    ]:
        assert int(height * (image_size / width)) == other
        assert resized_size(width, height, image_size, 14) == (image_size, original)
    # round(h * S / L) (transformers 5.23's deepseek_vl image processors) rounds up where the original truncates:
    for width, height, image_size, original, other in [
        (15, 1, 384, 25, 26),
        (15, 3, 384, 76, 77),
        (15, 8, 384, 204, 205),
        (300, 7, 1024, 23, 24),
    ]:
        assert round(height * image_size / width) == other
        assert int(height / width * image_size) == original
        assert resized_size(width, height, image_size, 14) == (image_size, original)
    # int(h * S / L) (transformers 4.57's slow processor) agrees with the original for these sizes; the order of
    # operations is still the original's, so any size where float rounding differs is reproduced too.


@pytest.mark.parametrize("seed", range(25))
def test_content_box_and_offsets_in_the_output(seed):
    rng = random.Random(seed)
    width, height = rng.randint(1, 400), rng.randint(1, 400)
    processor = DeepSeekVLImageProcessor(image_size=64)
    red = PIL.Image.new("RGB", (width, height), (255, 0, 0))
    pixels = processor(red, return_tensors="np")["pixel_values"][0]
    is_red = (pixels[0] == 1.0) & (pixels[1] == 0.0)
    rows, cols = np.where(is_red)
    new_w, new_h = original_size(width, height, 64, 14)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (new_h, new_w)
    assert (rows.min(), cols.min()) == ((64 - new_h) // 2, (64 - new_w) // 2)
    assert is_red.sum() == new_w * new_h


# ---------------------------------------------------------------------------------------------------------------------
# Input types and modes
# ---------------------------------------------------------------------------------------------------------------------
def test_every_input_type_gives_the_same_pixels(tmp_path):
    processor = DeepSeekVLImageProcessor(image_size=48)
    image = noise_rgb(37, 23, 30)
    hwc = np.asarray(image)
    path = tmp_path / "image.png"
    image.save(path)
    expected = processor(image, return_tensors="np")["pixel_values"][0]
    variants = {
        "numpy HWC uint8": hwc,
        "numpy CHW uint8": hwc.transpose(2, 0, 1).copy(),
        "numpy float [0,1]": hwc.astype(np.float32) / 255,
        "torch CHW uint8": torch.from_numpy(hwc.transpose(2, 0, 1).copy()),
        "torch HWC uint8": torch.from_numpy(hwc.copy()),
        "torch CHW float": torch.from_numpy(hwc.transpose(2, 0, 1).astype(np.float32) / 255),
        "torch CHW float64": torch.from_numpy(hwc.transpose(2, 0, 1).copy()).to(torch.float64).div(255),
        "str path": str(path),
        "Path": path,
    }
    for name, variant in variants.items():
        got = processor(variant, return_tensors="np")["pixel_values"][0]
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_batches_flat_nested_and_4d_keep_the_order():
    processor = DeepSeekVLImageProcessor(image_size=32)
    images = [noise_rgb(20 + i, 30 - i, seed=i) for i in range(4)]
    singles = np.stack([processor(image, return_tensors="np")["pixel_values"][0] for image in images])
    np.testing.assert_array_equal(processor(images, return_tensors="np")["pixel_values"], singles)
    np.testing.assert_array_equal(
        processor([[images[0]], [], images[1:3], [images[3]]], return_tensors="np")["pixel_values"], singles
    )
    same_size = [noise_rgb(16, 16, seed=i) for i in range(3)]
    batch = np.stack([np.asarray(image) for image in same_size])  # [N, H, W, C]
    np.testing.assert_array_equal(
        processor(batch, return_tensors="np")["pixel_values"],
        processor(same_size, return_tensors="np")["pixel_values"],
    )


def test_return_tensor_types():
    processor = DeepSeekVLImageProcessor(image_size=32)
    image = noise_rgb(40, 20)
    as_torch = processor(image, return_tensors="pt")["pixel_values"]
    as_numpy = processor(image, return_tensors="np")["pixel_values"]
    as_list = processor(image)["pixel_values"]
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32 and as_torch.shape == (1, 3, 32, 32)
    assert isinstance(as_numpy, np.ndarray)
    assert isinstance(as_list, list) and len(as_list) == 1 and isinstance(as_list[0], np.ndarray)
    np.testing.assert_array_equal(as_torch.numpy(), as_numpy)
    assert processor([], return_tensors="pt")["pixel_values"].shape == (0, 3, 32, 32)


def test_alpha_is_dropped_like_the_original_loader():
    rgb = noise_rgb(30, 20, 40)
    for alpha in (0, 128, 255):
        rgba = rgb.copy()
        rgba.putalpha(alpha)
        assert to_rgb_image(rgba).tobytes() == rgb.tobytes()
    la = rgb.convert("LA")
    assert to_rgb_image(la).tobytes() == rgb.convert("L").convert("RGB").tobytes()


def test_sixteen_bit_images_keep_the_high_byte():
    values = np.array([[0, 255, 256, 4095], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    expected_gray = (values >> 8).astype(np.uint8)  # 0, 0, 1, 15 / 128, 156, 255, 255
    for image in (PIL.Image.fromarray(values), values, torch.from_numpy(values.astype(np.int32)).to(torch.uint16)):
        rgb = np.asarray(to_rgb_image(image))
        assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
        for channel in range(3):
            np.testing.assert_array_equal(rgb[..., channel], expected_gray)
    # PIL's own convert("RGB") would clip instead: almost every 16-bit pixel would become 255.
    assert np.asarray(PIL.Image.fromarray(values).convert("RGB"))[0, 2, 0] == 255
    # Mode "I" (32-bit, how some PIL versions open 16-bit PNGs): clipped to 0..65535, then the high byte.
    image_i = PIL.Image.fromarray(np.array([[-5, 300, 65535, 70000]], dtype=np.int32))
    assert image_i.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_rgb_image(image_i))[..., 0], [[0, 1, 255, 255]])


def test_float_images_round_to_the_nearest_8_bit_value():
    values = np.array([[0.0, 0.5, 1.0, 0.998]], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(to_rgb_image(values))[..., 0], [[0, 128, 255, 254]])


# ---------------------------------------------------------------------------------------------------------------------
# Hybrid (deepseek-vl-7b) outputs
# ---------------------------------------------------------------------------------------------------------------------
def test_hybrid_outputs_and_low_res_view():
    processor = DeepSeekVLImageProcessor(
        image_size=128, image_mean=CLIP_MEAN, image_std=CLIP_STD, low_res_image_size=32
    )
    images = [noise_rgb(150, 90, 1), noise_rgb(40, 60, 2)]
    plain = processor(images, return_tensors="pt")
    assert list(plain.keys()) == ["high_res_pixel_values"]
    assert processor.model_input_names == ["high_res_pixel_values"]
    high = plain["high_res_pixel_values"]
    expected = np.stack([original_pixel_values(image, 128, CLIP_MEAN) for image in images])
    np.testing.assert_array_equal(high.numpy(), expected)

    both = processor(images, return_tensors="pt", return_low_res_view=True)
    assert set(both.keys()) == {"high_res_pixel_values", "pixel_values"}
    low = F.interpolate(torch.from_numpy(expected), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(both["pixel_values"], low, rtol=0, atol=0)
    assert both["pixel_values"].dtype == torch.float32

    normalized = processor(images, return_tensors="pt", return_low_res_view=True, do_normalize=True)
    clip_mean, clip_std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(normalized["high_res_pixel_values"], (high - clip_mean) / clip_std, rtol=0, atol=1e-6)
    torch.testing.assert_close(normalized["pixel_values"], (low - 0.5) / 0.5, rtol=0, atol=1e-6)


def test_siglip_only_normalisation_is_off_by_default_and_optional():
    processor = DeepSeekVLImageProcessor(image_size=32)
    assert processor.do_normalize is False and processor.model_input_names == ["pixel_values"]
    image = noise_rgb(50, 30)
    raw = processor(image, return_tensors="pt")["pixel_values"]
    assert 0.0 <= raw.min() and raw.max() <= 1.0
    normalized = processor(image, return_tensors="pt", do_normalize=True)["pixel_values"]
    torch.testing.assert_close(normalized, (raw - 0.5) / 0.5, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("release", sorted(RELEASE_SETTINGS))
def test_save_and_load_round_trip(tmp_path, release):
    processor = DeepSeekVLImageProcessor(**RELEASE_SETTINGS[release], background_color=None, min_size=14)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "DeepSeekVLImageProcessor"
    assert saved["image_size"] == RELEASE_SETTINGS[release]["image_size"] and saved["do_normalize"] is False
    loaded = DeepSeekVLImageProcessor.from_pretrained(tmp_path)
    for field in DeepSeekVLImageProcessor.config_fields:
        assert getattr(loaded, field) == getattr(processor, field), field
    image = noise_rgb(70, 50)
    key = main_key(processor)
    np.testing.assert_array_equal(
        loaded(image, return_tensors="np")[key], processor(image, return_tensors="np")[key]
    )
    overridden = DeepSeekVLImageProcessor.from_pretrained(tmp_path, image_size=64)
    assert overridden.image_size == 64


# ---------------------------------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(tmp_path):
    processor = DeepSeekVLImageProcessor(image_size=32)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not a PNG")
    cases = [
        (PIL.Image.new("RGB", (0, 5)), ValueError, "empty"),
        (np.zeros((0, 4, 3), np.uint8), ValueError, "empty"),
        (str(tmp_path / "missing.png"), FileNotFoundError, "no file at"),
        (str(not_an_image), ValueError, "could not read an image"),
        (np.zeros((5, 5, 2), np.uint8), ValueError, "wrong channel count"),
        (np.zeros((5, 4, 6), np.uint8), ValueError, "wrong channel count"),
        (torch.zeros(2, 7, 7), ValueError, "wrong channel count"),
        (np.zeros((2, 2, 2, 2, 3), np.uint8), ValueError, "dimensions"),
        (np.full((4, 4, 3), 1.5, np.float32), ValueError, "outside \\[0, 1\\]"),
        (np.full((4, 4, 3), 300, np.int32), ValueError, "outside 0..255"),
        (PIL.Image.new("F", (4, 4)), ValueError, "mode 'F'"),
        (12345, TypeError, "unsupported type"),
    ]
    for image, error, message in cases:
        with pytest.raises(error, match=message):
            processor(image)


def test_bad_settings_give_clear_errors():
    for kwargs, message in [
        (dict(image_size=0), "image_size"),
        (dict(image_size=10, min_size=14), "min_size"),
        (dict(image_mean=(0.5, 0.5)), "3 values"),
        (dict(image_mean=(2.0, 0.5, 0.5)), "outside"),
        (dict(image_std=(0.0, 0.5, 0.5)), "outside"),
        (dict(background_color=(300, 0, 0)), "background_color"),
        (dict(rescale_factor=-1.0), "rescale_factor"),
        (dict(low_res_image_size=-3), "low_res_image_size"),
    ]:
        with pytest.raises(ValueError, match=message):
            DeepSeekVLImageProcessor(**kwargs)
    with pytest.raises(TypeError, match="unknown arguments \\['size'\\]"):
        DeepSeekVLImageProcessor(size=384)
    processor = DeepSeekVLImageProcessor(image_size=32)
    with pytest.raises(TypeError, match="unknown arguments"):
        processor(noise_rgb(8, 8), crop_size=10)
    with pytest.raises(ValueError, match="hybrid"):
        processor(noise_rgb(8, 8), return_low_res_view=True)
    with pytest.raises(ValueError, match="return_tensors"):
        processor(noise_rgb(8, 8), return_tensors="tf")
