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
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from torchship.data.windows import check_windowing
from torchship.errors import ConfigError, PackageError
from torchship.models.transformer import TransformerClassifier, TransformerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.json"
CARD_FILE = "card.md"
PACKAGE_FORMAT = 1
TEXT_CLASSIFIER = "text-classifier"
MAX_CONFIG_BYTES = 1 << 20
"""Largest ``config.json`` read (a real one is a few KB); a larger one is a :class:`PackageError`."""


def _torchship_version() -> str:
    from torchship import __version__

    return __version__


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
    torchship_version: str = field(default_factory=_torchship_version)
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown field(s) in package config: {', '.join(unknown)}.")
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

    @torch.inference_mode()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Class probabilities for ``texts``, shape ``(len(texts), num_classes)``, float32 on the CPU; the
        model runs on whatever device it is on. A package that reads long texts as windows runs every
        window (``batch_size`` windows per call) and averages each text's logits."""
        from torchship.data.tokenizer import pad_token_ids, token_ids
        from torchship.data.windows import flat_windows, mean_by_text

        num_classes = self.config.model.num_classes
        if not texts:
            return torch.empty(0, num_classes)
        ids = token_ids(self.tokenizer, texts)
        if self.config.long_texts == "windows":
            sequences, owner = flat_windows(ids, self.config.max_length, self.config.window_overlap)
        else:
            sequences, owner = ids, list(range(len(ids)))
        # Sort by length so each batch pads little, then put the rows back in input order.
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        logits = torch.empty(len(sequences), num_classes)
        device = next(self.model.parameters()).device  # the CPU unless moved (``package.model.to(...)``)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, mask = pad_token_ids([sequences[i] for i in chunk], self.config.model.pad_id)
            logits[chunk] = self.model(input_ids.to(device), mask.to(device)).float().cpu()
        if len(sequences) != len(texts):
            logits = mean_by_text(logits, torch.tensor(owner), len(texts))
        return torch.softmax(logits, dim=-1)


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
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save(str(directory / TOKENIZER_FILE))
    if metrics is not None:
        _write_text(directory / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if card is not None:
        _write_text(directory / CARD_FILE, card)
    for name, data in (plots or {}).items():
        if Path(name).name != name or not name.endswith(".png"):
            raise ConfigError(f"Plot file names must be plain '*.png' names, got {name!r}.")
        (directory / name).write_bytes(data)
    # config.json last: a directory with a config is a complete package.
    _write_text(directory / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")


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


def _write_text(path: Path, text: str) -> None:
    # Atomic within the package too: a reader never sees a truncated JSON file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
