"""Local training data for the three stages, loaded with the `datasets` library, in three schemas:

| schema | columns | stages |
|---|---|---|
| `image_text` | `images` (list of images) + `text` with one `<image_placeholder>` per image where it stands (interleaved data), or `image` (one image) + `text`/`caption` (pairs; the placeholder goes first when the text has none) | 1, 2 |
| `text` | `text` (a document) | 2 (language data) |
| `conversations` | `messages` (Hugging Face chat format: `role` + `content`, content a string or a list of `{"type": "text", "text": ...}` / `{"type": "image"}` parts) + `images` (list, may be empty) | 3 (TRL's vision-language format) |

Accepted locations: a `.jsonl`/`.json`/`.parquet`/`.csv` file, a folder of such files, a folder written by
`Dataset.save_to_disk` (read with `load_from_disk`), or an image folder (`imagefolder`: images + `metadata.jsonl`
with `file_name` and `text`). Image columns holding file paths are resolved against the data file's folder and cast
to `datasets.Image` (decoded lazily, when a batch is built). `streaming=True` returns an `IterableDataset` that reads
the files as training goes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets import Dataset, IterableDataset

from ..tokenization_dsvl import IMAGE_TOKEN
from .config import DataSource

SCHEMAS = ("image_text", "text", "conversations")
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_LIST_FEATURE = datasets.List(datasets.Image())


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------
def load_local_dataset(path: str | os.PathLike, split: str = "train", streaming: bool = False):
    """Load one local dataset (file, folder of files, `save_to_disk` folder or image folder); see the module docstring.
    Image-path columns (`image`, `images`) are resolved and cast to `datasets.Image`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Training data {str(path)!r} does not exist. Fix: give a local file or folder.")
    base_dir = path if path.is_dir() else path.parent
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{str(path)!r} has splits {list(dataset)}, not {split!r}. Fix: choose one of them.")
            dataset = dataset[split]
        if streaming:
            dataset = dataset.to_iterable_dataset()
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        if any(p.suffix.lower() in _IMAGE_SUFFIXES for p in files) and any(
            p.name.startswith("metadata.") for p in files
        ):
            dataset = datasets.load_dataset("imagefolder", data_dir=str(path), split=split, streaming=streaming)
        else:
            dataset = datasets.load_dataset(str(path), split=split, streaming=streaming)
    else:
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"Cannot read {str(path)!r}: unknown file type {path.suffix!r}. Fix: use one of "
                f"{sorted(_FILE_BUILDERS)}, a folder of such files, or a save_to_disk folder."
            )
        dataset = datasets.load_dataset(builder, data_files={split: str(path)}, split=split, streaming=streaming)
    return _resolve_image_paths(dataset, base_dir)


def _resolve_image_paths(dataset, base_dir: Path):
    features = dataset.features
    if features is None:  # a streaming dataset whose features are not known until read
        return dataset
    for column in ("image", "images"):
        feature = features.get(column)
        is_path = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
        is_path_list = isinstance(feature, (datasets.List, datasets.Sequence)) and isinstance(
            feature.feature, datasets.Value
        ) and feature.feature.dtype in ("string", "large_string")
        if not (is_path or is_path_list):
            continue

        def absolute(example, column=column, many=is_path_list):
            value = example[column]
            if many:
                return {column: [str(base_dir / p) if p and not os.path.isabs(p) else p for p in (value or [])]}
            return {column: str(base_dir / value) if value and not os.path.isabs(value) else value}

        dataset = dataset.map(absolute)
        dataset = dataset.cast_column(column, IMAGE_LIST_FEATURE if is_path_list else datasets.Image())
    return dataset


def load_data_source(source, schema: str, streaming: bool | None = None):
    """Load a `DataSource` (or a path) and bring it to `schema` (`image_text`, `text` or `conversations`)."""
    source = DataSource.coerce(source)
    dataset = load_local_dataset(source.path, split=source.split,
                                 streaming=source.streaming if streaming is None else streaming)
    return to_schema(dataset, schema, source_name=source.name)


