"""KServe's v1 protocol on the inference listener, against a real server: liveness, the model list,
readiness, ``:predict`` batched through the same queue as ``/predictions``, and KServe's error body."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from serving_handlers import EchoAPI
from serving_support import metric, running, settings

from torchship.serving import Server
from torchship.serving.errors import MethodNotAllowedError
from torchship.serving.http.routing import Request, Response, Route, Router

pytestmark = pytest.mark.slow

TEXTS = ["the team won the cup", "shares rose after strong profits", "a new phone chip"]


@pytest.fixture(scope="module")
def client(shared_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.urls["inference"], timeout=60) as client:
        yield client


async def _endpoint(request: Request) -> Response:
    return Response(200, b"")


def test_a_route_segment_may_end_in_a_literal_after_its_parameter() -> None:
    router = Router(
        [
            Route("GET", "/v1/models/{model}", _endpoint),
            Route("POST", "/v1/models/{model}:predict", _endpoint),
        ]
    )
    assert router.match("POST", "/v1/models/news:predict")[1] == {"model": "news"}
    assert router.match("GET", "/v1/models/news")[1] == {"model": "news"}
    # GET on the :predict form is the readiness route for a model named "news:predict", as in KServe
    assert router.match("GET", "/v1/models/news:predict")[1] == {"model": "news:predict"}
    with pytest.raises(MethodNotAllowedError, match="use GET"):
        router.match("POST", "/v1/models/:predict")  # an empty name never matches the parameter


def test_liveness_model_list_and_readiness(client: httpx.Client, shared_server: Server) -> None:
    assert client.get("/").json() == {"status": "alive"}
    assert client.get("/v1/models").json() == {"models": shared_server.registry.names()}
    assert "news" in client.get("/v1/models").json()["models"]
    ready = client.get("/v1/models/news")
    assert (ready.status_code, ready.json()) == (200, {"name": "news", "ready": True})


def test_predict_answers_what_predictions_answers_for_each_instance(client: httpx.Client) -> None:
    instances = [TEXTS[0], {"text": TEXTS[1]}, {"text": TEXTS[2], "top_k": 2}]
    response = client.post("/v1/models/news:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = [
        client.post("/predictions/news", content=TEXTS[0], headers={"Content-Type": "text/plain"}).json(),
        client.post("/predictions/news", json={"text": TEXTS[1]}).json(),
        client.post("/predictions/news", json={"text": TEXTS[2], "top_k": 2}).json(),
    ]
    for prediction, answer in zip(predictions, expected, strict=True):
        assert prediction["label"] == answer["label"]
        assert prediction["score"] == pytest.approx(answer["score"], abs=1e-5)
        assert prediction["probabilities"] == pytest.approx(answer["probabilities"], abs=1e-5)
    assert len(predictions[2]["probabilities"]) == 2


def test_the_instances_of_one_call_are_batched_together(client: httpx.Client, shared_server: Server) -> None:
    response = client.post("/v1/models/echo:predict", json={"instances": [{"i": i} for i in range(4)]})
    predictions = response.json()["predictions"]
    assert [p["echo"] for p in predictions] == [{"i": i} for i in range(4)]
    assert max(p["batch"] for p in predictions) > 1  # echo: batch_size 8, max_batch_delay 50 ms

    labels = {"model": "news", "version": "2"}
    batches = metric(shared_server, "torchship_batch_size_count", **labels)
    requests = metric(shared_server, "torchship_batch_size_sum", **labels)
    assert client.post("/v1/models/news:predict", json={"instances": TEXTS * 2}).status_code == 200
    new_batches = metric(shared_server, "torchship_batch_size_count", **labels) - batches
    assert metric(shared_server, "torchship_batch_size_sum", **labels) - requests == 6
    assert 1 <= new_batches < 6


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("GET", "/v1/models/nope", None, 404, "nope"),
        ("POST", "/v1/models/nope:predict", b'{"instances": ["a"]}', 404, "nope"),
        ("POST", "/v1/models/news:predict", b'{"instances": [', 400, "not valid JSON"),
        ("POST", "/v1/models/news:predict", b'{"inputs": ["a"]}', 400, '"instances"'),
        ("POST", "/v1/models/news:predict", b'{"instances": []}', 400, "non-empty"),
        ("POST", "/v1/models/news:predict", b'{"instances": [{"texts": ["a"]}]}', 400, "Instance 0"),
        (
            "POST",
            "/v1/models/news:predict",
            b'{"instances": ["a"' + b', "a"' * 512 + b"]}",
            400,
            "job_queue_size",
        ),
        ("POST", "/v1/models/echo:predict", b'{"instances": [1, {"reject": true}]}', 400, "Instance 1"),
        ("POST", "/v1/models/news", b"{}", 405, "use GET"),
    ],
)
def test_errors_use_kserves_body(
    client: httpx.Client, method: str, path: str, body: bytes | None, status: int, says: str
) -> None:
    response = client.request(method, path, content=body)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    assert says in response.json()["error"]


def test_a_model_with_no_loaded_worker_is_not_ready_and_instances_are_bounded_first() -> None:
    with running(settings(), [EchoAPI(name="idle", workers=0, job_queue_size=2)]) as server:
        url = server.urls["inference"]
        ready = httpx.get(url + "/v1/models/idle", timeout=30)
        assert (ready.status_code, ready.json()) == (503, {"error": "Model with name idle is not ready."})
        too_many = httpx.post(url + "/v1/models/idle:predict", json={"instances": [1, 2, 3]}, timeout=30)
        assert too_many.status_code == 400
        assert "at most 2 at once (its job_queue_size)" in too_many.json()["error"]
        no_workers = httpx.post(url + "/v1/models/idle:predict", json={"instances": [1]}, timeout=30)
        assert no_workers.status_code == 503 and "error" in no_workers.json()
