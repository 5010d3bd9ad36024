"""Loaders for benchmark files stored locally in their public formats.

Each loader reads one benchmark as published and returns `Sample`s: the question, its images (read lazily), the
options of a multiple-choice question, the reference answer and the category used for breakdowns. Nothing is
downloaded. A malformed file fails with `BenchmarkFormatError`, whose message names the file, the row and the fix.

| loader | public format |
|---|---|
| `load_mmbench_tsv` | MMBench / MMBench-CN TSV (OpenCompass, VLMEvalKit): base64 images, options A-D, circular copies |
| `load_pope` | POPE question files (`coco_pope_{random,popular,adversarial}.json`, JSON lines) over an image folder |
| `load_scienceqa` | ScienceQA `problems.json` (+ `pid_splits.json`) with `images/<split>/<id>/image.png`: the IMG subset |
| `load_seed_bench` | SEED-Bench `SEED-Bench.json` with `SEED-Bench-image/`: the image questions (dimensions 1-9) |
| `load_ocrbench` | OCRBench `OCRBench.json` with `OCRBench_Images/` |
| `load_mmmu` | MMMU rows (Hugging Face `MMMU/MMMU` parquet, or JSON / JSON lines of the same fields) |
| `load_vqa_jsonl` | generic VQA JSON lines: question, image, list of answers |
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image

from .parsing import parse_answer_list

# Indices of MMBench's circular copies are the original index plus k * 1e6 (VLMEvalKit's layout).
CIRCULAR_INDEX_OFFSET = 1_000_000
# Empty-cell spellings in the public TSV files (pandas writes NaN as "nan").
_MISSING_VALUES = {"", "nan", "none", "null"}
_OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class BenchmarkFormatError(ValueError):
    """A benchmark file does not follow its public format. The message names the file, the row and the fix."""

    def __init__(self, location: str, problem: str, fix: str | None = None):
        message = f"{location}: {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)
        self.location = location


@dataclass
class ImageSource:
    """An image of a sample, decoded only when the prompt is built (benchmarks hold thousands of them).

    `location` says where it comes from ("MMBench_DEV_EN.tsv, row 12 (line 13), column 'image'") so that a file that
    cannot be decoded is reported with its file and row.
    """

    location: str
    path: Path | None = None
    data: bytes | None = None

    def load(self) -> PIL.Image.Image:
        try:
            if self.data is not None:
                image = PIL.Image.open(io.BytesIO(self.data))
            else:
                image = PIL.Image.open(self.path)
            image.load()
            return image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as error:
            raise BenchmarkFormatError(
                self.location,
                f"the image cannot be decoded ({type(error).__name__}: {error}).",
                "replace the file / cell with a valid PNG or JPEG image, or drop the row.",
            ) from error

    def check_header(self) -> None:
        """Cheap check at load time (PIL reads only the header): catches missing files and non-image bytes early."""
        if self.path is not None and not self.path.is_file():
            raise BenchmarkFormatError(
                self.location,
                f"image file {str(self.path)!r} does not exist.",
                "point --image-root at the benchmark's image folder.",
            )
        try:
            with PIL.Image.open(io.BytesIO(self.data) if self.data is not None else self.path):
                pass
        except (OSError, SyntaxError, ValueError) as error:
            raise BenchmarkFormatError(
                self.location,
                f"the image cannot be decoded ({type(error).__name__}: {error}).",
                "replace the file / cell with a valid PNG or JPEG image, or drop the row.",
            ) from error


@dataclass
class Sample:
    """One benchmark question as stored in the file.

    Attributes:
        uid: unique within the benchmark (used as the answer-cache key together with the variant).
        question: the question text as stored (MMMU keeps its `<image k>` references).
        images: the sample's images, in the order the benchmark gives them.
        answer: the reference: an option letter, "yes"/"no", or a list of accepted strings.
        options: option letter -> text for multiple-choice questions (empty otherwise).
        category: the category used for the per-category breakdown (None when the format has none).
        fields: the remaining format-specific fields (hint, l2-category, question type, circular group, ...).
        location: file and row, for messages.
    """

    uid: str
    question: str
    images: list[ImageSource]
    answer: Any
    location: str
    options: dict[str, str] = field(default_factory=dict)
    category: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING_VALUES


def _resolve_file(path: str | Path, names: tuple[str, ...], what: str) -> Path:
    """`path` itself when it is a file, else the first of `names` found inside the folder `path`."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"No {what} file in {str(path)!r}: expected one of {', '.join(names)}. Pass the file itself with --data."
        )
    raise FileNotFoundError(f"{what} data not found: {str(path)!r} does not exist.")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BenchmarkFormatError(
            f"{path}, line {error.lineno}", f"invalid JSON ({error.msg}).", "repair the file or download it again."
        ) from error


