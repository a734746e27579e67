"""What a registration url may point at, without a server: store names, allowed paths, archives."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from serving_handlers import EchoAPI
from serving_support import publish_classifier

from torchship.errors import NotFoundError, PackageError, UserInputError
from torchship.serving import TextClassifierAPI
from torchship.serving.runtime.package_files import RegistrationLimits, open_file
from torchship.serving.runtime.sources import ModelSources
from torchship.store import ModelStore


@pytest.fixture
def sources(tmp_path: Path, store_root: Path) -> ModelSources:
    shutil.copytree(store_root, tmp_path / "store")
    publish_classifier(tmp_path / "uploads", "upload", seed=9)
    return ModelSources(ModelStore(tmp_path / "store"), [tmp_path / "uploads"])


def test_store_references(sources: ModelSources) -> None:
    latest = sources.resolve("news", None, 1)
    assert (latest.name, latest.version, latest.url, latest.handler) == (
        "news",
        "2",
        "news/2",
        TextClassifierAPI,
    )
    assert sources.resolve("news:1", "renamed", 1).version == "1"
    assert sources.resolve("news/1", "renamed", 1).name == "renamed"
    assert [s.version for s in sources.store_sources()] == ["1", "2"]


def test_packages_from_allowed_roots_are_published_into_the_store(
    sources: ModelSources, tmp_path: Path
) -> None:
    source = sources.resolve(str(tmp_path / "uploads" / "upload" / "1"), None, 1)
    assert (source.name, source.version) == ("upload", "1")
    assert source.path == tmp_path / "store" / "upload" / "1"
    publish_classifier(tmp_path / "uploads", "upload", seed=10)  # different weights: a new version
    changed = sources.resolve(str(tmp_path / "uploads" / "upload" / "2"), None, 1)
    assert (changed.version, changed.path) == ("2", tmp_path / "store" / "upload" / "2")


def test_an_identical_package_is_served_from_the_version_it_matches(
    sources: ModelSources, tmp_path: Path
) -> None:
    package = tmp_path / "uploads" / "upload" / "1"
    first = sources.resolve(str(package), None, 1)
    archive = tmp_path / "uploads" / "same.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in package.iterdir():
            zipped.write(file, f"top/{file.name}")
    again = [sources.resolve(str(package), None, 1), sources.resolve(str(archive), None, 1)]
    assert [(s.name, s.version, s.path) for s in again] == [("upload", "1", first.path)] * 2
    assert ModelStore(tmp_path / "store").versions("upload") == [1]  # re-registering does not grow it
    assert sources.resolve(str(package), "other", 1).version == "1"  # under another name: its own copy


@pytest.mark.parametrize(
    "url",
    [
        *("http://host/m.zip", "s3://bucket/m", "../outside", "/etc", "a\x00b", "x" * 300, "x" * 5000),
        *("news/" + "1" * 5000, "news:" + "1" * 4400),  # a version number past the int digit limit
    ],
)
def test_refused_urls(sources: ModelSources, url: str) -> None:
    with pytest.raises(UserInputError):
        sources.resolve(url, None, 1)


def test_missing_paths_are_404(sources: ModelSources) -> None:
    with pytest.raises(NotFoundError):
        sources.resolve("no-such-thing/here", None, 1)


def test_archives_with_a_top_folder_or_at_the_root(sources: ModelSources, tmp_path: Path) -> None:
    package = tmp_path / "uploads" / "upload" / "1"
    for prefix in ("", "pkg/"):
        archive = tmp_path / "uploads" / f"a{len(prefix)}.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for file in package.iterdir():
                zipped.write(file, prefix + file.name)
        source = sources.resolve(str(archive), "zipped", 1)
        assert (source.path / "model.safetensors").is_file()
    assert ModelStore(tmp_path / "store").versions("zipped") == [1]  # the same package twice


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_zip_slip_is_refused(sources: ModelSources, tmp_path: Path, member: str) -> None:
    archive = tmp_path / "uploads" / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(tmp_path / "uploads" / "upload" / "1" / "config.json", "config.json")
        zipped.writestr(member, "x")
    with pytest.raises(UserInputError, match="outside the package"):
        sources.resolve(str(archive), None, 1)
    assert not (tmp_path / "evil.txt").exists()
    assert ModelStore(tmp_path / "store").versions("upload") == []


def test_symlinks_inside_a_package_are_refused(sources: ModelSources, tmp_path: Path) -> None:
    package = tmp_path / "uploads" / "upload" / "1"
    (package / "extra").symlink_to("/etc/hostname")
    with pytest.raises(UserInputError, match="symlink"):
        sources.resolve(str(package), None, 1)


def test_a_broken_store_package_is_skipped_not_fatal(sources: ModelSources, tmp_path: Path) -> None:
    broken = tmp_path / "store" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    assert [(s.name, s.version) for s in sources.store_sources()] == [("news", "1"), ("news", "2")]


def _limited(tmp_path: Path, **limits: Any) -> ModelSources:
    return ModelSources(
        ModelStore(tmp_path / "store"), [tmp_path / "uploads"], limits=RegistrationLimits(**limits)
    )


def _zip(package: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for file in package.iterdir():
            zipped.write(file, file.name)
        for name, data in (extra or {}).items():
            zipped.writestr(name, data)
    return archive


def test_registration_limits_are_checked_before_anything_is_copied(
    sources: ModelSources, tmp_path: Path
) -> None:
    package = tmp_path / "uploads" / "upload" / "1"
    size = sum(file.stat().st_size for file in package.iterdir())
    bomb = _zip(package, tmp_path / "uploads" / "bomb.zip", {"padding.bin": bytes(8 << 20)})  # 8 MB of zeros
    assert bomb.stat().st_size < size + (1 << 20)
    cases = [
        (dict(max_archive_size=1000), str(bomb), "max_archive_size=1000"),
        (dict(max_package_size=size + (1 << 20)), str(bomb), f"max_package_size={size + (1 << 20)}"),
        (dict(max_package_size=size - 1), str(package), f"max_package_size={size - 1}"),
        (dict(max_package_files=2), str(package), "max_package_files=2"),
        (dict(max_package_files=2), str(bomb), "max_package_files=2"),
        (dict(store_quota=_store_bytes(tmp_path) + size - 1), str(package), "store_quota="),
    ]
    for limits, url, message in cases:
        with pytest.raises(UserInputError, match=message):
            _limited(tmp_path, **limits).resolve(url, None, 1)
    assert ModelStore(tmp_path / "store").versions("upload") == []
    assert not list((tmp_path / "store").glob(".tmp-*"))  # nothing half-copied is left behind
    fits = _limited(tmp_path, store_quota=_store_bytes(tmp_path) + size + 100)
    assert fits.resolve(str(package), None, 1).version == "1"


def _store_bytes(tmp_path: Path) -> int:
    return sum(file.stat().st_size for file in (tmp_path / "store").rglob("*") if file.is_file())


def test_a_model_file_needs_the_operators_opt_in(tmp_path: Path, scripted_model: Path) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    shutil.copy(scripted_model, uploads / "model.pt2")
    custom = {"model": EchoAPI}
    refused = ModelSources(ModelStore(tmp_path / "store"), [uploads], custom)
    with pytest.raises(UserInputError, match="allow_code_models"):
        refused.resolve(str(uploads / "model.pt2"), None, 2)
    allowed = ModelSources(ModelStore(tmp_path / "store"), [uploads], custom, allow_code_models=True)
    source = allowed.resolve(str(uploads / "model.pt2"), None, 2)
    assert (source.name, source.version, source.handler) == ("model", "2", EchoAPI)


def _encrypted(archive: Path) -> Path:
    """``archive`` with the "encrypted" flag set on every member (zipfile cannot write real encryption)."""
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at != -1:
            data[at + offset] |= 1
            at = data.find(signature, at + 4)
    archive.write_bytes(bytes(data))
    return archive


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("file_and_folder", "is a file and also the folder"),
        ("long_name", "cannot be extracted"),
        ("encrypted", "unencrypted"),
    ],
)
def test_archives_that_cannot_be_extracted_are_package_errors(
    sources: ModelSources, tmp_path: Path, kind: str, message: str
) -> None:
    package = tmp_path / "uploads" / "upload" / "1"
    extra = {"file_and_folder": {"x": b"a", "x/y": b"b"}, "long_name": {"a" * 300: b"a"}}.get(kind)
    archive = _zip(package, tmp_path / "uploads" / f"{kind}.zip", extra)
    if kind == "encrypted":
        _encrypted(archive)
    with pytest.raises(PackageError, match=message):
        sources.resolve(str(archive), "zipped", 1)
    assert ModelStore(tmp_path / "store").versions("zipped") == []


def test_a_fifo_in_a_package_is_refused_without_opening_it(sources: ModelSources, tmp_path: Path) -> None:
    package = tmp_path / "uploads" / "upload" / "1"
    (package / "config.json").unlink()
    os.mkfifo(package / "config.json")  # opening it for reading would block until a writer comes
    with pytest.raises(UserInputError, match="not a regular file"):
        sources.resolve(str(package), None, 1)
    with pytest.raises(UserInputError, match="not a regular file"):
        open_file(package, "config.json")  # put there after the manifest was taken: refused, not blocked
