"""Shard-by-shard checkpoint reading and writing with strict accounting and bounded memory.

Conversions here never hold a whole checkpoint in memory:

- safetensors inputs are read from their headers first (names, dtypes, shapes, byte ranges), so every check runs
  before a single tensor is loaded; a tensor is then read with one positioned `readinto` into memory of its own
  (no memory map, so no file pages count against the process);
- outputs are laid out up front (shard assignment and byte offsets are known from the shapes), each shard's header
  is written first and every tensor is streamed to disk as soon as it is produced.

Peak memory is therefore about the largest tensor (plus the pieces of a fused tensor being split or joined), far
below one input shard. Pickle (`.bin`) inputs are the exception: they are only read on request (`allow_pickle`),
with `torch.load(weights_only=True, mmap=True)`, one file at a time.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_SINGLE_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_SINGLE_FILE = "pytorch_model.bin"
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"

# safetensors dtype codes <-> torch dtypes (the formats a checkpoint of this model can hold).
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
# A header larger than this is not a real safetensors header (the format itself caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000


class CheckpointFormatError(ValueError):
    """A checkpoint file or index is malformed (truncated file, broken header, inconsistent index)."""


class PickleCheckpointRefused(ValueError):
    """The checkpoint is in pickle format and reading pickle was not allowed explicitly."""


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it holds, known without reading its data."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    path: Path
    start: int = 0  # absolute byte offset of the data in `path` (safetensors only)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_size(self.dtype)


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def parse_size(size: int | str) -> int:
    """'5GB' -> 5 * 10**9, '500MiB' -> 500 * 2**20, '2.5GB', or an int (bytes). Units follow transformers' rule:
    kB/MB/GB are powers of 10, KiB/MiB/GiB powers of 2."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}. Fix: pass e.g. '5GB'.")
        return size
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"Cannot read the size {size!r}. Fix: write a number and a unit, e.g. '5GB' or '500MiB'.")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    factors = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    value = int(number * factors[unit])
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}. Fix: pass e.g. '5GB'.")
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------
def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without reading tensor data.

    Checks that the header is well formed, every dtype is known, every byte range matches its shape, the ranges
    tile the data section without gaps or overlaps, and the file is exactly as long as the header says (a shorter
    file is a truncated download or copy).
    """
    path = Path(path)
    file_size = path.stat().st_size

    def fail(problem: str, fix: str = "re-download or re-copy this file") -> CheckpointFormatError:
        return CheckpointFormatError(f"{path}: {problem}. Fix: {fix}.")

    if file_size < 8:
        raise fail(f"the file is {file_size} bytes long, too short for a safetensors header (truncated)")
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        if header_size > MAX_HEADER_BYTES or 8 + header_size > file_size:
            raise fail(
                f"the header claims {header_size} bytes but the file holds {file_size - 8} after the length field "
                "(truncated, or not a safetensors file)"
            )
        raw_header = handle.read(header_size)
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise fail(f"the header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise fail("the header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_size
    infos: dict[str, TensorInfo] = {}
    ranges = []
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise fail(f"the header entry of {name!r} is malformed: {entry!r}") from None
        if code not in SAFETENSORS_DTYPES:
            raise fail(f"tensor {name!r} has dtype {code!r}, which this converter does not read",
                       f"store it as one of {sorted(SAFETENSORS_DTYPES)}")
        if any(not isinstance(d, int) or d < 0 for d in shape) or not (0 <= begin <= end):
            raise fail(f"tensor {name!r} has an invalid shape {list(shape)} or byte range [{begin}, {end})")
        dtype = SAFETENSORS_DTYPES[code]
        expected = math.prod(shape) * dtype_size(dtype)
        if end - begin != expected:
            raise fail(f"tensor {name!r} ({code} {list(shape)}) needs {expected} bytes but its range holds "
                       f"{end - begin}")
        infos[name] = TensorInfo(name=name, dtype=dtype, shape=shape, path=path, start=data_start + begin)
        ranges.append((begin, end, name))

    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            raise fail(f"the data of {name!r} starts at byte {begin} but the previous tensor ends at {position} "
                       "(gap or overlap in the data section)")
        position = end
    if data_start + position > file_size:
        raise fail(f"the file is {file_size} bytes long but its header describes {data_start + position} bytes "
                   f"({data_start + position - file_size} bytes missing: the file is truncated)")
    if data_start + position < file_size:
        raise fail(f"the file has {file_size - data_start - position} bytes after the last tensor "
                   "(corrupted or concatenated file)")
    return infos, metadata


class SafetensorsCheckpoint:
    """A checkpoint directory in safetensors format: one `model.safetensors`, or shards plus
    `model.safetensors.index.json`. Opening validates every header and the index; reading is per tensor."""

    format = "safetensors"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.tensors: dict[str, TensorInfo] = {}
        self.files: list[Path] = []
        self.metadata: dict[str, str] = {}
        self._handles: dict[Path, object] = {}
        index_path = self.directory / SAFETENSORS_INDEX_FILE
        if index_path.is_file():
            self._open_sharded(index_path)
        elif (self.directory / SAFETENSORS_SINGLE_FILE).is_file():
            path = self.directory / SAFETENSORS_SINGLE_FILE
            self.tensors, self.metadata = read_safetensors_header(path)
            self.files = [path]
        else:
            raise FileNotFoundError(
                f"No {SAFETENSORS_SINGLE_FILE} or {SAFETENSORS_INDEX_FILE} in {self.directory}."
            )

    def _open_sharded(self, index_path: Path) -> None:
        try:
            index = json.loads(index_path.read_text())
            weight_map = index["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointFormatError(
                f"{index_path} is not a valid index (needs a 'weight_map' object): {error}. Fix: restore the "
                "original index file."
            ) from None
        shard_names = sorted(set(weight_map.values()))
        missing_files = [name for name in shard_names if not (self.directory / name).is_file()]
        if missing_files:
            raise CheckpointFormatError(
                f"{index_path} refers to shard files that do not exist: {missing_files}. Fix: download every shard "
                "listed in the index."
            )
        unindexed, misplaced = [], []
        for shard_name in shard_names:
            path = self.directory / shard_name
            infos, metadata = read_safetensors_header(path)
            self.metadata.update(metadata)
            self.files.append(path)
            for name, info in infos.items():
                if name in self.tensors:
                    raise CheckpointFormatError(
                        f"Tensor {name!r} is stored twice, in {self.tensors[name].path.name} and {shard_name}. "
                        "Fix: remove the duplicate shard."
                    )
                if weight_map.get(name) != shard_name:
                    unindexed.append(f"{name} (in {shard_name}, index says {weight_map.get(name)!r})")
                self.tensors[name] = info
        for name, shard_name in weight_map.items():
            if name not in self.tensors:
                misplaced.append(f"{name} (index says {shard_name}, which does not contain it)")
        problems = []
        if unindexed:
            problems.append(f"{len(unindexed)} tensor(s) stored in a shard but missing from (or misplaced in) the "
                            f"index: {_preview(unindexed)}")
        if misplaced:
            problems.append(f"{len(misplaced)} index entr(y/ies) pointing at a shard that lacks the tensor: "
                            f"{_preview(misplaced)}")
        if problems:
            raise CheckpointFormatError(
                f"{index_path} does not match its shards: " + "; ".join(problems) + ". Fix: restore the original "
                "index and shards (a partial download or a hand-edited index)."
            )
        # Shards that the index does not mention at all would be silently ignored by every loader: refuse them too.
        stray = sorted(p.name for p in self.directory.glob("*.safetensors") if p.name not in shard_names)
        if stray:
            raise CheckpointFormatError(
                f"{self.directory} holds safetensors files that {index_path.name} does not list: {stray}. Fix: add "
                "them to the index or move them out of the checkpoint directory."
            )

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        handle = self._handles.get(info.path)
        if handle is None:
            handle = self._handles[info.path] = open(info.path, "rb")  # noqa: SIM115 (closed in close())
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        buffer = bytearray(info.nbytes)
        handle.seek(info.start)
        read = handle.readinto(buffer)
        if read != info.nbytes:
            raise CheckpointFormatError(
                f"{info.path}: tensor {name!r} ends after {read} of {info.nbytes} bytes (the file changed or was "
                "truncated while converting). Fix: re-download or re-copy it."
            )
        tensor = torch.frombuffer(buffer, dtype=info.dtype).reshape(info.shape)
        if sys.byteorder != "little":  # safetensors stores little-endian data
            tensor = _byteswap(tensor)
        return tensor

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PickleCheckpoint:
    """A `pytorch_model.bin` checkpoint (single or sharded), read with `torch.load(weights_only=True, mmap=True)`.

    Pickle can execute code while loading; `weights_only=True` restricts it to tensors and plain containers, and the
    caller must have opted in (`allow_pickle`). One file is mapped at a time.
    """

    format = "pickle"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index_path = self.directory / PICKLE_INDEX_FILE
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            self.files = [self.directory / name for name in sorted(set(weight_map.values()))]
        else:
            self.files = [self.directory / PICKLE_SINGLE_FILE]
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self._loaded_path: Path | None = None
        self._loaded: dict[str, torch.Tensor] = {}
        for path in self.files:
            for name, tensor in self._load(path).items():
                if name in self.tensors:
                    raise CheckpointFormatError(f"Tensor {name!r} is stored in two pickle shards. Fix: remove the "
                                                "duplicate.")
                self.tensors[name] = TensorInfo(name=name, dtype=tensor.dtype, shape=tuple(tensor.shape), path=path)
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            mismatched = sorted(set(weight_map) ^ set(self.tensors))
            if mismatched:
                raise CheckpointFormatError(
                    f"{index_path} and its shards disagree on these tensors: {_preview(mismatched)}. Fix: restore "
                    "the original index and shards."
                )

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        if self._loaded_path != path:
            self._loaded = {}  # release the previous file's mapping first
            try:
                state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
                raise CheckpointFormatError(f"{path} does not hold a flat dict of tensors. Fix: save the state dict "
                                            "(model.state_dict()), not a whole model or training state.")
            self._loaded, self._loaded_path = state_dict, path
        return self._loaded

    def read(self, name: str) -> torch.Tensor:
        return self._load(self.tensors[name].path)[name]

    def close(self) -> None:
        self._loaded, self._loaded_path = {}, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_checkpoint(directory: str | os.PathLike, allow_pickle: bool = False):
    """Open the weights of a checkpoint directory: safetensors when present, pickle only with `allow_pickle`."""
    directory = Path(directory)
    if (directory / SAFETENSORS_INDEX_FILE).is_file() or (directory / SAFETENSORS_SINGLE_FILE).is_file():
        return SafetensorsCheckpoint(directory)
    has_pickle = (directory / PICKLE_INDEX_FILE).is_file() or (directory / PICKLE_SINGLE_FILE).is_file()
    if has_pickle:
        if not allow_pickle:
            raise PickleCheckpointRefused(
                f"{directory} holds only pickle weights ({PICKLE_SINGLE_FILE} / {PICKLE_INDEX_FILE}). Unpickling "
                "can run arbitrary code hidden in the file, so this converter does not read pickle unless asked. "
                "Fix: use the safetensors files of the checkpoint, or pass --allow-pickle if you trust the source "
                "(the weights are then read with torch.load(weights_only=True), which only admits tensors)."
            )
        return PickleCheckpoint(directory)
    raise FileNotFoundError(
        f"No weights found in {directory}: expected {SAFETENSORS_SINGLE_FILE}, {SAFETENSORS_INDEX_FILE} with its "
        f"shards, or (with --allow-pickle) {PICKLE_SINGLE_FILE}. Fix: point --input_dir at the downloaded checkpoint."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_size(self.dtype)


def assign_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Greedy in the given order: start a new shard when the next tensor would push the current one past the limit
    (a single tensor larger than the limit gets a shard of its own), as transformers shards."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return [shard for shard in shards if shard] or [[]]


def shard_file_names(num_shards: int, safe_serialization: bool = True) -> list[str]:
    stem, suffix = ("model", "safetensors") if safe_serialization else ("pytorch_model", "bin")
    if num_shards == 1:
        return [f"{stem}.{suffix}"]
    return [f"{stem}-{i:05d}-of-{num_shards:05d}.{suffix}" for i in range(1, num_shards + 1)]


class ShardedCheckpointWriter:
    """Writes tensors, in the planned order, into shards laid out before the first byte is written.

    safetensors: each shard's header (names, dtypes, shapes, offsets) is written when the shard is opened and every
    tensor is streamed to disk as it arrives, so memory holds one tensor. Pickle (`safe_serialization=False`) has no
    such layout; its shards are collected in memory and saved one at a time.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        tensors: Iterable[PlannedTensor],
        max_shard_bytes: int,
        safe_serialization: bool = True,
        metadata: dict[str, str] | None = None,
    ):
        self.directory = Path(directory)
        self.safe_serialization = safe_serialization
        self.metadata = {"format": "pt", **(metadata or {})}
        planned = list(tensors)
        names = [t.name for t in planned]
        if len(set(names)) != len(names):
            raise ValueError("The output plan names a tensor twice; this is a bug in the key mapping.")
        self.shards = assign_shards(planned, max_shard_bytes)
        self.file_names = shard_file_names(len(self.shards), safe_serialization)
        self._queue: Iterator[tuple[int, PlannedTensor]] = iter(
            [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        )
        self._current_shard: int | None = None
        self._handle = None
        self._pickle_buffer: dict[str, torch.Tensor] = {}
        self.total_bytes = sum(t.nbytes for t in planned)

    @property
    def weight_map(self) -> dict[str, str]:
        return {t.name: self.file_names[i] for i, shard in enumerate(self.shards) for t in shard}

    def write(self, name: str, tensor: torch.Tensor) -> None:
        try:
            shard_index, planned = next(self._queue)
        except StopIteration:
            raise ValueError(f"Tensor {name!r} was written after the planned output was complete.") from None
        if planned.name != name or tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
            raise ValueError(
                f"Expected the planned tensor {planned.name!r} {planned.dtype} {list(planned.shape)}, got {name!r} "
                f"{tensor.dtype} {list(tensor.shape)}; this is a bug in the conversion plan."
            )
        if shard_index != self._current_shard:
            self._finish_shard()
            self._start_shard(shard_index)
        if self.safe_serialization:
            data = tensor.detach().contiguous().reshape(-1)
            if sys.byteorder != "little":
                data = _byteswap(data)
            if data.numel():
                self._handle.write(memoryview(data.view(torch.uint8).numpy()))
        else:
            self._pickle_buffer[name] = tensor.detach().contiguous().clone()

    def _start_shard(self, index: int) -> None:
        self._current_shard = index
        path = self.directory / self.file_names[index]
        if not self.safe_serialization:
            self._pickle_buffer = {}
            return
        header: dict[str, object] = {"__metadata__": self.metadata}
        offset = 0
        for planned in self.shards[index]:
            header[planned.name] = {
                "dtype": SAFETENSORS_DTYPE_CODES[planned.dtype],
                "shape": list(planned.shape),
                "data_offsets": [offset, offset + planned.nbytes],
            }
            offset += planned.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
        self._handle = open(path, "wb")  # noqa: SIM115 (closed in _finish_shard)
        self._handle.write(struct.pack("<Q", len(encoded)))
        self._handle.write(encoded)

    def _finish_shard(self) -> None:
        if self._current_shard is None:
            return
        if self.safe_serialization:
            self._handle.close()
            self._handle = None
        else:
            torch.save(self._pickle_buffer, self.directory / self.file_names[self._current_shard])
            self._pickle_buffer = {}

    def finish(self) -> list[str]:
        """Close the last shard, write the index for a sharded checkpoint, return the written file names."""
        remaining = [t.name for _, t in self._queue]
        if remaining:
            raise ValueError(f"{len(remaining)} planned tensor(s) were never written: {_preview(remaining)}.")
        if self._current_shard is None and self.shards == [[]]:
            self._start_shard(0)  # an empty checkpoint is still a valid (empty) file
        self._finish_shard()
        written = list(self.file_names)
        if len(self.file_names) > 1:
            index_name = SAFETENSORS_INDEX_FILE if self.safe_serialization else PICKLE_INDEX_FILE
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
            (self.directory / index_name).write_text(json.dumps(index, indent=2) + "\n")
            written.append(index_name)
        return written

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _byteswap(tensor: torch.Tensor) -> torch.Tensor:
    size = tensor.element_size()
    if size == 1:
        return tensor
    raw = tensor.contiguous().view(torch.uint8).reshape(-1, size).flip(-1).contiguous()
    return raw.view(tensor.dtype).reshape(tensor.shape)


def _preview(items: list, limit: int = 12) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
