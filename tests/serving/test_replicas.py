"""Two replicas converge on one object store by themselves (issue 17): a version published to S3 is
served by both within the watch interval plus its load time, and no request fails during the switch.

Real S3 protocol (moto's server, ``tests/s3_support.py``), two real servers on port 0 in this process,
each with its own version cache, and client threads sending predictions to both throughout.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import s3fs
from serving_support import metric, publish_classifier, running, settings, wait_ready, wait_until
from watch_support import load, serves, switched, versions

from s3_support import publish_to_s3

INTERVAL = 0.5
FAILED_PASSES = "torchship_store_watch_passes_total"
LOAD_BUDGET = 60.0
"""Seconds a replica may take past the interval to download, load and warm the tiny model (a loaded
2-core CI machine; it takes a few seconds)."""


@pytest.mark.slow
def test_two_replicas_switch_to_a_published_version_without_a_failed_request(
    s3_url: str, tmp_path: Path
) -> None:
    packages = tmp_path / "packages"
    publish_classifier(packages, "m", seed=1)
    publish_classifier(packages, "m", seed=2)
    assert publish_to_s3(s3_url, "m", packages / "m" / "1") == 1
    replica = {
        "watch_store": INTERVAL,
        "keep_versions": 1,
        "store": s3_url,
    }
    start = time.monotonic()
    with (
        running(settings(**replica, store_cache=tmp_path / "cache-a")) as first,
        running(settings(**replica, store_cache=tmp_path / "cache-b")) as second,
    ):
        replicas = {"a": first, "b": second}
        for server in replicas.values():
            wait_ready(server)
        started = time.monotonic() - start
        for server in replicas.values():
            assert switched(server, "1")
            assert versions(server)["1"]["modelUrl"] == f"{s3_url}/m/1"
        with load(first) as load_a, load(second) as load_b:
            published_at = time.monotonic()
            assert publish_to_s3(s3_url, "m", packages / "m" / "2") == 2
            published = time.monotonic()
            seen: dict[str, float] = {}  # publish -> the new version is registered (found, downloaded)
            serving: dict[str, float] = {}  # publish -> the new version is the default and serves
            alone: dict[str, float] = {}  # publish -> the old version is unloaded too

            def both_switched() -> bool:
                for label, server in replicas.items():
                    state = versions(server)
                    new = state.get("2")
                    if label not in seen and new is not None:
                        seen[label] = time.monotonic() - published
                    if label not in serving and new is not None and new["isDefault"] and serves(new):
                        serving[label] = time.monotonic() - published
                    if label not in alone and list(state) == ["2"] and label in serving:
                        alone[label] = time.monotonic() - published
                return len(alone) == len(replicas)

            wait_until(both_switched, INTERVAL + LOAD_BUDGET, "both replicas to serve version 2 alone")
            after = (load_a.sent + 5, load_b.sent + 5)
            wait_until(lambda: load_a.sent >= after[0] and load_b.sent >= after[1], what="more requests")
        sent, failed = load_a.sent + load_b.sent, load_a.failed + load_b.failed
        print(
            f"\ntwo replicas, watch interval {INTERVAL}s: initial load {started:.2f}s; publish took "
            f"{published - published_at:.2f}s; requests sent {sent} (a {load_a.sent}, b {load_b.sent}), "
            f"failed {len(failed)}; after the publish, version 2 registered (found and downloaded): "
            + ", ".join(f"{label} {seconds:.2f}s" for label, seconds in sorted(seen.items()))
            + "; the serving default: "
            + ", ".join(f"{label} {seconds:.2f}s" for label, seconds in sorted(serving.items()))
            + "; version 1 unloaded: "
            + ", ".join(f"{label} {seconds:.2f}s" for label, seconds in sorted(alone.items()))
        )
        assert failed == [], failed[:3]
        assert set(serving) == set(replicas)

        # A store that cannot be read (its bucket is gone) is not an empty store: nothing is unloaded.
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        bucket = s3_url.removeprefix("s3://").split("/")[0]
        fs.rm(bucket, recursive=True)
        assert not fs.exists(bucket)
        for server in replicas.values():
            wait_until(lambda server=server: metric(server, FAILED_PASSES, outcome="failed") >= 2)
            assert switched(server, "2")
            reply = httpx.post(f"{server.urls['inference']}/predictions/m", json={"text": "a"}, timeout=60)
            assert reply.status_code == 200, reply.text
