"""``torchship train --store s3://...`` publishes to an object store (moto's S3 server, from
``s3_support``), and ``torchship models --store s3://...`` lists it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_support import PACKAGE_FILES

from torchship.cli import main
from torchship.store import ObjectStore, load_package


def _train(csv: Path, store: str, runs: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(csv), "--vocab_size", "200", "--max_length", "32", "--batch_size", "32",
        "--store", store, "--name", "topics",
        "--model.d_model", "16", "--model.n_heads", "2", "--model.n_layers", "1", "--model.d_ff", "32",
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(runs),
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_train_publishes_to_s3_and_models_lists_it(
    topics_csv: Path, s3_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_train(topics_csv, s3_url, tmp_path / "runs")) == 0
    assert f"published topics version 1 at {s3_url}/topics/1\n" in capsys.readouterr().out

    store = ObjectStore(s3_url)
    assert store.listing() == {"topics": [1]}
    assert sorted(store.manifest("topics", 1)["files"]) == PACKAGE_FILES
    store.download("topics", 1, tmp_path / "package")
    package = load_package(tmp_path / "package")
    assert (package.config.name, package.config.version) == ("topics", 1)
    card = (tmp_path / "package" / "card.md").read_text()
    assert f"torchship serve --store {s3_url}\n" in card

    assert main(["models", "--store", s3_url, "--json"]) == 0
    metrics = json.loads((tmp_path / "package" / "metrics.json").read_text())
    assert json.loads(capsys.readouterr().out) == [
        {
            "name": "topics",
            "version": 1,
            "accuracy": metrics["test"]["accuracy"],
            "macro_f1": metrics["test"]["macro_f1"],
            "created": package.config.created,
        }
    ]

    # An explicit version that exists fails before any training (no new run folder).
    assert main(_train(topics_csv, s3_url, tmp_path / "runs2", "--version", "1")) == 2
    assert "topics version 1 is already published" in capsys.readouterr().err
    assert not (tmp_path / "runs2").exists()
    assert store.listing() == {"topics": [1]}