def load_data_mixture(sources: Sequence, schema: str, seed: int = 0, streaming: bool | None = None):
    """Load several sources of one schema and interleave them with probabilities proportional to their weights
    (the paper's Table 1 / Table 2 mixtures); every source is repeated until all have been seen once
    (`stopping_strategy="all_exhausted"`). One source comes back as is."""
    sources = [DataSource.coerce(source) for source in sources]
    if not sources:
        raise ValueError(f"No {schema} data sources were given.")
    loaded = [load_data_source(source, schema, streaming) for source in sources]
    return mix_datasets(loaded, [source.weight for source in sources], seed=seed)


def mix_datasets(dataset_list: Sequence, weights: Sequence[float] | None = None, seed: int = 0):
    """Interleave datasets of one schema with probabilities proportional to `weights`."""
    dataset_list = list(dataset_list)
    if len(dataset_list) == 1:
        return dataset_list[0]
    weights = list(weights) if weights is not None else [1.0] * len(dataset_list)
    if len(weights) != len(dataset_list) or any(w <= 0 for w in weights):
        raise ValueError(f"Need one positive weight per dataset, got {weights} for {len(dataset_list)} datasets.")
    total = float(sum(weights))
    return datasets.interleave_datasets(
        dataset_list, probabilities=[w / total for w in weights], seed=seed, stopping_strategy="all_exhausted"
    )


