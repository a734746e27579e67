"""Reading CSV, TSV, JSONL, Parquet and folders, and the DataError each kind of bad data gives."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from torchship.data.formats import Example, read_examples
from torchship.errors import DataError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# --- CSV / TSV ---------------------------------------------------------------------------------


def test_csv_reads_quoted_multiline_fields_bom_and_unicode(tmp_path: Path) -> None:
    path = write(
        tmp_path / "data.csv",
        '\ufefftext,label\n"first line\nsecond, with comma",news\n"Café ""quoted""",sport\n',
    )
    assert read_examples(path) == [
        Example("first line\nsecond, with comma", "news"),
        Example('Café "quoted"', "sport"),
    ]


def test_csv_custom_columns_and_int_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.csv", "id,review,stars\n1,good,5\n2,bad, 1 \n")
    examples = read_examples(path, text_column="review", label_column="stars")
    assert examples == [Example("good", "5"), Example("bad", "1")]


def test_csv_skips_blank_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "text,label\n\na,x\n\nb,y\n")
    assert [e.text for e in read_examples(path)] == ["a", "b"]


def test_tsv(tmp_path: Path) -> None:
    path = write(tmp_path / "data.tsv", "label\ttext\nx\thello, world\n")
    assert read_examples(path) == [Example("hello, world", "x")]


def test_csv_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "body,category\nhello,x\n")
    with pytest.raises(DataError, match=r"data.csv: has no column 'text'; columns are: 'body', 'category'"):
        read_examples(path)


def test_csv_empty_text_names_the_line_after_a_multiline_field(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", 'text,label\n"two\nlines",x\n  ,y\n')
    with pytest.raises(DataError, match=r"data.csv, line 4: empty text in 'text'"):
        read_examples(path)


def test_csv_empty_label(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "text,label\nhello,\n")
    with pytest.raises(DataError, match=r"line 2: empty label in 'label'"):
        read_examples(path)


def test_csv_wrong_number_of_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "text,label\nhello,x\nhello, world,x\n")
    with pytest.raises(DataError, match=r"data.csv, line 3: has 3 fields but the header has 2"):
        read_examples(path)


def test_csv_unparsable_quote(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", 'text,label\nok,x\n"bad" quote,x\n')
    with pytest.raises(DataError, match=r"data.csv, line 3: cannot parse CSV"):
        read_examples(path)


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "text,label\n£5 off,x\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"data.csv: is not UTF-8 text .*save it as UTF-8"):
        read_examples(path)


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_csv_without_examples(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / "data.csv", content)
    with pytest.raises(DataError, match=r"data.csv: (empty file|has no examples)"):
        read_examples(path)


# --- JSONL -------------------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_normalises_labels(tmp_path: Path) -> None:
    lines = [{"body": "one", "y": 3}, {"body": "two", "y": "b"}, {"body": "three", "y": 2.0}]
    path = write(tmp_path / "data.jsonl", "\n".join(json.dumps(line) for line in lines[:2]) + "\n\n  \n")
    path.write_text(path.read_text() + json.dumps(lines[2]) + "\n")
    examples = read_examples(path, text_column="body", label_column="y")
    assert examples == [Example("one", "3"), Example("two", "b"), Example("three", "2")]


def test_jsonl_unparsable_line_number(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", label: "y"}\n')
    with pytest.raises(DataError, match=r"data.jsonl, line 3: is not valid JSON"):
        read_examples(path)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '["a", "x"]\n')
    with pytest.raises(DataError, match=r"line 1: expected a JSON object, got list"):
        read_examples(path)


def test_jsonl_missing_field_lists_the_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "topic": "y"}\n')
    with pytest.raises(DataError, match=r"line 2: has no field 'label'; fields are: 'text', 'topic'"):
        read_examples(path)


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"text": "", "label": "x"}, "empty text in 'text'"),
        ({"text": None, "label": "x"}, "text in 'text' is missing"),
        ({"text": 5, "label": "x"}, "text in 'text' is a int, not a string"),
        ({"text": "a", "label": None}, "label in 'label' is missing"),
        ({"text": "a", "label": [1]}, "label in 'label' is a list"),
        ({"text": "a", "label": True}, "label in 'label' is a bool"),
    ],
)
def test_jsonl_bad_values(tmp_path: Path, record: dict[str, object], words: str) -> None:
    path = write(tmp_path / "data.jsonl", json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"data.jsonl, line 1: {words}"):
        read_examples(path)


# --- Parquet -----------------------------------------------------------------------------------


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"content": ["a b", "c"], "class": [1, 2], "other": [0.1, 0.2]}), path)
    assert read_examples(path, text_column="content", label_column="class") == [
        Example("a b", "1"),
        Example("c", "2"),
    ]


def test_parquet_missing_column(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["a"], "topic": ["x"]}), path)
    with pytest.raises(DataError, match=r"data.parquet: has no column 'label'; columns are: 'text', 'topic'"):
        read_examples(path)


def test_parquet_null_text_names_the_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["a", None], "label": ["x", "y"]}), path)
    with pytest.raises(DataError, match=r"data.parquet, row 2: text in 'text' is missing"):
        read_examples(path)


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = write(tmp_path / "data.parquet", "text,label\na,b\n")
    with pytest.raises(DataError, match=r"data.parquet: cannot read Parquet"):
        read_examples(path)


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "data.parquet", "")
    # A None entry in sys.modules makes `import` raise ImportError, as if pyarrow were not installed.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"pip install 'torchship\[parquet\]'"):
        read_examples(path)


# --- folders -----------------------------------------------------------------------------------


def make_folder(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_folder_labels_are_subfolder_names_in_sorted_order(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "corpus",
        {
            "tech/b.txt": "gpu",
            "tech/a.txt": "cpu",
            "arts/1.txt": "painting\nand more",
            "arts/notes.md": "ignored",
            ".git/x.txt": "ignored",
        },
    )
    (root / "README.txt").write_text("top-level files are not examples")
    assert read_examples(root) == [
        Example("painting\nand more", "arts"),
        Example("cpu", "tech"),
        Example("gpu", "tech"),
    ]


def test_folder_without_subfolders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"has no class subfolders; expected .*<label>/<name>.txt"):
        read_examples(tmp_path)


def test_folder_with_an_empty_class(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"a/1.txt": "x"})
    (root / "b").mkdir()
    with pytest.raises(DataError, match=r"b: class folder has no .txt files"):
        read_examples(root)


def test_folder_with_an_empty_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"a/1.txt": "x", "b/2.txt": " \n"})
    with pytest.raises(DataError, match=r"2.txt: empty text"):
        read_examples(root)


def test_folder_file_that_is_not_utf8(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"a/1.txt": "x"})
    (root / "a" / "2.txt").write_bytes(b"costs \xa35")
    with pytest.raises(DataError, match=r"2.txt: is not UTF-8 text \(byte 0xa3 at offset 6\)"):
        read_examples(root)


# --- anything else -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.csv: file not found"):
        read_examples(tmp_path / "nope.csv")


def test_unknown_name_lists_the_builtin_datasets() -> None:
    with pytest.raises(DataError, match=r"bbc: file not found; built-in datasets: bbc-news"):
        read_examples("bbc")


def test_unknown_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "data.xlsx", "")
    with pytest.raises(DataError, match=r"unknown file type '.xlsx'; use one of .csv, .tsv, .jsonl"):
        read_examples(path)
