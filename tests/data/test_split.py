"""Stratified, deterministic, disjoint splits, and the label checks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from torchship.data.formats import Example
from torchship.data.split import check_labels, stratified_split
from torchship.errors import ConfigError, DataError


def make_examples(counts: dict[str, int]) -> list[Example]:
    return [Example(f"{label} text {i}", label) for label, count in counts.items() for i in range(count)]


COUNTS = {"a": 100, "b": 50, "c": 20}


def test_each_class_is_split_in_proportion() -> None:
    train, val, test = stratified_split(make_examples(COUNTS), (0.8, 0.1, 0.1), seed=0)
    assert Counter(e.label for e in train) == {"a": 80, "b": 40, "c": 16}
    assert Counter(e.label for e in val) == {"a": 10, "b": 5, "c": 2}
    assert Counter(e.label for e in test) == {"a": 10, "b": 5, "c": 2}


def test_parts_are_disjoint_and_cover_everything() -> None:
    examples = make_examples(COUNTS)
    train, val, test = stratified_split(examples, seed=1)
    assert Counter(train + val + test) == Counter(examples)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)


def test_same_seed_same_split_whatever_the_input_order() -> None:
    examples = make_examples(COUNTS)
    shuffled = examples[:]
    random.Random(7).shuffle(shuffled)
    assert stratified_split(examples, seed=3) == stratified_split(shuffled, seed=3)


def test_another_seed_another_split() -> None:
    examples = make_examples(COUNTS)
    assert stratified_split(examples, seed=3)[1] != stratified_split(examples, seed=4)[1]


def test_classes_are_interleaved() -> None:
    train, _, _ = stratified_split(make_examples(COUNTS), seed=0)
    assert len({e.label for e in train[:20]}) > 1


def test_zero_fraction_gives_an_empty_part() -> None:
    train, val, test = stratified_split(make_examples(COUNTS), (0.9, 0.0, 0.1))
    assert val == [] and len(train) == 153 and len(test) == 17


def test_tiny_classes_still_get_one_example_in_each_part() -> None:
    train, val, test = stratified_split(make_examples({"a": 100, "rare": 3}))
    for part in (train, val, test):
        assert sum(e.label == "rare" for e in part) == 1


def test_class_too_small_to_stratify_is_named() -> None:
    with pytest.raises(
        DataError,
        match=r"class 'rare' has 2 examples, too few to stratify into train \+ "
        r"validation \+ test: it needs at least 3",
    ):
        stratified_split(make_examples({"a": 100, "rare": 2}))


def test_fewer_than_two_classes() -> None:
    with pytest.raises(DataError, match=r"at least two classes.*found 'only'"):
        stratified_split(make_examples({"only": 10}))


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.1, 0.2), (0.0, 0.5, 0.5), (1.1, -0.1, 0.0)])
def test_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match=r"^split: "):
        stratified_split(make_examples(COUNTS), fractions)


def test_check_labels_returns_sorted_training_labels() -> None:
    assert check_labels(make_examples({"b": 1, "a": 1}), {"validation data": make_examples({"a": 1})}) == [
        "a",
        "b",
    ]


def test_check_labels_names_an_unseen_label_and_where_it_is() -> None:
    with pytest.raises(
        DataError,
        match=r"label 'zebra' in the test data \(test.csv\) never occurs in the training data; "
        r"training labels are: a, b",
    ):
        check_labels(
            make_examples({"a": 2, "b": 2}), {"test data (test.csv)": make_examples({"a": 1, "zebra": 1})}
        )


def test_check_labels_needs_two_training_classes() -> None:
    with pytest.raises(DataError, match=r"training data needs at least two classes.*found 'a'"):
        check_labels(make_examples({"a": 5}), {})
