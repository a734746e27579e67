"""The store watcher (``serving/runtime/watch.py``): ``serve --watch_store`` converges on a directory store.

Real servers on port 0 poll a real store every few tenths of a second; the tests change the store as an
operator or a training run would (publish, delete a version folder, write a pin file) and wait on what the
server shows (describe, metrics), never on time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_handlers import HangOnLoadAPI
from serving_support import metric, publish_classifier, running, settings, wait_ready, wait_until
from watch_support import load, serves, switched, versions

from torchship.serving import Server
from torchship.serving.runtime.metrics import Metrics
from torchship.serving.runtime.registry import Registry
from torchship.serving.runtime.watch import (
    MAX_RETRY_DELAY,
    StoreWatcher,
    default_version,
    retry_delay,
    wanted_versions,
)
from torchship.serving.settings import ModelSettings
from torchship.store import ModelStore
from torchship.store.view import LocalStoreView

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


def test_the_retry_delay_doubles_up_to_its_cap_however_many_failures() -> None:
    assert retry_delay(0.5, 1) == 0.5
    assert retry_delay(0.5, 2) == 1.0
    assert retry_delay(0.5, 5000) == MAX_RETRY_DELAY  # 2 ** 4999 would overflow a float
    assert retry_delay(None, 5000) == 0.0  # no interval (one pass at start): nothing to wait for


class ClosingView(LocalStoreView):
    """A directory store that records being closed, as an object store's view cancels its downloads."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_stopping_the_watcher_closes_its_view(tmp_path: Path) -> None:
    view = ClosingView(ModelStore(tmp_path))

    async def start_and_stop() -> None:
        metrics = Metrics()
        watcher = StoreWatcher(
            view, Registry(metrics), metrics, lambda *_: (None, 0, 0), interval=60, keep_versions=None
        )
        watcher.start()
        await watcher.stop()

    asyncio.run(start_and_stop())
    assert view.closed


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
        # Gone from the store: its failure series goes too (names and numbers must not pile up).
        wait_until(lambda: 'version="3"' not in httpx.get(server.urls["metrics"] + "/metrics").text)

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


@pytest.mark.slow
def test_an_emptied_store_unloads_only_when_a_second_pass_agrees_and_leaves_the_server_unready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    publish_classifier(store, "m", seed=1)
    with (
        caplog.at_level(logging.INFO, logger="torchship.serving"),
        running(settings(store=str(store), watch_store=INTERVAL)) as server,
    ):
        wait_ready(server)
        assert httpx.get(f"{server.urls['inference']}/ping").json() == {"status": "Healthy"}
        (store / "m" / "PINNED").write_text("9", encoding="utf-8")  # not published: ignored, said once
        wait_passes(server, 3)
        (store / "m" / "PINNED").unlink()
        shutil.rmtree(store / "m" / "1")  # every version of the only model: the listing comes back empty
        wait_until(lambda: "1" not in versions(server), what="version 1 to be unloaded")

        ping = httpx.get(f"{server.urls['inference']}/ping")
        assert ping.status_code == 500
        (reason,) = [entry["reason"] for entry in ping.json()["unavailable"]]
        assert reason.startswith(f"no model in the store {store} yet: publish one (torchship train --store")
        ready = httpx.get(f"{server.urls['inference']}/v2/health/ready")
        assert ready.status_code == 400 and ready.json()["ready"] is False

        again = str(publish_classifier(store, "m", seed=2))
        wait_until(lambda: switched(server, again), what="a newly published version to serve")
        assert httpx.get(f"{server.urls['inference']}/v2/health/ready").json() == {"ready": True}
    messages = [r.getMessage() for r in caplog.records if r.name == "torchship.serving"]
    pins = [m for m in messages if "names version 9, which is not published" in m]
    assert len(pins) == 1, pins
    # The first pass that missed it only warned; the next one, missing it too, unloaded it.
    first = next(i for i, m in enumerate(messages) if "m is missing from the listing" in m)
    confirmed = next(i for i, m in enumerate(messages) if "m is still missing from" in m)
    unloaded = next(i for i, m in enumerate(messages) if "unloading m version 1" in m)
    assert first < confirmed < unloaded
    assert not any("unloading m version 1" in m for m in messages[first:confirmed])
    assert sum("m is missing from the listing" in m for m in messages) == 1


def test_a_server_without_a_watched_store_is_healthy_with_no_model() -> None:
    """TorchServe's behaviour: models may be registered later through the management API."""
    with running(settings()) as server:
        assert httpx.get(f"{server.urls['inference']}/ping").json() == {"status": "Healthy"}
        assert httpx.get(f"{server.urls['inference']}/v2/health/ready").json() == {"ready": True}


@pytest.mark.slow
def test_a_version_unregistered_while_a_pass_waits_for_it_to_load_ends_the_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The management API unregisters a store version whose workers are loading (for ever here) while
    the watcher's pass waits for them: the pass ends, and counts no failure (someone else removed it)."""
    store = tmp_path / "store"
    publish_classifier(store, "m", seed=1)  # version 1: served by the API below, so not the watcher's
    publish_classifier(store, "m", seed=2)
    hanging = ModelSettings(workers=1, startup_timeout=600)  # the pool would wait 10 minutes: not this
    server_settings = settings(store=str(store), watch_store=INTERVAL, model_defaults=hanging)
    # The server serves store versions of "m" with the API's class, whose load never ends.
    with (
        caplog.at_level(logging.INFO, logger="torchship.serving"),
        running(server_settings, [HangOnLoadAPI(name="m", workers=0)]) as server,
    ):
        wait_until(lambda: "2" in versions(server), what="version 2 to be registered")
        loading = server.registry.get("m", "2")
        # A pass waits for it: it holds a wait on the version's worker pool.
        wait_until(lambda: bool(loading._pool._ready_waiters), what="a pass to wait for version 2")
        before = passes(server)
        deleted = httpx.delete(f"{server.urls['management']}/models/m/2", timeout=120)
        assert deleted.status_code == 200, deleted.text
        wait_until(lambda: passes(server) > before, what="the waiting pass to end")
        assert metric(server, "torchship_store_failures_total", model="m", version="2") == 0
    assert any("m version 2 was unregistered while loading" in r.getMessage() for r in caplog.records)
