"""One training run, end to end: data, model, ``Trainer.fit``, final evaluation, published package.

    >>> result = train(DataConfig("bbc-news"), store="./models", name="bbc", trainer={"accelerator": "cpu"})
    >>> result.version, result.metrics["test"]["accuracy"]
    (1, 0.97...)

Lightning runs the loop and its strategies run it on many devices (``trainer={"strategy": "ddp",
"devices": 2}``). Under DDP on CPU, Lightning's launcher re-executes the command in child processes, so
everything before ``fit`` runs once per process; reading, splitting and tokenizer training are
deterministic, so every process builds the same data and vocabulary.

The final evaluation of the best checkpoint runs on global rank 0 only, with a plain loop over the
DataModule's own (undistributed) dataloaders. ``trainer.test`` under DDP would shard the test set with a
``DistributedSampler``, which pads the shards with repeated examples, so some texts would count twice;
a single-process pass counts every example exactly once and is what the package's users will see. Rank 0
then publishes; other ranks return without a version.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from torchship.data.datamodule import DataConfig, TextClassificationDataModule
from torchship.errors import ConfigError, VersionExistsError
from torchship.models.transformer import TransformerClassifier, TransformerConfig
from torchship.store.package import PackageConfig, write_package
from torchship.store.remote import ObjectStore, open_store
from torchship.store.store import ModelStore, validate_name, validate_version
from torchship.training.metrics import ClassificationMetrics
from torchship.training.module import TextClassifierModule, text_logits
from torchship.training.options import ModelOptions, OptimOptions
from torchship.training.report import (
    MetricsHistory,
    confusion_matrix_png,
    learning_curves_png,
    model_card,
)

__all__ = [
    "TRAINER_DEFAULTS",
    "Monitor",
    "RunTrainer",
    "TrainResult",
    "evaluate",
    "make_trainer",
    "scratch_classifier",
    "train",
]

Monitor = Literal["val_macro_f1", "val_accuracy", "val_loss"]

TRAINER_DEFAULTS: Mapping[str, Any] = {
    # The from-scratch recipe reaches its best validation score in 3-4 epochs on BBC News (see
    # benchmarks/train_bbc.py); longer runs only memorise the training set.
    "max_epochs": 4,
    # Metrics are logged once per epoch; nothing is gained by waking the loggers every few steps.
    "log_every_n_steps": 50,
    # The sanity check guards hand-written validation steps; torchship's is fixed and tested, and the
    # check costs two validation batches before every run (see benchmarks/train_loop_overhead.py).
    "num_sanity_val_steps": 0,
}
"""``lightning.Trainer`` options that differ from Lightning's own defaults; user options override them."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced. On processes other than rank 0 only ``name`` and ``best_checkpoint``
    are set: that process neither evaluates nor publishes."""

    name: str
    version: int | None
    """The published version."""
    path: Path | None
    """The published package directory (None in an object store: see ``location``)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """What ``metrics.json`` holds: validation and test reports, history, training time."""
    best_checkpoint: str = ""
    """The Lightning checkpoint the package was made from."""
    model: TransformerClassifier | None = None
    """The published network with the best checkpoint's weights, in eval mode on the CPU."""
    location: str = ""
    """Where the version was published: its directory, or its URL in an object store."""


