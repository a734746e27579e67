"""The object store against a real S3-protocol server (moto, from ``s3_support``): atomic publish with a
commit marker, claims, checksums, pins, and the errors a user can act on."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import s3fs

from s3_support import publish_to_s3
from torchship.errors import (
    ConfigError,
    NotFoundError,
    PackageError,
    VersionExistsError,
    VersionNotFoundError,
)
from torchship.store import ModelStore, ObjectStore, open_store, remote
from torchship.store.remote import CLAIM_FILE, MARKER_FILE, MAX_MARKER_BYTES, DownloadCancelled


def _writer(marker: str, weights: bytes = b"weights"):
    def write(directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(weights)
        (directory / "config.json").write_text(f'{{"marker": "{marker}"}}')
        (directory / "plots").mkdir()
        (directory / "plots" / "curve.png").write_bytes(b"png")

    return write


def _fs() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True)


def test_versions_are_assigned_in_order_and_download_matches(s3_url: str, tmp_path: Path) -> None:
    store = ObjectStore(s3_url)
    assert store.models() == [] and store.latest("bbc") is None
    assert store.publish("bbc", _writer("a")) == 1
    assert store.publish("bbc", _writer("b")) == 2
    assert store.publish("other", _writer("c")) == 1
    assert store.versions("bbc") == [1, 2]
    assert store.latest("bbc") == 2
    assert store.models() == ["bbc", "other"]
    assert store.listing() == {"bbc": [1, 2], "other": [1]}

    manifest = store.manifest("bbc", 2)
    assert manifest["name"] == "bbc" and manifest["version"] == 2 and manifest["format"] == 1
    config = b'{"marker": "b"}'
    assert manifest["files"]["config.json"] == {
        "size": len(config),
        "sha256": hashlib.sha256(config).hexdigest(),
    }
    assert sorted(manifest["files"]) == ["config.json", "model.safetensors", "plots/curve.png"]

    assert store.download("bbc", 2, tmp_path) == manifest
    assert (tmp_path / "config.json").read_bytes() == config
    assert (tmp_path / "plots" / "curve.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "plots"]


def test_explicit_version_is_never_overwritten(s3_url: str) -> None:
    store = ObjectStore(s3_url)
    assert store.publish("bbc", _writer("seven"), version=7) == 7
    with pytest.raises(VersionExistsError, match="already published"):
        store.publish("bbc", _writer("other"), version=7)
    assert _fs().cat(f"{s3_url}/bbc/7/config.json") == b'{"marker": "seven"}'
    assert store.publish("bbc", _writer("next")) == 8


def test_half_published_version_is_invisible_and_its_number_skipped(s3_url: str) -> None:
    store = ObjectStore(s3_url)
    fs = _fs()
    # A publish that crashed after its claim and one file: no commit marker.
    fs.pipe(f"{s3_url}/bbc/1/{CLAIM_FILE}", b"{}")
    fs.pipe(f"{s3_url}/bbc/1/config.json", b"{}")
    assert store.versions("bbc") == [] and store.models() == [] and store.listing() == {}
    with pytest.raises(NotFoundError, match="no published versions"):
        store.manifest("bbc", 1)
    with pytest.raises(VersionExistsError, match="crashed"):
        store.publish("bbc", _writer("x"), version=1)
    assert store.publish("bbc", _writer("a")) == 2
    assert store.versions("bbc") == [2]
    with pytest.raises(VersionNotFoundError, match="published versions are 2"):
        store.manifest("bbc", 1)


def test_a_number_another_publisher_claimed_is_skipped(s3_url: str) -> None:
    store = ObjectStore(s3_url)
    assert store.publish("bbc", _writer("a")) == 1
    _fs().pipe(f"{s3_url}/bbc/2/{CLAIM_FILE}", b'{"token": "theirs"}')  # a publish in progress
    assert store.publish("bbc", _writer("b")) == 3
    assert _fs().cat(f"{s3_url}/bbc/2/{CLAIM_FILE}") == b'{"token": "theirs"}'


def test_claims_and_markers_are_exclusive_creates_on_s3(s3_url: str) -> None:
    # What the claim relies on: S3's If-None-Match: * (s3fs mode="create"), which moto honours.
    fs = _fs()
    fs.pipe_file(f"{s3_url}/k", b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{s3_url}/k", b"second", mode="create")
    assert fs.cat(f"{s3_url}/k") == b"first"


def test_failed_write_uploads_nothing(s3_url: str) -> None:
    store = ObjectStore(s3_url)

    def broken(directory: Path) -> None:
        (directory / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.publish("bbc", broken)
    with pytest.raises(PackageError, match=r"no config\.json"):
        store.publish("bbc", lambda directory: (directory / "weights").write_text("w"))
    assert _fs().find(s3_url) == []


def test_corrupted_object_fails_the_download_naming_the_file(s3_url: str, tmp_path: Path) -> None:
    store = ObjectStore(s3_url)
    store.publish("bbc", _writer("a", weights=b"weights"))
    _fs().pipe(f"{s3_url}/bbc/1/model.safetensors", b"WEIGHTS")  # same size, other bytes
    with pytest.raises(PackageError, match=r"bbc/1/model\.safetensors: sha256 differs"):
        store.download("bbc", 1, tmp_path / "a")
    _fs().pipe(f"{s3_url}/bbc/1/model.safetensors", b"weig")  # truncated
    with pytest.raises(PackageError, match=r"model\.safetensors: 4 bytes, but 7 were published"):
        store.download("bbc", 1, tmp_path / "b")
    _fs().pipe(f"{s3_url}/bbc/1/model.safetensors", b"w" * 4096)  # bigger than published
    with pytest.raises(PackageError, match=r"model\.safetensors: more than the 7 bytes published"):
        store.download("bbc", 1, tmp_path / "big")
    assert (tmp_path / "big" / "model.safetensors").stat().st_size == 0  # stopped before writing any
    _fs().rm(f"{s3_url}/bbc/1/model.safetensors")
    with pytest.raises(PackageError, match="missing from the store"):
        store.download("bbc", 1, tmp_path / "c")


def test_a_download_stops_between_chunks_when_cancelled(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(s3_url)
    store.publish("bbc", _writer("a", weights=b"w" * 1000))
    monkeypatch.setattr(remote, "DOWNLOAD_CHUNK", 100)

    class CancelAfter(threading.Event):
        """Set from its ``checks``-th look on: a stop requested in the middle of the download."""

        def __init__(self, checks: int) -> None:
            super().__init__()
            self.left = checks

        def is_set(self) -> bool:
            self.left -= 1
            return self.left < 0

    with pytest.raises(DownloadCancelled, match="download cancelled"):
        store.download("bbc", 1, tmp_path, cancel=CancelAfter(4))
    # config.json (one chunk, checked before and after it), then two chunks of the weights.
    assert (tmp_path / "model.safetensors").stat().st_size == 200


def test_marker_cannot_place_files_outside_the_download(s3_url: str, tmp_path: Path) -> None:
    store = ObjectStore(s3_url)
    store.publish("bbc", _writer("a"))
    key = f"{s3_url}/bbc/1/{MARKER_FILE}"
    marker = json.loads(_fs().cat(key))
    marker["files"]["../../escape"] = marker["files"]["config.json"]
    _fs().pipe(key, json.dumps(marker).encode())
    with pytest.raises(PackageError, match=r"unsafe file name '\.\./\.\./escape'"):
        store.download("bbc", 1, tmp_path / "dest")
    assert not (tmp_path / "escape").exists()


def test_pin_file(s3_url: str) -> None:
    store = ObjectStore(s3_url)
    store.publish("bbc", _writer("a"))
    assert store.pin("bbc") is None
    _fs().pipe(f"{s3_url}/bbc/PINNED", b"1\n")
    assert store.pin("bbc") == 1
    assert store.listing() == {"bbc": [1]}  # the pin file is no version
    _fs().pipe(f"{s3_url}/bbc/PINNED", b"latest")
    with pytest.raises(ConfigError, match="bbc/PINNED: a pin file holds one version number"):
        store.pin("bbc")


def test_unpublish_removes_the_marker_then_the_files_leaving_the_claim(s3_url: str) -> None:
    store = ObjectStore(s3_url)
    store.publish("bbc", _writer("a"))
    store.publish("bbc", _writer("b"))
    store.unpublish("bbc", 2)
    assert store.versions("bbc") == [1]
    # The claim is a tombstone: number 2 is never handed out again (caches may hold its old files).
    assert _fs().find(f"{s3_url}/bbc/2") == [f"{s3_url[5:]}/bbc/2/{CLAIM_FILE}"]
    with pytest.raises(VersionNotFoundError):
        store.unpublish("bbc", 2)
    assert store.next_version("bbc") == 3
    assert store.publish("bbc", _writer("c")) == 3
    with pytest.raises(VersionExistsError, match="unpublished"):
        store.publish("bbc", _writer("d"), version=2)


def test_a_package_whose_marker_readers_would_refuse_is_not_published(s3_url: str) -> None:
    store = ObjectStore(s3_url)
    files = MAX_MARKER_BYTES // 300  # each entry takes over 300 bytes of the marker

    def many(directory: Path) -> None:
        (directory / "config.json").write_text("{}")
        for number in range(files):
            (directory / f"{'f' * 200}{number}").write_bytes(b"")

    with pytest.raises(PackageError, match=rf"its {files + 1} files need a commit marker of \d+ bytes"):
        store.publish("bbc", many)
    assert _fs().find(s3_url) == []  # refused before claiming a number


def test_missing_bucket_is_a_config_error(s3_server: object) -> None:
    with pytest.raises(ConfigError, match="check the bucket's name, or create the bucket"):
        ObjectStore("s3://no-such-bucket-here/models").listing()


def test_open_store_picks_by_location(s3_url: str, tmp_path: Path) -> None:
    assert isinstance(open_store(s3_url), ObjectStore)
    assert isinstance(open_store(str(tmp_path)), ModelStore)
    assert isinstance(open_store(tmp_path), ModelStore)


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed here")
def test_missing_backend_names_the_extra() -> None:
    with pytest.raises(ConfigError, match=r"gs:// needs the gcsfs package: pip install 'torchship\[gcs\]'"):
        ObjectStore("gs://bucket/models")


def test_unknown_scheme_names_the_supported_ones() -> None:
    with pytest.raises(ConfigError, match="unsupported URL scheme 'ftp'; use a directory or one of s3://"):
        ObjectStore("ftp://host/models")


def test_publish_to_s3_helper_stamps_the_version(s3_url: str, tmp_path: Path) -> None:
    # The fixture helper other test modules publish with: a local package directory -> the next version.
    package = tmp_path / "package"
    package.mkdir()
    (package / "config.json").write_text('{"name": "x", "version": 9, "labels": []}')
    (package / "model.safetensors").write_bytes(b"w")
    assert publish_to_s3(s3_url, "news", package) == 1
    assert publish_to_s3(s3_url, "news", package) == 2
    config = json.loads(ObjectStore(s3_url).read_file("news", 2, "config.json"))
    assert (config["name"], config["version"], config["labels"]) == ("news", 2, [])
    with pytest.raises(VersionExistsError):
        publish_to_s3(s3_url, "news", package, version=2)


def test_concurrent_publishers_get_distinct_versions(s3_url: str) -> None:
    store = ObjectStore(s3_url)

    def publish_twice(publisher: int) -> list[int]:
        return [store.publish("bbc", _writer(f"{publisher}-{n}")) for n in range(2)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(publish_twice, range(4)))
    numbers = sorted(number for numbers in results for number in numbers)
    assert numbers == list(range(1, 9))
    assert store.versions("bbc") == numbers
    for publisher, published in enumerate(results):  # every version holds its own publisher's files
        for n, number in enumerate(published):
            config = store.read_file("bbc", number, "config.json")
            assert config == f'{{"marker": "{publisher}-{n}"}}'.encode()
