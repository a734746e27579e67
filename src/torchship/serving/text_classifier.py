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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchship.errors import PackageError, UserInputError
from torchship.serving.handler import ModelAPI
from torchship.serving.json_body import NotJSONError, parse_json

__all__ = ["BUILTIN_HANDLERS", "TextClassifierAPI", "plan_groups"]

_USAGE = 'send {"text": "...", "top_k": 3} as JSON or the text itself as text/plain'


@dataclass(frozen=True)
class _Item:
    text: str
    top_k: int | None


class TextClassifierAPI(ModelAPI):
    """Serves a torchship package whose ``config.json`` says ``"handler": "text-classifier"``."""

    inference_calls_steps = False
    # Per-sample cost grows with the padded tokens of a call past a few thousand (attention is quadratic
    # and stops fitting in cache); docs/performance.md ("Handler token caps") has the measurements.
    max_tokens = 1024
    """Padded tokens per forward call (batch x longest text) on a CPU; a longer text still gets a call of its
    own."""
    max_tokens_gpu = 32768
    """The same on a GPU: past 32k tokens the speed stays level while peak memory grows (docs/performance.md,
    "Handler token caps")."""
    max_padding = 0.25
    """Padding allowed in a forward call, as a fraction of its real tokens (plus ``padding_slack``)."""
    padding_slack = 64
    """Padding tokens always allowed: below this, one call fewer costs more than the padding."""

    def load(self, model_path: Path | None) -> Any:
        from torchship.store import load_package

        if model_path is None:
            raise PackageError("TextClassifierAPI needs model_path: a torchship package directory")
        self.package = load_package(model_path)
        self.labels = list(self.package.config.labels)
        self.pad_id = self.package.config.model.pad_id
        config = self.package.config
        self.windows = (config.max_length, config.window_overlap) if config.long_texts == "windows" else None
        self.tokenizer = self.package.tokenizer  # truncating or not, as config.json says (load_package)
        return self.package.model.to(self.resolved_device())

    def preprocess(self, data: list[Any]) -> list[_Item | UserInputError]:
        """Check each payload; a bad one becomes its request's 400 without failing the others."""
        return [_parse(payload) for payload in data]

    def inference(self, data: list[_Item | UserInputError]) -> list[Any]:
        """Probabilities per text, computed in length-sorted groups so padding stays small. A package that
        reads long texts as windows runs every window and averages each text's logits."""
        import torch

        from torchship.data.tokenizer import token_ids as encode_ids

        positions = [i for i, item in enumerate(data) if isinstance(item, _Item)]
        texts = [data[i].text for i in positions]  # type: ignore[union-attr]
        token_ids = encode_ids(self.tokenizer, texts) if texts else []
        results: list[Any] = list(data)
        if self.windows is not None and any(len(ids) > self.windows[0] for ids in token_ids):
            for k, row in enumerate(self._window_probabilities(token_ids)):
                results[positions[k]] = (data[positions[k]], row)
            return results
        for group, logits in self._forward_groups(token_ids):
            probabilities = torch.softmax(logits.float(), dim=-1).tolist()  # (B, num_classes)
            for row, k in zip(probabilities, group, strict=True):
                results[positions[k]] = (data[positions[k]], row)
        return results

    def _forward_groups(self, sequences: list[list[int]]) -> Iterator[tuple[list[int], Any]]:
        """``(indices, logits)`` per forward call over ``sequences``, grouped by length."""
        order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))
        lengths = [len(sequences[k]) for k in order]
        start = 0
        max_tokens = self.max_tokens if getattr(self.device, "type", "cpu") == "cpu" else self.max_tokens_gpu
        for size in plan_groups(lengths, self.max_padding, self.padding_slack, max_tokens):
            group = order[start : start + size]
            start += size
            ids, mask = _pad([sequences[k] for k in group], self.pad_id, self.device)
            yield group, self.model(ids, mask)  # (B, num_classes)

    def _window_probabilities(self, token_ids: list[list[int]]) -> list[list[float]]:
        import torch

        from torchship.data.windows import flat_windows, mean_by_text

        assert self.windows is not None
        length, overlap = self.windows
        windows, owner = flat_windows(token_ids, length, overlap)
        logits = torch.empty(len(windows), len(self.labels))
        for group, group_logits in self._forward_groups(windows):
            logits[group] = group_logits.float().cpu()
        text_logits = mean_by_text(logits, torch.tensor(owner), len(token_ids))
        return torch.softmax(text_logits, dim=-1).tolist()  # type: ignore[no-any-return]

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


def plan_groups(lengths: Sequence[int], max_padding: float, slack: int, max_tokens: int) -> list[int]:
    """Split ascending ``lengths`` into consecutive groups, one forward call each; returns the group sizes.

    A group grows while its padded size (count x longest) stays within ``max_tokens`` and its padding
    within ``max_padding`` of the real tokens plus ``slack`` tokens.

    >>> plan_groups([5, 5, 6, 100, 110], max_padding=0.25, slack=16, max_tokens=1024)
    [3, 2]
    """
    sizes: list[int] = []
    count = total = 0
    for length in lengths:
        padded = (count + 1) * length
        wasted = padded - (total + length) > max_padding * (total + length) + slack
        if count and (wasted or padded > max_tokens):
            sizes.append(count)
            count = total = 0
        count += 1
        total += length
    if count:
        sizes.append(count)
    return sizes


def _pad(sequences: list[list[int]], pad_id: int, device: Any = None) -> tuple[Any, Any]:
    import torch

    width = max(len(ids) for ids in sequences)
    # One tensor from padded lists: a copy per row cost ~4% of a worker's time on short texts.
    ids = torch.tensor([tokens + [pad_id] * (width - len(tokens)) for tokens in sequences], dtype=torch.int64)
    lengths = torch.tensor([len(tokens) for tokens in sequences])  # (B,)
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T) True on real tokens
    if getattr(device, "type", "cpu") != "cpu":
        ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    return ids, mask  # (B, T), (B, T)


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