def train(
    data: DataConfig,
    *,
    store: str | Path,
    name: str,
    model: ModelOptions | None = None,
    optim: OptimOptions | None = None,
    trainer: Mapping[str, Any] | None = None,
    monitor: Monitor = "val_macro_f1",
    early_stopping_patience: int | None = None,
    ckpt_path: str | None = None,
    version: int | None = None,
) -> TrainResult:
    """Train a classifier on ``data`` and publish its best checkpoint as ``<store>/<name>/<version>``.

    ``store`` is a directory or an object store URL (``s3://bucket/prefix``, see
    :mod:`torchship.store.remote`); it is checked before training starts.

    ``trainer`` holds ``lightning.Trainer`` keyword arguments on top of :data:`TRAINER_DEFAULTS`
    (``default_root_dir`` is where checkpoints and logs go; default ``runs/<name>``). ``ckpt_path``
    resumes from a Lightning checkpoint (``"last"``: ``<default_root_dir>/checkpoints/last.ckpt``).
    ``version`` asks for an explicit version number, which must not exist yet.
    """
    model = model or ModelOptions()
    optim = optim or OptimOptions()
    validate_name(name)
    model_store = open_store(store)
    # Reading the store first: a wrong bucket or missing credentials fail now, not after training.
    published = model_store.versions(name)
    if version is not None and validate_version(version) in published:
        raise VersionExistsError(f"{name} version {version} is already published; versions never change.")
    trainer_options = {**TRAINER_DEFAULTS, **(trainer or {})}
    root = Path(trainer_options.get("default_root_dir") or Path("runs") / name)
    trainer_options["default_root_dir"] = str(root)
    ckpt_path = _checkpoint_to_resume(ckpt_path, root)
    # The Trainer first: a bad option fails before minutes of reading data and training a tokenizer.
    run = make_trainer(trainer_options, monitor=monitor, early_stopping_patience=early_stopping_patience)
    L.seed_everything(data.seed, workers=True, verbose=False)
    datamodule, network = _build(data, model)
    if not datamodule.val:
        raise ConfigError(
            "validation data is empty: the best checkpoint is chosen on it; give --val_data "
            "or a split with a validation share"
        )
    module = TextClassifierModule(network, datamodule.labels, optim)

    started = time.perf_counter()
    run.trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    train_time = time.perf_counter() - started
    best = run.checkpoint.best_model_path or run.checkpoint.last_model_path
    if not run.trainer.is_global_zero:
        return TrainResult(name=name, version=None, path=None, best_checkpoint=best)

    if best:
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    device = run.trainer.strategy.root_device
    metrics: dict[str, Any] = {
        "labels": list(datamodule.labels),
        "validation": evaluate(network, datamodule.val_dataloader(), datamodule.labels, device),
        "test": evaluate(network, datamodule.test_dataloader(), datamodule.labels, device)
        if datamodule.test
        else None,
        "train_time_s": round(train_time, 3),
        "history": run.history.rows,
        "best_checkpoint": Path(best).name if best else None,
    }
    network.cpu()
    config = PackageConfig(
        name=name,
        version=1,  # replaced by the number the store hands out
        labels=tuple(datamodule.labels),
        model=network.config,
        max_length=data.max_length,
        long_texts=data.long_texts,
        window_overlap=data.overlap if data.long_texts == "windows" else 0,
        training=_provenance(data, model, optim, datamodule, trainer or {}, monitor),
    )
    number = _publish(model_store, config, network, datamodule.tokenizer, metrics, version)
    path = model_store.path(name, number) if isinstance(model_store, ModelStore) else None
    return TrainResult(
        name=name,
        version=number,
        path=path,
        metrics=metrics,
        best_checkpoint=best,
        model=network.eval(),
        location=str(path) if path is not None else f"{_location(model_store)}/{name}/{number}",
    )


@dataclass(frozen=True)
class RunTrainer:
    """A ``lightning.Trainer`` set up as :func:`train` uses it, with the callbacks it reads back."""

    trainer: L.Trainer
    checkpoint: ModelCheckpoint
    history: MetricsHistory


