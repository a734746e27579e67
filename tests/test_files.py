"""Atomic writes: the whole new content or the old, the mode from the first byte, nothing left behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchship.files import atomic_path, atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that would hide a mode applied through ``open``'s mode argument."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_content_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic_write(target, b"x" * 10_000)
    atomic_write(target, "short ünïcode")
    assert target.read_bytes() == "short ünïcode".encode()
    assert os.listdir(tmp_path) == ["config.json"]


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "snapshot.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as temporary:
        temporary.write_text("half of the ne")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["snapshot.json"]


def test_a_failed_rename_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    (target / "inside").mkdir(parents=True)  # os.replace cannot put a file over a non-empty directory
    with pytest.raises(OSError):
        atomic_write(target, "content")
    assert sorted(os.listdir(tmp_path)) == ["occupied"]
    assert os.listdir(target) == ["inside"]


@pytest.mark.usefixtures("strict_umask")
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_the_mode_is_applied_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "file"
    atomic_write(target, "content", mode=mode)
    assert _mode(target) == mode


def test_the_mode_is_set_before_any_content(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "key_file.json", mode=0o600) as temporary:
        assert _mode(temporary) == 0o600
        assert temporary.stat().st_size == 0
        temporary.write_text("secret")
    assert _mode(tmp_path / "key_file.json") == 0o600


def test_a_link_at_the_path_is_replaced_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not mine")
    link = tmp_path / "key_file.json"
    link.symlink_to(elsewhere)
    atomic_write(link, "keys", mode=0o600)
    assert not link.is_symlink()
    assert link.read_text() == "keys"
    assert elsewhere.read_text() == "not mine"


def test_a_writer_that_takes_a_file_name(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    with atomic_path(target) as temporary:
        save_file(weights, str(temporary))
    torch.testing.assert_close(load_file(str(target))["w"], weights["w"])
    assert _mode(target) == 0o644
    assert os.listdir(tmp_path) == ["model.safetensors"]
