from __future__ import annotations

from pathlib import Path

from torchship.models.transformer import TransformerConfig
from torchship.store import PackageConfig
from torchship.training.report import MetricsHistory, confusion_matrix_png, learning_curves_png, model_card

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORY = [
    {
        "epoch": 1,
        "train_loss": 1.0,
        "val_loss": 0.9,
        "train_accuracy": 0.5,
        "val_accuracy": 0.6,
        "val_macro_f1": 0.55,
    },
    {
        "epoch": 2,
        "train_loss": 0.5,
        "val_loss": 0.6,
        "train_accuracy": 0.8,
        "val_accuracy": 0.85,
        "val_macro_f1": 0.84,
    },
]


def _report(accuracy: float) -> dict[str, object]:
    return {
        "accuracy": accuracy,
        "macro_f1": 0.5,
        "loss": 0.7,
        "per_class": {
            "ham": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2},
            "spam": {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1},
        },
        "confusion_matrix": [[1, 1], [0, 1]],
    }


def test_plots_are_png_images() -> None:
    assert learning_curves_png(HISTORY).startswith(PNG_SIGNATURE)
    assert learning_curves_png([]).startswith(PNG_SIGNATURE)  # no epochs yet: empty axes, no error
    assert confusion_matrix_png([[5, 1], [0, 7]], ["ham", "spam"], "test").startswith(PNG_SIGNATURE)


def test_model_card_has_metrics_settings_and_usage() -> None:
    config = PackageConfig(
        name="spam",
        version=3,
        labels=("ham", "spam"),
        model=TransformerConfig(vocab_size=100, num_classes=2),
        max_length=256,
        training={"data": "mail.csv", "split_sizes": {"train": 80, "validation": 10, "test": 10}, "seed": 1},
    )
    metrics = {"validation": _report(0.9), "test": _report(0.875), "train_time_s": 12.5, "history": HISTORY}
    card = model_card(config, metrics, store=Path("models"))

    assert card.startswith("# spam (version 3)")
    assert "| test | 0.8750 | 0.5000 | 0.7000 |" in card
    assert "| spam | 0.5000 | 1.0000 | 0.6667 | 1 |" in card
    assert "| train | 80 |" in card
    assert "12.5 s over 2 epochs" in card
    assert "torchship serve --store models" in card
    assert "/predictions/spam/3" in card
    assert 'torchship predict --model models/spam:3 "' in card


def test_history_survives_a_checkpoint_round_trip() -> None:
    history = MetricsHistory()
    history.rows = [dict(row) for row in HISTORY]
    restored = MetricsHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.rows == HISTORY
    assert restored.rows is not history.rows
