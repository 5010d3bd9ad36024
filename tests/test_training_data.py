"""Loading the three training schemas from local files with `datasets`: JSONL with relative image paths, Parquet,
imagefolder, save_to_disk, streaming; mixtures by weight; conversation canonicalisation; clear errors."""

from __future__ import annotations

import json

import datasets
import PIL.Image
import pytest
from training_helpers import IMAGE, solid_image

from transformers_dsvl.training.data import (
    DataSource,
    canonical_messages,
    load_data_mixture,
    load_data_source,
    load_local_dataset,
    to_schema,
)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        solid_image(i).save(folder / f"{i}.png")
    return folder


def test_jsonl_image_text_with_relative_paths(tmp_path, image_dir):
    rows = [
        {"image": "imgs/0.png", "caption": "a red square"},  # pair: the placeholder goes first
        {"image": "imgs/1.png", "caption": "a blue square"},
    ]
    pairs = load_data_source(_write_jsonl(tmp_path / "pairs.jsonl", rows), "image_text")
    assert pairs.column_names == ["images", "text"]
    assert pairs[0]["text"] == IMAGE + "a red square"
    assert isinstance(pairs[0]["images"][0], PIL.Image.Image) and pairs[0]["images"][0].size == (48, 40)
    interleaved = [{"images": ["imgs/2.png", "imgs/3.png"], "text": f"first {IMAGE} then {IMAGE} end"}]
    loaded = load_data_source(_write_jsonl(tmp_path / "interleaved.jsonl", interleaved), "image_text")
    assert loaded[0]["text"] == f"first {IMAGE} then {IMAGE} end"
    assert [image.size for image in loaded[0]["images"]] == [(48, 40), (48, 40)]


def test_imagefolder_pairs(tmp_path, image_dir):
    _write_jsonl(image_dir / "metadata.jsonl", [{"file_name": f"{i}.png", "text": f"square {i}"} for i in range(4)])
    dataset = load_data_source(str(image_dir), "image_text")
    assert len(dataset) == 4
    assert sorted(row["text"] for row in dataset) == [IMAGE + f"square {i}" for i in range(4)]


def test_parquet_and_save_to_disk_and_streaming(tmp_path):
    conversations = datasets.Dataset.from_list([
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
         "images": [solid_image(0)]},
    ]).cast_column("images", datasets.List(datasets.Image()))
    conversations.to_parquet(str(tmp_path / "sft.parquet"))
    loaded = load_data_source(tmp_path / "sft.parquet", "conversations")
    assert loaded[0]["messages"][0]["content"][0]["type"] == "image"
    assert isinstance(loaded[0]["images"][0], PIL.Image.Image)

    texts = datasets.Dataset.from_dict({"text": ["one", "two", "three"], "meta": [1, 2, 3]})
    texts.save_to_disk(str(tmp_path / "texts"))
    assert load_data_source(tmp_path / "texts", "text")[:] == {"text": ["one", "two", "three"]}

    _write_jsonl(tmp_path / "docs.jsonl", [{"text": f"doc {i}"} for i in range(5)])
    streamed = load_data_source(DataSource(str(tmp_path / "docs.jsonl"), streaming=True), "text")
    assert isinstance(streamed, datasets.IterableDataset)
    assert [row["text"] for row in streamed] == [f"doc {i}" for i in range(5)]
    assert isinstance(load_local_dataset(tmp_path / "texts", streaming=True), datasets.IterableDataset)


def test_mixture_follows_the_weights(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}] * 50)
    _write_jsonl(tmp_path / "b.jsonl", [{"text": "b"}] * 50)
    mixture = load_data_mixture([{"path": str(tmp_path / "a.jsonl"), "weight": 3.0},
                                 {"path": str(tmp_path / "b.jsonl"), "weight": 1.0}], "text", seed=0)
    first = [row["text"] for row in mixture.select(range(100))]
    assert 0.65 <= first.count("a") / 100 <= 0.85  # 75% expected
    assert set(row["text"] for row in mixture) == {"a", "b"}


def test_conversations_of_different_shapes_share_one_schema():
    with_images = datasets.Dataset.from_list([
        {"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A dog."}],
         "images": [solid_image(1)]}
    ]).cast_column("images", datasets.List(datasets.Image()))
    text_only = datasets.Dataset.from_list([
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}]}
    ])
    first, second = to_schema(with_images, "conversations"), to_schema(text_only, "conversations")
    assert first.features == second.features  # so they interleave
    assert first[0]["messages"][0]["content"][0]["type"] == "image"  # TRL's rule: images before the first user text
    assert second[0]["images"] == []
    mixed = datasets.concatenate_datasets([first, second])
    assert len(mixed) == 2


def test_canonical_messages_checks_image_counts():
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    assert canonical_messages(messages, 1)[0]["content"][0] == {"type": "image", "text": None}
    with pytest.raises(ValueError, match="1 image part"):
        canonical_messages(messages, 2)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_local_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown file type"):
        load_local_dataset(tmp_path / "data.txt")
    with pytest.raises(ValueError, match="needs a 'text' column"):
        to_schema(datasets.Dataset.from_dict({"body": ["x"]}), "text")
    with pytest.raises(ValueError, match="'images' .list. or 'image' column"):
        to_schema(datasets.Dataset.from_dict({"text": ["x"]}), "image_text")
    bad = datasets.Dataset.from_list([{"image": solid_image(0), "text": f"{IMAGE} and {IMAGE}"}])
    with pytest.raises(ValueError, match="1 image.s. but 2"):
        to_schema(bad.cast_column("image", datasets.Image()), "image_text")
    with pytest.raises(ValueError, match="weight must be positive"):
        DataSource("x", weight=0)