def make_trainer(
    options: Mapping[str, Any],
    *,
    monitor: Monitor = "val_macro_f1",
    early_stopping_patience: int | None = None,
) -> RunTrainer:
    """``lightning.Trainer(**options)`` with torchship's callbacks and loggers under ``default_root_dir``:
    best and last checkpoints in ``checkpoints/``, CSV logs in ``logs/`` (and TensorBoard in
    ``tensorboard/`` when installed), per-epoch history, and early stopping when a patience is given."""
    unknown = sorted(set(options) - set(inspect.signature(L.Trainer.__init__).parameters))
    if unknown:
        raise ConfigError(
            f"trainer: unknown option(s) {', '.join(unknown)}; see lightning.Trainer's arguments"
        )
    if monitor not in ("val_macro_f1", "val_accuracy", "val_loss"):
        raise ConfigError(f"monitor: expected val_macro_f1, val_accuracy or val_loss, got {monitor!r}")
    if early_stopping_patience is not None and early_stopping_patience < 1:
        raise ConfigError(f"early_stopping_patience: must be at least 1, got {early_stopping_patience}")
    options = dict(options)
    root = Path(options.get("default_root_dir") or ".")
    _hide_lightning_advertising()
    checkpoint = ModelCheckpoint(
        dirpath=root / "checkpoints",
        filename="best-epoch{epoch:02d}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode="min" if monitor == "val_loss" else "max",
        save_top_k=1,
        save_last=True,
        # A new run in the same directory overwrites the old run's files instead of adding "-v1" copies,
        # so checkpoints/last.ckpt is always the latest run's last epoch (what `ckpt_path="last"` resumes).
        enable_version_counter=False,
    )
    history = MetricsHistory()
    callbacks: list[Callback] = [checkpoint, history, *(options.pop("callbacks", None) or [])]
    if early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor, patience=early_stopping_patience, mode=checkpoint.mode))
    options.setdefault("logger", _loggers(root))
    try:
        trainer = L.Trainer(**options, callbacks=callbacks)
    except (MisconfigurationException, TypeError, ValueError) as exc:
        raise ConfigError(f"trainer: {exc}") from exc
    return RunTrainer(trainer, checkpoint, history)