def _read_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-empty line; also accepts a file holding one JSON list."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise BenchmarkFormatError(f"{path}, line {error.lineno}", f"invalid JSON ({error.msg}).") from error
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise BenchmarkFormatError(f"{path}, entry {number}", "expected a JSON object.")
            yield number, record
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise BenchmarkFormatError(
                f"{path}, line {number}", f"invalid JSON ({error.msg}).", "each line must be one JSON object."
            ) from error
        if not isinstance(record, dict):
            raise BenchmarkFormatError(f"{path}, line {number}", "expected a JSON object on this line.")
        yield number, record


def _require(record: dict, keys: tuple[str, ...], location: str, fix: str) -> None:
    missing = [key for key in keys if key not in record or _is_missing(record[key])]
    if missing:
        raise BenchmarkFormatError(location, f"missing field(s) {', '.join(repr(k) for k in missing)}.", fix)


def _file_image(root: Path, relative: str, location: str) -> ImageSource:
    source = ImageSource(location=f"{location}, image {relative!r}", path=root / relative)
    source.check_header()
    return source


def _options_from(record: dict, letters: str, location: str) -> dict[str, str]:
    options = {letter: str(record[letter]).strip() for letter in letters if letter in record
               and not _is_missing(record[letter])}
    present = list(options)
    expected = list(letters[: len(present)])
    if present != expected:
        raise BenchmarkFormatError(
            location,
            f"options must be consecutive letters starting at A; found {', '.join(present) or 'none'}.",
            "fill the option columns A, B, ... without gaps.",
        )
    return options


def _check_answer_letter(answer: Any, options: dict[str, str], location: str) -> str:
    letter = str(answer).strip()
    if letter not in options:
        raise BenchmarkFormatError(
            location,
            f"answer {letter!r} is not one of the options {', '.join(options)}.",
            "the answer must be the letter of one of the row's options.",
        )
    return letter


# ---------------------------------------------------------------------------------------------------------------------
# MMBench / MMBench-CN (TSV)
# ---------------------------------------------------------------------------------------------------------------------
MMBENCH_REQUIRED_COLUMNS = ("index", "question", "answer", "image", "A", "B")


def load_mmbench_tsv(path: str | Path) -> list[Sample]:
    """MMBench / MMBench-CN in the public TSV layout.

    Columns: `index`, `question`, `hint`, `A` ... `D` (empty when a question has fewer options), `answer`,
    `category`, `l2-category`, `split`, `image` (base64; a short number instead refers to the image of the row with
    that index, as in VLMEvalKit's files). Rows whose index is at least 1,000,000 are circular copies of the row
    `index % 1e6` (options rotated); they are kept and grouped through `fields["group"]`.
    The `answer` column is required (the test split has no public answers: evaluate the dev split).
    """
    path = _resolve_file(path, ("MMBench_DEV_EN.tsv", "MMBench_DEV_CN.tsv", "mmbench.tsv"), "MMBench TSV")
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if reader.fieldnames is None:
            raise BenchmarkFormatError(f"{path}, line 1", "the file is empty (no header row).")
        # VLMEvalKit lowercases every column except the option letters.
        columns = [name if name in _OPTION_LETTERS else name.lower() for name in reader.fieldnames]
        missing = [column for column in MMBENCH_REQUIRED_COLUMNS if column not in columns]
        if missing:
            fix = "evaluate the dev split (the test split has no public answers)." if "answer" in missing else (
                "use the MMBench TSV as published (columns index, question, hint, A-D, answer, category, image).")
            raise BenchmarkFormatError(
                f"{path}, header (line 1)", f"missing column(s) {', '.join(repr(c) for c in missing)}.", fix
            )
        rows = [dict(zip(columns, [row.get(name) for name in reader.fieldnames])) for row in reader]

    by_index: dict[int, dict] = {}
    numbered = []
    for number, row in enumerate(rows, start=1):
        location = f"{path}, row {number} (line {number + 1})"
        try:
            index = int(float(str(row["index"]).strip()))
        except ValueError:
            raise BenchmarkFormatError(location, f"index {row['index']!r} is not an integer.") from None
        if index in by_index:
            raise BenchmarkFormatError(location, f"index {index} appears twice.", "indices must be unique.")
        by_index[index] = row
        numbered.append((number, index, row))

    letters = [column for column in columns if column in _OPTION_LETTERS]
    samples = []
    for number, index, row in numbered:
        location = f"{path}, row {number} (line {number + 1})"
        _require(row, ("question", "answer", "image"), location, "every row needs a question, an answer and an image.")
        options = _options_from(row, "".join(sorted(letters)), location)
        if len(options) < 2:
            raise BenchmarkFormatError(location, "a multiple-choice row needs at least options A and B.")
        answer = _check_answer_letter(row["answer"], options, location)
        image = _mmbench_image(row, by_index, location)
        hint = None if _is_missing(row.get("hint")) else str(row["hint"]).strip()
        samples.append(
            Sample(
                uid=str(index),
                question=str(row["question"]).strip(),
                images=[image],
                answer=answer,
                options=options,
                category=None if _is_missing(row.get("category")) else str(row["category"]),
                location=location,
                fields={
                    "index": index,
                    "group": index % CIRCULAR_INDEX_OFFSET,
                    "hint": hint,
                    "l2_category": None if _is_missing(row.get("l2-category")) else str(row["l2-category"]),
                    "split": None if _is_missing(row.get("split")) else str(row["split"]),
                },
            )
        )
    return samples


