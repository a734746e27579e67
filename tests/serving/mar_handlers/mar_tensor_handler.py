"""A ``BaseHandler`` subclass that leaves loading to ``BaseHandler``: the same handler serves an eager
archive (model file + state dict) and a TorchScript one, so both of the archiver's model modes are served.

Takes JSON bodies ``{"x": [4 numbers]}`` (one row per request) and answers each row's outputs, rounded.
"""

from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class TensorHandler(BaseHandler):  # type: ignore[misc]
    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows = []
        for row in data:
            payload = row.get("data") if row.get("data") is not None else row.get("body")
            rows.append(payload["x"])
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data: torch.Tensor) -> list[list[float]]:
        return [[round(value, 5) for value in row] for row in data.tolist()]
