"""The Open Inference Protocol (v2) routes on the inference listener, against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from torchship.serving import Server
from torchship.store import load_package

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(shared_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.urls["inference"], timeout=60) as client:
        yield client


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    metadata = client.get("/v2").json()
    assert metadata["name"] == "torchship"
    assert "version" in metadata


def test_model_metadata_and_readiness(client: httpx.Client) -> None:
    metadata = client.get("/v2/models/news").json()
    assert metadata["name"] == "news"
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"][2] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    assert client.get("/v2/models/news/versions/1/ready").json() == {"name": "news", "ready": True}


def test_infer_splits_texts_and_gathers_outputs(client: httpx.Client, store_root: Path) -> None:
    texts = ["the team won the cup", "shares rose"]
    request = {"id": "r1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]}
    response = client.post("/v2/models/news/versions/1/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["model_name"], body["model_version"]) == ("r1", "news", "1")
    outputs = {output["name"]: output for output in body["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [2]
    probabilities = outputs["probabilities"]
    assert probabilities["shape"] == [2, 3]
    assert probabilities["parameters"]["labels"] == ["business", "sport", "tech"]
    expected = load_package(store_root / "news" / "1").predict_proba(texts)
    assert probabilities["data"] == pytest.approx(expected.flatten().tolist(), abs=1e-5)


def test_infer_numeric_rows_reach_the_handler_as_lists(client: httpx.Client) -> None:
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}],
               "outputs": [{"name": "echo"}]}  # fmt: skip
    body = client.post("/v2/models/echo/infer", json=request).json()
    assert body["outputs"] == [{"name": "echo", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v2/models/news/infer", {"inputs": []}, 400),
        (
            "/v2/models/news/infer",
            {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a"]}]},
            400,
        ),
        (
            "/v2/models/news/infer",
            {"inputs": [{"name": "t", "datatype": "WAT", "shape": [1], "data": [1]}]},
            400,
        ),
        ("/v2/models/news/infer", [1, 2], 400),
        ("/v2/models/nope/infer", {"inputs": []}, 404),
        ("/v2/models/news/versions/7/infer", {"inputs": []}, 404),
    ],
)
def test_infer_errors_use_the_protocol_body(
    client: httpx.Client, path: str, body: object, status: int
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}


def test_unknown_requested_output_is_400(client: httpx.Client) -> None:
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
               "outputs": [{"name": "nope"}]}  # fmt: skip
    response = client.post("/v2/models/news/infer", json=request)
    assert response.status_code == 400
    assert "nope" in response.json()["error"]
