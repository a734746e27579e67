"""Turn tokenised examples into padded batches of similar length.

Padding costs compute for nothing, and texts vary a lot in length (BBC News articles: median 420
WordPiece tokens, longest 5,400), so batches are made of examples of similar length.
:class:`LengthGroupedBatchSampler` follows the recipe of Hugging Face's ``LengthGroupedSampler``:
take the indices in the order its ``sampler`` gives them, cut them into mega-batches of
``mega_batch_factor`` batches, sort each mega-batch by length, cut it into batches, and shuffle the
order of the batches. Evaluation sorts the whole set instead.

It subclasses :class:`torch.utils.data.BatchSampler` and takes its indices from a ``sampler``
argument, because that is what Lightning needs to make it distributed: under DDP, Lightning rebuilds
the batch sampler with a ``DistributedSampler`` in place of ``sampler``, so each process groups and
batches its own shard (``lightning.pytorch.utilities.data._dataloader_init_kwargs_resolve_sampler``).
This module does not import Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, Dataset, Sampler

from torchship.data.tokenizer import pad_token_ids

__all__ = [
    "LengthGroupedBatchSampler",
    "TokenizedDataset",
    "WindowedDataset",
    "collate_batch",
    "collate_windows",
    "padding_fraction",
]


class TokenizedDataset(Dataset[tuple[list[int], int]]):
    """Token ids (tokenised once, up front) and label indices; item ``i`` is ``(token_ids, label_index)``."""

    def __init__(self, token_ids: Sequence[list[int]], labels: Sequence[int]) -> None:
        if len(token_ids) != len(labels):
            raise ValueError(f"{len(token_ids)} token sequences but {len(labels)} labels")
        self.token_ids = list(token_ids)
        self.labels = list(labels)
        self.lengths = [len(ids) for ids in self.token_ids]

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.token_ids[index], self.labels[index]


class WindowedDataset(Dataset[tuple[list[list[int]], int]]):
    """Texts read as windows (:mod:`torchship.data.windows`) and label indices; item ``i`` is
    ``(windows, label_index)``, so a batch always holds every window of its texts. ``lengths`` are the
    texts' tokens over all their windows, what evaluation batches are sorted by."""

    def __init__(self, windows: Sequence[list[list[int]]], labels: Sequence[int]) -> None:
        if len(windows) != len(labels):
            raise ValueError(f"{len(windows)} windowed texts but {len(labels)} labels")
        self.windows = list(windows)
        self.labels = list(labels)
        self.lengths = [sum(len(ids) for ids in text) for text in self.windows]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[list[list[int]], int]:
        return self.windows[index], self.labels[index]


def collate_windows(items: Sequence[tuple[list[list[int]], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Every window of the batch's texts, padded: ``input_ids`` (W, T), ``attention_mask`` (W, T),
    ``text_index`` (W,) int64 (which text each window is from) and ``labels`` (B,) per text."""
    windows = [ids for text, _ in items for ids in text]
    input_ids, attention_mask = pad_token_ids(windows, pad_id)
    text_index = torch.tensor([k for k, (text, _) in enumerate(items) for _ in text], dtype=torch.int64)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)  # (B,)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "text_index": text_index,
        "labels": labels,
    }


def collate_batch(items: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest item: ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) bool, ``labels`` (B,)
    int64."""
    input_ids, attention_mask = pad_token_ids([ids for ids, _ in items], pad_id)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)  # (B,)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class LengthGroupedBatchSampler(BatchSampler):
    """Batches of indices of similar ``lengths``, in a seeded random order (sorted if not ``shuffle``).

    ``sampler`` decides which indices this process sees and in what order (a ``RandomSampler`` for
    training, a ``SequentialSampler`` for evaluation, a ``DistributedSampler`` under DDP); the number
    of batches is ``ceil(len(sampler) / batch_size)`` (floor with ``drop_last``), the same on every
    process, as DDP requires.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool,
        lengths: Sequence[int],
        shuffle: bool = True,
        mega_batch_factor: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if mega_batch_factor < 1:
            raise ValueError(f"mega_batch_factor should be a positive integer, got {mega_batch_factor}")
        self.lengths = lengths
        self.shuffle = shuffle
        self.mega_batch_factor = mega_batch_factor
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the batch order of ``epoch`` (it also advances by itself at every pass)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)
        # Mega-batches are whole multiples of batch_size, so only the very last batch can be short.
        group = self.batch_size * self.mega_batch_factor if self.shuffle else max(len(indices), 1)
        batches: list[list[int]] = []
        for start in range(0, len(indices), group):
            mega_batch = sorted(indices[start : start + group], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(
                mega_batch[i : i + self.batch_size] for i in range(0, len(mega_batch), self.batch_size)
            )
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in order]
            self.epoch += 1
        yield from batches

    def __len__(self) -> int:
        count = len(self.sampler)  # type: ignore[arg-type]
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)


def padding_fraction(batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """The share of positions in ``batches`` that are padding (0.0 = none wasted)."""
    total = sum(batch["attention_mask"].numel() for batch in batches)
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    return 1.0 - real / total if total else 0.0
