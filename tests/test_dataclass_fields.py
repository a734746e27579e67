"""One unknown-field check for every ``from_dict``: the message names the unknown keys and the known ones."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from torchship.dataclass_fields import reject_unknown_fields
from torchship.errors import ConfigError
from torchship.models.transformer import TransformerConfig
from torchship.serving.runtime.snapshot import read_snapshot
from torchship.serving.settings import ModelSettings
from torchship.store.package import PackageConfig


@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0


def test_known_fields_pass() -> None:
    reject_unknown_fields(Point, {"x": 1})
    reject_unknown_fields(Point, {})


def test_unknown_fields_are_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        reject_unknown_fields(Point, {"x": 1, "z": 2, "w": 3}, where="point")
    assert caught.value.message == "point: unknown field(s) w, z; known fields: x, y"


def test_the_noun_names_what_the_keys_are() -> None:
    with pytest.raises(ConfigError) as caught:
        reject_unknown_fields(Point, {"colour": "red"}, noun="point setting")
    assert caught.value.message == "unknown point setting(s) colour; known point settings: x, y"


def test_every_from_dict_uses_it() -> None:
    with pytest.raises(
        ConfigError, match=r"^model config: unknown field\(s\) n_head; known fields: .*n_heads"
    ):
        TransformerConfig.from_dict({"vocab_size": 10, "num_classes": 2, "n_head": 4})
    with pytest.raises(
        ConfigError, match=r"^package config: unknown field\(s\) label; known fields: .*labels"
    ):
        PackageConfig.from_dict({"label": ["a"]})
    with pytest.raises(ConfigError, match=r"^unknown model setting\(s\) batchsize; .*batch_size"):
        ModelSettings.from_dict({"batchsize": 4})


def test_an_unknown_snapshot_entry_field_says_the_snapshot_is_damaged(tmp_path: Path) -> None:
    entry = {"name": "a", "version": "1", "path": "", "url": "a", "handler": "m:C", "workers": 1}
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"format": 1, "models": [{**entry, "settings": {}, "colour": "red"}]}))
    with pytest.raises(ConfigError, match=r"damaged \(snapshot entry: unknown field\(s\) colour; known"):
        read_snapshot(path)
