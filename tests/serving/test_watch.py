"""The store watcher (``serving/runtime/watch.py``): ``serve --watch_store`` converges on a directory store.

Real servers on port 0 poll a real store every few tenths of a second; the tests change the store as an
operator or a training run would (publish, delete a version folder, write a pin file) and wait on what the
server shows (describe, metrics), never on time.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_support import metric, publish_classifier, running, settings, wait_ready, wait_until
from watch_support import load, serves, switched, versions

from torchship.serving import Server
from torchship.serving.runtime.watch import default_version, wanted_versions
from torchship.serving.settings import ModelSettings

INTERVAL = 0.3


def test_the_wanted_versions_are_the_newest_n_plus_the_pinned_one() -> None:
    assert wanted_versions([1, 2, 3], None, None) == {1, 2, 3}
    assert wanted_versions([1, 2, 3], None, 1) == {3}
    assert wanted_versions([1, 2, 3], 1, 2) == {1, 2, 3}
    assert wanted_versions([1, 2, 3], 1, 1) == {1, 3}
    assert wanted_versions([1, 2, 3], 7, 1) == {3}  # a pin on a version not published is no pin
    assert wanted_versions([], None, 1) == set()


def test_the_default_is_the_pinned_version_else_the_newest() -> None:
    assert default_version([1, 2, 3], None) == 3
    assert default_version([1, 2, 3], 2) == 2
    assert default_version([1, 2, 3], 9) == 3
    assert default_version([], None) is None


# --------------------------------------------------------------------------------------- helpers
def default_of(server: Server, name: str = "m") -> str | None:
    return next((v for v, entry in versions(server, name).items() if entry["isDefault"]), None)


def workers_of(server: Server, name: str = "m") -> dict[str, int]:
    return {served.version: served.target_workers for served in server.registry.versions(name)}


def passes(server: Server) -> float:
    return metric(server, "torchship_store_watch_passes_total", outcome="ok")


def wait_passes(server: Server, count: int = 2) -> None:
    """Wait until ``count`` more passes have ended (a whole pass saw the store as it is now)."""
    start = passes(server)
    wait_until(lambda: passes(server) >= start + count, what=f"{count} store passes")


def publish_broken(store: Path, name: str, version: int, scratch: Path, how: str) -> None:
    """Publish ``name``/``version`` with a broken ``config.json`` or broken weights, atomically (built
    aside, then renamed in): a watcher never sees the good package first."""
    built = scratch / f"{name}-{version}"
    publish_classifier(built, name, seed=version)
    package = built / name / "1"
    if how == "config":
        (package / "config.json").write_text("{not json", encoding="utf-8")
    else:
        weights = package / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100] + b"\0" * (weights.stat().st_size - 100))
    os.rename(package, store / name / str(version))


# ----------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_a_published_version_takes_over_under_load_and_a_broken_one_never_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, scratch = tmp_path / "store", tmp_path / "scratch"
    publish_classifier(store, "m", seed=1)
    with running(settings(store=str(store), watch_store=INTERVAL, keep_versions=1)) as server:
        wait_ready(server)
        assert list(versions(server)) == ["1"]
        assert versions(server)["1"]["loadedAtStartup"] is True
        seen: list[dict[str, dict[str, Any]]] = []

        def replaced() -> bool:
            seen.append(versions(server))
            return switched(server, "2")

        with load(server) as traffic:
            publish_classifier(store, "m", seed=2)
            wait_until(replaced, what="version 2 to replace version 1")
            sent_before = traffic.sent
            wait_until(lambda: traffic.sent >= sent_before + 5, what="requests after the switch")
        assert traffic.failed == [], traffic.failed[:3]
        # Loaded, then serving, then the default: never the default while it did not serve.
        assert all(serves(state["2"]) for state in seen if state.get("2", {}).get("isDefault"))
        assert any("1" in state and "2" in state for state in seen)  # both served during the switch
        assert versions(server)["2"]["loadedAtStartup"] is False

        publish_broken(store, "m", 3, scratch, "config")
        wait_until(lambda: metric(server, "torchship_store_failures_total", model="m", version="3") >= 2)
        assert default_of(server) == "2" and list(versions(server)) == ["2"]
        shutil.rmtree(store / "m" / "3")

        with caplog.at_level(logging.ERROR, logger="torchship.serving"):
            publish_broken(store, "m", 4, scratch, "weights")
            # Tried on one pass, failed, unregistered, and tried again on a later one.
            wait_until(lambda: metric(server, "torchship_store_failures_total", model="m", version="4") >= 2)
            assert default_of(server) == "2"
            reply = httpx.post(f"{server.urls['inference']}/predictions/m", json={"text": "a"}, timeout=60)
            assert reply.status_code == 200, reply.text
        reasons = [r.getMessage() for r in caplog.records if "not serving m version 4" in r.getMessage()]
        assert reasons and "failed to load" in reasons[0], reasons
        assert metric(server, "torchship_store_watch_passes_total", outcome="failed") == 0


@pytest.mark.slow
def test_pins_removals_and_management_versions(tmp_path: Path) -> None:
    store, roots = tmp_path / "store", tmp_path / "roots"
    publish_classifier(store, "m", seed=1)
    publish_classifier(store, "m", seed=2)
    (store / "m" / "PINNED").write_text("1\n", encoding="utf-8")
    publish_classifier(roots, "own", seed=5)  # other weights, outside the store
    # The real worker default (one per core, up to 4): the default version gets it, the other one.
    server_settings = settings(
        store=str(store), watch_store=INTERVAL, model_roots=(roots,), model_defaults=ModelSettings()
    )
    full = ModelSettings().worker_count
    with running(server_settings) as server:
        wait_ready(server)
        wait_until(lambda: default_of(server) == "1", what="the pinned version 1 to be the default")
        assert server.registry.has_explicit_default("m")
        assert workers_of(server) == {"1": full, "2": 1}

        (store / "m" / "PINNED").unlink()
        wait_until(lambda: default_of(server) == "2", what="the newest version to be the default again")
        assert not server.registry.has_explicit_default("m")
        # The new default is scaled up at once; the old one down once it no longer takes requests.
        wait_until(lambda: workers_of(server) == {"1": 1, "2": full}, what="workers to follow the default")

        (store / "m" / "PINNED").write_text("1", encoding="utf-8")
        wait_until(lambda: default_of(server) == "1", what="pinned again")
        (store / "m" / "PINNED").write_text("one", encoding="utf-8")  # malformed: the last pin holds
        wait_passes(server)
        assert default_of(server) == "1"
        (store / "m" / "PINNED").unlink()
        wait_until(lambda: default_of(server) == "2", what="unpinned again")

        # A version registered through the management API (0 workers: nothing to load) under the same
        # name is not the watcher's (the server publishes it into the store as version 3): it stays
        # when the store changes, even when it is deleted from the store.
        registered = httpx.post(
            f"{server.urls['management']}/models",
            params={"url": str(roots / "own" / "1"), "model_name": "m", "initial_workers": 0},
            timeout=60,
        )
        assert registered.status_code in (200, 202), registered.text
        assert set(versions(server)) == {"1", "2", "3"}

        # The default version deleted from the store: unloaded, since version 1 serves.
        shutil.rmtree(store / "m" / "2")
        shutil.rmtree(store / "m" / "3")
        wait_until(lambda: "2" not in versions(server), what="version 2 to be unloaded")
        wait_passes(server)
        assert set(versions(server)) == {"1", "3"}
        assert default_of(server) == "1"
