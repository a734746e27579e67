"""The model server: ``ModelAPI`` handlers behind TorchServe's REST APIs and the Open Inference Protocol.

    from torchship.serving import ModelAPI

    class MyModelAPI(ModelAPI):
        def inference(self, data): ...

    MyModelAPI(model_path="model.pth").start()

Importing this package is cheap (no torch, no uvicorn): ``Server``, ``ServerThread`` and ``run`` load the
server stack on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchship.serving.handler import ModelAPI
from torchship.serving.settings import ModelSettings, ServerSettings
from torchship.serving.text_classifier import TextClassifierAPI

if TYPE_CHECKING:
    from torchship.serving.runner import ServerThread, run
    from torchship.serving.server import Server

__all__ = [
    "ModelAPI",
    "ModelSettings",
    "Server",
    "ServerSettings",
    "ServerThread",
    "TextClassifierAPI",
    "run",
]

_LAZY = {
    "Server": "torchship.serving.server",
    "ServerThread": "torchship.serving.runner",
    "run": "torchship.serving.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torchship.serving' has no attribute {name!r}")
