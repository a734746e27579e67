from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

# Three topics, each with its own words, mixed with shared filler: learnable in a few epochs by a
# one-layer model, but not from a single token, so the model has to pool over the text.
TOPICS = {
    "money": ["bank", "market", "shares", "price", "profit", "stock", "trade", "fund"],
    "sport": ["goal", "match", "team", "score", "league", "coach", "player", "win"],
    "tech": ["software", "chip", "computer", "data", "network", "code", "phone", "robot"],
}
FILLER = ["the", "a", "of", "and", "to", "in", "is", "was", "on", "for", "with", "it", "by", "at"]


def synthetic_rows(per_class: int = 60, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, words in TOPICS.items():
        for _ in range(per_class):
            length = rng.randint(6, 30)
            text = " ".join(
                rng.choice(words) if rng.random() < 0.4 else rng.choice(FILLER) for _ in range(length)
            )
            rows.append((text, label))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture
def topics_csv(tmp_path: Path) -> Path:
    """180 labelled texts over three topics, as a CSV file."""
    return write_csv(tmp_path / "topics.csv", synthetic_rows())
