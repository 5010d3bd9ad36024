"""Checkpoint conversion between the original deepseek-ai DeepSeek-VL format and transformers_dsvl, both ways.

original -> transformers_dsvl (`convert_original_to_dsvl`):
    1. read config.json, the tokenizer and the processor configs; build the DeepSeekVLConfig and the processor;
    2. read every weight file's header and match the tensors against the config: an unknown tensor, a missing one
       or a wrong shape is an error listing all of them; the known unused tensors are dropped by name;
    3. stream the tensors, one at a time, into a staging directory (shards laid out up front), then write the
       config + remote code, generation config, processor files and model card;
    4. optionally (`verify`) reload the staging directory, compare every parameter with its source and run it;
    5. move the staging directory into place; optionally push it to the Hub.

transformers_dsvl -> original (`convert_dsvl_to_original`) is the exact inverse for the weights (bit for bit), so a
fine-tuned model runs with the original code; the unused tensors dropped on the way in are not recreated.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..configuration_dsvl import DeepSeekVLConfig
from .atomic_output import atomic_output_directory, check_output_directory
from .model_card import ConversionRecord, guess_source_repo_id, render_model_card
from .original_format import (
    ORIGINAL_MODEL_TYPE,
    CheckpointMismatchError,
    OriginalConfigError,
    account_tensors,
    build_tensor_mappings,
    canonical_name,
    config_from_original,
    config_to_original,
    unused_original_tensor_names,
)
from .processor_files import (
    build_processor,
    load_original_processor_files,
    special_token_ids,
    write_original_processor_files,
)
from .streaming import PlannedTensor, ShardedCheckpointWriter, open_checkpoint, parse_size
from .verify import VerificationReport, verify_converted_checkpoint

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DSVL_MODEL_TYPE = DeepSeekVLConfig.model_type
# The original's generation settings (README / inference.py): greedy, KV cache, 512 new tokens.
GENERATION_DEFAULTS = dict(do_sample=False, num_beams=1, max_new_tokens=512, use_cache=True)


@dataclass
class ConversionResult:
    direction: str
    output_dir: Path
    files: list[str]
    dtype: str
    num_parameters: int
    num_tensors_read: int
    num_tensors_written: int
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verification: VerificationReport | None = None
    hub_url: str | None = None

    def summary(self) -> str:
        lines = [
            f"{self.direction}: wrote {self.output_dir} ({self.num_tensors_written} tensors, "
            f"{self.num_parameters:,} parameters, {self.dtype}) from {self.num_tensors_read} source tensors",
            f"  files: {', '.join(self.files)}",
        ]
        if self.dropped:
            verb = "dropped (stored in the original, never used)" if self.direction == "original-to-dsvl" else \
                "not written (the original stores them but never uses them)"
            lines.append(f"  {verb}: {len(self.dropped)} tensors")
            lines += [f"    {name}" for name in self.dropped]
        if self.notes:
            lines.append("  notes:")
            lines += [f"    - {note}" for note in self.notes]
        if self.verification is not None:
            lines.append("  " + self.verification.summary())
        if self.hub_url:
            lines.append(f"  pushed: {self.hub_url}")
        return "\n".join(lines)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """None keeps each tensor's stored dtype ('auto')."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported. Fix: use one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _read_config(input_dir: Path) -> dict:
    path = input_dir / "config.json"
    if not input_dir.is_dir():
        raise FileNotFoundError(
            f"--input_dir {input_dir} is not a directory. Fix: point it at the downloaded checkpoint."
        )
    if not path.is_file():
        raise FileNotFoundError(f"{input_dir} has no config.json. Fix: download the whole checkpoint repository.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise OriginalConfigError(f"{path} is not valid JSON: {error}. Fix: restore the original file.") from None


def _floating_only(checkpoint, names) -> None:
    integral = [
        f"{n}: {checkpoint.tensors[n].dtype}" for n in names if not checkpoint.tensors[n].dtype.is_floating_point
    ]
    if integral:
        raise CheckpointMismatchError(
            "These tensors should hold floating-point weights but do not: " + ", ".join(integral)
            + ". Fix: use the checkpoint's original weight files."
        )


def _output_dtype(source: torch.dtype, target: torch.dtype | None) -> torch.dtype:
    return source if target is None else target


def _dominant_dtype(dtypes) -> torch.dtype:
    return Counter(dtypes).most_common(1)[0][0]


def _source_order(checkpoint) -> dict[str, int]:
    """Read tensors in file order (shard by shard, front to back), which keeps disk reads sequential."""
    file_index = {path: i for i, path in enumerate(checkpoint.files)}
    ordered = sorted(checkpoint.tensors.values(), key=lambda info: (file_index[info.path], info.start, info.name))
    return {info.name: position for position, info in enumerate(ordered)}


def write_config_and_remote_code(config: DeepSeekVLConfig, directory: Path) -> None:
    """config.json with `auto_map`, plus the model code files next to it, exactly as the model's save_pretrained
    writes them, without instantiating weights (the model is built on the meta device)."""
    from transformers.dynamic_module_utils import custom_object_save

    from ..modeling_dsvl import REMOTE_CODE_AUTO_MAP, DeepSeekVLForConditionalGeneration

    with torch.device("meta"):
        model = DeepSeekVLForConditionalGeneration(config)
    config.auto_map = {**REMOTE_CODE_AUTO_MAP, **(getattr(config, "auto_map", None) or {})}
    custom_object_save(model, str(directory), config=config)
    config.architectures = [DeepSeekVLForConditionalGeneration.__name__]
    config.save_pretrained(str(directory))


def write_generation_config(directory: Path, bos: int, eos: int, pad: int) -> None:
    """generation_config.json with every setting spelled out (save_pretrained of transformers 4.x would leave out
    the ones equal to its defaults, e.g. do_sample=False), checked to load as a GenerationConfig."""
    import transformers
    from transformers import GenerationConfig

    settings = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad, **GENERATION_DEFAULTS,
                "transformers_version": transformers.__version__}
    GenerationConfig(**settings).validate()
    (directory / "generation_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {"transformers_dsvl": __version__, "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0]}