@torch.inference_mode()
def evaluate(
    model: TransformerClassifier,
    batches: DataLoader[Any],
    labels: Sequence[str],
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Accuracy, macro-F1, loss, per-class figures and confusion matrix of ``model`` over ``batches``.

    One process, every example counted once: metrics are not synced even inside a DDP run.
    """
    was_training = model.training
    model.eval().to(device)
    metrics = ClassificationMetrics(labels, sync=False).to(device)
    for batch in batches:
        batch = {key: value.to(device) for key, value in batch.items()}
        logits = text_logits(model, batch).float()  # (B, C); a text read as windows: their mean
        target = batch["labels"]
        metrics.update(logits, target, torch.nn.functional.cross_entropy(logits, target))
    model.train(was_training)
    return metrics.report()


def _build(
    data: DataConfig, options: ModelOptions
) -> tuple[TextClassificationDataModule, TransformerClassifier]:
    if options.pretrained is None:
        datamodule = TextClassificationDataModule(data)
        return datamodule, scratch_classifier(datamodule, options)
    from torchship.models.pretrained import load_pretrained, minilm_path

    directory = minilm_path() if options.pretrained == "minilm" else Path(options.pretrained)
    # The labels (hence the head's size) come from the data, and the data needs the encoder's tokenizer:
    # load once for the tokenizer, then build the classifier with the right number of classes.
    _, tokenizer = load_pretrained(directory, 2, pooling=options.pooling, max_length=data.max_length)
    datamodule = TextClassificationDataModule(data, tokenizer=tokenizer)
    network, _ = load_pretrained(
        directory,
        datamodule.num_classes,
        pooling=options.pooling,
        dropout=options.dropout,
        max_length=data.max_length,
    )
    return datamodule, _with_attention_dropout(network, options.attention_dropout)


def scratch_classifier(
    datamodule: TextClassificationDataModule, options: ModelOptions
) -> TransformerClassifier:
    """A fresh from-scratch classifier shaped by ``options`` for ``datamodule``'s tokenizer and labels,
    exactly as :func:`train` builds it (torch's current seed decides the initial weights)."""
    config = TransformerConfig(
        vocab_size=datamodule.tokenizer.get_vocab_size(),
        num_classes=datamodule.num_classes,
        d_model=options.d_model,
        n_heads=options.n_heads,
        n_layers=options.n_layers,
        d_ff=options.d_ff,
        dropout=options.dropout,
        max_length=datamodule.config.max_length,
        pooling=options.pooling,
        pad_id=datamodule.pad_id,
    )
    return _with_attention_dropout(TransformerClassifier(config), options.attention_dropout)


def _with_attention_dropout(network: TransformerClassifier, probability: float) -> TransformerClassifier:
    # TransformerConfig has one dropout for everything; attention's own is a training-time choice (it
    # never applies at inference), and nn.MultiheadAttention reads it on every call.
    for layer in network.encoder.layers:
        layer.self_attn.dropout = probability
    return network


def _checkpoint_to_resume(ckpt_path: str | None, root: Path) -> str | None:
    if ckpt_path is None:
        return None
    path = root / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path: no checkpoint at {path}; give a .ckpt file or 'last' (of {root})")
    return str(path)


class _NoAdvertising(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _hide_lightning_advertising() -> None:
    # Lightning logs a "Tip: try installing litlogger" line on every run; torchship's users did not ask.
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertising) for f in logger.filters):
        logger.addFilter(_NoAdvertising())


def _loggers(root: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(root, name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:  # optional: pip install 'torchship[tensorboard]'
        loggers.append(TensorBoardLogger(root, name="tensorboard", default_hp_metric=False))
    return loggers


def _publish(
    store: ModelStore | ObjectStore,
    config: PackageConfig,
    network: TransformerClassifier,
    tokenizer: Tokenizer,
    metrics: Mapping[str, Any],
    version: int | None,
) -> int:
    # config.json records its own version, but a store assigns the number only after the files are
    # written; so pick the next number up front and retry if another publisher takes it first.
    for _ in range(5):
        number = version if version is not None else _next_version(store, config.name)
        final = replace(config, version=number)

        def write(directory: Path, final: PackageConfig = final) -> None:
            history = metrics.get("history", [])
            split = "test" if metrics.get("test") else "validation"
            write_package(
                directory,
                config=final,
                state_dict=network.state_dict(),
                tokenizer=tokenizer,
                metrics=metrics,
                card=model_card(final, metrics, store=_location(store)),
                plots={
                    "learning_curves.png": learning_curves_png(history),
                    "confusion_matrix.png": confusion_matrix_png(
                        metrics[split]["confusion_matrix"], final.labels, f"Confusion matrix, {split} set"
                    ),
                },
            )

        try:
            return store.publish(config.name, write, version=number)
        except VersionExistsError:
            if version is not None:
                raise
    raise VersionExistsError(f"could not claim a new version of {config.name}; try --version")


def _next_version(store: ModelStore | ObjectStore, name: str) -> int:
    if isinstance(store, ObjectStore):  # past the numbers that crashed publishes claimed
        return store.next_version(name)
    return (store.latest(name) or 0) + 1


def _location(store: ModelStore | ObjectStore) -> str | Path:
    return store.root if isinstance(store, ModelStore) else store.url


def _provenance(
    data: DataConfig,
    model: ModelOptions,
    optim: OptimOptions,
    datamodule: TextClassificationDataModule,
    trainer: Mapping[str, Any],
    monitor: str,
) -> dict[str, Any]:
    return _jsonable(
        {
            "data": data.data,
            "val_data": data.val_data,
            "test_data": data.test_data,
            "split": list(data.split),
            "split_sizes": {
                "train": len(datamodule.train),
                "validation": len(datamodule.val),
                "test": len(datamodule.test),
            },
            "seed": data.seed,
            "split_seed": data.seed if data.split_seed is None else data.split_seed,
            "tokenizer": data.tokenizer if model.pretrained is None else "pretrained",
            "vocab_size": datamodule.tokenizer.get_vocab_size(),
            "lowercase": data.lowercase,
            "batch_size": data.batch_size,
            "pretrained": model.pretrained,
            "model": asdict(model),
            "optim": optim.to_dict(),
            "trainer": {**TRAINER_DEFAULTS, **trainer},
            "monitor": monitor,
        }
    )


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    # Trainer options may hold objects (a Strategy, a Profiler); config.json keeps their text form.
    data: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return data