def as_dataset(data, schema: str):
    """Accept a `datasets.Dataset`/`IterableDataset`, a list of dicts, or a path / `DataSource`, in `schema`."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike, DataSource, dict)):
        return load_data_source(data, schema)
    if isinstance(data, list):
        if data and not isinstance(data[0], dict):
            return load_data_mixture(data, schema)
        data = Dataset.from_list(data)
    if not isinstance(data, (Dataset, IterableDataset)):
        raise TypeError(f"Expected a datasets.Dataset, IterableDataset, list of dicts or path, got {type(data)}.")
    return to_schema(data, schema)


# ---------------------------------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------------------------------
def to_schema(dataset, schema: str, source_name: str | None = None):
    """Check `dataset` against `schema` and bring it to the canonical columns (see the module docstring)."""
    if schema not in SCHEMAS:
        raise ValueError(f"Unknown schema {schema!r}. Fix: use one of {SCHEMAS}.")
    columns = column_names(dataset)
    where = f" ({source_name})" if source_name else ""
    if schema == "text":
        if "text" not in columns:
            raise ValueError(f"Text-only data{where} needs a 'text' column; it has {sorted(columns)}.")
        return dataset.select_columns(["text"]) if columns != {"text"} else dataset
    if schema == "image_text":
        return _to_image_text(dataset, columns, where)
    return _to_conversations(dataset, columns, where)


def _to_image_text(dataset, columns: set, where: str):
    text_column = "text" if "text" in columns else "caption" if "caption" in columns else None
    image_column = "images" if "images" in columns else "image" if "image" in columns else None
    if text_column is None or image_column is None:
        raise ValueError(
            f"Image-text data{where} needs an 'images' (list) or 'image' column and a 'text' (or 'caption') column; "
            f"it has {sorted(columns)}."
        )
    features = dataset.features
    if columns == {"images", "text"} and features is not None and features["images"] == IMAGE_LIST_FEATURE:
        # Already canonical: served as is (placeholder counts are checked when batches are built, without a pass
        # over the data that would copy every image).
        return dataset
    # Work on undecoded images (path/bytes records): reshaping the columns must not decode and re-encode every image.
    image_feature = datasets.Image(decode=False)
    if dataset.features is not None:
        dataset = dataset.cast_column(
            image_column, datasets.List(image_feature) if image_column == "images" else image_feature
        )

    def reshape(example):
        images = example[image_column]
        images = list(images or []) if image_column == "images" else ([images] if images is not None else [])
        return {"images": images, "text": with_image_placeholders(example[text_column] or "", len(images))}

    features = datasets.Features({"images": datasets.List(image_feature), "text": datasets.Value("string")})
    dataset = dataset.map(reshape, remove_columns=list(columns), features=features)
    return dataset.cast_column("images", IMAGE_LIST_FEATURE)


def column_names(dataset) -> set[str]:
    """Columns of a dataset; a streaming dataset whose columns are unknown until read is peeked at."""
    if dataset.column_names is not None:
        return set(dataset.column_names)
    first = next(iter(dataset), None)
    return set(first) if first is not None else set()


def with_image_placeholders(text: str, num_images: int) -> str:
    """`text` with one `<image_placeholder>` per image: kept where the text places them (interleaved data), put in
    front when it has none (image-caption pairs: the image, then its caption)."""
    found = text.count(IMAGE_TOKEN)
    if found == 0 and num_images:
        return IMAGE_TOKEN * num_images + text
    if found != num_images:
        raise ValueError(
            f"An image-text example has {num_images} image(s) but {found} {IMAGE_TOKEN} placeholder(s) in its text "
            f"({text[:80]!r}...). Fix: write one placeholder per image where it belongs, or none to put the images "
            "before the text."
        )
    return text


MESSAGES_FEATURE = datasets.List(
    {
        "role": datasets.Value("string"),
        "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
    }
)


def _to_conversations(dataset, columns: set, where: str):
    if "messages" not in columns:
        raise ValueError(
            f"Conversation data{where} needs a 'messages' column (Hugging Face chat format) and optionally 'images'; "
            f"it has {sorted(columns)}."
        )
    known = dataset.features is not None
    if "images" in columns and known:
        dataset = dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))

    def canonical(example):
        images = list(example.get("images") or [])
        return {"messages": canonical_messages(example["messages"], len(images)), "images": images}

    # One Arrow type for every source (string or part-list contents alike), so sources can be interleaved.
    features = datasets.Features({"messages": MESSAGES_FEATURE, "images": datasets.List(datasets.Image(decode=False))})
    dataset = dataset.map(canonical, remove_columns=list(columns), features=features if known else None)
    return dataset.cast_column("images", IMAGE_LIST_FEATURE) if known else dataset


def canonical_messages(messages: list[dict], num_images: int) -> list[dict]:
    """Messages with content as a list of `{"type", "text"}` parts. String contents of a conversation with images and
    no image parts get the images in front of the first user message (TRL's rule for string contents)."""
    canonical, has_image_parts = [], False
    for message in messages:
        content = message.get("content")
        if content is None:
            parts = []
        elif isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        else:
            parts = []
            for part in content:
                if part.get("image") is not None:
                    raise ValueError(
                        "A message part embeds an image; DeepSeek-VL conversation data keeps images in the 'images' "
                        "column and marks their places with {'type': 'image'} parts."
                    )
                if part.get("type") not in ("text", "image"):
                    raise ValueError(f"Message parts are 'text' or 'image', got {part.get('type')!r}.")
                has_image_parts |= part["type"] == "image"
                parts.append({"type": part["type"], "text": part.get("text") if part["type"] == "text" else None})
        canonical.append({"role": message["role"], "content": parts})
    if num_images and not has_image_parts:
        first_user = next((m for m in canonical if m["role"] == "user"), None)
        if first_user is None:
            raise ValueError("A conversation has images but no user message to put them in.")
        first_user["content"] = [{"type": "image", "text": None}] * num_images + first_user["content"]
    found = count_image_parts(canonical)
    if found != num_images:
        raise ValueError(
            f"A conversation has {num_images} image(s) but {found} image part(s) ({{'type': 'image'}}) in its "
            "messages. Fix: one image part per image, in order of appearance."
        )
    return canonical


def clean_messages(messages: list[dict]) -> list[dict]:
    """Drop the `None` fields that Arrow adds to content parts (an image part read from Parquet/JSONL carries
    `text: None`, a text part `image: None`), so TRL counts image placeholders and the template renders parts right."""
    cleaned = []
    for message in messages:
        message = {key: value for key, value in message.items() if value is not None}
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = [{k: v for k, v in part.items() if v is not None} for part in content]
        cleaned.append(message)
    return cleaned


def count_image_parts(messages: list[dict]) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image"
    )


__all__ = [
    "DataSource",
    "IMAGE_LIST_FEATURE",
    "MESSAGES_FEATURE",
    "SCHEMAS",
    "as_dataset",
    "canonical_messages",
    "clean_messages",
    "column_names",
    "count_image_parts",
    "load_data_mixture",
    "load_data_source",
    "load_local_dataset",
    "mix_datasets",
    "to_schema",
    "with_image_placeholders",
]
