"""Read labelled texts from CSV, TSV, JSONL, Parquet, a folder of class subfolders, or a built-in dataset.

    >>> examples = read_examples("reviews.csv", text_column="review", label_column="stars")
    >>> examples[0]
    Example(text='Great value.', label='5')

Labels are always strings (``5`` in a JSONL file becomes ``"5"``). Anything wrong with a file raises
:class:`~torchship.errors.DataError` naming the file, line or column and what to do about it.
This module must not import Lightning.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchship.data.datasets import BUILTIN_DATASETS, builtin_dataset
from torchship.errors import DataError

__all__ = ["SUFFIXES", "Example", "read_examples"]

SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
"""File suffixes :func:`read_examples` understands; a directory is read as class subfolders."""


@dataclass(frozen=True)
class Example:
    """One labelled text."""

    text: str
    label: str


def read_examples(
    source: str | Path, *, text_column: str = "text", label_column: str = "label"
) -> list[Example]:
    """Read every example in ``source``: a file (by suffix), a folder, or a built-in name like ``bbc-news``.

    Folders hold one subfolder per class, named after the label, of UTF-8 ``.txt`` files; the columns
    are ignored for folders.
    """
    if isinstance(source, str) and source in BUILTIN_DATASETS:
        dataset = builtin_dataset(source)
        return read_folder(dataset.folder(), fallback_encoding=dataset.fallback_encoding)
    path = Path(source)
    if path.is_dir():
        return read_folder(path)
    if not path.exists():
        hint = "" if path.suffix else f"; built-in datasets: {', '.join(sorted(BUILTIN_DATASETS))}"
        raise DataError(f"{path}: file not found{hint}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        examples = _read_csv(path, text_column, label_column, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson"):
        examples = _read_jsonl(path, text_column, label_column)
    elif suffix == ".parquet":
        examples = _read_parquet(path, text_column, label_column)
    else:
        raise DataError(
            f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(SUFFIXES)} "
            "or a folder of class-named subfolders of .txt files"
        )
    if not examples:
        raise DataError(f"{path}: has no examples")
    return examples


def read_folder(folder: Path, *, fallback_encoding: str | None = None) -> list[Example]:
    """Read ``folder/<label>/*.txt``; listings are sorted so the order never depends on the file system."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{folder}: has no class subfolders; expected {folder}/<label>/<name>.txt, "
            "one subfolder per label"
        )
    examples = []
    for class_folder in classes:
        files = sorted(p for p in class_folder.glob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"{class_folder}: class folder has no .txt files; add some or remove the folder")
        for file in files:
            text = _decode(file, fallback_encoding)
            if not text.strip():
                raise DataError(f"{file}: empty text; remove the file or write the text into it")
            examples.append(Example(text=text, label=class_folder.name))
    return examples


def _read_csv(path: Path, text_column: str, label_column: str, *, delimiter: str) -> list[Example]:
    examples = []
    # newline="" lets the csv module handle quoted fields that span lines; utf-8-sig drops a BOM.
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file; expected a header row naming the columns")
            text_index = _column_index(path, header, text_column)
            label_index = _column_index(path, header, label_column)
            end = reader.line_num
            for row in reader:
                line, end = end + 1, reader.line_num  # a quoted field may span several lines
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}, line {line}: has {len(row)} fields but the header has {len(header)}; "
                        'check for an unquoted delimiter (quote fields that contain it with ")'
                    )
                where = f"{path}, line {line}"
                examples.append(
                    Example(
                        text=_text(row[text_index], where, text_column),
                        label=_label(row[label_index], where, label_column),
                    )
                )
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: cannot parse CSV ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: is not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
    return examples


def _column_index(path: Path, header: list[str], column: str) -> int:
    try:
        return header.index(column)
    except ValueError:
        raise DataError(
            f"{path}: has no column {column!r}; columns are: {', '.join(map(repr, header))} "
            "(choose them with --text_column / --label_column)"
        ) from None


def _read_jsonl(path: Path, text_column: str, label_column: str) -> list[Example]:
    examples = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where}: is not valid JSON ({exc.msg}); each line must be one JSON object"
            ) from exc
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for column in (text_column, label_column):
            if column not in record:
                fields = ", ".join(map(repr, record))
                raise DataError(f"{where}: has no field {column!r}; fields are: {fields}")
        examples.append(
            Example(
                text=_text(record[text_column], where, text_column),
                label=_label(record[label_column], where, label_column),
            )
        )
    return examples


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8-sig") as file:
            yield from enumerate(file, start=1)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: is not UTF-8 text ({exc.reason}); save it as UTF-8") from exc


def _read_parquet(path: Path, text_column: str, label_column: str) -> list[Example]:
    try:
        import pyarrow.parquet as pq  # an optional extra: imported only when a Parquet file is read
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'torchship[parquet]'") from None
    try:
        columns = pq.read_schema(path).names
        for column in (text_column, label_column):
            if column not in columns:
                raise DataError(
                    f"{path}: has no column {column!r}; columns are: {', '.join(map(repr, columns))} "
                    "(choose them with --text_column / --label_column)"
                )
        table = pq.read_table(path, columns=[text_column, label_column])
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DataError(f"{path}: cannot read Parquet ({exc})") from exc
    texts, labels = table.column(text_column).to_pylist(), table.column(label_column).to_pylist()
    return [
        Example(
            text=_text(text, f"{path}, row {row}", text_column),
            label=_label(label, f"{path}, row {row}", label_column),
        )
        for row, (text, label) in enumerate(zip(texts, labels, strict=True), start=1)
    ]


def _decode(file: Path, fallback_encoding: str | None) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if fallback_encoding is not None:
            return data.decode(fallback_encoding, errors="replace")
        raise DataError(
            f"{file}: is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from exc


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise DataError(f"{where}: text in {column!r} is {kind}")
    if not value.strip():
        raise DataError(f"{where}: empty text in {column!r}; remove the row or fill in the text")
    return value


def _label(value: Any, where: str, column: str) -> str:
    # Labels may be written as numbers; they are names to us, so 3 and "3" are the same class.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        kind = "missing" if value is None else f"a {type(value).__name__}"
        raise DataError(f"{where}: label in {column!r} is {kind}; labels must be strings or integers")
    label = str(value).strip()
    if not label:
        raise DataError(f"{where}: empty label in {column!r}; remove the row or fill in the label")
    return label
