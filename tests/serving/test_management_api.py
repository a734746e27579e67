"""The management listener end to end: list, describe, register (store, paths, archives), scale,
set-default and unregister, at runtime, with the safety checks on what may be registered.

The tests pass in any order (``pytest -p random_order --random-order``): a test that changes what is
served, or depends on the store's two versions of ``news`` being all there is, gets a server of its own
(``own``); the others share one (``server``) and only add models under names no other test uses.
"""

from __future__ import annotations

import shutil
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from serving_support import publish_classifier, running, settings, wait_ready, wait_until

from torchship.serving import Server
from torchship.store import ModelStore, load_package

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory, store_root: Path) -> tuple[Path, Path]:
    """A private copy of the store (this module changes it) and an allowed --model_roots directory."""
    base = tmp_path_factory.mktemp("management")
    store = base / "store"
    shutil.copytree(store_root, store)
    allowed = base / "uploads"
    publish_classifier(allowed / "staging", "other", seed=5)
    return store, allowed


@pytest.fixture(scope="module")
def server(roots: tuple[Path, Path]) -> Iterator[Server]:
    store, allowed = roots
    with running(settings(store=store, model_roots=(allowed,))) as server:
        wait_ready(server)
        yield server


@pytest.fixture(scope="module")
def manage(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.urls["management"], timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def infer(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.urls["inference"], timeout=120) as client:
        yield client


@dataclass(frozen=True)
class Own:
    """A server of one test's own, on its own copy of the store: news v1 and v2, v2 the default."""

    server: Server
    store: Path
    manage: httpx.Client
    infer: httpx.Client


@pytest.fixture
def own(tmp_path: Path, store_root: Path) -> Iterator[Own]:
    store = tmp_path / "store"
    shutil.copytree(store_root, store)
    with running(settings(store=store)) as server:
        wait_ready(server)
        with (
            httpx.Client(base_url=server.urls["management"], timeout=120) as manage,
            httpx.Client(base_url=server.urls["inference"], timeout=120) as infer,
        ):
            yield Own(server, store, manage, infer)


def test_list_models_pages_like_torchserve(own: Own, shared_server: Server) -> None:
    assert own.manage.get("/models").json() == {"models": [{"modelName": "news", "modelUrl": "news/2"}]}
    assert own.manage.get("/models?limit=abc").status_code == 400
    # Paging over the shared server's models, two at a time: tokens as strings, first in the body.
    with httpx.Client(base_url=shared_server.urls["management"], timeout=60) as client:
        pages, token = [], "0"
        while token is not None:
            body = client.get("/models", params={"limit": 2, "next_page_token": token}).json()
            assert len(body["models"]) == 2 or "nextPageToken" not in body
            pages.append([model["modelName"] for model in body["models"]])
            token = body.get("nextPageToken")
            assert token is None or next(iter(body)) == "nextPageToken"
        everything = client.get("/models").json()["models"]
    assert [name for page in pages for name in page] == [model["modelName"] for model in everything]
    assert len(pages) == (len(everything) + 1) // 2 and len(everything) > 2


def test_describe_model_version_and_all(own: Own) -> None:
    manage = own.manage
    [default] = manage.get("/models/news").json()
    assert (default["modelName"], default["modelVersion"], default["isDefault"]) == ("news", "2", True)
    [worker] = default["workers"]
    assert worker["status"] == "READY"
    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # the default device is auto
    assert (worker["device"], worker["gpu"]) == (device, device != "cpu")
    assert worker["gpuUsage"] == ("gpuId::0" if device != "cpu" else "N/A")
    assert default["jobQueueStatus"] == {"remainingCapacity": 512, "pendingRequests": 0}
    assert [d["modelVersion"] for d in manage.get("/models/news/all").json()] == ["1", "2"]
    assert manage.get("/models/news/1").json()[0]["isDefault"] is False
    assert manage.get("/models/nope").status_code == 404
    missing = manage.get("/models/news/9")
    assert missing.status_code == 404
    assert missing.json()["message"] == "Model version: 9 does not exist for model: news"


def test_register_a_new_store_version_makes_it_the_default(own: Own) -> None:
    manage, infer, store = own.manage, own.infer, own.store
    version = publish_classifier(store, "news", seed=3)
    response = manage.post(
        f"/models?url=news/{version}&initial_workers=1&synchronous=true&batch_size=4"
        "&response_timeout=30&startup_timeout=90"
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"status": f'Model "news" Version: {version} registered with 1 initial workers'}
    [described] = manage.get(f"/models/news/{version}").json()
    assert (described["batchSize"], described["responseTimeout"], described["startupTimeout"]) == (4, 30, 90)
    text = "the coach praised the players"
    expected = load_package(store / "news" / str(version)).predict_proba([text])[0]
    assert infer.post("/predictions/news", json={"text": text}).json()["score"] == pytest.approx(
        float(expected.max()), abs=1e-5
    )
    duplicate = manage.post(f"/models?url=news/{version}")
    assert duplicate.status_code == 409
    assert duplicate.json()["type"] == "ConflictStatusException"


def test_set_default_takes_the_next_request(own: Own) -> None:
    manage, infer, store = own.manage, own.infer, own.store
    response = manage.put("/models/news/1/set-default")
    assert response.json() == {"status": 'Default version successfully updated for model "news" to "1"'}
    text = "shares in the bank rose"
    expected = load_package(store / "news" / "1").predict_proba([text])[0]
    assert infer.post("/predictions/news", json={"text": text}).json()["score"] == pytest.approx(
        float(expected.max()), abs=1e-5
    )
    assert manage.put("/models/news/9/set-default").status_code == 404


def test_scale_workers_sync_and_async(own: Own) -> None:
    manage = own.manage
    response = manage.put("/models/news/1?min_worker=2&synchronous=true")
    assert response.json() == {"status": "Workers scaled to 2 for model: news, version: 1"}
    assert len(manage.get("/models/news/1").json()[0]["workers"]) == 2
    accepted = manage.put("/models/news/1?min_worker=1")
    assert accepted.status_code == 202
    assert accepted.json() == {"status": "Processing worker updates..."}
    wait_until(lambda: len(manage.get("/models/news/1").json()[0]["workers"]) == 1, what="scale down")
    assert manage.put("/models/news/1?min_worker=x").status_code == 400
    assert manage.put("/models/news/1?min_worker=3&max_worker=1").status_code == 400


def test_register_from_an_allowed_root_publishes_into_the_store(
    manage: httpx.Client, infer: httpx.Client, roots: tuple[Path, Path]
) -> None:
    store, allowed = roots
    package = allowed / "staging" / "other" / "1"
    response = manage.post("/models", json={"url": str(package), "model_name": "copied", "synchronous": True})
    assert response.status_code == 200, response.text
    assert ModelStore(store).versions("copied") == [1]
    assert load_package(store / "copied" / "1").config.name == "copied"
    assert infer.post("/predictions/copied", json={"text": "a"}).status_code == 200


def test_register_a_zip_archive(manage: httpx.Client, infer: httpx.Client, roots: tuple[Path, Path]) -> None:
    store, allowed = roots
    archive = allowed / "other.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in (allowed / "staging" / "other" / "1").iterdir():
            zipped.write(file, f"other-1/{file.name}")
    response = manage.post("/models?url=other.zip&synchronous=true&initial_workers=1".replace(
        "other.zip", str(archive)))  # fmt: skip
    assert response.status_code == 200, response.text
    assert ModelStore(store).versions("other") == [1]
    assert infer.post("/predictions/other", json={"text": "a"}).status_code == 200


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://example.com/model.zip", "does not download"),
        ("../../etc", "outside the model store"),
        ("", "url is required"),
    ],
)
def test_register_refuses_unsafe_sources(manage: httpx.Client, url: str, reason: str) -> None:
    response = manage.post("/models", params={"url": url})
    assert response.status_code == 400
    assert reason in response.json()["message"]


