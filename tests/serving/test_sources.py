"""What a registration url may point at, without a server: store names, allowed paths, archives."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from serving_support import publish_classifier

from torchship.errors import NotFoundError, UserInputError
from torchship.serving import TextClassifierAPI
from torchship.serving.sources import ModelSources
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
    again = sources.resolve(str(tmp_path / "uploads" / "upload" / "1"), None, 1)
    assert again.version == "2"  # a new version each time: published versions never change


@pytest.mark.parametrize("url", ["http://host/m.zip", "s3://bucket/m", "../outside", "/etc"])
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
    assert ModelStore(tmp_path / "store").versions("zipped") == [1, 2]


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
