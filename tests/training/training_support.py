"""What the training tests share: the files every published package holds."""

from __future__ import annotations

PACKAGE_FILES = [  # sorted
    "card.md",
    "config.json",
    "confusion_matrix.png",
    "learning_curves.png",
    "metrics.json",
    "model.safetensors",
    "tokenizer.json",
]