def test_register_refuses_symlink_escapes_and_zip_slip(
    manage: httpx.Client, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    store, allowed = roots
    outside = tmp_path / "outside"
    shutil.copytree(allowed / "staging" / "other" / "1", outside)
    (store / "escape").symlink_to(outside)
    response = manage.post("/models", params={"url": "escape"})
    assert response.status_code == 400
    assert "outside the model store" in response.json()["message"]
    evil = allowed / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.write(outside / "config.json", "config.json")
        zipped.writestr("../../escaped.txt", "gotcha")
    response = manage.post("/models", params={"url": str(evil)})
    assert response.status_code == 400
    assert "outside the package" in response.json()["message"]
    assert not (store.parent / "escaped.txt").exists()


def test_register_refuses_negative_initial_workers(manage: httpx.Client) -> None:
    before = manage.get("/models/news/all").json()
    response = manage.post("/models?url=news/1&initial_workers=-3")
    assert response.status_code == 400
    assert "initial_workers must be 0 or more, got -3" in response.json()["message"]
    assert len(manage.get("/models/news/all").json()) == len(before)


def test_register_honours_every_torchserve_parameter(manage: httpx.Client) -> None:
    params = {
        "url": "news/1",
        "model_name": "tuned",
        "handler": "text-classifier",
        "runtime": "python",
        "batch_size": "4",
        "max_batch_delay": "20",
        "initial_workers": "1",
        "synchronous": "true",
        "response_timeout": "30",
        "startup_timeout": "60",
        "s3_sse_kms": "false",
        "job_queue_size": "50",
    }
    response = manage.post("/models", params=params)
    assert response.status_code == 200, response.text
    (body,) = manage.get("/models/tuned").json()
    assert body["handler"] == "torchship.serving.text_classifier:TextClassifierAPI"
    assert (body["runtime"], body["batchSize"], body["maxBatchDelay"]) == ("python", 4, 20)
    assert (body["minWorkers"], body["responseTimeout"], body["startupTimeout"]) == (1, 30, 60)
    assert body["jobQueueStatus"]["remainingCapacity"] == 50
    assert [worker["status"] for worker in body["workers"]] == ["READY"]  # synchronous: serving already
    by_class = {"url": "news/1", "model_name": "tuned2", "initial_workers": 0, "runtime": "python3"}
    response = manage.post("/models", json={**by_class, "handler": body["handler"]})
    assert response.status_code == 200, response.text
    assert manage.get("/models/tuned2").json()[0]["handler"] == body["handler"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"handler": "invalidHandler"}, "Parameter handler='invalidHandler' is not a known handler"),
        ({"handler": "my_handlers:Custom"}, "does not import handler classes by module path"),
        ({"runtime": "LSP"}, "Parameter runtime='LSP' is not supported"),
        ({"s3_sse_kms": "true"}, "Parameter s3_sse_kms=true does not apply"),
        ({"min_worker": "2"}, "Unknown registration parameter 'min_worker'"),
    ],
    ids=["invalid-handler", "code-handler", "runtime", "s3-sse-kms", "unknown"],
)
def test_register_refuses_parameters_it_cannot_honour(
    manage: httpx.Client, params: dict[str, str], message: str
) -> None:
    for request in (
        {"params": {"url": "news/1", "model_name": "refused", **params}},
        {"json": {"url": "news/1", "model_name": "refused", **params}},
    ):
        response = manage.post("/models", **request)  # type: ignore[arg-type]
        assert response.status_code == 400, response.text
        assert message in response.json()["message"]
    assert manage.get("/models/refused").status_code == 404


