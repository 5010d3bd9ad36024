"""`--verify`: reload a converted checkpoint, check its weights against the source, run it once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch


class VerificationError(RuntimeError):
    """The converted checkpoint does not reload, differs from its source, or produces non-finite outputs."""


@dataclass
class VerificationReport:
    num_parameters: int
    dtype: str
    tensors_compared: int
    prompt_tokens: int
    logits_shape: tuple[int, ...]
    logits_finite: bool
    image_features_finite: bool
    greedy_next_token: int

    def summary(self) -> str:
        return (
            f"verified: {self.num_parameters:,} parameters ({self.dtype}); {self.tensors_compared} tensors equal to "
            f"the source; forward pass on a generated image and a {self.prompt_tokens}-token prompt: logits "
            f"{list(self.logits_shape)} {'finite' if self.logits_finite else 'NOT finite'}, image features "
            f"{'finite' if self.image_features_finite else 'NOT finite'}, greedy next token {self.greedy_next_token}"
        )


def generated_test_image(width: int = 300, height: int = 200) -> PIL.Image.Image:
    """A deterministic non-square RGB image (gradients and a bright square), so padding and resizing both run."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    pixels[height // 4: height // 2, width // 4: width // 2] = 255
    return PIL.Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def verify_converted_checkpoint(
    directory: str | Path,
    expected_tensors: Callable[[], Iterable[tuple[str, torch.Tensor]]] | None = None,
    device: str | torch.device | None = None,
) -> VerificationReport:
    """Reload `directory` with this package's classes, compare its parameters with `expected_tensors()` (name,
    tensor pairs in the stored dtype) bit for bit, and run one forward pass on a generated image and prompt on
    `device` (default: CUDA when available, else CPU, where 16-bit matmuls are slow: minutes for the real sizes).

    Needs memory for the whole model in its stored dtype.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from ..modeling_dsvl import DeepSeekVLForConditionalGeneration
    from ..processing_dsvl import DeepSeekVLProcessor
    from .original_format import canonical_name

    directory = str(directory)
    try:
        model = DeepSeekVLForConditionalGeneration.from_pretrained(directory, dtype="auto").eval()
        processor = DeepSeekVLProcessor.from_pretrained(directory)
    except Exception as error:  # noqa: BLE001 (any load failure is a failed verification)
        raise VerificationError(f"The converted checkpoint does not reload: {type(error).__name__}: {error}") from error

    compared = 0
    if expected_tensors is not None:
        state_dict = {canonical_name(name): tensor for name, tensor in model.state_dict().items()}
        mismatched = []
        for name, expected in expected_tensors():
            actual = state_dict.get(name)
            if actual is None or actual.dtype != expected.dtype or not torch.equal(actual, expected):
                mismatched.append(name)
            compared += 1
        if mismatched:
            raise VerificationError(
                f"{len(mismatched)} reloaded parameter(s) differ from the source: {mismatched[:10]}"
            )

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[generated_test_image()], return_tensors="pt")
    # As the original's inference does (`prepare_inputs.to(device, dtype)`), pixels enter in the weights' dtype.
    model_dtype = next(model.parameters()).dtype
    inputs = {k: (v.to(model_dtype) if v.is_floating_point() else v).to(device) for k, v in inputs.items()}
    with torch.no_grad():
        outputs = model.to(device)(**inputs)
    logits = outputs.logits
    report = VerificationReport(
        num_parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        tensors_compared=compared,
        prompt_tokens=int(inputs["input_ids"].shape[1]),
        logits_shape=tuple(logits.shape),
        logits_finite=bool(torch.isfinite(logits).all()),
        image_features_finite=bool(torch.isfinite(outputs.image_hidden_states).all()),
        greedy_next_token=int(logits[0, -1].float().argmax()),
    )
    if not (report.logits_finite and report.image_features_finite):
        raise VerificationError("The converted model produces non-finite outputs: " + report.summary())
    return report


__all__ = ["VerificationError", "VerificationReport", "generated_test_image", "verify_converted_checkpoint"]
