"""The registry snapshot: written atomically, read back, and a restart that restores what was served."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from serving_support import describe, publish_classifier, running, settings, wait_ready

from torchship.errors import ConfigError
from torchship.serving import ModelSettings
from torchship.serving.runtime.snapshot import Snapshot, SnapshotEntry, read_snapshot, write_snapshot


def test_snapshot_round_trip_leaves_no_temporary_file(tmp_path: Path) -> None:
    entry = SnapshotEntry("news", "2", "/store/news/2", "news/2", "a.b:C", 2, {"batch_size": 8})
    path = tmp_path / "state" / "snapshot.json"
    write_snapshot(path, Snapshot([entry], {"news": "2"}, {"news": [1, 2]}))
    restored = read_snapshot(path)
    assert restored is not None
    assert restored.entries == [entry]
    assert (restored.defaults, restored.store_versions) == ({"news": "2"}, {"news": [1, 2]})
    assert [p.name for p in path.parent.iterdir()] == ["snapshot.json"]


def test_missing_snapshot_is_none_and_a_damaged_one_says_what_to_do(tmp_path: Path) -> None:
    assert read_snapshot(tmp_path / "none.json") is None
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"format": 1, "models": [{"name": 1}]')
    with pytest.raises(ConfigError, match="--no_snapshot"):
        read_snapshot(damaged)


@pytest.mark.slow
def test_a_restart_restores_versions_defaults_and_workers(store_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(store_root, store)
    publish_classifier(store, "news", seed=3)
    with running(settings(store=store, use_snapshot=True)) as server:
        wait_ready(server)
        with httpx.Client(base_url=server.urls["management"], timeout=120) as manage:
            assert manage.put("/models/news/1/set-default").status_code == 200
            assert manage.put("/models/news/1?min_worker=2&synchronous=true").status_code == 200
            assert manage.delete("/models/news/3").status_code == 200
    assert (store / ".serve-snapshot.json").is_file()
    publish_classifier(store, "news", seed=4)  # published while the server was down: served after restart
    with running(settings(store=store, use_snapshot=True)) as server:
        wait_ready(server)
        versions = {d["modelVersion"]: d for d in describe(server, "/models/news/all")}
        assert sorted(versions) == ["1", "2", "4"]
        assert versions["1"]["isDefault"] is True
        assert len(versions["1"]["workers"]) == 2
        with httpx.Client(base_url=server.urls["inference"], timeout=120) as client:
            assert client.post("/predictions/news", json={"text": "a goal"}).status_code == 200
    with running(settings(store=store, use_snapshot=False)) as server:  # --no_snapshot: the store as is
        assert sorted(d["modelVersion"] for d in describe(server, "/models/news/all")) == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_versions_published_or_fixed_while_serving_are_served_after_a_restart(
    store_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(store_root, store)
    broken = store / "news" / "3"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")  # cannot load: skipped at start, not "known"
    with running(settings(store=store, use_snapshot=True)) as server:
        wait_ready(server)
        assert sorted(d["modelVersion"] for d in describe(server, "/models/news/all")) == ["1", "2"]
        shutil.rmtree(broken)
        publish_classifier(store, "news", seed=5)  # the fixed version 3, published while serving
        publish_classifier(store, "news", seed=6)  # version 4, registered while serving, then unregistered
        with httpx.Client(base_url=server.urls["management"], timeout=120) as manage:
            assert manage.post("/models?url=news/4&synchronous=true").status_code == 200
            assert manage.delete("/models/news/4").status_code == 200
            # Any change rewrites the snapshot; it must not claim version 3 as decided.
            assert manage.put("/models/news/1?min_worker=1&synchronous=true").status_code == 200
    with running(settings(store=store, use_snapshot=True)) as server:
        wait_ready(server)
        assert sorted(d["modelVersion"] for d in describe(server, "/models/news/all")) == ["1", "2", "3"]


@pytest.mark.slow
def test_a_snapshot_replays_at_most_the_worker_caps(tmp_path: Path) -> None:
    from serving_handlers import EchoAPI

    path = tmp_path / "snapshot.json"
    asked = ModelSettings(workers=3, max_workers=3).to_dict()
    write_snapshot(path, Snapshot([SnapshotEntry("echo", "1", "", "", _ECHO, 3, asked)]))
    server_settings = settings(use_snapshot=True, snapshot=path, max_workers_per_version=1)
    with running(server_settings, [EchoAPI(name="echo", workers=1)]) as server:
        wait_ready(server)
        [echo] = describe(server, "/models/echo")
        assert (echo["minWorkers"], echo["maxWorkers"], len(echo["workers"])) == (1, 1, 1)
    restored = read_snapshot(path)
    assert restored is not None
    assert [entry.workers for entry in restored.entries] == [1]


_ECHO = "serving_handlers:EchoAPI"


@pytest.mark.slow
def test_a_restart_from_another_directory_restores_a_relative_store(
    store_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(store_root, tmp_path / "store")
    (tmp_path / "sub").mkdir()
    idle = ModelSettings(workers=0)  # nothing to load: the test is about what is registered
    monkeypatch.chdir(tmp_path)
    with (
        running(settings(store=Path("store"), use_snapshot=True, model_defaults=idle)) as server,
        httpx.Client(base_url=server.urls["management"], timeout=60) as manage,
    ):
        assert manage.put("/models/news/1?min_worker=1").status_code == 202
    snapshot = read_snapshot(tmp_path / "store" / ".serve-snapshot.json")
    assert snapshot is not None
    assert [entry.path for entry in snapshot.entries] == [str(tmp_path / "store" / "news" / v) for v in "12"]
    monkeypatch.chdir(tmp_path / "sub")
    with running(settings(store=Path("../store"), use_snapshot=True, model_defaults=idle)) as server:
        workers = {v.version: v.target_workers for v in server.registry.versions("news")}
        assert workers == {"1": 1, "2": 0}  # the snapshot's entries, not the store's versions served anew


@pytest.mark.slow
def test_store_versions_whose_entries_are_lost_are_served_like_new_ones(
    tmp_path: Path, store_root: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(store_root, store)
    gone = [
        SnapshotEntry("news", v, f"elsewhere/store/news/{v}", f"news/{v}", _CLASSIFIER, 1, {}) for v in "12"
    ]
    write_snapshot(store / ".serve-snapshot.json", Snapshot(gone, {}, {"news": [1, 2]}))
    with running(settings(store=store, use_snapshot=True, model_defaults=ModelSettings(workers=0))) as server:
        assert [v.version for v in server.registry.versions("news")] == ["1", "2"]
    snapshot = read_snapshot(store / ".serve-snapshot.json")
    assert snapshot is not None
    assert [entry.path for entry in snapshot.entries] == [str(store / "news" / v) for v in "12"]


_CLASSIFIER = "torchship.serving.text_classifier:TextClassifierAPI"


@pytest.mark.slow
def test_a_snapshot_written_before_serving_moved_into_folders_restores(tmp_path: Path) -> None:
    """Snapshots name handlers ``module:qualname``; the built-in handler lived in
    ``torchship.serving.handlers`` until serving/ was split into folders."""
    store = tmp_path / "store"
    publish_classifier(store, "news", seed=3)
    path = tmp_path / "snapshot.json"
    old = SnapshotEntry(
        "headlines",  # a name only the snapshot knows: served only if the entry is restored
        "1",
        str((store / "news" / "1").resolve()),
        "news/1",
        "torchship.serving.handlers:TextClassifierAPI",
        1,
        ModelSettings().to_dict(),
    )
    write_snapshot(path, Snapshot([old], {}, {"news": [1]}))
    with running(settings(store=store, use_snapshot=True, snapshot=path)) as server:
        wait_ready(server)
        assert [d["modelVersion"] for d in describe(server, "/models/headlines")] == ["1"]
        with httpx.Client(base_url=server.urls["inference"], timeout=120) as client:
            answer = client.post("/predictions/headlines", json={"text": "a goal"})
            assert answer.status_code == 200, answer.text
    restored = read_snapshot(path)
    assert restored is not None
    assert [entry.handler for entry in restored.entries] == [
        "torchship.serving.text_classifier:TextClassifierAPI"
    ]
