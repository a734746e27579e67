"""The Lightning DataModule: read, split, check, tokenise once, and batch by length.

    >>> dm = TextClassificationDataModule(DataConfig(data="bbc-news", max_length=256))
    >>> dm.labels
    ['business', 'entertainment', 'politics', 'sports', 'tech']
    >>> batch = next(iter(dm.train_dataloader()))   # input_ids, attention_mask, labels

Everything that can be wrong with the data is found in ``__init__``, before a Trainer starts.
Under DDP every process builds its own DataModule; the split and the trained tokenizer are
deterministic, so all processes agree on them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from torchship.data.batching import (
    LengthGroupedBatchSampler,
    TokenizedDataset,
    WindowedDataset,
    collate_batch,
    collate_windows,
)
from torchship.data.formats import Example, read_examples
from torchship.data.split import check_fractions, check_labels, stratified_split
from torchship.data.tokenizer import configure_tokenizer, pad_token_id, token_ids, train_tokenizer
from torchship.data.windows import (
    LongTexts,
    check_window_tokenizer,
    check_windowing,
    default_overlap,
    flat_windows,
    text_windows,
)
from torchship.errors import ConfigError

__all__ = ["DataConfig", "TextClassificationDataModule"]

_Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to split, tokenise and batch it."""

    data: str
    """A CSV/TSV/JSONL/Parquet file, a folder of class-named subfolders, or a built-in name (``bbc-news``)."""
    val_data: str | None = None
    """Validation file; if given, ``data`` is not split for validation (its share goes to training)."""
    test_data: str | None = None
    """Test file; if given, ``data`` is not split for testing (its share goes to training)."""
    text_column: str = "text"
    """Column (CSV, Parquet) or field (JSONL) holding the text."""
    label_column: str = "label"
    """Column or field holding the label (strings or integers)."""
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train, validation and test fractions of ``data``, stratified by class."""
    seed: int = 42
    """Seed of the split (unless ``split_seed`` is given), the initial weights and the batch order."""
    split_seed: int | None = None
    """Seed of the split alone: vary ``seed`` with this fixed to train again on the same split."""
    tokenizer: Literal["wordpiece", "bpe"] = "wordpiece"
    """Subword model trained on the training split when no tokenizer is given."""
    vocab_size: int = 16000
    """Vocabulary size of the trained tokenizer, special tokens included."""
    lowercase: bool = True
    """Lowercase and strip accents before tokenising."""
    max_length: int = 512
    """Longest sequence in tokens, [CLS] and [SEP] included; longer texts are truncated or windowed."""
    long_texts: LongTexts = "truncate"
    """A text longer than ``max_length``: ``truncate`` reads its first ``max_length`` tokens; ``windows``
    reads all of it as windows of ``max_length`` tokens (training examples each; evaluation, prediction
    and serving average a text's windows). See :mod:`torchship.data.windows`."""
    window_overlap: int | None = None
    """With ``windows``: tokens shared by consecutive windows at evaluation and prediction (training
    windows never overlap); default half a window."""
    batch_size: int = 32
    """Training batch size (per process)."""
    eval_batch_size: int = 64
    """Validation and test batch size."""
    num_workers: int = 0
    """DataLoader worker processes; batches are cheap to collate, so 0 is usually fastest."""

    def __post_init__(self) -> None:
        # jsonargparse and YAML hand over lists; keep the frozen dataclass hashable and comparable.
        object.__setattr__(self, "split", check_fractions(self.split))
        if self.tokenizer not in ("wordpiece", "bpe"):
            raise ConfigError(f"tokenizer: expected 'wordpiece' or 'bpe', got {self.tokenizer!r}")
        for field in ("vocab_size", "batch_size", "eval_batch_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{field}: must be positive, got {getattr(self, field)}")
        if self.max_length < 2:
            raise ConfigError(f"max_length: must be at least 2 ([CLS] and [SEP]), got {self.max_length}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be 0 or more, got {self.num_workers}")
        check_windowing(self.long_texts, self.max_length, self.overlap)

    @property
    def overlap(self) -> int:
        """``window_overlap``, or its default for ``max_length``."""
        return default_overlap(self.max_length) if self.window_overlap is None else self.window_overlap


class TextClassificationDataModule(L.LightningDataModule):
    """Train/validation/test data for text classification, tokenised once and batched by length.

    ``tokenizer`` (e.g. from :func:`torchship.models.pretrained.load_pretrained`) is used as it is
    configured; without one, a tokenizer is trained on the training split only.
    """

    def __init__(self, config: DataConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self.config = config
        self.train, self.val, self.test = _read_splits(config)
        self.sources = _sources(config)
        evaluation = {
            f"validation data ({self.sources['validation']})": self.val,
            f"test data ({self.sources['test']})": self.test,
        }
        self.labels = check_labels(self.train, evaluation)
        self.label_to_index = {label: index for index, label in enumerate(self.labels)}
        if tokenizer is None:
            tokenizer = train_tokenizer(
                (example.text for example in self.train),
                kind=config.tokenizer,
                vocab_size=config.vocab_size,
                lowercase=config.lowercase,
                max_length=config.max_length,
            )
        if config.long_texts == "windows":  # every token, cut into windows here
            check_window_tokenizer(tokenizer)
            configure_tokenizer(tokenizer, config.max_length, truncate=False)
        self.tokenizer = tokenizer
        self.pad_id = pad_token_id(tokenizer)
        self._datasets: dict[str, TokenizedDataset | WindowedDataset] = {}

    @property
    def num_classes(self) -> int:
        """How many labels there are."""
        return len(self.labels)

    def setup(self, stage: str | None = None) -> None:
        """Tokenise the splits this stage needs (once; later calls reuse the token ids)."""
        splits: dict[str, tuple[_Split, ...]] = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
        }
        for name in splits.get(stage or "", ("train", "val", "test")):
            self.dataset(name)

    def dataset(self, split: _Split) -> TokenizedDataset | WindowedDataset:
        """The tokenised ``split``, tokenised on first use and cached.

        With ``long_texts="windows"`` the training set holds one example per window (windows do not
        overlap) and validation and test hold each text's overlapping windows together."""
        if split not in self._datasets:
            examples: list[Example] = getattr(self, split)
            texts = [example.text for example in examples]
            labels = [self.label_to_index[example.label] for example in examples]
            dataset: TokenizedDataset | WindowedDataset
            if self.config.long_texts == "truncate":
                dataset = TokenizedDataset(token_ids(self.tokenizer, texts), labels)
            elif split == "train":
                flat, owner = flat_windows(token_ids(self.tokenizer, texts), self.config.max_length, 0)
                dataset = TokenizedDataset(flat, [labels[k] for k in owner])
            else:
                windows = text_windows(self.tokenizer, texts, self.config.max_length, self.config.overlap)
                dataset = WindowedDataset(windows, labels)
            self._datasets[split] = dataset
        return self._datasets[split]

    def train_dataloader(self) -> DataLoader[Any]:
        """Length-grouped batches of ``batch_size`` in a seeded random order."""
        dataset = self.dataset("train")
        generator = torch.Generator().manual_seed(self.config.seed)
        sampler = LengthGroupedBatchSampler(
            RandomSampler(dataset, generator=generator),
            self.config.batch_size,
            False,
            lengths=dataset.lengths,
            shuffle=True,
            seed=self.config.seed,
        )
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation batches of ``eval_batch_size``, sorted by length."""
        return self._eval_loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader[Any]:
        """Test batches of ``eval_batch_size``, sorted by length."""
        return self._eval_loader(self.dataset("test"))

    def _eval_loader(self, dataset: TokenizedDataset | WindowedDataset) -> DataLoader[Any]:
        sampler = LengthGroupedBatchSampler(
            SequentialSampler(dataset),
            self.config.eval_batch_size,
            False,
            lengths=dataset.lengths,
            shuffle=False,
        )
        return self._loader(dataset, sampler)

    def _loader(
        self, dataset: TokenizedDataset | WindowedDataset, batch_sampler: LengthGroupedBatchSampler
    ) -> DataLoader[Any]:
        # Built inside the *_dataloader hooks so that Lightning can swap in a DistributedSampler.
        collate = collate_windows if isinstance(dataset, WindowedDataset) else collate_batch
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=functools.partial(collate, pad_id=self.pad_id),
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
        )


def _read_splits(config: DataConfig) -> tuple[list[Example], list[Example], list[Example]]:
    columns = {"text_column": config.text_column, "label_column": config.label_column}
    examples = read_examples(config.data, **columns)
    train_fraction, val_fraction, test_fraction = config.split
    # A part supplied as its own file is not carved out of `data`; its share goes to training.
    if config.val_data is not None:
        train_fraction, val_fraction = train_fraction + val_fraction, 0.0
    if config.test_data is not None:
        train_fraction, test_fraction = train_fraction + test_fraction, 0.0
    if val_fraction == 0 and test_fraction == 0:
        train: Sequence[Example] = examples
        val: Sequence[Example] = []
        test: Sequence[Example] = []
    else:
        train, val, test = stratified_split(
            examples,
            (train_fraction, val_fraction, test_fraction),
            config.seed if config.split_seed is None else config.split_seed,
        )
    if config.val_data is not None:
        val = read_examples(config.val_data, **columns)
    if config.test_data is not None:
        test = read_examples(config.test_data, **columns)
    return list(train), list(val), list(test)


def _sources(config: DataConfig) -> dict[str, str]:
    return {
        "train": config.data,
        "validation": config.val_data or f"split of {config.data}",
        "test": config.test_data or f"split of {config.data}",
    }