def test_register_refuses_a_handler_that_is_not_the_models_own(shared_server: Server) -> None:
    echo = "serving_handlers:EchoAPI"  # known to that server (it serves echo), but not news's handler
    with httpx.Client(base_url=shared_server.urls["management"], timeout=60) as manage:
        response = manage.post("/models", params={"url": "news/1", "model_name": "mismatch", "handler": echo})
        assert response.status_code == 400, response.text
        assert (
            "Parameter handler='serving_handlers:EchoAPI' does not match news/1" in response.json()["message"]
        )
        assert manage.get("/models/mismatch").status_code == 404


def test_unregister_a_version_under_load_fails_no_request(own: Own) -> None:
    manage, infer = own.manage, own.infer
    # Two clients on the default version, two on the version being unregistered, all busy before it goes.
    paths = ["/predictions/news", "/predictions/news", "/predictions/news/1", "/predictions/news/1"]
    statuses: list[list[int]] = [[] for _ in paths]
    done = threading.Event()

    def load(client_index: int) -> None:
        with httpx.Client(base_url=str(infer.base_url), timeout=120) as client:
            while not done.is_set():
                response = client.post(paths[client_index], json={"text": "the match"})
                statuses[client_index].append(response.status_code)

    threads = [threading.Thread(target=load, args=(index,)) for index in range(len(paths))]
    for thread in threads:
        thread.start()
    wait_until(lambda: all(len(seen) >= 10 for seen in statuses), 60, "load on both versions")

    response = manage.delete("/models/news/1")
    done.set()
    for thread in threads:
        thread.join()
    assert response.json() == {"status": 'Model "news" unregistered'}
    assert set(statuses[0] + statuses[1]) == {200}
    # Each client of the unregistered version: answered until it went, then 404 (never a 5xx or a dropped
    # request).
    for seen in statuses[2:]:
        first_404 = seen.index(404) if 404 in seen else len(seen)
        assert set(seen[:first_404]) == {200} and set(seen[first_404:]) <= {404}
    assert infer.post("/predictions/news/1", json={"text": "x"}).status_code == 404


def test_unregister_a_whole_model_and_wrong_methods(manage: httpx.Client, infer: httpx.Client) -> None:
    registered = manage.post("/models?url=news/2&model_name=doomed&initial_workers=1&synchronous=true")
    assert registered.status_code == 200, registered.text
    assert infer.post("/predictions/doomed", json={"text": "a"}).status_code == 200
    assert manage.delete("/models/doomed").status_code == 200
    assert infer.post("/predictions/doomed", json={"text": "a"}).status_code == 404
    assert manage.delete("/models/doomed").status_code == 404
    assert manage.patch("/models").status_code == 405
    assert manage.post("/models/news").status_code == 405


def test_metrics_listener(server: Server) -> None:
    with httpx.Client(base_url=server.urls["metrics"]) as client:
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "torchship_workers" in response.text
        assert client.get("/other").status_code == 404


def test_an_unregistered_version_leaves_no_metric_series(
    manage: httpx.Client, infer: httpx.Client, server: Server
) -> None:
    """Model names come from clients: series kept after unregister would grow memory with every name."""
    registered = manage.post("/models?url=news/1&model_name=ephemeral&initial_workers=1&synchronous=true")
    assert registered.status_code == 200, registered.text
    assert infer.post("/predictions/ephemeral", json={"text": "shares rose"}).status_code == 200
    scrape = lambda: httpx.get(server.urls["metrics"] + "/metrics", timeout=30).text  # noqa: E731
    assert 'model="ephemeral"' in scrape()
    assert manage.delete("/models/ephemeral").status_code == 200
    assert 'model="ephemeral"' not in scrape()
