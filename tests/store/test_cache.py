"""The local cache of object-store versions: verified downloads, bounded retries, nothing half-downloaded
left behind, least recently used versions evicted first (with an explicit clock), versions in use by
another cache on the same folder never evicted, cancelled downloads, and the store view a watcher reads,
loading a real package."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import s3fs
import torch

from s3_support import S3Server
from torchship.data.tokenizer import train_tokenizer
from torchship.errors import PackageError
from torchship.models.transformer import TransformerClassifier, TransformerConfig
from torchship.store import (
    ObjectStore,
    PackageConfig,
    RemoteStoreView,
    VersionCache,
    load_package,
    write_package,
)
from torchship.store.cache import store_id
from torchship.store.remote import DownloadCancelled

SIZE = 1000
"""Bytes of every test version (``config.json`` + weights): eviction bounds count in them."""


def _writer(marker: str):
    def write(directory: Path) -> None:
        config = f'{{"marker": "{marker}"}}'.encode()
        (directory / "config.json").write_bytes(config)
        (directory / "model.safetensors").write_bytes(b"w" * (SIZE - len(config)))

    return write


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(scope="module")
def store(s3_server: S3Server) -> ObjectStore:
    """``bbc`` versions 1, 2 and 3, each :data:`SIZE` bytes (plus the cached marker), for the module:
    tests that change the store publish a model of their own in it."""
    store = ObjectStore(f"s3://{s3_server.make_bucket()}/models")
    for marker in ("a", "b", "c"):
        store.publish("bbc", _writer(marker))
    return store


def _cached(cache: VersionCache) -> list[tuple[str, int]]:
    return sorted((entry.name, entry.version) for entry in cache.entries())


def _leftovers(root: Path) -> list[str]:
    return sorted(path.name for path in root.rglob("*") if path.name.startswith(".tmp-"))


def test_get_downloads_once_then_uses_the_cached_copy(store: ObjectStore, tmp_path: Path) -> None:
    store.publish("gone", _writer("g"))
    cache = VersionCache(tmp_path / "cache", max_bytes=10 * SIZE)
    path = cache.get(store, "gone", 1)
    assert path == tmp_path / "cache" / store_id(store.url) / "gone" / "1"
    assert (path / "config.json").read_text() == '{"marker": "g"}'
    assert (path.parent.parent / "STORE").read_text() == store.url + "\n"

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.rm([f"{store.url}/gone/1/config.json", f"{store.url}/gone/1/model.safetensors"])
    assert cache.get(store, "gone", 1) == path  # no second download: the store's files are gone
    assert (path / "config.json").read_text() == '{"marker": "g"}'
    store.unpublish("gone", 1)  # the marker goes: no longer published, so not handed out
    with pytest.raises(PackageError, match=r"gone version 1 from .*: Model not found: gone"):
        cache.get(store, "gone", 1)


def test_a_number_published_again_is_downloaded_again(store: ObjectStore, tmp_path: Path) -> None:
    store.publish("again", _writer("old"))
    cache = VersionCache(tmp_path / "cache", max_bytes=10 * SIZE)
    assert (cache.get(store, "again", 1) / "config.json").read_text() == '{"marker": "old"}'
    # An operator removes the whole version, claim included, and another run publishes number 1 again.
    s3fs.S3FileSystem(skip_instance_cache=True).rm(f"{store.url}/again/1", recursive=True)
    store.publish("again", _writer("new"), version=1)
    path = cache.get(store, "again", 1)
    assert (path / "config.json").read_text() == '{"marker": "new"}'
    assert _leftovers(tmp_path / "cache") == []


def test_a_damaged_cached_copy_is_downloaded_again(store: ObjectStore, tmp_path: Path) -> None:
    cache = VersionCache(tmp_path / "cache", max_bytes=10 * SIZE)
    path = cache.get(store, "bbc", 1)
    (path / "model.safetensors").write_bytes(b"short")
    assert cache.get(store, "bbc", 1) == path
    assert (path / "model.safetensors").stat().st_size == SIZE - len('{"marker": "a"}')
    assert _leftovers(tmp_path / "cache") == []


def test_corrupt_object_is_retried_then_refused_leaving_nothing(
    store: ObjectStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.publish("corrupt", _writer("c"))
    s3fs.S3FileSystem(skip_instance_cache=True).pipe(f"{store.url}/corrupt/1/model.safetensors", b"x" * 985)
    cache = VersionCache(tmp_path / "cache", max_bytes=10 * SIZE, attempts=2, retry_delay=0)
    with (
        caplog.at_level(logging.WARNING, logger="torchship.store.cache"),
        pytest.raises(PackageError) as error,
    ):
        cache.get(store, "corrupt", 1)
    assert error.value.message == (
        f"corrupt version 1 from {store.url} could not be downloaded intact after 2 attempts: "
        f"{store.url}/corrupt/1/model.safetensors: sha256 differs from the one written when it was published "
        "(a corrupt or changed object)"
    )
    assert [record.message.split(":")[0] for record in caplog.records] == [
        "download 1/2 failed",
        "download 2/2 failed",
    ]
    assert _cached(cache) == []
    assert _leftovers(tmp_path / "cache") == []
    assert not cache.path(store, "corrupt", 1).exists()


def test_a_version_not_published_is_a_package_error(store: ObjectStore, tmp_path: Path) -> None:
    cache = VersionCache(tmp_path / "cache", max_bytes=10 * SIZE, retry_delay=0)
    with pytest.raises(PackageError, match=r"bbc version 9 from .*: Model version not found: bbc version 9"):
        cache.get(store, "bbc", 9)
    assert _cached(cache) == []


def test_a_version_over_the_size_or_file_limits_is_refused_before_download(
    store: ObjectStore, tmp_path: Path
) -> None:
    small = VersionCache(tmp_path / "small", max_bytes=10 * SIZE, max_package_bytes=SIZE - 1)
    with pytest.raises(PackageError, match=rf"holds {SIZE} bytes, more than the {SIZE - 1} allowed"):
        small.get(store, "bbc", 1)
    tiny = VersionCache(tmp_path / "tiny", max_bytes=SIZE - 1)  # bigger than the whole cache
    with pytest.raises(PackageError, match="--store_cache_size"):
        tiny.get(store, "bbc", 1)
    few = VersionCache(tmp_path / "few", max_bytes=10 * SIZE, max_package_files=1)
    with pytest.raises(PackageError, match=r"holds 2 files, more than the 1 allowed \(--max_package_files\)"):
        few.get(store, "bbc", 1)
    for cache in (small, tiny, few):
        assert _cached(cache) == []
        assert not cache.root.exists() or not any(cache.root.rglob("*.safetensors"))


def test_least_recently_used_versions_are_evicted_first(store: ObjectStore, tmp_path: Path) -> None:
    # Room for two versions (each SIZE bytes plus its cached marker of a few hundred bytes).
    cache = VersionCache(tmp_path / "cache", max_bytes=2 * SIZE + 1000, clock=Clock())
    for version in (1, 2, 1):  # 2 is now the least recently used
        cache.get(store, "bbc", version)
    assert [entry.version for entry in cache.entries()] == [2, 1]
    cache.get(store, "bbc", 3)  # room is made before the download: 2 goes first
    assert [entry.version for entry in cache.entries()] == [1, 3]
    assert cache.evict() == []  # within the bound
    cache.max_bytes = SIZE + 500
    assert [entry.version for entry in cache.evict()] == [1]
    assert _cached(cache) == [("bbc", 3)]


def test_kept_versions_are_never_evicted(
    store: ObjectStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = VersionCache(tmp_path / "cache", max_bytes=10 * SIZE, clock=Clock())
    for version in (1, 2, 3):
        cache.get(store, "bbc", version)
    cache.max_bytes = 0
    with caplog.at_level(logging.WARNING, logger="torchship.store.cache"):
        removed = cache.evict(keep={("bbc", 1), ("bbc", 3)})
    assert [entry.version for entry in removed] == [2]
    assert _cached(cache) == [("bbc", 1), ("bbc", 3)]
    assert "holds" in caplog.text and "more than its bound of 0 bytes" in caplog.text
    assert _leftovers(tmp_path / "cache") == []


def test_view_keeps_what_it_handed_out_until_told_otherwise(store: ObjectStore, tmp_path: Path) -> None:
    cache = VersionCache(tmp_path / "cache", max_bytes=SIZE + 500, clock=Clock())
    view = RemoteStoreView(store, cache)
    assert view.location == store.url
    assert view.listing()["bbc"] == [1, 2, 3]
    assert view.pin("bbc") is None
    view.local("bbc", 1)
    view.local("bbc", 2)  # over the bound, but 1 was handed out and may be in use
    assert _cached(cache) == [("bbc", 1), ("bbc", 2)]
    assert [entry.version for entry in view.evict({("bbc", 2)})] == [1]
    view.local("bbc", 3)
    assert _cached(cache) == [("bbc", 2), ("bbc", 3)]


def test_view_serves_a_loadable_package(s3_url: str, tmp_path: Path) -> None:
    labels = ("business", "sport")
    tokenizer = train_tokenizer(["shares rose", "the team won"] * 3, vocab_size=60, max_length=16)
    config = TransformerConfig(
        vocab_size=tokenizer.get_vocab_size(),
        num_classes=2,
        d_model=8,
        n_heads=2,
        n_layers=1,
        d_ff=16,
        max_length=16,
    )
    torch.manual_seed(0)
    model = TransformerClassifier(config).eval()
    package = PackageConfig(name="news", version=1, labels=labels, model=config, max_length=16)
    store = ObjectStore(s3_url)
    store.publish(
        "news",
        lambda tmp: write_package(tmp, config=package, state_dict=model.state_dict(), tokenizer=tokenizer),
    )
    view = RemoteStoreView(store, VersionCache(tmp_path / "cache", max_bytes=1 << 30))
    loaded = load_package(view.local("news", 1))
    assert loaded.config.version == 1 and loaded.config.labels == labels
    torch.testing.assert_close(loaded.predict_proba(["shares rose"]), _probabilities(model, tokenizer))


def _probabilities(model: TransformerClassifier, tokenizer: object) -> torch.Tensor:
    from torchship.store.inference import GroupLimits, TextClassifierRunner

    runner = TextClassifierRunner(
        model=model,
        tokenizer=tokenizer,  # type: ignore[arg-type]
        num_classes=2,
        pad_id=model.config.pad_id,
        windows=None,
        device=torch.device("cpu"),
        limits=GroupLimits(),
    )
    return runner.probabilities(["shares rose"])


def test_versions_another_cache_holds_are_not_evicted(store: ObjectStore, tmp_path: Path) -> None:
    # Two caches on one folder, as two server processes would have: each has its own lock descriptors,
    # and flock locks of two descriptors conflict even within one process.
    serving = VersionCache(tmp_path / "cache", max_bytes=10 * SIZE, clock=Clock())
    view = RemoteStoreView(store, serving)
    view.local("bbc", 1)
    serving.get(store, "bbc", 2)  # cached, not held
    other = VersionCache(tmp_path / "cache", max_bytes=0, clock=Clock())
    assert [entry.version for entry in other.evict()] == [2]
    assert _cached(other) == [("bbc", 1)]
    view.evict(set())  # the serving process no longer uses 1
    assert [entry.version for entry in other.evict()] == [1]
    assert _cached(other) == []


def test_temporary_folders_of_dead_processes_are_removed_at_start(store: ObjectStore, tmp_path: Path) -> None:
    from torchship.store.cache import _HOST

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = int(finished.stdout)
    folder = tmp_path / "cache" / store_id(store.url) / "bbc"
    names = {
        f".tmp-{dead}-{_HOST}-3-abc": False,  # its process is gone: removed
        f".tmp-{os.getpid()}-{_HOST}-3-abc": False,  # this pid, but no download of this process
        f".tmp-{os.getppid()}-{_HOST}-3-abc": True,  # a live process may still be writing it
        f".tmp-{dead}-00000000-3-abc": True,  # another host's: only removed once a day old
    }
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "model.safetensors").write_bytes(b"partial")
    VersionCache(tmp_path / "cache", max_bytes=10 * SIZE)
    assert _leftovers(tmp_path / "cache") == sorted(name for name, kept in names.items() if kept)


def test_a_closed_cache_cancels_its_download_promptly(store: ObjectStore, tmp_path: Path) -> None:
    # A download waiting out its back-off (a minute) before the second attempt: close() ends it at once.
    # (Cancelling between chunks is tested on ObjectStore.download.)
    store.publish("broken", _writer("b"))
    s3fs.S3FileSystem(skip_instance_cache=True).pipe(f"{store.url}/broken/1/model.safetensors", b"x" * 985)
    cache = VersionCache(tmp_path / "cache", max_bytes=10 * SIZE, attempts=2, retry_delay=60)
    failed_once = threading.Event()
    handler = logging.Handler()
    handler.emit = lambda record: failed_once.set()  # type: ignore[method-assign]
    logger = logging.getLogger("torchship.store.cache")
    logger.addHandler(handler)
    failures: list[BaseException] = []

    def download() -> None:
        try:
            cache.get(store, "broken", 1)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=download)
    try:
        thread.start()
        assert failed_once.wait(30), "the first attempt never failed"
        started = time.monotonic()
        cache.close()
        thread.join(30)
    finally:
        logger.removeHandler(handler)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert len(failures) == 1 and isinstance(failures[0], DownloadCancelled)
    assert _leftovers(tmp_path / "cache") == []
    assert _cached(cache) == []
    with pytest.raises(DownloadCancelled):  # and every later one
        cache.get(store, "bbc", 1)
