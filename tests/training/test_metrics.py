from __future__ import annotations

import pytest
import torch

from torchship.training.metrics import ClassificationMetrics, per_class_scores


def test_report_matches_hand_counted_figures() -> None:
    metrics = ClassificationMetrics(["a", "b", "c"])
    # true: a a a b b c ; predicted: a a b b b a
    metrics.update(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]))
    metrics.update(torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]), torch.tensor([1, 1, 2]))
    report = metrics.report()

    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert report["per_class"]["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    # c is never predicted: precision 0/0 is reported as 0, not NaN.
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert report["loss"] is None


def test_loss_is_weighted_by_batch_size_and_reset_clears() -> None:
    metrics = ClassificationMetrics(["a", "b"], sync=False)
    metrics.update(torch.tensor([0]), torch.tensor([0]), torch.tensor(1.0))
    metrics.update(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 1]), torch.tensor(3.0))
    assert metrics.report()["loss"] == pytest.approx((1.0 + 3 * 3.0) / 4)
    metrics.reset()
    metrics.update(torch.tensor([1]), torch.tensor([1]))
    assert metrics.report()["confusion_matrix"] == [[0, 0], [0, 1]]


def test_per_class_scores_of_an_empty_class() -> None:
    scores = per_class_scores(torch.tensor([[3, 0], [0, 0]]), ["x", "y"])
    assert scores["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert scores["x"]["f1"] == 1.0
