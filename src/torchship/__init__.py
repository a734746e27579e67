"""torchship: from data to a production REST API for PyTorch Transformer models.

    from torchship import ModelAPI

    class MyModelAPI(ModelAPI):
        def inference(self, data): ...

    MyModelAPI(model_path="./models/bbc").start()

The names below are the public API. Importing ``torchship`` never imports Lightning: ``train``,
``DataConfig``, ``ModelOptions`` and ``OptimOptions`` load the training stack on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torchship._version import __version__
from torchship.errors import (
    ConfigError,
    ConflictError,
    DataError,
    NotFoundError,
    PackageError,
    TorchshipError,
    UserInputError,
    VersionExistsError,
    VersionNotFoundError,
)
from torchship.models import TransformerClassifier, TransformerConfig, load_pretrained
from torchship.serving import ModelAPI, TextClassifierAPI
from torchship.store import (
    ModelPackage,
    ModelStore,
    PackageConfig,
    load_package,
    resolve_model,
    write_package,
)

if TYPE_CHECKING:
    from torchship.data.datamodule import DataConfig
    from torchship.training import ModelOptions, OptimOptions, train

__all__ = [
    "ConfigError",
    "ConflictError",
    "DataConfig",
    "DataError",
    "ModelAPI",
    "ModelOptions",
    "ModelPackage",
    "ModelStore",
    "NotFoundError",
    "OptimOptions",
    "PackageConfig",
    "PackageError",
    "TextClassifierAPI",
    "TorchshipError",
    "TransformerClassifier",
    "TransformerConfig",
    "UserInputError",
    "VersionExistsError",
    "VersionNotFoundError",
    "__version__",
    "load_package",
    "load_pretrained",
    "resolve_model",
    "train",
    "write_package",
]

_LAZY = {
    "DataConfig": "torchship.data.datamodule",
    "ModelOptions": "torchship.training",
    "OptimOptions": "torchship.training",
    "train": "torchship.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torchship' has no attribute {name!r}")
