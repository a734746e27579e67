"""The inference listener end to end: TorchServe routes, the built-in text classifier, both handler
shapes, the batch contract, and every error status a client can cause."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving_support import describe, metric

from torchship.serving import Server
from torchship.store import load_package

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(shared_server: Server) -> Server:
    return shared_server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.urls["inference"], timeout=60) as client:
        yield client


def test_ping_is_healthy(client: httpx.Client) -> None:
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.json() == {"status": "Healthy"}


def test_text_classifier_answers_label_score_and_probabilities(
    client: httpx.Client, store_root: Path
) -> None:
    text = "the team won the match"
    response = client.post("/predictions/news", json={"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = load_package(store_root / "news" / "2").predict_proba([text])[0]
    assert set(body["probabilities"]) == {"business", "sport", "tech"}
    assert body["label"] == ["business", "sport", "tech"][int(expected.argmax())]
    assert body["score"] == pytest.approx(float(expected.max()), abs=1e-5)
    assert list(body["probabilities"].values()) == sorted(body["probabilities"].values(), reverse=True)


def test_text_classifier_takes_plain_text_and_top_k(client: httpx.Client) -> None:
    plain = client.post(
        "/predictions/news", content="the market fell", headers={"content-type": "text/plain"}
    )
    as_json = client.post("/predictions/news", json={"text": "the market fell", "top_k": 1})
    assert plain.status_code == as_json.status_code == 200
    assert len(as_json.json()["probabilities"]) == 1
    assert as_json.json()["label"] == plain.json()["label"]


def test_text_classifier_version_route_uses_that_version(client: httpx.Client, store_root: Path) -> None:
    text = "shares in the bank rose"
    v1 = client.post("/predictions/news/1", json={"text": text}).json()
    expected = load_package(store_root / "news" / "1").predict_proba([text])[0]
    assert v1["score"] == pytest.approx(float(expected.max()), abs=1e-5)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"text": 3}', "application/json"),
        (b'{"texts": ["a", "b"]}', "application/json"),
        (b'{"text": "a", "top_k": 0}', "application/json"),
        (b"[1, 2]", "application/json"),
        (b"{not json", "application/json"),
        (b"\xff\xfe", "text/plain"),
    ],
)
def test_text_classifier_rejects_bad_input_with_400(
    client: httpx.Client, body: bytes, content_type: str
) -> None:
    response = client.post("/predictions/news", content=body, headers={"content-type": content_type})
    assert response.status_code == 400
    assert response.json()["type"] == "BadRequestException"
    assert "Traceback" not in response.text


def test_tutorial_shape_and_three_step_shape_give_the_same_answer(client: httpx.Client) -> None:
    for name in ("tutorial", "threestep"):
        response = client.post(f"/predictions/{name}", json={"x": [3.0, 1.0]})
        assert response.status_code == 200, response.text
        assert response.json() == {"y": [4.0, 2.0]}


def test_handler_returning_the_wrong_count_is_a_clear_500(client: httpx.Client) -> None:
    response = client.post("/predictions/wrong", json={"a": 1})
    assert response.status_code == 500
    message = response.json()["message"]
    assert "WrongCountAPI returned 0 result(s) for a batch of 1 request(s)" in message


def test_payloads_are_decoded_by_content_type(client: httpx.Client) -> None:
    assert client.post("/predictions/echo", json={"a": [1]}).json()["echo"] == {"a": [1]}
    plain = client.post(
        "/predictions/echo", content="hé", headers={"content-type": "text/plain; charset=utf-8"}
    )
    assert plain.json()["echo"] == "hé"
    raw = client.post("/predictions/echo", content=b"\x00\x01", headers={"content-type": "image/png"})
    assert raw.json()["echo"] == "\x00\x01"


def test_one_failing_request_does_not_fail_its_batch(client: httpx.Client) -> None:
    bodies = [{"n": i} for i in range(6)] + [{"fail": True}, {"reject": True}]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: client.post("/predictions/echo", json=body), bodies))
    assert [r.status_code for r in responses] == [200] * 6 + [500, 400]
    assert "EchoAPI.postprocess raised ValueError: asked to fail" in responses[6].json()["message"]


def test_concurrent_requests_share_batches(server: Server, client: httpx.Client) -> None:
    before = metric(server, "torchship_batch_size_count", model="echo", version="1")
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: client.post("/predictions/echo", json={"i": i}), range(32)))
    assert all(r.status_code == 200 for r in responses)
    assert max(r.json()["batch"] for r in responses) > 1
    batches = metric(server, "torchship_batch_size_count", model="echo", version="1") - before
    assert batches < 32  # fewer batches than requests: they were really shared


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("POST", "/predictions/nope", 404, "ModelNotFoundException"),
        ("POST", "/predictions/news/9", 404, "ModelVersionNotFoundException"),
        ("GET", "/predictions/news", 405, "MethodNotAllowedException"),
        ("DELETE", "/ping", 405, "MethodNotAllowedException"),
        ("GET", "/no/such/route", 404, "ResourceNotFoundException"),
        ("GET", "/predictions", 404, "ResourceNotFoundException"),
    ],
)
def test_error_statuses_use_torchserve_bodies(
    client: httpx.Client, method: str, path: str, status: int, kind: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    assert response.json()["code"] == status
    assert response.json()["type"] == kind
    assert response.json()["message"]


def test_405_lists_allowed_methods(client: httpx.Client) -> None:
    assert client.get("/predictions/news").headers["allow"] == "POST, PUT"


def test_put_predicts_like_post(client: httpx.Client) -> None:
    """``curl -T file`` PUTs the file with no Content-Type: the handler gets its bytes."""
    put = client.put("/predictions/echo", content=b"some text")
    assert put.status_code == 200, put.text
    assert put.json()["echo"] == "some text"
    assert client.put("/predictions/news/1", json={"text": "a"}).json()["label"]


def test_a_form_body_gives_the_handler_its_input_part_only(client: httpx.Client) -> None:
    files = {"other": (None, b"not this"), "data": ("x.bin", b"\x00exact bytes\r\n", "image/png")}
    response = client.post("/predictions/echo", files=files)
    assert response.status_code == 200, response.text
    assert response.json()["echo"] == "\x00exact bytes\r\n"  # no boundary, no part headers
    as_json = client.post("/predictions/echo", files={"body": ("b.json", b'{"a": 1}', "application/json")})
    assert as_json.json()["echo"] == {"a": 1}  # decoded by the part's own type
    empty = client.post("/predictions/echo", files={"x": (None, b"1")})
    assert empty.status_code == 400
    assert "no input part (parts: 'x')" in empty.json()["message"]
    too_many = client.post("/predictions/echo", files=[("p", (None, b"1"))] * 17)
    assert too_many.status_code == 400
    assert "max_form_parts=16" in too_many.json()["message"]


def test_body_over_max_request_size_is_413(client: httpx.Client) -> None:
    response = client.post("/predictions/echo", content=b"x" * 5000, headers={"content-type": "text/plain"})
    assert response.status_code == 413
    assert "max_request_size=4096" in response.json()["message"]
    streamed = client.post("/predictions/echo", content=iter([b"x" * 3000, b"y" * 3000]))
    assert streamed.status_code == 413
    assert client.get("/ping").status_code == 200  # the server is fine


def test_requests_are_counted_by_status(server: Server, client: httpx.Client) -> None:
    before = metric(server, "torchship_requests_total", model="echo", version="1", status="200")
    client.post("/predictions/echo", json={})
    after = metric(server, "torchship_requests_total", model="echo", version="1", status="200")
    assert after == before + 1


def test_metrics_are_exact_with_several_worker_processes(server: Server, client: httpx.Client) -> None:
    labels = {"model": "echo2", "version": "1"}
    names = (
        ("torchship_requests_total", {"status": "200"}),
        ("torchship_batch_size_sum", {}),
        ("torchship_queue_wait_seconds_count", {}),
        ("torchship_request_duration_seconds_count", {}),
    )
    before = [metric(server, name, **extra, **labels) for name, extra in names]
    # Rounds of 64 concurrent requests until both processes have answered: which idle worker takes a
    # batch depends on timing, and a fast worker may take several rounds alone.
    pids: set[int] = set()
    sent = 0
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(16) as pool:
        while len(pids) < 2 and time.monotonic() < deadline:
            responses = list(pool.map(lambda i: client.post("/predictions/echo2", json={"i": i}), range(64)))
            sent += len(responses)
            assert all(r.status_code == 200 for r in responses)
            pids |= {r.json()["pid"] for r in responses}
    assert len(pids) == 2  # both processes served
    after = [metric(server, name, **extra, **labels) for name, extra in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [sent] * len(names)
    assert metric(server, "torchship_workers", **labels) == 2


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="scheduling policies are Linux's")
def test_cpu_workers_run_every_thread_as_sched_batch(server: Server) -> None:
    # The HTTP process keeps the default policy and wins the core on a wake-up (serving/workers/child.py
    # says why).
    workers = describe(server, "/models/echo2")[0]["workers"]
    assert len(workers) == 2
    for worker in workers:
        threads = [int(tid) for tid in os.listdir(f"/proc/{worker['pid']}/task")]
        want = os.SCHED_BATCH if worker["device"] == "cpu" else os.SCHED_OTHER
        assert [os.sched_getscheduler(tid) for tid in threads] == [want] * len(threads)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_pipelined_requests_100_continue_and_close_on_one_connection(server: Server) -> None:
    """HTTP/1.1 as curl and load balancers use it, on a raw socket: three requests sent in one go are
    answered in order, ``Expect: 100-continue`` gets its interim answer, and ``Connection: close`` closes."""
    host, port = server.urls["inference"].removeprefix("http://").rsplit(":", 1)
    body = b'{"x": 1}'
    echo = b"POST /predictions/echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    echo += b"Content-Length: 8\r\n"
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n"
            + echo
            + b"\r\n"
            + body
            + b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        first = _read_responses(sock, 3)
        sock.sendall(echo + b"Expect: 100-continue\r\n\r\n")
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        [continued] = _read_responses(sock, 1)
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        [closing] = _read_responses(sock, 1)
        assert sock.recv(1) == b""  # the server closed the connection after answering
    assert [status for status, _ in first] == [200, 200, 404]
    assert json.loads(first[0][1]) == {"status": "Healthy"}
    assert json.loads(first[1][1])["echo"] == {"x": 1}
    assert json.loads(first[2][1])["code"] == 404
    assert continued[0] == 200 and json.loads(continued[1])["echo"] == {"x": 1}
    assert closing[0] == 200


def _read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read ``count`` complete responses (status, body); every one of ours has a Content-Length."""
    data, responses = b"", []
    while len(responses) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode("latin-1").split("\r\n")
            length = next(
                int(line.split(":", 1)[1]) for line in head if line.lower().startswith("content-length:")
            )
            if len(data) >= head_end + 4 + length:
                responses.append((int(head[0].split()[1]), data[head_end + 4 : head_end + 4 + length]))
                data = data[head_end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {len(responses)} of {count} responses"
        data += chunk
    assert data == b"", "more bytes than the responses announced"
    return responses
