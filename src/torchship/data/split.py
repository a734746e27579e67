"""Deterministic stratified train/validation/test splits, and the label checks every split must pass.

    >>> train, val, test = stratified_split(examples, fractions=(0.8, 0.1, 0.1), seed=42)

Every class is divided in the same proportions, so a rare class still appears in validation and test.
The split depends only on the examples and the seed, never on the order they were read in.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

from torchship.data.formats import Example
from torchship.errors import ConfigError, DataError

__all__ = ["check_fractions", "check_labels", "stratified_split"]

_PARTS = ("train", "validation", "test")


def stratified_split(
    examples: Sequence[Example], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 42
) -> tuple[list[Example], list[Example], list[Example]]:
    """Split ``examples`` into (train, validation, test), each class in the proportions ``fractions``.

    A part with fraction 0 comes back empty; a part with a positive fraction gets at least one example
    of every class, so each class needs at least as many examples as there are non-empty parts.
    """
    fractions = check_fractions(fractions)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    if len(by_label) < 2:
        found = ", ".join(repr(label) for label in by_label) or "none"
        raise DataError(f"need examples of at least two classes to train a classifier; found {found}")
    rng = random.Random(seed)
    parts: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    for label in sorted(by_label):
        # Sorting first makes the split independent of file order; the seeded shuffle then mixes.
        members = sorted(by_label[label], key=lambda example: example.text)
        rng.shuffle(members)
        start = 0
        for part, size in zip(parts, _class_sizes(label, len(members), fractions), strict=True):
            part.extend(members[start : start + size])
            start += size
    for part in parts:
        rng.shuffle(part)  # interleave the classes
    return parts


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``fractions`` as a (train, validation, test) triple; ConfigError unless they are valid."""
    if len(fractions) != 3:
        raise ConfigError(f"split: expected three fractions (train, validation, test), got {list(fractions)}")
    train, val, test = (float(f) for f in fractions)
    if min(train, val, test) < 0 or train <= 0 or not math.isclose(train + val + test, 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"split: fractions must be non-negative, train above 0, and sum to 1, got {list(fractions)}"
        )
    return train, val, test


def check_labels(train: Sequence[Example], evaluation: Mapping[str, Sequence[Example]]) -> list[str]:
    """The sorted training labels, after checking that there are two or more and that every label in
    each ``evaluation`` part (keyed by a description such as ``"validation data (val.csv)"``) was seen
    in training."""
    labels = sorted({example.label for example in train})
    if len(labels) < 2:
        found = ", ".join(map(repr, labels)) or "none"
        raise DataError(f"training data needs at least two classes to train a classifier; found {found}")
    known = set(labels)
    for description, examples in evaluation.items():
        unseen = sorted({example.label for example in examples} - known)
        if unseen:
            raise DataError(
                f"label {', '.join(map(repr, unseen))} in the {description} never occurs in the training "
                f"data; training labels are: {', '.join(labels)}. Remove those examples or add training "
                "examples of that label"
            )
    return labels


def _class_sizes(label: str, count: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    _, val_fraction, test_fraction = fractions
    needed = sum(1 for fraction in fractions if fraction > 0)
    if count < needed:
        parts = " + ".join(name for name, f in zip(_PARTS, fractions, strict=True) if f > 0)
        raise DataError(
            f"class {label!r} has {count} example{'s' if count != 1 else ''}, too few to stratify into "
            f"{parts}: it needs at least {needed}; add examples of {label!r} or remove them"
        )
    val = max(1, round(count * val_fraction)) if val_fraction > 0 else 0
    test = max(1, round(count * test_fraction)) if test_fraction > 0 else 0
    # Rounding up tiny classes must not take the last training example.
    while count - val - test < 1:
        if val >= test and val > 1:
            val -= 1
        else:
            test -= 1
    return count - val - test, val, test
