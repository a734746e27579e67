"""Reading labelled text, splitting it, tokenising it and batching it.

``TextClassificationDataModule`` and ``DataConfig`` live in :mod:`torchship.data.datamodule`, which
imports Lightning; this package does not, so serving can use the tokenizer and formats.
"""

from torchship.data.batching import LengthGroupedBatchSampler, TokenizedDataset, collate_batch
from torchship.data.datasets import BUILTIN_DATASETS, BuiltinDataset, builtin_dataset
from torchship.data.formats import Example, read_examples
from torchship.data.split import check_labels, stratified_split
from torchship.data.tokenizer import (
    SPECIAL_TOKENS,
    configure_tokenizer,
    encode_texts,
    pad_token_id,
    train_tokenizer,
)

__all__ = [
    "BUILTIN_DATASETS",
    "SPECIAL_TOKENS",
    "BuiltinDataset",
    "Example",
    "LengthGroupedBatchSampler",
    "TokenizedDataset",
    "builtin_dataset",
    "check_labels",
    "collate_batch",
    "configure_tokenizer",
    "encode_texts",
    "pad_token_id",
    "read_examples",
    "stratified_split",
    "train_tokenizer",
]
