"""The benchmark model behind TorchServe: a custom ``BaseHandler`` packed into a ``.mar``.

    torch-model-archiver --model-name bbc --version 1.0 --handler torchserve_handler.py \
        --extra-files config.json,model.safetensors,tokenizer.json --export-path model_store

Answers torchship's built-in handler's JSON: ``{"label", "score", "probabilities"}``. Self-contained
(only torch, torchship and TorchServe's ``ts``): TorchServe imports this file from the unpacked archive.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class TextClassifierHandler(BaseHandler):  # type: ignore[misc]
    """One text per request; TorchServe hands ``handle`` up to ``batchSize`` requests at once."""

    def initialize(self, context: Any) -> None:
        from torchship.store import load_package

        # BaseHandler.initialize expects a TorchScript or pickled model; ours is a package directory.
        self.manifest = context.manifest
        self.device = torch.device("cpu")
        self.package = load_package(context.system_properties["model_dir"])
        self.labels = list(self.package.config.labels)
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> list[str]:
        return [_text(row.get("data") if row.get("data") is not None else row.get("body")) for row in data]

    def inference(self, data: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.package.predict_proba(data, batch_size=len(data))  # (B, C)

    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        return [self._answer(row.tolist()) for row in data]

    def _answer(self, values: list[float]) -> dict[str, Any]:
        ranked = sorted(range(len(values)), key=lambda index: -values[index])
        return {
            "label": self.labels[ranked[0]],
            "score": round(values[ranked[0]], 6),
            "probabilities": {self.labels[index]: round(values[index], 6) for index in ranked},
        }


def _text(payload: Any) -> str:
    # TorchServe decodes an application/json body into a dict; other bodies arrive as bytes.
    if isinstance(payload, (bytes, bytearray)):
        payload = payload.decode("utf-8")
        if payload.lstrip().startswith("{"):
            payload = json.loads(payload)
    if isinstance(payload, dict):
        return str(payload["text"])
    return str(payload)
