from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from torchship.data.tokenizer import train_tokenizer
from torchship.errors import ConfigError, PackageError
from torchship.models.transformer import TransformerClassifier, TransformerConfig
from torchship.store import ModelStore, PackageConfig, load_package, read_config, write_package

TEXTS = ["the cat sat on the mat", "stocks fell sharply today", "the team won the final", "a new phone"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(TEXTS * 5, vocab_size=200, max_length=32)


def _package(tmp_path: Path, tokenizer: Tokenizer) -> tuple[Path, TransformerClassifier]:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=tokenizer.get_vocab_size(), num_classes=2, d_model=16, n_heads=2, n_layers=1, d_ff=32
    )
    model = TransformerClassifier(config).eval()
    package_config = PackageConfig(
        name="toy", version=1, labels=("neg", "pos"), model=config, max_length=32, training={"seed": 0}
    )
    store = ModelStore(tmp_path)
    version = store.publish(
        "toy",
        lambda d: write_package(
            d,
            config=package_config,
            state_dict=model.state_dict(),
            tokenizer=tokenizer,
            metrics={"test": {"accuracy": 0.5}},
            card="# toy\n",
            plots={"learning_curves.png": b"\x89PNG"},
        ),
    )
    return store.path("toy", version), model


def test_round_trip_gives_identical_predictions(tmp_path: Path, tokenizer: Tokenizer) -> None:
    path, model = _package(tmp_path, tokenizer)
    assert sorted(p.name for p in path.iterdir()) == [
        "card.md",
        "config.json",
        "learning_curves.png",
        "metrics.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    package = load_package(path)
    assert package.labels == ("neg", "pos")
    assert package.config.training == {"seed": 0}
    assert json.loads((path / "metrics.json").read_text())["test"]["accuracy"] == 0.5
    probs = package.predict_proba(TEXTS)
    from torchship.data.tokenizer import encode_texts

    expected = []
    with torch.inference_mode():
        for text in TEXTS:  # one at a time: batching and sorting must not change a row
            ids, mask = encode_texts(tokenizer, [text], 0)
            expected.append(torch.softmax(model(ids, mask), dim=-1)[0])
    torch.testing.assert_close(probs, torch.stack(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(TEXTS)))


def test_config_round_trip(tmp_path: Path, tokenizer: Tokenizer) -> None:
    path, _ = _package(tmp_path, tokenizer)
    config = read_config(path)
    assert PackageConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.handler == "text-classifier"


def test_loading_never_unpickles(tmp_path: Path, tokenizer: Tokenizer) -> None:
    path, _ = _package(tmp_path, tokenizer)
    # A pickle where the weights should be is refused, not executed.
    torch.save({"x": torch.zeros(1)}, path / "model.safetensors")
    with pytest.raises(PackageError, match=r"model\.safetensors"):
        load_package(path)


def test_incomplete_and_invalid_packages(tmp_path: Path, tokenizer: Tokenizer) -> None:
    path, _ = _package(tmp_path, tokenizer)
    (path / "tokenizer.json").unlink()
    with pytest.raises(PackageError, match=r"tokenizer\.json is missing"):
        load_package(path)
    with pytest.raises(PackageError, match=r"no config\.json"):
        load_package(tmp_path)
    bad = json.loads((path / "config.json").read_text())
    bad["labels"] = ["only-one"]
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(PackageError, match="labels"):
        read_config(path)


def test_mismatched_labels_are_a_config_error(tokenizer: Tokenizer) -> None:
    config = TransformerConfig(vocab_size=10, num_classes=3, d_model=8, n_heads=2, n_layers=1, d_ff=8)
    with pytest.raises(ConfigError, match="num_classes"):
        PackageConfig(name="x", version=1, labels=("a", "b"), model=config, max_length=8)


def test_window_settings_round_trip_and_older_packages_truncate(tmp_path: Path, tokenizer: Tokenizer) -> None:
    path, _ = _package(tmp_path, tokenizer)
    data = json.loads((path / "config.json").read_text())
    assert (data["long_texts"], data["window_overlap"]) == ("truncate", 0)
    # A package written before windows existed has neither key: it truncates, as it always did.
    del data["long_texts"], data["window_overlap"]
    (path / "config.json").write_text(json.dumps(data))
    assert read_config(path).long_texts == "truncate"
    long_text = " ".join(TEXTS * 4)  # over 32 tokens
    assert len(load_package(path).tokenizer.encode(long_text).ids) == 32

    data.update(long_texts="windows", window_overlap=4)
    (path / "config.json").write_text(json.dumps(data))
    package = load_package(path)
    assert (package.config.long_texts, package.config.window_overlap) == ("windows", 4)
    assert len(package.tokenizer.encode(long_text).ids) > 32  # windows need every token
    assert PackageConfig.from_dict(package.config.to_dict()) == package.config

    data["window_overlap"] = 30
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(PackageError, match=r"window_overlap: at most max_length - 3 = 29"):
        read_config(path)
