"""Loaders of the public benchmark formats: small files written here in each format, what the loaders read from
them, and the errors for malformed files (each must name the file and the row).

The `write_*` helpers are also used by tests/test_eval_end_to_end.py."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from transformers_dsvl.evaluation import BenchmarkFormatError, get_benchmark
from transformers_dsvl.evaluation.formats import (
    load_mmbench_tsv,
    load_mmmu,
    load_ocrbench,
    load_pope,
    load_scienceqa,
    load_seed_bench,
    load_vqa_jsonl,
)


# ---------------------------------------------------------------------------------------------------------------------
# Writers of tiny benchmark files in the public formats
# ---------------------------------------------------------------------------------------------------------------------
def png_bytes(seed: int, size=(24, 16)) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: Path, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(seed))
    return path.name


MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split",
                   "image"]


def mmbench_rows() -> list[dict]:
    return [
        dict(index=0, question="What animal is shown?", hint="nan", A="cat", B="dog", C="bird", D="fish", answer="B",
             category="object_localization", **{"l2-category": "finegrained_perception (instance-level)"},
             split="dev", image=base64.b64encode(png_bytes(0)).decode()),
        dict(index=1, question="What colour is the sky?", hint="Look up.", A="blue", B="green", C="nan", D="nan",
             answer="A", category="attribute_recognition", **{"l2-category": "finegrained_perception (instance-level)"},
             split="dev", image=base64.b64encode(png_bytes(1)).decode()),
        # A short number in the image column refers to the image of the row with that index (VLMEvalKit layout).
        dict(index=2, question="How many legs?", hint="", A="two", B="four", C="six", D="nan", answer="C",
             category="attribute_recognition", **{"l2-category": "finegrained_perception (instance-level)"},
             split="dev", image="0"),
    ]


def write_mmbench_tsv(path: Path, rows: list[dict] | None = None, columns: list[str] | None = None) -> Path:
    rows = mmbench_rows() if rows is None else rows
    columns = MMBENCH_COLUMNS if columns is None else columns
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(str(row.get(column, "")) for column in columns))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_pope(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        save_png(folder / "images" / f"COCO_val2014_{k:012d}.jpg".replace(".jpg", ".png"), seed=10 + k)
    random_rows = [
        {"question_id": 1, "image": "COCO_val2014_000000000000.png", "text": "Is there a dog in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000000001.png", "text": "Is there a car in the image?",
         "label": "no"},
        {"question_id": 3, "image": "COCO_val2014_000000000002.png", "text": "Is there a chair in the image?",
         "label": "yes"},
    ]
    adversarial_rows = [
        {"question_id": 1, "image": "COCO_val2014_000000000000.png", "text": "Is there a cat in the image?",
         "label": "no"},
        {"question_id": 2, "image": "COCO_val2014_000000000002.png", "text": "Is there a table in the image?",
         "label": "yes"},
    ]
    (folder / "coco_pope_random.json").write_text("\n".join(json.dumps(r) for r in random_rows) + "\n")
    (folder / "coco_pope_adversarial.json").write_text("\n".join(json.dumps(r) for r in adversarial_rows) + "\n")
    return folder


def write_scienceqa(folder: Path) -> Path:
    problems = {
        "5": {"question": "Which is a mammal?", "choices": ["frog", "whale", "shark"], "answer": 1,
              "hint": "Mammals feed their young milk.", "image": "image.png", "split": "test",
              "subject": "natural science", "grade": "grade4"},
        "6": {"question": "Which word is a noun?", "choices": ["run", "table"], "answer": 1, "hint": "",
              "image": None, "split": "test", "subject": "language science", "grade": "grade2"},
        "7": {"question": "Which ocean is shown?", "choices": ["Pacific", "Atlantic", "Indian", "Arctic"],
              "answer": 3, "hint": "", "image": "image.png", "split": "test", "subject": "social science",
              "grade": "grade5"},
        "8": {"question": "Train question?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
              "split": "train", "subject": "natural science", "grade": "grade1"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "problems.json").write_text(json.dumps(problems))
    (folder / "pid_splits.json").write_text(json.dumps({"test": ["5", "6", "7"], "train": ["8"]}))
    for qid, seed in (("5", 20), ("7", 21), ("8", 22)):
        split = problems[qid]["split"]
        save_png(folder / "images" / split / qid / "image.png", seed)
    return folder


def write_seed(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_png(folder / "SEED-Bench-image" / "1454426_2591111986.png", 30)
    save_png(folder / "SEED-Bench-image" / "1111111_2222222222.png", 31)
    questions = [
        {"answer": "A", "choice_a": "One", "choice_b": "Two", "choice_c": "Three", "choice_d": "Four",
         "data_id": "1454426_2591111986.png", "data_type": "image", "question": "How many towels are in the image?",
         "question_id": "101669", "question_type_id": 5},
        {"answer": "C", "choice_a": "Indoors", "choice_b": "Beach", "choice_c": "Forest", "choice_d": "City",
         "data_id": "1111111_2222222222", "data_type": "image", "question": "Where was the photo taken?",
         "question_id": "101670", "question_type_id": 1},
        {"answer": "B", "choice_a": "x", "choice_b": "y", "choice_c": "z", "choice_d": "w",
         "data_id": "video_001.mp4", "data_type": "video", "question": "What happens next?",
         "question_id": "900001", "question_type_id": 10},
    ]
    content = {"questions": questions,
               "question_type": {"Scene Understanding": 1, "Instance Counting": 5, "Action Prediction": 10}}
    (folder / "SEED-Bench.json").write_text(json.dumps(content))
    return folder


def write_ocrbench(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_png(folder / "OCRBench_Images" / "IIIT5K" / "1.png", 40)
    save_png(folder / "OCRBench_Images" / "HME100k" / "2.png", 41)
    save_png(folder / "OCRBench_Images" / "docVQA" / "3.png", 42)
    entries = [
        {"dataset_name": "IIIT5K", "id": 0, "image_path": "IIIT5K/1.png", "question": "what is written in the image?",
         "answers": ["CHALLENGER"], "type": "Regular Text Recognition"},
        {"dataset_name": "HME100k", "id": 1, "image_path": "HME100k/2.png",
         "question": "Please write out the expression of the formula in the image using LaTeX format.",
         "answers": "x ^ { 2 }", "type": "Handwritten Mathematical Expression Recognition"},
        {"dataset_name": "docVQA", "id": 2, "image_path": "docVQA/3.png", "question": "What is the date?",
         "answers": ["March 3", "3 March"], "type": "Doc-oriented VQA"},
    ]
    (folder / "OCRBench.json").write_text(json.dumps(entries))
    return folder


def mmmu_rows(image_value) -> list[dict]:
    """MMMU rows; `image_value(k)` gives the stored value of an image (parquet struct or relative path)."""
    empty = {f"image_{k}": None for k in range(1, 8)}
    return [
        {**empty, "id": "validation_Art_Theory_1", "question": "<image 1> Which style is this painting?",
         "options": str(["Baroque", "Cubism", "Impressionism"]), "answer": "B", "question_type": "multiple-choice",
         "image_1": image_value(1)},
        {**empty, "id": "validation_Math_2", "question": "Compare <image 2> with <image 1>. What is the area?",
         "options": "[]", "answer": "12", "question_type": "open", "image_1": image_value(2),
         "image_2": image_value(3)},
        {**empty, "id": "validation_Clinical_Medicine_3", "question": "Which organ is shown?",
         "options": str(["Heart", "Liver", "Lung", "Kidney"]), "answer": "D", "question_type": "multiple-choice",
         "image_1": image_value(4)},
    ]


def write_mmmu_parquet(folder: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rows = mmmu_rows(lambda k: {"bytes": png_bytes(50 + k), "path": f"{k}.png"})
    path = folder / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_mmmu_jsonl(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = mmmu_rows(lambda k: save_png(folder / f"img{k}.png", 50 + k))
    path = folder / "mmmu_validation.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def write_vqa(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_png(folder / "img" / "a.png", 60)
    save_png(folder / "img" / "b.png", 61)
    rows = [
        {"question_id": 100, "image": "img/a.png", "question": "How many dogs are there?",
         "answers": ["2"] * 3 + ["two"] * 4 + ["3"] * 3, "category": "counting"},
        {"question_id": 101, "image": "img/b.png", "question": "What colour is the car?",
         "answers": [{"answer": "red"}], "category": "colour"},
    ]
    path = folder / "questions.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# What the loaders read
# ---------------------------------------------------------------------------------------------------------------------
def test_mmbench_tsv_rows_options_hint_and_image_reference(tmp_path):
    samples = load_mmbench_tsv(write_mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv"))
    assert [s.uid for s in samples] == ["0", "1", "2"]
    assert samples[0].options == {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    assert samples[1].options == {"A": "blue", "B": "green"}  # "nan" cells are absent options
    assert samples[0].fields["hint"] is None and samples[1].fields["hint"] == "Look up."
    assert samples[2].fields["hint"] is None  # an empty hint is no hint
    assert samples[0].category == "object_localization"
    assert samples[0].fields["l2_category"] == "finegrained_perception (instance-level)"
    # Row 2's image is the image of index 0.
    assert np.array_equal(np.asarray(samples[2].images[0].load()), np.asarray(samples[0].images[0].load()))
    assert samples[0].images[0].load().size == (24, 16)


def test_mmbench_stored_circular_copies_are_grouped(tmp_path):
    rows = mmbench_rows()[:1]
    copy = dict(rows[0], index=1_000_000, A="dog", B="bird", C="fish", D="cat", answer="A")
    samples = load_mmbench_tsv(write_mmbench_tsv(tmp_path / "mmbench.tsv", rows + [copy]))
    assert [s.fields["group"] for s in samples] == [0, 0]
    requests = get_benchmark("mmbench").requests(samples)
    # The stored copies are used as they are: no rotations are added.
    assert [(r.uid, r.variant, r.answer) for r in requests] == [("0", 0, "B"), ("1000000", 1, "A")]


def test_mmbench_generated_rotations_move_the_answer_through_every_letter(tmp_path):
    samples = load_mmbench_tsv(write_mmbench_tsv(tmp_path / "mmbench.tsv"))
    requests = get_benchmark("mmbench").requests(samples)
    first = [r for r in requests if r.sample.uid == "0"]
    assert [r.uid for r in first] == ["0/circular0", "0/circular1", "0/circular2", "0/circular3"]
    assert [r.answer for r in first] == ["B", "A", "D", "C"]
    for request in first:
        assert request.options[request.answer] == "dog"  # the right text, wherever it moved
        assert sorted(request.options.values()) == ["bird", "cat", "dog", "fish"]
    assert len([r for r in requests if r.sample.uid == "1"]) == 2  # two options: two rotations
    assert len(get_benchmark("mmbench", circular=False).requests(samples)) == 3


def test_pope_folder_categories_and_images(tmp_path):
    samples = load_pope(write_pope(tmp_path / "pope"))
    assert [(s.category, s.uid, s.answer) for s in samples] == [
        ("adversarial", "adversarial:1", "no"), ("adversarial", "adversarial:2", "yes"),
        ("random", "random:1", "yes"), ("random", "random:2", "no"), ("random", "random:3", "yes"),
    ]
    assert samples[2].question == "Is there a dog in the image?"
    assert samples[2].images[0].load().mode == "RGB"


def test_scienceqa_img_subset_of_the_split(tmp_path):
    samples = load_scienceqa(write_scienceqa(tmp_path / "sqa"))
    assert [s.uid for s in samples] == ["5", "7"]  # 6 has no image, 8 is train
    assert samples[0].options == {"A": "frog", "B": "whale", "C": "shark"} and samples[0].answer == "B"
    assert samples[1].answer == "D" and samples[0].category == "natural science"
    assert samples[0].fields["hint"] == "Mammals feed their young milk." and samples[1].fields["hint"] is None
    assert [s.uid for s in load_scienceqa(tmp_path / "sqa", split="train")] == ["8"]


def test_seed_bench_image_questions_and_dimension_names(tmp_path):
    samples = load_seed_bench(write_seed(tmp_path / "seed"))
    assert [(s.uid, s.answer, s.category) for s in samples] == [
        ("101669", "A", "Instance Counting"), ("101670", "C", "Scene Understanding")]
    assert samples[1].images[0].load().size == (24, 16)  # data_id without extension -> .png


def test_ocrbench_answers_and_types(tmp_path):
    samples = load_ocrbench(write_ocrbench(tmp_path / "ocr"))
    assert [s.answer for s in samples] == [["CHALLENGER"], ["x ^ { 2 }"], ["March 3", "3 March"]]
    assert samples[1].fields["dataset_name"] == "HME100k"
    assert samples[2].category == "Doc-oriented VQA"


@pytest.mark.parametrize("writer", [write_mmmu_parquet, write_mmmu_jsonl])
def test_mmmu_parquet_and_json_lines(tmp_path, writer):
    samples = load_mmmu(writer(tmp_path / "mmmu"))
    assert [s.uid for s in samples] == ["validation_Art_Theory_1", "validation_Math_2",
                                        "validation_Clinical_Medicine_3"]
    assert [s.category for s in samples] == ["Art_Theory", "Math", "Clinical_Medicine"]
    assert samples[0].options == {"A": "Baroque", "B": "Cubism", "C": "Impressionism"}
    assert samples[1].answer == ["12"] and samples[1].fields["question_type"] == "open"
    assert len(samples[1].images) == 2 and samples[1].fields["image_numbers"] == [1, 2]
    assert np.array_equal(np.asarray(samples[0].images[0].load()),
                          np.asarray(PIL.Image.open(io.BytesIO(png_bytes(51))).convert("RGB")))


def test_mmmu_images_are_interleaved_where_referenced(tmp_path):
    samples = load_mmmu(write_mmmu_jsonl(tmp_path / "mmmu"))
    requests = get_benchmark("mmmu").requests(samples)
    # "Compare <image 2> with <image 1>": image 2 first, at its reference, then image 1.
    assert requests[1].image_order == [1, 0]
    assert [part["type"] for part in requests[1].content] == ["text", "image", "text", "image", "text"]
    assert requests[1].content[0]["text"] == "Compare "
    # A question that never references its image gets it first.
    assert requests[2].content[0] == {"type": "image"} and requests[2].image_order == [0]


def test_vqa_jsonl_answers(tmp_path):
    samples = load_vqa_jsonl(write_vqa(tmp_path / "vqa"))
    assert len(samples[0].answer) == 10 and samples[1].answer == ["red"]
    assert samples[0].category == "counting"


# ---------------------------------------------------------------------------------------------------------------------
# Malformed files: the error names the file and the row
# ---------------------------------------------------------------------------------------------------------------------
def _error(callable_, *args, **kwargs) -> str:
    with pytest.raises(BenchmarkFormatError) as info:
        callable_(*args, **kwargs)
    return str(info.value)


def test_mmbench_missing_answer_column(tmp_path):
    columns = [c for c in MMBENCH_COLUMNS if c != "answer"]
    message = _error(load_mmbench_tsv, write_mmbench_tsv(tmp_path / "test.tsv", columns=columns))
    assert "test.tsv" in message and "line 1" in message and "'answer'" in message
    assert "dev split" in message


def test_mmbench_unknown_answer_letter(tmp_path):
    rows = mmbench_rows()
    rows[1]["answer"] = "C"  # row 2 only has options A and B
    message = _error(load_mmbench_tsv, write_mmbench_tsv(tmp_path / "bad.tsv", rows))
    assert "bad.tsv, row 2 (line 3)" in message and "'C' is not one of the options A, B" in message


def test_mmbench_undecodable_images(tmp_path):
    rows = mmbench_rows()
    rows[0]["image"] = "this is not base64!!"
    message = _error(load_mmbench_tsv, write_mmbench_tsv(tmp_path / "b64.tsv", rows))
    assert "b64.tsv, row 1 (line 2), column 'image'" in message and "not valid base64" in message

    rows = mmbench_rows()
    rows[1]["image"] = base64.b64encode(b"plain text, not an image").decode()
    message = _error(load_mmbench_tsv, write_mmbench_tsv(tmp_path / "bytes.tsv", rows))
    assert "bytes.tsv, row 2 (line 3), column 'image'" in message and "cannot be decoded" in message


def test_truncated_image_fails_when_decoded_naming_file_and_row(tmp_path):
    rows = mmbench_rows()
    rows[1]["image"] = base64.b64encode(png_bytes(1)[:120]).decode()  # valid header, cut data
    samples = load_mmbench_tsv(write_mmbench_tsv(tmp_path / "cut.tsv", rows))
    message = _error(samples[1].images[0].load)
    assert "cut.tsv, row 2 (line 3), column 'image'" in message and "cannot be decoded" in message


def test_pope_missing_image_and_bad_label(tmp_path):
    folder = write_pope(tmp_path / "pope")
    (folder / "images" / "COCO_val2014_000000000001.png").unlink()
    message = _error(load_pope, folder / "coco_pope_random.json")
    assert "coco_pope_random.json, line 2" in message and "does not exist" in message and "--image-root" in message

    (folder / "bad_pope.json").write_text(json.dumps({"question_id": 9, "image": "COCO_val2014_000000000000.png",
                                                      "text": "Is there a cat?", "label": "maybe"}) + "\n")
    message = _error(load_pope, folder / "bad_pope.json")
    assert "bad_pope.json, line 1" in message and "'maybe'" in message

    (folder / "cut_pope.json").write_text(json.dumps({"question_id": 9, "text": "Is there a cat?",
                                                      "label": "no"}) + "\n")
    message = _error(load_pope, folder / "cut_pope.json")
    assert "cut_pope.json, line 1" in message and "'image'" in message


def test_scienceqa_answer_out_of_range(tmp_path):
    folder = write_scienceqa(tmp_path / "sqa")
    problems = json.loads((folder / "problems.json").read_text())
    problems["7"]["answer"] = 4
    (folder / "problems.json").write_text(json.dumps(problems))
    message = _error(load_scienceqa, folder)
    assert "problems.json, problem '7'" in message and "not an index into the 4 choices" in message


def test_seed_unknown_answer_letter(tmp_path):
    folder = write_seed(tmp_path / "seed")
    content = json.loads((folder / "SEED-Bench.json").read_text())
    content["questions"][1]["answer"] = "E"
    (folder / "SEED-Bench.json").write_text(json.dumps(content))
    message = _error(load_seed_bench, folder)
    assert "SEED-Bench.json, question 2" in message and "'E' is not one of the options A, B, C, D" in message


def test_ocrbench_missing_field(tmp_path):
    folder = write_ocrbench(tmp_path / "ocr")
    entries = json.loads((folder / "OCRBench.json").read_text())
    del entries[2]["answers"]
    (folder / "OCRBench.json").write_text(json.dumps(entries))
    message = _error(load_ocrbench, folder)
    assert "OCRBench.json, entry 3" in message and "'answers'" in message


def test_mmmu_unknown_answer_letter(tmp_path):
    path = write_mmmu_jsonl(tmp_path / "mmmu")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["answer"] = "F"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    message = _error(load_mmmu, path)
    assert "mmmu_validation.jsonl, line 3" in message and "'F' is not one of the options A, B, C, D" in message


def test_vqa_invalid_json_line_and_missing_answers(tmp_path):
    path = write_vqa(tmp_path / "vqa")
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n{not json\n")
    message = _error(load_vqa_jsonl, path)
    assert re.search(r"questions\.jsonl, line 2: invalid JSON", message)

    row = json.loads(lines[1])
    del row["answers"]
    path.write_text(lines[0] + "\n" + json.dumps(row) + "\n")
    message = _error(load_vqa_jsonl, path)
    assert "questions.jsonl, line 2" in message and "'answers'" in message
