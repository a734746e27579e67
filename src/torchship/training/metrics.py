"""Classification metrics from ``torchmetrics``, gathered into the report that ``metrics.json`` holds.

One :class:`ClassificationMetrics` accumulates predictions batch by batch (and, under DDP, syncs across
processes when computed); :meth:`ClassificationMetrics.report` turns the totals into plain JSON-able data:

    >>> metrics = ClassificationMetrics(["business", "sport"])
    >>> metrics.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    >>> metrics.report()["accuracy"]
    0.6666...
    >>> metrics.report()["per_class"]["business"]
    {'precision': 1.0, 'recall': 0.5, 'f1': 0.666..., 'support': 2}

The same class serves the LightningModule's validation/test steps, the final evaluation of a training run
and ``torchship evaluate``, so every number torchship prints is computed one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

__all__ = ["ClassificationMetrics"]


class ClassificationMetrics(nn.Module):
    """Accuracy, macro-F1 and the confusion matrix of a multi-class classifier, accumulated over batches."""

    def __init__(self, labels: Sequence[str], *, sync: bool = True) -> None:
        super().__init__()
        self.labels = tuple(labels)
        num_classes = len(self.labels)
        # sync=False keeps compute() local to this process even when torch.distributed is initialised
        # (a rank-0-only evaluation inside a DDP run must not wait for the other ranks).
        options: dict[str, Any] = {"sync_on_compute": sync}
        self.accuracy = MulticlassAccuracy(num_classes, average="micro", **options)
        self.macro_f1 = MulticlassF1Score(num_classes, average="macro", **options)
        self.confusion = MulticlassConfusionMatrix(num_classes, **options)
        self.loss = MeanMetric(**options)

    def update(self, preds: Tensor, target: Tensor, loss: Tensor | None = None) -> None:
        """Add a batch: ``preds`` are class indices or ``(B, C)`` scores, ``target`` class indices, and
        ``loss`` the batch's mean loss (weighted by batch size when averaged)."""
        if preds.dim() == 2:
            preds = preds.argmax(dim=-1)
        self.accuracy.update(preds, target)
        self.macro_f1.update(preds, target)
        self.confusion.update(preds, target)
        if loss is not None:
            self.loss.update(loss.detach(), weight=target.numel())

    def compute(self) -> dict[str, Tensor]:
        """Accuracy, macro-F1 and mean loss so far, as scalar tensors (synced across processes under DDP).

        ``loss`` is NaN when no batch came with a loss.
        """
        loss = self.loss.compute() if self.loss.update_called else torch.tensor(float("nan"))
        return {"accuracy": self.accuracy.compute(), "macro_f1": self.macro_f1.compute(), "loss": loss}

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        for metric in (self.accuracy, self.macro_f1, self.confusion, self.loss):
            metric.reset()

    def report(self) -> dict[str, Any]:
        """``{"accuracy", "macro_f1", "loss", "per_class": {label: {precision, recall, f1, support}},
        "confusion_matrix": [[...]]}`` as plain Python values; rows are true labels, columns predictions.

        ``loss`` is ``None`` when no batch came with a loss (JSON has no NaN).
        """
        scores = self.compute()
        matrix = self.confusion.compute().long().cpu()  # (C, C): [true, predicted]
        loss = float(scores["loss"])
        return {
            "accuracy": float(scores["accuracy"]),
            "macro_f1": float(scores["macro_f1"]),
            "loss": None if loss != loss else loss,  # NaN != NaN
            "per_class": per_class_scores(matrix, self.labels),
            "confusion_matrix": matrix.tolist(),
        }


def per_class_scores(matrix: Tensor, labels: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support of each label from a ``(C, C)`` [true, predicted] count matrix.

    A ratio with a zero denominator (a class never predicted, or never present) is reported as 0.
    """
    counts = matrix.double()
    true_positive = counts.diagonal()  # (C,)
    predicted = counts.sum(dim=0)  # (C,) column sums
    support = counts.sum(dim=1)  # (C,) row sums
    precision = _safe_divide(true_positive, predicted)
    recall = _safe_divide(true_positive, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-12), torch.zeros_like(numerator))