def _mmbench_image(row: dict, by_index: dict[int, dict], location: str) -> ImageSource:
    value = str(row["image"]).strip()
    cell = f"{location}, column 'image'"
    if value.isdigit() and len(value) <= 64:
        referenced = by_index.get(int(value))
        if referenced is None or str(referenced["image"]).strip().isdigit():
            raise BenchmarkFormatError(
                cell, f"the image refers to row index {value}, which has no image of its own.",
                "store the base64 image in this row or in the referenced row.",
            )
        value = str(referenced["image"]).strip()
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BenchmarkFormatError(
            cell, f"the image is not valid base64 ({error}).", "store the image as base64-encoded PNG/JPEG bytes."
        ) from error
    source = ImageSource(location=cell, data=data)
    source.check_header()
    return source


# ---------------------------------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------------------------------
def load_pope(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """POPE question files: JSON lines {"question_id", "image", "text", "label"} (label "yes"/"no").

    `path` is one file or a folder; in a folder every `*pope*.json` / `*pope*.jsonl` file is read (the official
    `coco_pope_random.json`, `coco_pope_popular.json`, `coco_pope_adversarial.json`). The category is the row's
    `category` field when present, else the file name without its `coco_pope_` / `pope_` prefix. Images are read
    from `image_root` (default: the folder of the question file, or its `images/` subfolder when the file is not in
    the folder itself). `question`/`answer` are accepted as spellings of `text`/`label` (lmms-eval's export).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and "pope" in p.name.lower()
                       and p.suffix in (".json", ".jsonl"))
        if not files:
            raise FileNotFoundError(
                f"No POPE question file in {str(path)!r}: expected files like coco_pope_random.json. Pass a file "
                "with --data."
            )
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"POPE data not found: {str(path)!r} does not exist.")

    samples, seen = [], set()
    for file in files:
        default_category = re.sub(r"^(coco_)?pope_", "", file.stem)
        root = _image_root(file, image_root)
        for number, record in _read_json_lines(file):
            location = f"{file}, line {number}"
            question_key = "text" if "text" in record else "question"
            label_key = "label" if "label" in record else "answer"
            _require(record, ("question_id", "image", question_key, label_key), location,
                     "POPE rows are {\"question_id\", \"image\", \"text\", \"label\"}.")
            label = str(record[label_key]).strip().lower()
            if label not in ("yes", "no"):
                raise BenchmarkFormatError(location, f"label {record[label_key]!r} is neither 'yes' nor 'no'.")
            category = str(record.get("category") or default_category)
            uid = f"{category}:{record['question_id']}"
            if uid in seen:
                raise BenchmarkFormatError(location, f"question_id {record['question_id']!r} appears twice in "
                                                     f"category {category!r}.")
            seen.add(uid)
            samples.append(
                Sample(
                    uid=uid,
                    question=str(record[question_key]).strip(),
                    images=[_file_image(root, str(record["image"]), location)],
                    answer=label,
                    category=category,
                    location=location,
                )
            )
    return samples


def _image_root(data_file: Path, image_root: str | Path | None, default_subfolders: tuple[str, ...] = ("images",)):
    if image_root is not None:
        return Path(image_root)
    for name in default_subfolders:
        if (data_file.parent / name).is_dir():
            return data_file.parent / name
    return data_file.parent


# ---------------------------------------------------------------------------------------------------------------------
# ScienceQA (IMG subset)
# ---------------------------------------------------------------------------------------------------------------------
def load_scienceqa(path: str | Path, split: str = "test", image_root: str | Path | None = None) -> list[Sample]:
    """ScienceQA-IMG: the questions of `split` that have an image, from the official `problems.json`.

    `problems.json` maps a question id to {"question", "choices", "answer" (index), "hint", "image", "split",
    "subject", ...}; images are `images/<split>/<id>/<image>` next to it (or under `image_root`). When
    `pid_splits.json` is present its `<split>` list gives the ids and their order.
    """
    problems_file = _resolve_file(path, ("problems.json",), "ScienceQA problems.json")
    problems = _read_json(problems_file)
    if not isinstance(problems, dict):
        raise BenchmarkFormatError(str(problems_file), "expected a JSON object mapping question ids to problems.")
    splits_file = problems_file.parent / "pid_splits.json"
    if splits_file.is_file():
        split_ids = _read_json(splits_file).get(split)
        if split_ids is None:
            raise BenchmarkFormatError(str(splits_file), f"has no split {split!r}.", "use --split train/val/test.")
        ids = [str(i) for i in split_ids]
    else:
        ids = [qid for qid, problem in problems.items() if isinstance(problem, dict) and problem.get("split") == split]
    root = Path(image_root) if image_root is not None else problems_file.parent / "images"

    samples = []
    for qid in ids:
        location = f"{problems_file}, problem {qid!r}"
        problem = problems.get(qid)
        if not isinstance(problem, dict):
            raise BenchmarkFormatError(location, "listed in pid_splits.json but missing from problems.json.")
        if _is_missing(problem.get("image")):
            continue  # ScienceQA-IMG: only the questions with an image context
        _require(problem, ("question", "choices", "answer"), location,
                 "ScienceQA problems have question, choices (list) and answer (index).")
        choices = problem["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise BenchmarkFormatError(location, "'choices' must be a list of at least two options.")
        answer = problem["answer"]
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise BenchmarkFormatError(
                location, f"answer {answer!r} is not an index into the {len(choices)} choices."
            )
        options = {_OPTION_LETTERS[i]: str(choice) for i, choice in enumerate(choices)}
        image_dir = root / split / qid
        samples.append(
            Sample(
                uid=qid,
                question=str(problem["question"]).strip(),
                images=[_file_image(image_dir, str(problem["image"]), location)],
                answer=_OPTION_LETTERS[answer],
                options=options,
                category=problem.get("subject"),
                location=location,
                fields={"hint": (problem.get("hint") or "").strip() or None, "grade": problem.get("grade")},
            )
        )
    if not samples:
        raise BenchmarkFormatError(str(problems_file), f"no question with an image in split {split!r}.")
    return samples


# ---------------------------------------------------------------------------------------------------------------------
# SEED-Bench (image dimensions)
# ---------------------------------------------------------------------------------------------------------------------
SEED_IMAGE_QUESTION_TYPES = range(1, 10)


def load_seed_bench(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """SEED-Bench image questions from the official `SEED-Bench.json`.

    The file is {"questions": [{"question_id", "question", "choice_a" ... "choice_d", "answer" (letter),
    "data_id" (image file name), "data_type" ("image"/"video"), "question_type_id"}, ...],
    "question_type": {name: id}}. Video questions are skipped (SEED-Bench-IMG is dimensions 1-9). Images are
    `SEED-Bench-image/<data_id>` next to the file (or under `image_root`); a `data_id` without extension also
    matches `<data_id>.jpg` / `.png`.
    """
    data_file = _resolve_file(path, ("SEED-Bench.json",), "SEED-Bench JSON")
    content = _read_json(data_file)
    if not isinstance(content, dict) or not isinstance(content.get("questions"), list):
        raise BenchmarkFormatError(str(data_file), "expected {\"questions\": [...], \"question_type\": {...}}.")
    type_names = {int(v): str(k) for k, v in (content.get("question_type") or {}).items()}
    root = _image_root(data_file, image_root, ("SEED-Bench-image",))

    samples = []
    for number, record in enumerate(content["questions"], start=1):
        location = f"{data_file}, question {number}"
        if not isinstance(record, dict):
            raise BenchmarkFormatError(location, "expected a JSON object.")
        if record.get("data_type", "image") != "image":
            continue
        _require(record, ("question_id", "question", "answer", "data_id", "choice_a", "choice_b"), location,
                 "SEED-Bench questions have question_id, question, choice_a-d, answer and data_id.")
        options = {}
        for letter in "ABCD":
            value = record.get(f"choice_{letter.lower()}")
            if not _is_missing(value):
                options[letter] = str(value).strip()
        answer = _check_answer_letter(record["answer"], options, location)
        type_id = record.get("question_type_id")
        samples.append(
            Sample(
                uid=str(record["question_id"]),
                question=str(record["question"]).strip(),
                images=[_seed_image(root, str(record["data_id"]), location)],
                answer=answer,
                options=options,
                category=type_names.get(int(type_id), f"question type {type_id}") if type_id is not None else None,
                location=location,
            )
        )
    return samples


def _seed_image(root: Path, data_id: str, location: str) -> ImageSource:
    for candidate in (data_id, data_id + ".jpg", data_id + ".png"):
        if (root / candidate).is_file():
            return _file_image(root, candidate, location)
    return _file_image(root, data_id, location)  # raises the missing-file error


# ---------------------------------------------------------------------------------------------------------------------
# OCRBench
# ---------------------------------------------------------------------------------------------------------------------
def load_ocrbench(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """OCRBench from the official `OCRBench.json`: a list of {"dataset_name", "id", "image_path", "question",
    "answers" (string or list), "type"}; images under `OCRBench_Images/` next to the file (or `image_root`)."""
    data_file = _resolve_file(path, ("OCRBench.json",), "OCRBench JSON")
    records = _read_json(data_file)
    if not isinstance(records, list):
        raise BenchmarkFormatError(str(data_file), "expected a JSON list of questions.")
    root = _image_root(data_file, image_root, ("OCRBench_Images",))
    samples = []
    for number, record in enumerate(records, start=1):
        location = f"{data_file}, entry {number}"
        if not isinstance(record, dict):
            raise BenchmarkFormatError(location, "expected a JSON object.")
        _require(record, ("dataset_name", "image_path", "question", "answers", "type"), location,
                 "OCRBench entries have dataset_name, image_path, question, answers and type.")
        samples.append(
            Sample(
                uid=str(record.get("id", number - 1)),
                question=str(record["question"]).strip(),
                images=[_file_image(root, str(record["image_path"]), location)],
                answer=parse_answer_list(record["answers"]),
                category=str(record["type"]),
                location=location,
                fields={"dataset_name": str(record["dataset_name"])},
            )
        )
    return samples


# ---------------------------------------------------------------------------------------------------------------------
# MMMU
# ---------------------------------------------------------------------------------------------------------------------
MMMU_MAX_IMAGES = 7


def load_mmmu(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """MMMU rows in the Hugging Face `MMMU/MMMU` layout.

    Fields: `id` ("validation_Art_Theory_12": split, subject, number), `question` (with `<image k>` references),
    `options` (a list, or the string form of one, as published), `answer` (a letter for multiple choice; a string or
    the string form of a list for open questions), `question_type` ("multiple-choice" or "open"), `image_1` ...
    `image_7`. `path` is a parquet file, a JSON / JSON-lines file, or a folder of them (all subjects). In parquet
    the images are {"bytes", "path"} structs; in JSON they are file paths relative to the file (or `image_root`).
    The category is the subject taken from the id.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".json", ".jsonl") and p.is_file())
        if not files:
            raise FileNotFoundError(f"No MMMU .parquet/.json/.jsonl file in {str(path)!r}.")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"MMMU data not found: {str(path)!r} does not exist.")

    samples = []
    for file in files:
        rows = _parquet_rows(file) if file.suffix == ".parquet" else _read_json_lines(file)
        root = Path(image_root) if image_root is not None else file.parent
        for number, record in rows:
            location = f"{file}, {'row' if file.suffix == '.parquet' else 'line'} {number}"
            samples.append(_mmmu_sample(record, root, location))
    return samples


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        from pyarrow import parquet
    except ImportError as error:
        raise ImportError(
            f"Reading {path} needs pyarrow (installed with `datasets`): pip install 'transformers_dsvl[eval]'."
        ) from error
    yield from enumerate(parquet.read_table(path).to_pylist(), start=1)


