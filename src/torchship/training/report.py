"""What a training run reports: its per-epoch history, two plots and the model card.

:class:`MetricsHistory` is a Lightning callback that keeps one row of metrics per epoch (and survives a
resume through the checkpoint); :func:`learning_curves_png` and :func:`confusion_matrix_png` draw PNG bytes
with matplotlib's Agg renderer (no display, no global pyplot state); :func:`model_card` writes ``card.md``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from torchship.store.package import PackageConfig

__all__ = ["MetricsHistory", "confusion_matrix_png", "learning_curves_png", "model_card"]

_TRAIN_KEYS = ("train_loss", "train_accuracy")
_VAL_KEYS = ("val_loss", "val_accuracy", "val_macro_f1")


class MetricsHistory(L.Callback):
    """Collects ``{"epoch", "step", "lr", "time_s", "train_loss", ..., "val_macro_f1"}`` once per epoch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation has already run inside this epoch, and the epoch's train metrics are reduced by now.
        metrics = trainer.callback_metrics
        row: dict[str, float] = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "time_s": round(time.perf_counter() - self._epoch_start, 3),
        }
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        for key in (*_TRAIN_KEYS, *_VAL_KEYS):
            if key in metrics:
                row[key] = float(metrics[key])
        self.rows.append(row)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state_dict.get("rows", [])]


def learning_curves_png(history: Sequence[Mapping[str, float]]) -> bytes:
    """Loss (train and validation) and validation accuracy / macro-F1 per epoch, side by side."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, score_axes = figure.subplots(1, 2)
    _plot_series(loss_axes, history, {"train_loss": "train", "val_loss": "validation"})
    loss_axes.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    _plot_series(
        score_axes,
        history,
        {
            "train_accuracy": "train accuracy",
            "val_accuracy": "validation accuracy",
            "val_macro_f1": "validation macro-F1",
        },
    )
    score_axes.set(title="Scores", xlabel="epoch", ylabel="score")
    for axes in (loss_axes, score_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if axes.has_data():
            axes.legend()
    return _png(figure)


def confusion_matrix_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> bytes:
    """A count-annotated confusion matrix: rows are the true labels, columns the predictions."""
    size = max(4.0, 0.9 * len(labels) + 2.5)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels, rotation=45, ha="right")
    axes.set_yticks(ticks, labels)
    axes.set(title=title, xlabel="predicted label", ylabel="true label")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            # White text on dark cells, black on light ones.
            color = "white" if peak and count > peak / 2 else "black"
            axes.text(j, i, str(count), ha="center", va="center", color=color)
    return _png(figure)


def _reads(config: PackageConfig) -> str:
    if config.long_texts == "windows":
        return (
            f"reading whole texts as windows of {config.max_length} tokens ({config.window_overlap} shared "
            "by neighbours at prediction) whose logits are averaged"
        )
    return f"with inputs truncated to {config.max_length} tokens"


def model_card(config: PackageConfig, metrics: Mapping[str, Any], *, store: str | Path) -> str:
    """The ``card.md`` of a package: what it is, its data, its scores, its settings and how to use it."""
    training = dict(config.training)
    model = config.model
    kind = (
        f"fine-tuned from the pretrained encoder `{training['pretrained']}`"
        if training.get("pretrained")
        else "trained from scratch"
    )
    ref = f"{str(store).rstrip('/')}/{config.name}:{config.version}"  # a directory or s3://bucket/prefix
    lines = [
        f"# {config.name} (version {config.version})",
        "",
        f"A text classifier over {len(config.labels)} labels: a Transformer encoder "
        f"({_count(model.n_layers, 'layer')}, width {model.d_model}, {_count(model.n_heads, 'head')}, "
        f"{model.pooling} pooling) "
        f"{kind}, {_reads(config)}. "
        f"Written by torchship {config.torchship_version} on {config.created}.",
        "",
        "## Data",
        "",
        f"Source: `{training.get('data', 'unknown')}`.",
        "",
        "| split | texts |",
        "| --- | ---: |",
        *(f"| {split} | {count} |" for split, count in dict(training.get("split_sizes", {})).items()),
        "",
        f"Labels: {', '.join(f'`{label}`' for label in config.labels)}.",
        "",
        "## Metrics",
        "",
        *_metrics_tables(metrics, config.labels),
        "## Training",
        "",
        f"Training time: {float(metrics.get('train_time_s', 0.0)):.1f} s over "
        f"{len(metrics.get('history', []))} epochs. Settings:",
        "",
        "```json",
        _json(training),
        "```",
        "",
        "## Use it",
        "",
        "Predict from the command line (loads the package exactly as the server does):",
        "",
        "```bash",
        f'torchship predict --model {ref} "Shares rose after the quarterly results."',
        f"torchship evaluate --model {ref} --data labelled.csv",
        "```",
        "",
        "Serve it over HTTP (TorchServe-compatible routes and Open Inference Protocol v2):",
        "",
        "```bash",
        f"torchship serve --store {store}",
        f"curl -X POST http://127.0.0.1:8080/predictions/{config.name}/{config.version} \\",
        '     -H "Content-Type: text/plain" --data "Shares rose after the quarterly results."',
        f"curl -X POST http://127.0.0.1:8080/v2/models/{config.name}/versions/{config.version}/infer \\",
        '     -H "Content-Type: application/json" \\',
        '     -d \'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
        '"data": ["Shares rose after the quarterly results."]}]}\'',
        "```",
        "",
        "From Python:",
        "",
        "```python",
        "from torchship.store import load_package, resolve_model",
        "",
        f'package = load_package(resolve_model("{ref}"))',
        'probabilities = package.predict_proba(["Shares rose after the quarterly results."])',
        "label = package.labels[int(probabilities[0].argmax())]",
        "```",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
    ]
    return "\n".join(lines)


def _metrics_tables(metrics: Mapping[str, Any], labels: Sequence[str]) -> list[str]:
    lines = ["| split | accuracy | macro-F1 | loss |", "| --- | ---: | ---: | ---: |"]
    splits = [split for split in ("validation", "test") if metrics.get(split)]
    for split in splits:
        scores = metrics[split]
        loss = scores.get("loss")
        lines.append(
            f"| {split} | {scores['accuracy']:.4f} | {scores['macro_f1']:.4f} | "
            f"{'' if loss is None else f'{loss:.4f}'} |"
        )
    lines.append("")
    for split in splits:
        lines += [
            f"Per class, {split} set:",
            "",
            "| label | precision | recall | F1 | support |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        per_class = metrics[split]["per_class"]
        for label in labels:
            s = per_class[label]
            lines.append(
                f"| {label} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
            )
        lines.append("")
    return lines


def _plot_series(axes: Any, history: Sequence[Mapping[str, float]], names: Mapping[str, str]) -> None:
    for key, label in names.items():
        points = [(row["epoch"], row[key]) for row in history if key in row]
        if points:
            epochs, values = zip(*points, strict=True)
            axes.plot(epochs, values, marker="o", label=label)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)
