"""Long texts read whole: windows of ``max_length`` tokens, one prediction per text.

With ``long_texts="truncate"`` (the default) a model sees the first ``max_length`` tokens of a text and
nothing after. With ``"windows"`` a longer text is cut into windows of ``max_length`` tokens, each wrapped
in the tokenizer's own ``[CLS]`` ... ``[SEP]``:

* **training** turns every window into a training example with the text's label; windows do not overlap,
  so each token is seen once per epoch (``train_loss`` and ``train_accuracy`` count windows; validation
  and test metrics count texts);
* **evaluation, prediction and serving** run every window of a text (consecutive windows share
  ``overlap`` tokens) and average their logits: the text gets one answer, from all of it.

The last window is aligned to the end of the text, so every window of a long text is full; a short
window would count as much as a full one in the average while carrying a handful of tokens.

    >>> split_windows([101, 1, 2, 3, 4, 5, 102], length=5, overlap=1)
    [[101, 1, 2, 3, 102], [101, 3, 4, 5, 102]]
    >>> split_windows([101, 1, 2, 102], length=5, overlap=1)
    [[101, 1, 2, 102]]

Measured on BBC News with all-MiniLM-L6-v2 (split 42; ``benchmarks/train_bbc.py``): see docs/performance.md's
training section. Hugging Face ``tokenizers`` can return the overflow of a truncated text itself
(``enable_truncation(stride=...)`` and ``Encoding.overflowing``), but its last window holds whatever is
left over, down to a single token; hence this small module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from tokenizers import Tokenizer

from torchship.errors import ConfigError

__all__ = [
    "LONG_TEXTS",
    "LongTexts",
    "check_window_tokenizer",
    "check_windowing",
    "default_overlap",
    "flat_windows",
    "mean_by_text",
    "split_windows",
    "text_windows",
]

LongTexts = Literal["truncate", "windows"]
LONG_TEXTS: tuple[str, ...] = ("truncate", "windows")

_WRAPPERS = 2  # [CLS] and [SEP] (or <s> and </s>) around every window


def default_overlap(max_length: int) -> int:
    """Tokens shared by consecutive prediction windows unless told otherwise: half a window's text."""
    return max(0, (max_length - _WRAPPERS) // 2)


def check_windowing(long_texts: str, max_length: int, overlap: int, *, prefix: str = "") -> None:
    """Raise :class:`ConfigError` naming the setting unless ``long_texts``/``overlap`` fit ``max_length``."""
    if long_texts not in LONG_TEXTS:
        raise ConfigError(f"{prefix}long_texts: expected 'truncate' or 'windows', got {long_texts!r}")
    if long_texts == "windows" and max_length < _WRAPPERS + 1:
        raise ConfigError(f"{prefix}max_length: windows need at least 3 tokens, got {max_length}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ConfigError(f"{prefix}window_overlap: must be a whole number of tokens >= 0, got {overlap!r}")
    if long_texts == "windows" and overlap > max_length - _WRAPPERS - 1:
        raise ConfigError(
            f"{prefix}window_overlap: at most max_length - 3 = {max_length - _WRAPPERS - 1} tokens "
            f"(each window must move forward), got {overlap}"
        )


def check_window_tokenizer(tokenizer: Tokenizer) -> None:
    """Raise :class:`ConfigError` unless ``tokenizer`` wraps a text in exactly two special tokens, the
    first and last tokens every window repeats."""
    added = tokenizer.num_special_tokens_to_add(False)
    if added != _WRAPPERS:
        raise ConfigError(
            f"long_texts: windows need a tokenizer that wraps each text in two special tokens "
            f"([CLS] ... [SEP]); this one adds {added}. Use long_texts='truncate', or give the tokenizer "
            "a post-processor (tokenizers.processors.TemplateProcessing)"
        )


def split_windows(ids: Sequence[int], length: int, overlap: int) -> list[list[int]]:
    """Cut one tokenised text (``[CLS] ... [SEP]``) into windows of at most ``length`` tokens that share
    ``overlap`` text tokens with their neighbour; a text that fits is returned as it is."""
    if len(ids) <= length:
        return [list(ids)]
    first, body, last = ids[0], ids[1:-1], ids[-1]
    size = length - _WRAPPERS
    step = size - overlap
    starts = [*range(0, len(body) - size, step), len(body) - size]
    return [[first, *body[start : start + size], last] for start in starts]


def text_windows(
    tokenizer: Tokenizer, texts: Sequence[str], length: int, overlap: int
) -> list[list[list[int]]]:
    """The windows of each text. ``tokenizer`` must not truncate (see :func:`configure_tokenizer`)."""
    from torchship.data.tokenizer import token_ids

    return [split_windows(ids, length, overlap) for ids in token_ids(tokenizer, texts)]


def flat_windows(
    token_ids: Sequence[Sequence[int]], length: int, overlap: int
) -> tuple[list[list[int]], list[int]]:
    """The windows of every tokenised text in one list, and for each the index of the text it came from."""
    flat: list[list[int]] = []
    owner: list[int] = []
    for index, ids in enumerate(token_ids):
        windows = split_windows(ids, length, overlap)
        flat.extend(windows)
        owner.extend([index] * len(windows))
    return flat, owner


def mean_by_text(logits: torch.Tensor, text_index: torch.Tensor, num_texts: int) -> torch.Tensor:
    """Average per-window ``logits`` (W, C) into per-text logits (N, C); ``text_index`` (W,) says which
    text each window belongs to, and every text has at least one window."""
    sums = logits.new_zeros(num_texts, logits.shape[-1]).index_add_(0, text_index, logits)
    counts = torch.bincount(text_index, minlength=num_texts).clamp_(min=1).unsqueeze(1)  # (N, 1)
    return sums / counts.to(logits.dtype)