def _mmmu_sample(record: dict, root: Path, location: str) -> Sample:
    _require(record, ("id", "question", "answer", "question_type"), location,
             "MMMU rows have id, question, options, answer, question_type and image_1..image_7.")
    question_type = str(record["question_type"]).strip()
    if question_type not in ("multiple-choice", "open"):
        raise BenchmarkFormatError(location, f"question_type {question_type!r} is neither 'multiple-choice' nor "
                                             "'open'.")
    options: dict[str, str] = {}
    if question_type == "multiple-choice":
        raw_options = parse_answer_list(record.get("options") or [])
        if len(raw_options) < 2:
            raise BenchmarkFormatError(location, "a multiple-choice question needs at least two options.")
        options = {_OPTION_LETTERS[i]: option for i, option in enumerate(raw_options)}
        answer: Any = _check_answer_letter(record["answer"], options, location)
    else:
        answer = parse_answer_list(record["answer"])
    images = {}
    for k in range(1, MMMU_MAX_IMAGES + 1):
        value = record.get(f"image_{k}")
        if _is_missing(value):
            continue
        cell = f"{location}, field 'image_{k}'"
        if isinstance(value, dict):
            if value.get("bytes"):
                source = ImageSource(location=cell, data=value["bytes"])
                source.check_header()
            elif value.get("path"):
                source = _file_image(root, str(value["path"]), location)
            else:
                raise BenchmarkFormatError(cell, "the image struct has neither bytes nor path.")
        else:
            source = _file_image(root, str(value), location)
        images[k] = source
    subject_match = re.match(r"^[^_]+_(.+?)_\d+$", str(record["id"]))
    return Sample(
        uid=str(record["id"]),
        question=str(record["question"]).strip(),
        images=[images[k] for k in sorted(images)],
        answer=answer,
        options=options,
        category=subject_match.group(1) if subject_match else None,
        location=location,
        fields={"question_type": question_type, "image_numbers": sorted(images)},
    )


