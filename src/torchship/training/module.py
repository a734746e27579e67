"""The LightningModule that trains a plain :class:`TransformerClassifier`.

It owns the loss, the metrics and the optimiser; the network itself stays a plain ``nn.Module`` in
``self.model`` so that its ``state_dict`` is exactly what a package's ``model.safetensors`` holds.

    >>> module = TextClassifierModule(TransformerClassifier(config), labels, OptimOptions(lr=2e-3))
    >>> trainer = L.Trainer(max_epochs=10)
    >>> trainer.fit(module, datamodule=datamodule)
    >>> module.validation_report["macro_f1"]

Batches are dicts ``{"input_ids": (B, T) int64, "attention_mask": (B, T) bool, "labels": (B,) int64}``.
Evaluation batches of texts read as windows (``DataConfig(long_texts="windows")``) hold W windows for B
texts, with ``"text_index"`` (W,) naming each window's text; a text's logits are its windows' mean.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from torchship.data.windows import mean_by_text
from torchship.models.transformer import TransformerClassifier
from torchship.training.metrics import ClassificationMetrics
from torchship.training.options import OptimOptions, Schedule

__all__ = ["TextClassifierModule", "lr_factor", "parameter_groups", "text_logits"]

Batch = Mapping[str, Tensor]


class TextClassifierModule(L.LightningModule):
    """Cross-entropy training of a ``TransformerClassifier`` with AdamW, warm-up and per-step decay.

    Logged once per epoch: ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``,
    ``val_macro_f1`` (and ``test_*`` under ``trainer.test``). After each validation or test epoch the full
    report (per-class figures, confusion matrix) is kept in :attr:`validation_report` / :attr:`test_report`.
    """

    def __init__(
        self, model: TransformerClassifier, labels: Sequence[str], optim: OptimOptions | None = None
    ) -> None:
        super().__init__()
        if len(labels) != model.config.num_classes:
            raise ValueError(f"{len(labels)} labels for a model with {model.config.num_classes} classes")
        self.model = model
        self.labels = tuple(labels)
        self.optim = optim or OptimOptions()
        # Plain JSON-able values only: the checkpoint and hparams.yaml must not pickle our classes.
        self.save_hyperparameters(
            {"model": model.config.to_dict(), "labels": list(self.labels), "optim": self.optim.to_dict()}
        )
        self.train_accuracy = MulticlassAccuracy(len(self.labels), average="micro")
        self.val_metrics = ClassificationMetrics(self.labels)
        self.test_metrics = ClassificationMetrics(self.labels)
        self.validation_report: dict[str, Any] | None = None
        self.test_report: dict[str, Any] | None = None

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        return self.model(input_ids, attention_mask)  # type: ignore[no-any-return]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits = self.model(batch["input_ids"], batch["attention_mask"])  # (B, C)
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels, label_smoothing=self.optim.label_smoothing)
        self.train_accuracy.update(logits.detach().argmax(dim=-1), labels)
        # on_step=False: values accumulate on the device and are reduced (and synced) once per epoch,
        # so logging adds no per-step host sync.
        self.log(
            "train_loss",
            loss.detach(),
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=labels.numel(),
        )
        self.log("train_accuracy", self.train_accuracy, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate_batch(batch, self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate_batch(batch, self.test_metrics)

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Class probabilities ``(B, num_classes)``."""
        return torch.softmax(text_logits(self.model, batch).float(), dim=-1)

    def on_validation_epoch_end(self) -> None:
        report = self._log_report(self.val_metrics, "val")
        if not self.trainer.sanity_checking:
            self.validation_report = report

    def on_test_epoch_end(self) -> None:
        self.test_report = self._log_report(self.test_metrics, "test")

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup_steps = int(total_steps * self.optim.warmup_ratio)
        optimizer = torch.optim.AdamW(
            parameter_groups(self.model, self.optim),
            lr=self.optim.lr,
            betas=self.optim.betas,
            weight_decay=self.optim.weight_decay,
            # One fused kernel instead of a dozen ops per tensor: on a CPU the per-tensor AdamW costs many
            # times more, mostly on the embedding table (see the performance page of the docs, "Training
            # loop overhead"). fp16 AMP with gradient clipping cannot unscale gradients for a fused
            # optimizer, so it keeps the default one.
            fused=self._can_fuse_optimizer(),
        )
        # functools.partial, not a lambda: LambdaLR's state_dict (in checkpoints) skips plain functions
        # but would try to save a closure's state.
        factor = functools.partial(
            lr_factor, warmup_steps=warmup_steps, total_steps=total_steps, schedule=self.optim.schedule
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _can_fuse_optimizer(self) -> bool:
        on_fused_device = all(p.device.type in ("cpu", "cuda") for p in self.model.parameters())
        return on_fused_device and str(self.trainer.precision) not in ("16-mixed", "16")

    def _evaluate_batch(self, batch: Batch, metrics: ClassificationMetrics) -> None:
        logits = text_logits(self.model, batch)  # (B, C)
        loss = F.cross_entropy(logits, batch["labels"])
        metrics.update(logits, batch["labels"], loss)

    def _log_report(self, metrics: ClassificationMetrics, prefix: str) -> dict[str, Any]:
        report = metrics.report()  # computing syncs the totals across DDP processes
        metrics.reset()
        for key in ("loss", "accuracy", "macro_f1"):
            if report[key] is not None:
                # Already synced: every rank logs the same number; sync_dist only averages equal values.
                self.log(f"{prefix}_{key}", float(report[key]), prog_bar=key != "loss", sync_dist=True)
        return report


def text_logits(model: TransformerClassifier, batch: Batch) -> Tensor:
    """Logits per text ``(B, C)`` of an evaluation batch: the model's own, or its windows' mean."""
    logits = model(batch["input_ids"], batch["attention_mask"])
    if "text_index" in batch:
        # In float32: under bf16/fp16 autocast a sum over hundreds of windows would lose digits.
        return mean_by_text(logits.float(), batch["text_index"], batch["labels"].numel())
    return logits  # type: ignore[no-any-return]


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: Schedule) -> float:
    """The learning-rate multiplier for optimiser step ``step`` (0-based): linear warm-up, then decay.

    Warm-up reaches the peak at step ``warmup_steps - 1``; ``cosine`` and ``linear`` then fall to 0 at
    ``total_steps``; ``constant`` stays at the peak.

    >>> [round(lr_factor(s, warmup_steps=2, total_steps=6, schedule="linear"), 2) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: TransformerClassifier, optim: OptimOptions) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases, norms and embeddings; the pretrained encoder at
    ``optim.encoder_lr`` and the new head at ``optim.lr`` when ``encoder_lr`` is set."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter, is_embedding in _named_parameters(model):
        if not parameter.requires_grad:
            continue
        is_head = name.startswith("head.")
        decays = parameter.dim() >= 2 and not is_embedding
        groups.setdefault((is_head, decays), []).append(parameter)
    encoder_lr = optim.encoder_lr if optim.encoder_lr is not None else optim.lr
    return [
        {
            "params": params,
            "lr": optim.lr if is_head else encoder_lr,
            "weight_decay": optim.weight_decay if decays else 0.0,
        }
        for (is_head, decays), params in sorted(groups.items())
    ]


def _named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, bool]]:
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{name}" if module_name else name
            yield full_name, parameter, isinstance(module, nn.Embedding)
