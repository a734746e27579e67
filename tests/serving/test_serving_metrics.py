"""``/metrics`` (``runtime/metrics.py``): TorchServe's Prometheus names beside ours, every HTTP status counted
with bounded labels, and ``?name[]=`` filtering. One fresh server, so every count is exact."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from serving_handlers import EchoAPI
from serving_support import metric, running, settings, wait_ready

from torchship.serving import Server
from torchship.serving.runtime.metrics import Metrics

pytestmark = pytest.mark.slow

TORCHSERVE = (
    "ts_inference_requests_total",
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
    "Requests2XX",
    "Requests4XX",
    "Requests5XX",
)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running(settings(max_request_size=1024), [EchoAPI(name="m", workers=1)]) as server:
        wait_ready(server)
        yield server


def _families(text: str) -> list[str]:
    return re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE)


def test_requests_latencies_and_statuses_are_counted_under_torchserve_names(server: Server) -> None:
    inference = server.urls["inference"]
    version = server.registry.get("m").version
    labels = {"model_name": "m", "model_version": version, "hostname": server.metrics.hostname}
    for text in ("a", "b", "c"):
        assert httpx.post(f"{inference}/predictions/m", json={"text": text}).status_code == 200
    assert metric(server, "ts_inference_requests_total", **labels) == 3
    assert metric(server, "ts_inference_latency_microseconds", **labels) > 0
    queued = metric(server, "ts_queue_latency_microseconds", **labels)
    assert 0 <= queued < metric(server, "ts_inference_latency_microseconds", **labels)

    statuses = [
        httpx.get(f"{inference}/no/such/path/{n}").status_code
        for n in range(3)  # no route
    ] + [
        httpx.post(f"{inference}/predictions/unknown", json={}).status_code,  # no such model
        httpx.get(f"{inference}/predictions/m").status_code,  # wrong method
        httpx.post(f"{inference}/predictions/m", content=b"x" * 2048).status_code,  # too large
        httpx.post(
            f"{inference}/predictions/m", content=b"{}", headers={"content-encoding": "br"}
        ).status_code,
    ]
    assert statuses == [404, 404, 404, 404, 405, 413, 415]

    def responses(route: str, status: int) -> float:
        return metric(
            server, "torchship_http_responses_total", listener="inference", route=route, status=str(status)
        )

    assert responses("none", 404) == 3  # one series for every path no route matches
    assert responses("/predictions/{model}", 404) == 1
    assert responses("/predictions/{model}", 405) == 1
    assert responses("/predictions/{model}", 413) == 1
    assert responses("/predictions/{model}", 415) == 1
    assert responses("/predictions/{model}", 200) == 3
    host = {"Level": "Host", "Hostname": server.metrics.hostname}
    assert metric(server, "Requests4XX", **host) == 7
    assert metric(server, "Requests2XX", **host) >= 3  # and the scrapes of /metrics so far
    # A model that failed its request still counts it; one that does not exist makes no series.
    assert metric(server, "ts_inference_requests_total", **labels) == 5
    text = httpx.get(server.urls["metrics"] + "/metrics").text
    assert "no/such/path" not in text and 'model_name="unknown"' not in text


def test_name_filter_returns_exactly_the_named_families(server: Server) -> None:
    url = server.urls["metrics"] + "/metrics"
    text = httpx.get(
        url,
        params=[
            ("name[]", "ts_inference_requests_total"),
            ("name[]", "ts_queue_latency_microseconds"),
            ("name[]", "torchship_requests_total"),
            ("name[]", "torchship_queue_wait_seconds"),
            ("name[]", "no_such_metric"),
        ],
    ).text
    assert sorted(_families(text)) == [
        "torchship_queue_wait_seconds",
        "torchship_requests_total",
        "ts_inference_requests_total",
        "ts_queue_latency_microseconds",
    ]
    everything = _families(httpx.get(url).text)
    assert set(TORCHSERVE) <= set(everything) and "torchship_batch_size" in everything


def test_torchserve_families_keep_their_exact_names() -> None:
    metrics = Metrics()
    served = metrics.for_version("m", "1")
    served.request_done(200, 0.25)
    served.request_done(503, 0.5)  # counted, but TorchServe adds no latency for an error
    served.waited(0.001)
    text = metrics.render(["ts_inference_latency_microseconds", "ts_inference_requests_total"]).decode()
    host = metrics.hostname
    assert text.splitlines() == [
        "# HELP ts_inference_requests_total Torchserve prometheus counter metric with unit: Count",
        "# TYPE ts_inference_requests_total counter",
        f'ts_inference_requests_total{{model_name="m",model_version="1",hostname="{host}"}} 2.0',
        "# HELP ts_inference_latency_microseconds Torchserve prometheus counter metric with unit: "
        "Microseconds",
        "# TYPE ts_inference_latency_microseconds counter",
        f'ts_inference_latency_microseconds{{model_name="m",model_version="1",hostname="{host}"}} 250000.0',
    ]
    served.remove()
    assert 'model_name="m"' not in metrics.render().decode()  # an unregistered version leaves nothing
