"""The model package: everything needed to serve a model, and nothing that executes on load.

A package is a directory holding

    config.json            PackageConfig: architecture, labels, tokenizer settings, handler, versions
    model.safetensors      the weights (safetensors: loading never unpickles)
    tokenizer.json         the Hugging Face ``tokenizers`` tokenizer, no padding
    metrics.json           validation and test metrics, e.g. {"test": {"accuracy": 0.98, ...}}
    card.md                a human-readable model card
    *.png                  plots (learning curves, confusion matrix)

Training writes packages with ``write_package``; serving, ``torchship predict`` and ``torchship evaluate``
read them with ``load_package``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from torchship._version import __version__
from torchship.data.windows import check_windowing
from torchship.dataclass_fields import reject_unknown_fields
from torchship.errors import ConfigError, PackageError
from torchship.files import atomic_path, atomic_write
from torchship.models.transformer import TransformerClassifier, TransformerConfig
from torchship.store.inference import GroupLimits, TextClassifierRunner

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.json"
CARD_FILE = "card.md"
PACKAGE_FORMAT = 1
TEXT_CLASSIFIER = "text-classifier"
MAX_CONFIG_BYTES = 1 << 20
"""Largest ``config.json`` read (a real one is a few KB); a larger one is a :class:`PackageError`."""


@dataclass(frozen=True)
class PackageConfig:
    """What ``config.json`` holds: enough to rebuild the model, its tokenizer settings and its handler."""

    name: str
    """The model's name in the store."""
    version: int
    """The version the store assigned when the package was published."""
    labels: tuple[str, ...]
    """Class labels, in the order of the model's outputs."""
    model: TransformerConfig
    """The architecture; ``TransformerClassifier(model)`` rebuilds the network."""
    max_length: int
    """Tokens per model input (``[CLS]`` and ``[SEP]`` included): per text, or per window."""
    long_texts: str = "truncate"
    """``truncate``: the model reads a text's first ``max_length`` tokens. ``windows``: all of it, as
    windows of ``max_length`` tokens whose logits are averaged (:mod:`torchship.data.windows`)."""
    window_overlap: int = 0
    """With ``windows``: tokens shared by consecutive windows."""
    handler: str = TEXT_CLASSIFIER
    """Which serving handler serves the package."""
    torchship_version: str = __version__
    """The torchship version that wrote the package."""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    """When the package was written, ISO-8601 UTC."""
    training: Mapping[str, Any] = field(default_factory=dict)
    """How the model was trained: data source, split sizes, hyper-parameters (free-form, JSON-able)."""
    format: int = PACKAGE_FORMAT
    """The package layout version, bumped on incompatible changes."""

    def __post_init__(self) -> None:
        if len(self.labels) != self.model.num_classes:
            raise ConfigError(
                f"PackageConfig.labels has {len(self.labels)} labels but model.num_classes is "
                f"{self.model.num_classes}."
            )
        if self.max_length < 2 or self.max_length > self.model.max_length:
            raise ConfigError(
                f"PackageConfig.max_length must be between 2 and model.max_length ({self.model.max_length}), "
                f"got {self.max_length}."
            )
        check_windowing(self.long_texts, self.max_length, self.window_overlap, prefix="PackageConfig.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, the content of ``config.json``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["labels"] = list(self.labels)
        data["model"] = self.model.to_dict()
        data["training"] = dict(self.training)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PackageConfig:
        """Rebuild from ``to_dict()`` output; errors name the missing or unknown field."""
        reject_unknown_fields(cls, data, where="package config")
        missing = sorted(
            name for name in ("name", "version", "labels", "model", "max_length") if name not in data
        )
        if missing:
            raise ConfigError(f"Package config is missing field(s): {', '.join(missing)}.")
        values = dict(data)
        values["labels"] = tuple(str(label) for label in data["labels"])
        values["model"] = TransformerConfig.from_dict(data["model"])
        values["version"] = int(data["version"])
        values["max_length"] = int(data["max_length"])
        return cls(**values)


@dataclass(frozen=True)
class ModelPackage:
    """A loaded package, ready to predict.

    >>> package = load_package("./models/bbc/1")
    >>> package.predict_proba(["Shares rose sharply"]).shape
    torch.Size([1, 5])
    """

    path: Path
    config: PackageConfig
    model: TransformerClassifier
    tokenizer: Tokenizer

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    def predict_proba(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Class probabilities for ``texts``, shape ``(len(texts), num_classes)``, float32 on the CPU; the
        model runs on whatever device it is on.

        The texts run exactly as the server's built-in handler runs them (:mod:`torchship.store.inference`):
        grouped by length within the same token caps, and a package that reads long texts as windows runs
        every window and averages each text's logits. ``batch_size`` also caps the texts (or windows) per
        forward call.
        """
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ConfigError(f"batch_size: must be a positive whole number, got {batch_size!r}")
        device = next(self.model.parameters()).device  # the CPU unless moved (``package.model.to(...)``)
        limits = GroupLimits.for_device(device, max_sequences=batch_size)
        return TextClassifierRunner.for_package(self, limits=limits).probabilities(texts)


def write_package(
    directory: str | Path,
    *,
    config: PackageConfig,
    state_dict: Mapping[str, torch.Tensor],
    tokenizer: Tokenizer,
    metrics: Mapping[str, Any] | None = None,
    card: str | None = None,
    plots: Mapping[str, bytes] | None = None,
) -> None:
    """Write a complete package into ``directory`` (normally a store's temporary publish directory)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    # Each file is written atomically: a reader of the directory never sees a truncated one.
    with atomic_path(directory / WEIGHTS_FILE) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    with atomic_path(directory / TOKENIZER_FILE) as temporary:
        tokenizer.save(str(temporary))
    if metrics is not None:
        atomic_write(directory / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if card is not None:
        atomic_write(directory / CARD_FILE, card)
    for name, data in (plots or {}).items():
        if Path(name).name != name or not name.endswith(".png"):
            raise ConfigError(f"Plot file names must be plain '*.png' names, got {name!r}.")
        atomic_write(directory / name, data)
    # config.json last: a directory with a config is a complete package.
    atomic_write(directory / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")


def read_config(path: str | Path) -> PackageConfig:
    """Read a package's ``config.json``."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise PackageError(
            f"{path} is not a torchship model package: it has no {CONFIG_FILE}. "
            "Train one with `torchship train` or point at <store>/<name>[/<version>]."
        )
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise PackageError(f"{file} is larger than {MAX_CONFIG_BYTES} bytes; it is not a package config.")
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, bad JSON, huge integers
        raise PackageError(f"Cannot read {file}: {exc}.") from exc
    if not isinstance(data, dict):
        raise PackageError(f"{file} must hold a JSON object.")
    if not isinstance(data.get("format", PACKAGE_FORMAT), int):
        raise PackageError(f"{file}: format must be an integer, got {data['format']!r}.")
    if data.get("format", PACKAGE_FORMAT) > PACKAGE_FORMAT:
        raise PackageError(
            f"{path} uses package format {data['format']}, newer than this torchship understands "
            f"({PACKAGE_FORMAT}); upgrade torchship."
        )
    try:
        return PackageConfig.from_dict(data)
    except (ConfigError, TypeError, ValueError, AttributeError) as exc:  # AttributeError: "model" not a dict
        raise PackageError(f"Invalid {file}: {exc}") from exc


def load_package(path: str | Path) -> ModelPackage:
    """Load a package for inference: model in eval mode on the CPU, tokenizer ready. Never unpickles."""
    path = Path(path)
    config = read_config(path)
    for required in (WEIGHTS_FILE, TOKENIZER_FILE):
        if not (path / required).is_file():
            raise PackageError(f"Incomplete model package {path}: {required} is missing.")
    try:
        state = load_file(str(path / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise PackageError(f"Cannot read weights {path / WEIGHTS_FILE}: {exc}") from exc
    model = TransformerClassifier(config.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PackageError(f"Weights in {path / WEIGHTS_FILE} do not match config.json: {exc}") from exc
    model.eval()
    try:
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise PackageError(f"Cannot read tokenizer {path / TOKENIZER_FILE}: {exc}") from exc
    from torchship.data.tokenizer import configure_tokenizer

    configure_tokenizer(tokenizer, config.max_length, truncate=config.long_texts == "truncate")
    return ModelPackage(path=path, config=config, model=model, tokenizer=tokenizer)
