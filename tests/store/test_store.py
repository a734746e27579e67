from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from torchship.errors import (
    ConfigError,
    NotFoundError,
    PackageError,
    VersionExistsError,
    VersionNotFoundError,
)
from torchship.store import ModelStore, resolve_model, validate_name


def _writer(marker: str):
    def write(directory: Path) -> None:
        (directory / "model.safetensors").write_text("weights")
        (directory / "config.json").write_text(f'{{"marker": "{marker}"}}')

    return write


def test_versions_are_assigned_in_order_starting_at_one(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.publish("bbc", _writer("a")) == 1
    assert store.publish("bbc", _writer("b")) == 2
    assert store.versions("bbc") == [1, 2]
    assert store.latest("bbc") == 2
    assert store.models() == ["bbc"]
    assert (store.path("bbc") / "config.json").read_text() == '{"marker": "b"}'
    assert (store.path("bbc", 1) / "config.json").read_text() == '{"marker": "a"}'


def test_explicit_version_and_never_overwrite(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.publish("bbc", _writer("seven"), version=7) == 7
    with pytest.raises(VersionExistsError, match="already published"):
        store.publish("bbc", _writer("other"), version=7)
    assert (store.path("bbc", 7) / "config.json").read_text() == '{"marker": "seven"}'
    assert store.publish("bbc", _writer("next")) == 8


def test_failed_write_leaves_nothing_visible(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)

    def broken(directory: Path) -> None:
        (directory / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.publish("bbc", broken)
    assert store.versions("bbc") == []
    assert store.models() == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_package_without_config_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(PackageError, match=r"config\.json"):
        store.publish("bbc", lambda d: (d / "model.safetensors").write_text("w"))
    assert store.versions("bbc") == []


def test_crash_mid_publish_never_leaves_a_half_version(tmp_path: Path) -> None:
    # A real crash: the publishing process is killed while it writes. No version may become visible.
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from torchship.store import ModelStore

        def write(directory: Path) -> None:
            (directory / "config.json").write_text("{{}}")
            (directory / "model.safetensors").write_bytes(b"x" * 1000)
            print("writing", flush=True)
            sys.stdin.readline()  # the parent kills us here

        ModelStore({str(tmp_path)!r}).publish("bbc", write)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    store = ModelStore(tmp_path)
    assert store.versions("bbc") == []
    assert store.publish("bbc", _writer("after")) == 1


def _publish_one(root: str) -> int:
    return ModelStore(root).publish("bbc", _writer(str(os.getpid())))


def test_a_copied_object_store_version_without_its_commit_marker_is_not_published(tmp_path: Path) -> None:
    """KServe's storage initializer copies an object store prefix as it finds it: a version whose publish
    had claimed its number but not committed (``.claim``, no ``.published.json``) is not a version."""
    store = ModelStore(tmp_path)
    for version in (1, 2):
        store.publish("bbc", lambda d: (d / "config.json").write_text("{}"))
        (tmp_path / "bbc" / str(version) / ".claim").write_text("{}")
    (tmp_path / "bbc" / "1" / ".published.json").write_text("{}")
    assert store.versions("bbc") == [1]


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        versions = pool.map(_publish_one, [str(tmp_path)] * 8)
    assert sorted(versions) == list(range(1, 9))
    assert ModelStore(tmp_path).versions("bbc") == list(range(1, 9))


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 65, "bad name"])
def test_invalid_names_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match="Invalid model name"):
        validate_name(name)


def test_resolve_model_refs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.publish("bbc", _writer("1"))
    store.publish("bbc", _writer("2"))
    assert resolve_model(tmp_path / "models" / "bbc") == tmp_path / "models" / "bbc" / "2"
    assert resolve_model(f"{tmp_path}/models/bbc:1") == tmp_path / "models" / "bbc" / "1"
    assert resolve_model(tmp_path / "models" / "bbc" / "1") == tmp_path / "models" / "bbc" / "1"
    with pytest.raises(VersionNotFoundError, match="published versions are 1, 2"):
        resolve_model(f"{tmp_path}/models/bbc:9")
    with pytest.raises(NotFoundError, match="Model not found"):
        resolve_model(tmp_path / "models" / "nope")
    with pytest.raises(ConfigError, match="positive integers"):
        resolve_model(f"{tmp_path}/models/bbc:zero")
