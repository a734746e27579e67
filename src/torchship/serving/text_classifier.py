"""The built-in handler for torchship text-classifier packages, and the table of built-in handlers.

Request (one text per request; the server batches concurrent requests)::

    POST /predictions/bbc   {"text": "Shares rose after the results.", "top_k": 2}
    POST /predictions/bbc   Shares rose after the results.          (Content-Type: text/plain)

Response::

    {"label": "business", "score": 0.93, "probabilities": {"business": 0.93, "politics": 0.04}}

``probabilities`` lists every label, most likely first, or the ``top_k`` most likely. Several texts in
one call go through the Open Inference Protocol endpoint (``/v2/models/bbc/infer``), which splits them
into requests that are batched like any others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchship.errors import PackageError, UserInputError
from torchship.serving.handler import ModelAPI
from torchship.serving.json_body import NotJSONError, parse_json
from torchship.store.inference import CPU_MAX_TOKENS, GPU_MAX_TOKENS, GroupLimits, TextClassifierRunner

__all__ = ["BUILTIN_HANDLERS", "TextClassifierAPI"]

_USAGE = 'send {"text": "...", "top_k": 3} as JSON or the text itself as text/plain'


@dataclass(frozen=True)
class _Item:
    text: str
    top_k: int | None


class TextClassifierAPI(ModelAPI):
    """Serves a torchship package whose ``config.json`` says ``"handler": "text-classifier"``.

    Texts run through :class:`~torchship.store.inference.TextClassifierRunner`, the code that ``torchship
    predict`` and ``torchship evaluate`` run, so the server answers what they print."""

    inference_calls_steps = False
    max_tokens = CPU_MAX_TOKENS
    """Padded tokens per forward call (batch x longest text) on a CPU; a longer text still gets a call of its
    own. Per-text cost grows with the padded tokens of a call past a few thousand (docs/performance.md,
    "Handler token caps")."""
    max_tokens_gpu = GPU_MAX_TOKENS
    """The same on a GPU: past 32k tokens the speed stays level while peak memory grows (docs/performance.md,
    "Handler token caps")."""
    max_padding = GroupLimits.max_padding
    """Padding allowed in a forward call, as a fraction of its real tokens (plus ``padding_slack``)."""
    padding_slack = GroupLimits.padding_slack
    """Padding tokens always allowed: below this, one call fewer costs more than the padding."""

    def load(self, model_path: Path | None) -> Any:
        from torchship.store import load_package

        if model_path is None:
            raise PackageError("TextClassifierAPI needs model_path: a torchship package directory")
        self.package = load_package(model_path)
        self.labels = list(self.package.config.labels)
        self.tokenizer = self.package.tokenizer  # truncating or not, as config.json says (load_package)
        device = self.resolved_device()
        model = self.package.model.to(device)
        self.runner = TextClassifierRunner.for_package(self.package, limits=self.group_limits(device))
        return model

    def group_limits(self, device: Any) -> GroupLimits:
        """How this handler groups texts into forward calls on ``device`` (from the attributes above)."""
        max_tokens = self.max_tokens if device.type == "cpu" else self.max_tokens_gpu
        return GroupLimits(max_tokens, self.max_padding, self.padding_slack)

    def preprocess(self, data: list[Any]) -> list[_Item | UserInputError]:
        """Check each payload; a bad one becomes its request's 400 without failing the others."""
        return [_parse(payload) for payload in data]

    def inference(self, data: list[_Item | UserInputError]) -> list[Any]:
        """Probabilities per text (``TextClassifierRunner.probabilities``); bad payloads pass through."""
        positions = [i for i, item in enumerate(data) if isinstance(item, _Item)]
        results: list[Any] = list(data)
        if not positions:
            return results
        rows = self.runner.probabilities([data[i].text for i in positions]).tolist()  # type: ignore[union-attr]
        for i, row in zip(positions, rows, strict=True):
            results[i] = (data[i], row)
        return results

    def postprocess(self, output: list[Any]) -> list[Any]:
        """``{"label", "score", "probabilities"}`` per request (errors pass through)."""
        return [result if isinstance(result, Exception) else self._answer(*result) for result in output]

    def _answer(self, item: _Item, values: list[float]) -> dict[str, Any]:
        ranked = sorted(range(len(values)), key=lambda index: -values[index])[: item.top_k]
        return {
            "label": self.labels[ranked[0]],
            "score": round(values[ranked[0]], 6),
            "probabilities": {self.labels[index]: round(values[index], 6) for index in ranked},
        }

    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """Open Inference Protocol metadata, read from ``config.json`` without loading the model."""
        labels = _labels_of(self.model_path)
        return {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "score", "datatype": "FP32", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
            ],
        }


def _parse(payload: Any) -> _Item | UserInputError:
    if isinstance(payload, bytes):
        raw = payload
        try:
            payload = raw.decode("utf-8")
        except UnicodeDecodeError:
            return UserInputError(f"The request body is not UTF-8 text; {_USAGE}")
        if payload.lstrip().startswith("{"):
            try:
                payload = parse_json(raw, "The request body")
            except NotJSONError:
                pass  # a text that happens to start with "{"
            except UserInputError as exc:  # JSON the server refuses (too deep, a lone surrogate, ...)
                return exc
    if isinstance(payload, str):
        return _Item(payload, None)
    if not isinstance(payload, dict):
        return UserInputError(f"Expected one text per request, got a JSON {type(payload).__name__}; {_USAGE}")
    text, top_k = payload.get("text"), payload.get("top_k")
    if not isinstance(text, str):
        hint = " (one text per request; the server batches for you)" if "texts" in payload else ""
        return UserInputError(f'The JSON body needs a "text" string{hint}; {_USAGE}')
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        return UserInputError(f'"top_k" must be a positive integer, got {top_k!r}')
    return _Item(text, top_k)


def _labels_of(model_path: Path | None) -> list[str]:
    try:
        data = json.loads((Path(str(model_path)) / "config.json").read_text(encoding="utf-8"))
        return [str(label) for label in data["labels"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


BUILTIN_HANDLERS: dict[str, type[ModelAPI]] = {"text-classifier": TextClassifierAPI}
"""``config.json``'s ``handler`` → the class that serves it. Packages cannot name arbitrary code."""