# ---------------------------------------------------------------------------------------------------------------------
# Generic VQA (JSON lines)
# ---------------------------------------------------------------------------------------------------------------------
def load_vqa_jsonl(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """Generic VQA JSON lines: {"question_id", "image", "question", "answers": [...]} per line.

    `answers` holds the reference answers (10 annotator answers for VQAv2/TextVQA-style data); each may be a string
    or {"answer": ...} (VQAv2 annotation style). A single `answer` string is accepted too. An optional `category`
    gives the breakdown. Images are relative to the file's folder (or `image_root`).
    """
    data_file = _resolve_file(path, ("questions.jsonl", "vqa.jsonl"), "VQA JSON lines")
    root = Path(image_root) if image_root is not None else data_file.parent
    samples, seen = [], set()
    for number, record in _read_json_lines(data_file):
        location = f"{data_file}, line {number}"
        if "answers" not in record and "answer" in record:
            record = {**record, "answers": [record["answer"]]}
        id_key = "question_id" if "question_id" in record else "id"
        _require(record, (id_key, "image", "question", "answers"), location,
                 "VQA rows are {\"question_id\", \"image\", \"question\", \"answers\": [...]}.")
        answers = record["answers"]
        if not isinstance(answers, list) or not answers:
            raise BenchmarkFormatError(location, "'answers' must be a non-empty list.")
        answers = [str(a["answer"]) if isinstance(a, dict) and "answer" in a else str(a) for a in answers]
        uid = str(record[id_key])
        if uid in seen:
            raise BenchmarkFormatError(location, f"question_id {uid!r} appears twice.")
        seen.add(uid)
        samples.append(
            Sample(
                uid=uid,
                question=str(record["question"]).strip(),
                images=[_file_image(root, str(record["image"]), location)],
                answer=answers,
                category=None if _is_missing(record.get("category")) else str(record["category"]),
                location=location,
            )
        )
    return samples


__all__ = [
    "CIRCULAR_INDEX_OFFSET",
    "BenchmarkFormatError",
    "ImageSource",
    "Sample",
    "load_mmbench_tsv",
    "load_mmmu",
    "load_ocrbench",
    "load_pope",
    "load_scienceqa",
    "load_seed_bench",
    "load_vqa_jsonl",
]
