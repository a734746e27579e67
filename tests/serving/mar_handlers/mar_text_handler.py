"""A custom ``BaseHandler`` subclass, as TorchServe users write them: a batched text classifier.

Packed with ``text_model.py`` (eager model file), its state dict, ``index_to_name.json`` (labels),
``vocab.json`` (word ids) and a ``model-config.yaml`` whose ``handler`` section sets the rounding. Takes a
JSON body ``{"text": ...}`` (TorchServe decodes it into a dict), a text body (a str) or any other body
(bytes); answers ``{"label", "probabilities"}`` per request and sets a response header naming the label.
"""

import json
import os
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class TextHandler(BaseHandler):  # type: ignore[misc]
    def initialize(self, context: Any) -> None:
        super().initialize(context)  # the eager model, and self.mapping from index_to_name.json
        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "vocab.json"), encoding="utf-8") as file:
            self.vocab = json.load(file)
        self.digits = int(self.model_yaml_config.get("handler", {}).get("round_digits", 6))

    def preprocess(self, data: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids: list[int] = []
        offsets: list[int] = []
        for row in data:
            offsets.append(len(ids))
            words = _text(row).lower().split()
            ids.extend([self.vocab.get(word, 0) for word in words] or [0])
        return torch.tensor(ids), torch.tensor(offsets)

    def inference(self, data: tuple[torch.Tensor, torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        ids, offsets = data
        with torch.inference_mode():
            return self.model(ids, offsets)  # type: ignore[no-any-return]

    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        answers = []
        for index, row in enumerate(torch.softmax(data, dim=1).tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            label = self.mapping[str(best)]
            self.context.set_response_header(index, "x-predicted-label", label)
            probabilities = {self.mapping[str(i)]: round(p, self.digits) for i, p in enumerate(row)}
            answers.append({"label": label, "probabilities": probabilities})
        return answers


def _text(row: dict[str, Any]) -> str:
    payload = row.get("data") if row.get("data") is not None else row.get("body")
    if isinstance(payload, (bytes, bytearray)):
        payload = payload.decode("utf-8")
    if isinstance(payload, dict):
        return str(payload["text"])
    return str(payload)