# ---------------------------------------------------------------------------------------------------------------------
# original -> transformers_dsvl
# ---------------------------------------------------------------------------------------------------------------------
def convert_original_to_dsvl(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    max_shard_size: int | str = "5GB",
    safe_serialization: bool = True,
    allow_pickle: bool = False,
    overwrite: bool = False,
    verify: bool = False,
    verify_device: str | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    source_repo_id: str | None = None,
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ConversionResult:
    """Convert an original deepseek-ai DeepSeek-VL checkpoint directory into this package's format.

    Args:
        input_dir: the original checkpoint (config.json with model_type `multi_modality`, safetensors weights,
            tokenizer and processor configs).
        output_dir: where the converted checkpoint goes (created; must not exist or be empty unless `overwrite`).
        dtype: `auto` keeps each tensor's stored dtype; `float32`, `bfloat16`, `float16` cast every weight.
        max_shard_size: largest output shard, e.g. `"5GB"` (transformers' default) or an int in bytes.
        safe_serialization: write safetensors (default) or, if False, pickle `.bin` shards.
        allow_pickle: read `.bin` weights (with `torch.load(weights_only=True)`); refused otherwise.
        overwrite: replace a non-empty `output_dir` (only once the new checkpoint is complete).
        verify: reload the result, compare every parameter with its source, and run a forward pass (on
            `verify_device`: CUDA when available, else CPU).
        push_to_hub: a Hub repository id to upload the result to.
        source_repo_id: Hub id of the source, for the model card (guessed from a published directory name).
    """
    input_dir = Path(input_dir)
    target_dtype = resolve_dtype(dtype)
    max_shard_bytes = parse_size(max_shard_size)
    check_output_directory(output_dir, overwrite, input_dir)
    original = _read_config(input_dir)
    if original.get("model_type") == DSVL_MODEL_TYPE:
        raise OriginalConfigError(
            f"{input_dir} is already a transformers_dsvl checkpoint (model_type {DSVL_MODEL_TYPE!r}). Fix: load it "
            "directly, or convert it back with --direction to-original."
        )

    files = load_original_processor_files(input_dir)
    ids = special_token_ids(files)
    translation = config_from_original(original, image_token_id=ids.image, bos_token_id=ids.bos,
                                       eos_token_id=ids.eos, pad_token_id=ids.pad)
    config = translation.config
    processor = build_processor(files, config)
    notes = translation.notes + files.notes

    with open_checkpoint(input_dir, allow_pickle=allow_pickle) as checkpoint:
        mappings = build_tensor_mappings(config, translation.siglip_prefix)
        dropped_names = unused_original_tensor_names(config, translation.siglip_prefix)
        accounting = account_tensors(
            {name: info.shape for name, info in checkpoint.tensors.items()},
            {m.original_name: m.original_shape for m in mappings},
            dropped_names,
        )
        accounting.raise_for_problems(
            str(input_dir),
            fix="use the config.json that belongs to these weights (sizes are read from it: explicit params or the "
            "original's model-name tables), and restore any missing or altered weight files",
        )
        _floating_only(checkpoint, [m.original_name for m in mappings])
        order = _source_order(checkpoint)
        mappings.sort(key=lambda m: order[m.original_name])
        planned = [
            PlannedTensor(name, _output_dtype(checkpoint.tensors[m.original_name].dtype, target_dtype), m.our_shape)
            for m in mappings
            for name in m.our_names
        ]
        output_dtype = _dominant_dtype([t.dtype for t in planned])
        source_dtype = _dominant_dtype([checkpoint.tensors[m.original_name].dtype for m in mappings])
        config.dtype = output_dtype
        dropped_parameters = sum(checkpoint.tensors[name].numel for name in accounting.dropped)
        log(f"Converting {input_dir} ({'hybrid SAM + SigLIP' if config.is_hybrid else 'SigLIP-only'}, "
            f"{len(checkpoint.tensors)} tensors in {len(checkpoint.files)} file(s)) -> {output_dir}")

        def converted_tensors():
            for mapping in mappings:
                source = checkpoint.read(mapping.original_name)
                for name, tensor in zip(mapping.our_names, mapping.to_ours(source)):
                    yield name, tensor.to(_output_dtype(tensor.dtype, target_dtype))

        with atomic_output_directory(output_dir, overwrite) as staging:
            writer = ShardedCheckpointWriter(staging, planned, max_shard_bytes, safe_serialization)
            try:
                for name, tensor in tqdm(converted_tensors(), total=len(planned), desc="writing tensors",
                                         unit="tensor", disable=not progress):
                    writer.write(name, tensor)
                weight_files = writer.finish()
            finally:
                writer.abort()
            write_config_and_remote_code(config, staging)
            write_generation_config(staging, ids.bos, ids.eos, ids.pad)
            processor.save_pretrained(str(staging))
            record = ConversionRecord(
                source_dir=str(input_dir),
                source_repo_id=source_repo_id or guess_source_repo_id(input_dir.resolve().name),
                source_files=[(path.name, path.stat().st_size) for path in checkpoint.files],
                source_dtype=dtype_name(source_dtype),
                output_dtype=dtype_name(output_dtype),
                variant="hybrid SAM-B + SigLIP-L, 7B layout" if config.is_hybrid else "SigLIP-L only, 1.3B layout",
                num_parameters=sum(math.prod(t.shape) for t in planned),
                num_tensors_read=len(checkpoint.tensors),
                num_tensors_written=len(planned),
                output_files=weight_files,
                dropped=accounting.dropped,
                dropped_parameters=dropped_parameters,
                notes=notes,
                command=command,
                versions=_versions(),
            )
            (staging / "README.md").write_text(render_model_card(record), encoding="utf-8")
            verification = None
            if verify:
                log("Verifying: reloading the converted checkpoint and running it once")
                verification = verify_converted_checkpoint(staging, expected_tensors=converted_tensors,
                                                           device=verify_device)
            files_written = sorted(p.name for p in staging.iterdir())

    result = ConversionResult(
        direction="original-to-dsvl",
        output_dir=Path(output_dir),
        files=files_written,
        dtype=dtype_name(output_dtype),
        num_parameters=record.num_parameters,
        num_tensors_read=record.num_tensors_read,
        num_tensors_written=record.num_tensors_written,
        dropped=accounting.dropped,
        notes=notes,
        verification=verification,
    )
    if push_to_hub:
        from .hub import push_checkpoint_to_hub

        log(f"Uploading {output_dir} to {push_to_hub}")
        result.hub_url = push_checkpoint_to_hub(output_dir, push_to_hub, private=private)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# transformers_dsvl -> original
# ---------------------------------------------------------------------------------------------------------------------
def convert_dsvl_to_original(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    max_shard_size: int | str = "5GB",
    safe_serialization: bool = True,
    allow_pickle: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ConversionResult:
    """Convert a transformers_dsvl checkpoint (e.g. after fine-tuning) back into the original deepseek-ai layout, so
    the original code (`MultiModalityCausalLM.from_pretrained`, `VLChatProcessor`) can load it.

    Every weight goes back bit for bit (q/k/v are re-fused, the SigLIP position embedding regains its batch axis).
    The tensors the original stores but never uses (SigLIP's attention-pool head; the 7B's high/low LayerNorms) are
    not recreated: the original's `from_pretrained` initialises them and warns about them, and never runs them.
    """
    input_dir = Path(input_dir)
    target_dtype = resolve_dtype(dtype)
    max_shard_bytes = parse_size(max_shard_size)
    check_output_directory(output_dir, overwrite, input_dir)
    raw_config = _read_config(input_dir)
    if raw_config.get("model_type") != DSVL_MODEL_TYPE:
        hint = " (this is already the original format)" if raw_config.get("model_type") == ORIGINAL_MODEL_TYPE else ""
        raise OriginalConfigError(
            f"{input_dir}/config.json has model_type {raw_config.get('model_type')!r}, expected {DSVL_MODEL_TYPE!r}"
            f"{hint}. Fix: point --input_dir at a transformers_dsvl checkpoint."
        )
    config = DeepSeekVLConfig.from_pretrained(str(input_dir))

    with open_checkpoint(input_dir, allow_pickle=allow_pickle) as checkpoint:
        stored_names: dict[str, str] = {}
        for name in checkpoint.tensors:
            canonical = canonical_name(name)
            if canonical in stored_names:
                raise CheckpointMismatchError(
                    f"{input_dir} stores the same parameter twice: {stored_names[canonical]!r} and {name!r}. Fix: keep "
                    "one of them."
                )
            stored_names[canonical] = name
        mappings = build_tensor_mappings(config)
        expected = {name: m.our_shape for m in mappings for name in m.our_names}
        # A tied output layer may or may not be stored; it is the input embedding either way.
        droppable = ["lm_head.weight"] if config.tie_word_embeddings else []
        accounting = account_tensors(
            {canonical: checkpoint.tensors[name].shape for canonical, name in stored_names.items()},
            expected,
            droppable,
        )
        accounting.raise_for_problems(
            str(input_dir),
            fix="use the config.json that belongs to these weights; a checkpoint saved by "
            "DeepSeekVLForConditionalGeneration.save_pretrained holds exactly the expected tensors",
        )
        _floating_only(checkpoint, [stored_names[name] for name in expected])
        planned = []
        for m in mappings:
            part_dtype = checkpoint.tensors[stored_names[m.our_names[0]]].dtype
            planned.append(PlannedTensor(m.original_name, _output_dtype(part_dtype, target_dtype), m.original_shape))
        output_dtype = _dominant_dtype([t.dtype for t in planned])
        log(f"Converting {input_dir} -> {output_dir} (original deepseek-ai layout)")

        with atomic_output_directory(output_dir, overwrite) as staging:
            writer = ShardedCheckpointWriter(staging, planned, max_shard_bytes, safe_serialization)
            try:
                for m, plan in tqdm(list(zip(mappings, planned)), desc="writing tensors", unit="tensor",
                                    disable=not progress):
                    parts = [checkpoint.read(stored_names[name]).to(plan.dtype) for name in m.our_names]
                    writer.write(m.original_name, m.to_original(parts))
                weight_files = writer.finish()
            finally:
                writer.abort()
            import transformers

            original_config = config_to_original(config, dtype_name(output_dtype), transformers.__version__)
            (staging / "config.json").write_text(json.dumps(original_config, indent=2) + "\n", encoding="utf-8")
            notes = write_original_processor_files(input_dir, staging, config)
            dropped = unused_original_tensor_names(config)
            (staging / "README.md").write_text(
                "# DeepSeek-VL (original deepseek-ai layout)\n\n"
                f"Converted back from the transformers_dsvl checkpoint `{input_dir}` with "
                + ", ".join(f"{k} {v}" for k, v in _versions().items())
                + ". Load it with the original code (`deepseek_vl`): `MultiModalityCausalLM.from_pretrained`, "
                "`VLChatProcessor.from_pretrained`.\n\n"
                f"Not written ({len(dropped)} tensors the original stores but never runs; its from_pretrained "
                "initialises them and reports them as missing): "
                + ", ".join(f"`{name}`" for name in dropped) + "\n",
                encoding="utf-8",
            )
            files_written = sorted(p.name for p in staging.iterdir())

    return ConversionResult(
        direction="dsvl-to-original",
        output_dir=Path(output_dir),
        files=files_written,
        dtype=dtype_name(output_dtype),
        num_parameters=sum(math.prod(t.shape) for t in planned),
        num_tensors_read=len(checkpoint.tensors),
        num_tensors_written=len(planned),
        dropped=dropped,
        notes=notes + [f"ignored the stored copy of the tied output layer {n}" for n in accounting.dropped],
    )


def command_line() -> str:
    return " ".join(shlex.quote(arg) for arg in sys.argv)


__all__ = ["ConversionResult", "convert_dsvl_to_original", "convert_original_to_dsvl", "resolve_dtype"]
