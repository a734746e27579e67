"""One inference path for a package's text classifier: texts in, class probabilities out.

``torchship predict``, ``torchship evaluate`` (through :meth:`ModelPackage.predict_proba`) and the
server's built-in handler (:class:`~torchship.serving.TextClassifierAPI`) all run texts through
:meth:`TextClassifierRunner.probabilities`, so a package answers the same wherever it runs:

1. tokenize each text (:func:`~torchship.data.tokenizer.token_ids`; the package's tokenizer truncates
   to ``max_length`` tokens, or keeps them all when the package reads long texts as windows);
2. with ``long_texts="windows"``, cut every longer text into windows
   (:func:`~torchship.data.windows.flat_windows`);
3. sort the sequences by length and cut them into groups, one forward call each
   (:func:`plan_groups`, within :class:`GroupLimits`);
4. pad each group (:func:`~torchship.data.tokenizer.pad_token_ids`) and run the model on it;
5. average the logits of each text's windows (:func:`~torchship.data.windows.mean_by_text`), then softmax.

The model masks padding, so which texts share a forward call changes an answer by float rounding only.
This module imports neither Lightning nor the server: both sides use it.

    >>> runner = TextClassifierRunner.for_package(load_package("./models/bbc/1"))
    >>> runner.probabilities(["Shares rose sharply"]).shape
    torch.Size([1, 5])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer

from torchship.data.tokenizer import pad_token_ids, token_ids
from torchship.data.windows import flat_windows, mean_by_text
from torchship.errors import ConfigError

if TYPE_CHECKING:
    from torchship.store.package import ModelPackage

__all__ = ["CPU_MAX_TOKENS", "GPU_MAX_TOKENS", "GroupLimits", "TextClassifierRunner", "plan_groups"]

# Per-text cost grows with the padded tokens of a call past a few thousand on a CPU (attention is quadratic
# and stops fitting in cache); on a GPU, past 32k the speed stays level while peak memory grows.
# docs/performance.md ("Handler token caps") has the measurements.
CPU_MAX_TOKENS = 1024
"""Padded tokens per forward call on a CPU."""
GPU_MAX_TOKENS = 32768
"""Padded tokens per forward call on a GPU."""


@dataclass(frozen=True)
class GroupLimits:
    """How length-sorted sequences are grouped into forward calls (:func:`plan_groups`)."""

    max_tokens: int = CPU_MAX_TOKENS
    """Padded tokens per forward call (count x longest); a longer sequence still gets a call of its own."""
    max_padding: float = 0.25
    """Padding allowed in a forward call, as a fraction of its real tokens (plus ``padding_slack``)."""
    padding_slack: int = 64
    """Padding tokens always allowed: below this, one call fewer costs more than the padding."""
    max_sequences: int | None = None
    """Sequences (texts, or windows) per forward call; None: only the limits above."""

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens: must be a positive whole number, got {self.max_tokens!r}")
        if not self.max_padding >= 0:  # also refuses NaN
            raise ConfigError(f"max_padding: must be 0 or more, got {self.max_padding!r}")
        if self.padding_slack < 0:
            raise ConfigError(f"padding_slack: must be 0 or more, got {self.padding_slack!r}")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ConfigError(f"max_sequences: must be a positive whole number, got {self.max_sequences!r}")

    @classmethod
    def for_device(cls, device: torch.device, max_sequences: int | None = None) -> GroupLimits:
        """The default limits for a model on ``device``: :data:`CPU_MAX_TOKENS` on the CPU,
        :data:`GPU_MAX_TOKENS` on any accelerator."""
        return cls(CPU_MAX_TOKENS if device.type == "cpu" else GPU_MAX_TOKENS, max_sequences=max_sequences)


def plan_groups(lengths: Sequence[int], limits: GroupLimits) -> list[int]:
    """Split ascending ``lengths`` into consecutive groups, one forward call each; returns the group sizes.

    A group grows while its padded size (count x longest) stays within ``limits.max_tokens``, its padding
    within ``max_padding`` of the real tokens plus ``padding_slack`` tokens, and its count within
    ``max_sequences``.

    >>> plan_groups([5, 5, 6, 100, 110], GroupLimits(max_tokens=1024, padding_slack=16))
    [3, 2]
    """
    sizes: list[int] = []
    count = total = 0
    for length in lengths:
        padded = (count + 1) * length
        wasted = padded - (total + length) > limits.max_padding * (total + length) + limits.padding_slack
        if count and (wasted or padded > limits.max_tokens or count == limits.max_sequences):
            sizes.append(count)
            count = total = 0
        count += 1
        total += length
    if count:
        sizes.append(count)
    return sizes


@dataclass(frozen=True)
class TextClassifierRunner:
    """Runs a text classifier on texts, the same way for ``torchship predict``, ``evaluate`` and serving.

    Build it once per model and device (:meth:`for_package`); :meth:`probabilities` is the hot path.
    """

    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """``model(input_ids (B, T), attention_mask (B, T)) -> logits (B, num_classes)``."""
    tokenizer: Tokenizer
    """Configured as the package says (:func:`~torchship.data.tokenizer.configure_tokenizer`)."""
    num_classes: int
    pad_id: int
    windows: tuple[int, int] | None
    """``(max_length, overlap)`` when long texts are read as windows, else None (the tokenizer truncates)."""
    device: torch.device
    """Where the model's inputs go."""
    limits: GroupLimits

    @classmethod
    def for_package(
        cls,
        package: ModelPackage,
        *,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        limits: GroupLimits | None = None,
    ) -> TextClassifierRunner:
        """A runner for ``package``'s model (or ``model``, e.g. a compiled copy of it) on the device the
        package's model is on, grouped by ``limits`` (default: :meth:`GroupLimits.for_device`)."""
        config = package.config
        device = next(package.model.parameters()).device  # the CPU unless moved (``package.model.to(...)``)
        return cls(
            model=package.model if model is None else model,
            tokenizer=package.tokenizer,
            num_classes=config.model.num_classes,
            pad_id=config.model.pad_id,
            windows=(config.max_length, config.window_overlap) if config.long_texts == "windows" else None,
            device=device,
            limits=GroupLimits.for_device(device) if limits is None else limits,
        )

    def probabilities(self, texts: Sequence[str]) -> torch.Tensor:
        """Class probabilities ``(len(texts), num_classes)``, float32 on the CPU, rows in input order."""
        with _inference_mode():
            return torch.softmax(self._logits(texts), dim=-1)

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Logits ``(len(texts), num_classes)``, float32 on the CPU, rows in input order; a text read as
        windows gets the mean of its windows' logits."""
        with _inference_mode():
            return self._logits(texts)

    def _logits(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.empty(0, self.num_classes)
        ids = token_ids(self.tokenizer, texts)
        if self.windows is None or all(len(row) <= self.windows[0] for row in ids):
            logits, order = self._sorted_logits(ids)
            return _unsort(logits, order)
        windows, owner = flat_windows(ids, *self.windows)
        logits, order = self._sorted_logits(windows)
        # Averaging by owner puts every text's windows in place: no need to unsort them first.
        return mean_by_text(logits, torch.tensor([owner[k] for k in order]), len(ids))

    def _sorted_logits(self, sequences: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        """Logits ``(S, num_classes)`` of ``sequences`` sorted by length, run in groups, and that order."""
        order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))
        sizes = plan_groups([len(sequences[k]) for k in order], self.limits)
        on_cpu = self.device.type == "cpu"
        parts: list[torch.Tensor] = []
        start = 0
        for size in sizes:
            ids, mask = pad_token_ids([sequences[k] for k in order[start : start + size]], self.pad_id)
            if not on_cpu:
                ids, mask = ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
            parts.append(self.model(ids, mask))  # (B, num_classes)
            start += size
        # One copy to the CPU for the whole batch: on a GPU each copy waits for the model.
        logits = (parts[0] if len(parts) == 1 else torch.cat(parts)).float().cpu()  # (S, num_classes)
        return logits, order


def _inference_mode() -> AbstractContextManager[object]:
    # The server's workers run every batch in inference mode already; entering it again costs time.
    return nullcontext() if torch.is_inference_mode_enabled() else torch.inference_mode()


def _unsort(rows: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``rows`` put back in input order: row ``j`` of ``rows`` belongs at ``order[j]``."""
    if all(position == j for j, position in enumerate(order)):  # one text, or texts sorted already
        return rows
    return torch.empty_like(rows).index_copy_(0, torch.tensor(order), rows)
