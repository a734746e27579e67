"""Workers that crash, hang or cannot load, a full queue, and no workers: each gets a clear 5xx for the
requests it concerns, the worker is replaced, and nothing else is disturbed."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serving_handlers import BrokenLoadAPI, ExitOnLoadAPI, HangOnLoadAPI, SlowAPI
from serving_support import describe, metric, running, settings, wait_until

from torchship.serving import ModelAPI, Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    apis = [
        SlowAPI(name="slow", workers=1, response_timeout=30),
        SlowAPI(name="hang", workers=1, response_timeout=1.5),
        SlowAPI(name="tiny", workers=1, batch_size=1, job_queue_size=2),
        SlowAPI(name="bystander", workers=1),
        SlowAPI(name="draining", workers=1),
        BrokenLoadAPI(name="broken", workers=1),
        ExitOnLoadAPI(name="vanishing", workers=1),
        HangOnLoadAPI(name="stuck", workers=1, startup_timeout=1.5),
        HangOnLoadAPI(name="loading", workers=1, response_timeout=1),
        HangOnLoadAPI(name="abandoned", workers=0, startup_timeout=600),
        HangOnLoadAPI(name="shrunk", workers=0, startup_timeout=600),
        _unimportable_api("ghost"),
    ]
    with running(settings(), apis) as server:
        wait_until(lambda: server.registry.get("slow").serving_workers == 1, 120, "workers")
        wait_until(lambda: server.registry.get("hang").serving_workers == 1, 120, "workers")
        wait_until(lambda: server.registry.get("tiny").serving_workers == 1, 120, "workers")
        wait_until(lambda: server.registry.get("bystander").serving_workers == 1, 120, "workers")
        wait_until(lambda: server.registry.get("draining").serving_workers == 1, 120, "workers")
        yield server
    del sys.modules[_GHOST_MODULE]


_GHOST_MODULE = "torchship_test_ghost_handlers"


def _unimportable_api(name: str) -> ModelAPI:
    """A ModelAPI whose class lives in a module that exists in this process only, as a class defined in a
    notebook cell does: the server pickles it, a worker process cannot import it."""
    module = types.ModuleType(_GHOST_MODULE)
    source = """
        from serving_handlers import EchoAPI

        class GhostAPI(EchoAPI):
            pass
    """
    exec(textwrap.dedent(source), module.__dict__)
    sys.modules[_GHOST_MODULE] = module
    api: ModelAPI = module.GhostAPI(name=name, workers=1)
    return api


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.urls["inference"], timeout=120) as client:
        yield client


def _in_background(
    client: httpx.Client, path: str, body: Any
) -> tuple[threading.Thread, list[httpx.Response]]:
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(client.post(path, json=body)))
    thread.start()
    return thread, answers


def _ready_pids(server: Server, model: str) -> set[int]:
    return {w["pid"] for w in describe(server, f"/models/{model}")[0]["workers"] if w["status"] == "READY"}


def _busy_worker(server: Server, model: str) -> dict[str, Any] | None:
    workers = describe(server, f"/models/{model}")[0]["workers"]
    return next((worker for worker in workers if worker["status"] == "BUSY"), None)


def test_a_killed_worker_fails_only_its_request_and_is_replaced(server: Server, client: httpx.Client) -> None:
    thread, answers = _in_background(client, "/predictions/slow", {"sleep": 60})
    wait_until(lambda: _busy_worker(server, "slow") is not None, what="the worker to start the request")
    worker = _busy_worker(server, "slow")
    assert worker is not None
    os.kill(worker["pid"], signal.SIGKILL)
    thread.join()
    assert answers[0].status_code == 500
    assert "died while running this request" in answers[0].json()["message"]
    wait_until(lambda: bool(_ready_pids(server, "slow") - {worker["pid"]}), 120, "a replacement worker")
    assert client.post("/predictions/slow", json={}).status_code == 200
    assert client.post("/predictions/bystander", json={}).status_code == 200


def test_a_worker_that_exits_in_the_handler_is_replaced(server: Server, client: httpx.Client) -> None:
    response = client.post("/predictions/slow", json={"exit": 3})
    assert response.status_code == 500
    assert "exit code 3" in response.json()["message"]
    wait_until(lambda: len(_ready_pids(server, "slow")) == 1, 120, "a replacement worker")
    assert client.post("/predictions/slow", json={}).status_code == 200


def test_a_hung_worker_times_out_with_504_and_is_replaced(server: Server, client: httpx.Client) -> None:
    [old] = describe(server, "/models/hang")[0]["workers"]
    response = client.post("/predictions/hang", json={"sleep": 120})
    assert response.status_code == 504
    assert response.json()["type"] == "RequestTimeoutException"
    assert "response_timeout=1.5s" in response.json()["message"]
    wait_until(lambda: bool(_ready_pids(server, "hang") - {old["pid"]}), 120, "a replacement worker")
    assert client.post("/predictions/hang", json={}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(server: Server, client: httpx.Client) -> None:
    running_one, _ = _in_background(client, "/predictions/tiny", {"sleep": 5})
    wait_until(lambda: _busy_worker(server, "tiny") is not None, what="the worker to be busy")
    queued = [_in_background(client, "/predictions/tiny", {}) for _ in range(2)]
    wait_until(lambda: server.registry.get("tiny").pending == 2, what="two queued requests")
    response = client.post("/predictions/tiny", json={})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "job_queue_size" in response.json()["message"]
    running_one.join()
    for thread, _ in queued:
        thread.join()
    assert all(answers[0].status_code == 200 for _, answers in queued)


def test_scaling_to_zero_fails_what_waits_and_empties_the_queue_gauge(
    server: Server, client: httpx.Client
) -> None:
    running_one, answers = _in_background(client, "/predictions/tiny", {"sleep": 2})
    wait_until(lambda: _busy_worker(server, "tiny") is not None, what="the worker to be busy")
    queued = [_in_background(client, "/predictions/tiny", {}) for _ in range(2)]
    depth = lambda: metric(server, "torchship_queue_depth", model="tiny", version="1")  # noqa: E731
    wait_until(lambda: depth() == 2, what="two queued requests")
    with httpx.Client(base_url=server.urls["management"], timeout=120) as manage:
        assert manage.put("/models/tiny?min_worker=0&synchronous=true").status_code == 200
        for thread, _ in queued:
            thread.join()
        assert [waiting[0].status_code for _, waiting in queued] == [503, 503]
        assert depth() == 0
        running_one.join()
        assert answers[0].status_code == 200  # the batch already running finished
        assert manage.put("/models/tiny?min_worker=1&synchronous=true").status_code == 200


def test_a_model_that_cannot_load_answers_503_with_the_reason(server: Server, client: httpx.Client) -> None:
    wait_until(lambda: server.registry.get("broken").load_error is not None, 120, "the load failure")
    response = client.post("/predictions/broken", json={})
    assert response.status_code == 503
    assert "weights.bin is missing" in response.json()["message"]
    assert "weights.bin is missing" in describe(server, "/models/broken")[0]["loadError"]
    assert client.get("/ping").json()["status"] == "Partial Healthy"


def test_a_handler_class_workers_cannot_import_is_a_load_error_that_says_what_to_do(
    server: Server, client: httpx.Client
) -> None:
    wait_until(lambda: server.registry.get("ghost").load_error is not None, 120, "the load failure")
    message = client.post("/predictions/ghost", json={}).json()["message"]
    assert f"ModuleNotFoundError: No module named '{_GHOST_MODULE}'" in message
    assert "define it in a .py file that a fresh process can import (not in a notebook cell)" in message
    assert f"No module named '{_GHOST_MODULE}'" in describe(server, "/models/ghost")[0]["loadError"]


def test_a_worker_that_dies_while_loading_is_a_load_error(server: Server, client: httpx.Client) -> None:
    wait_until(lambda: server.registry.get("vanishing").load_error is not None, 120, "the load failure")
    reason = "the worker exited with code 3 while loading"
    response = client.post("/predictions/vanishing", json={})
    assert response.status_code == 503
    assert reason in response.json()["message"]
    assert describe(server, "/models/vanishing")[0]["loadError"] == reason


def test_a_worker_still_loading_after_startup_timeout_is_stopped_and_the_reason_shown(
    server: Server, client: httpx.Client
) -> None:
    wait_until(lambda: server.registry.get("stuck").load_error is not None, 120, "the startup timeout")
    reason = "the worker did not load within startup_timeout=1.5s and was stopped"
    response = client.post("/predictions/stuck", json={})
    assert response.status_code == 503
    assert reason in response.json()["message"] and "raise startup_timeout" in response.json()["message"]
    [described] = describe(server, "/models/stuck")
    assert described["startupTimeout"] == 1.5 and reason in described["loadError"]


def test_a_request_waiting_for_a_loading_worker_gets_504_that_says_so(client: httpx.Client) -> None:
    response = client.post("/predictions/loading", json={})  # its worker loads for ever (startup_timeout 120)
    assert response.status_code == 504
    message = response.json()["message"]
    assert "did not start this request within response_timeout=1s" in message
    assert "no worker has loaded the model yet" in message


def test_no_workers_answers_503(server: Server, client: httpx.Client) -> None:
    with httpx.Client(base_url=server.urls["management"], timeout=120) as manage:
        assert manage.put("/models/bystander?min_worker=0&synchronous=true").status_code == 200
        response = client.post("/predictions/bystander", json={})
        assert response.status_code == 503
        assert "has no worker" in response.json()["message"]
        assert manage.put("/models/bystander?min_worker=1&synchronous=true").status_code == 200
    assert client.post("/predictions/bystander", json={}).status_code == 200


def test_unregister_lets_in_flight_requests_finish(server: Server, client: httpx.Client) -> None:
    running_one, answers = _in_background(client, "/predictions/draining", {"sleep": 2})
    wait_until(lambda: _busy_worker(server, "draining") is not None, what="the request to run")
    with httpx.Client(base_url=server.urls["management"], timeout=120) as manage:
        assert manage.delete("/models/draining").status_code == 200
    running_one.join()
    assert answers[0].status_code == 200
    assert client.post("/predictions/draining", json={}).status_code == 404


@pytest.mark.parametrize(
    ("name", "interruption", "why"),
    [
        ("abandoned", "delete", "was unregistered while loading"),
        ("shrunk", "scale", "was scaled to 0 workers while loading"),
    ],
)
def test_a_synchronous_wait_for_loading_workers_ends_when_they_never_will(
    server: Server, name: str, interruption: str, why: str
) -> None:
    """A synchronous scale (or register) waits for workers that load for ever (startup_timeout 600): an
    unregister or a scale to 0 meanwhile answers it with an error, instead of leaving it waiting."""
    management = server.urls["management"]
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            httpx.put(f"{management}/models/{name}?min_worker=1&synchronous=true", timeout=120)
        )
    )
    waiting.start()
    wait_until(lambda: server.registry.get(name).live_workers == 1, what="a worker to start loading")
    if interruption == "delete":
        stopped = httpx.delete(f"{management}/models/{name}", timeout=120)
    else:
        stopped = httpx.put(f"{management}/models/{name}?min_worker=0", timeout=120)
    assert stopped.status_code in (200, 202), stopped.text
    waiting.join(60)
    assert not waiting.is_alive() and len(answers) == 1
    assert answers[0].status_code == 500, answers[0].text
    assert f'Model "{name}" Version 1 {why}' in answers[0].json()["message"]
