"""Long texts read as windows: the cutting, the averaging, the settings, and the DataModule's batches."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models

from torchship.data.datamodule import DataConfig, TextClassificationDataModule
from torchship.data.windows import (
    check_window_tokenizer,
    check_windowing,
    flat_windows,
    mean_by_text,
    split_windows,
)
from torchship.errors import ConfigError

CLS, SEP = 101, 102


def _text(tokens: int) -> list[int]:
    return [CLS, *range(1, tokens + 1), SEP]


@pytest.mark.parametrize("tokens", [7, 8, 9, 23, 100])
@pytest.mark.parametrize("overlap", [0, 1, 3, 5])
def test_windows_are_full_wrapped_cover_every_token_and_share_the_overlap(tokens: int, overlap: int) -> None:
    length = 8  # 6 text tokens per window
    windows = split_windows(_text(tokens), length, overlap)

    assert all(len(w) == length and w[0] == CLS and w[-1] == SEP for w in windows)
    bodies = [w[1:-1] for w in windows]
    assert sorted({t for body in bodies for t in body}) == list(range(1, tokens + 1))
    assert bodies[-1][-1] == tokens  # the last window ends with the text
    for left, right in itertools.pairwise(bodies[:-1]):
        assert right[0] == left[-1] - overlap + 1  # neighbours share exactly `overlap` tokens
    # The end-aligned last window may share more, never fewer.
    assert bodies[-1][0] <= bodies[-2][-1] - overlap + 1


def test_a_text_that_fits_is_one_window_as_it_is() -> None:
    assert split_windows(_text(6), 8, 3) == [_text(6)]
    assert split_windows([CLS, SEP], 8, 3) == [[CLS, SEP]]


def test_windows_without_overlap_partition_the_text_but_the_last() -> None:
    assert split_windows(_text(10), 6, 0) == [
        [CLS, 1, 2, 3, 4, SEP],
        [CLS, 5, 6, 7, 8, SEP],
        [CLS, 7, 8, 9, 10, SEP],
    ]


def test_mean_by_text_averages_each_texts_windows() -> None:
    flat, owner = flat_windows([_text(10), [CLS, 7, SEP], _text(6)], 6, 0)
    assert owner == [0, 0, 0, 1, 2, 2]
    assert flat[:4] == [*split_windows(_text(10), 6, 0), [CLS, 7, SEP]]
    assert flat[4:] == split_windows(_text(6), 6, 0)
    logits = torch.tensor([[1.0, 0.0], [2.0, 3.0], [3.0, 3.0], [7.0, -1.0], [0.0, 1.0], [1.0, 0.0]])
    expected = torch.tensor([[2.0, 2.0], [7.0, -1.0], [0.5, 0.5]])
    torch.testing.assert_close(mean_by_text(logits, torch.tensor(owner), 3), expected)


@pytest.mark.parametrize(
    ("long_texts", "max_length", "overlap", "named"),
    [
        ("chunks", 64, 0, "long_texts: expected 'truncate' or 'windows'"),
        ("windows", 64, -1, "window_overlap: must be a whole number"),
        ("windows", 64, 62, "window_overlap: at most max_length - 3 = 61"),
        ("windows", 2, 0, "max_length: windows need at least 3 tokens"),
    ],
)
def test_bad_window_settings_name_the_setting(
    long_texts: str, max_length: int, overlap: int, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        check_windowing(long_texts, max_length, overlap)
    with pytest.raises(ConfigError, match=named):
        DataConfig("x.csv", long_texts=long_texts, max_length=max_length, window_overlap=overlap)  # type: ignore[arg-type]


def test_default_overlap_is_half_a_window() -> None:
    assert DataConfig("x.csv", long_texts="windows", max_length=66).overlap == 32
    assert DataConfig("x.csv", long_texts="windows", max_length=66, window_overlap=0).overlap == 0


def test_datamodule_trains_on_every_window_and_evaluates_whole_texts(tmp_path: Path) -> None:
    long_text = " ".join(["alpha beta gamma delta"] * 20)  # ~80 words, far over 16 tokens
    rows = [(long_text if i % 3 == 0 else "alpha beta", "a" if i % 2 else "b") for i in range(60)]
    csv = tmp_path / "long.csv"
    csv.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    dm = TextClassificationDataModule(
        DataConfig(
            str(csv), vocab_size=60, max_length=16, batch_size=4, eval_batch_size=5, long_texts="windows"
        )
    )

    train = dm.dataset("train")
    assert len(train) > len(dm.train)  # long texts became several examples
    assert max(train.lengths) == 16
    assert train.labels.count(0) + train.labels.count(1) == len(train)
    batches = list(dm.val_dataloader())
    assert sum(batch["labels"].numel() for batch in batches) == len(dm.val)
    for batch in batches:
        windows = batch["input_ids"].shape[0]
        assert batch["text_index"].shape == (windows,)
        assert batch["input_ids"].shape[1] <= 16
        # Every text of the batch has its windows in it, in order.
        counts = torch.bincount(batch["text_index"], minlength=batch["labels"].numel())
        assert (counts >= 1).all() and batch["text_index"].tolist() == sorted(batch["text_index"].tolist())
    assert any(batch["input_ids"].shape[0] > batch["labels"].numel() for batch in batches)


def test_windows_need_a_tokenizer_that_wraps_texts_in_two_special_tokens() -> None:
    bare = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "word": 2}, unk_token="[UNK]"))
    with pytest.raises(ConfigError, match=r"two special tokens .*this one adds 0.*long_texts='truncate'"):
        check_window_tokenizer(bare)
