"""The Open Inference Protocol (v2) routes on the inference listener, against a real server."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from torchship.serving import Server
from torchship.serving.protocols.v2_binary import encode_bytes_elements
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


def test_server_metadata_declares_the_extensions_served(client: httpx.Client) -> None:
    extensions = client.get("/v2").json()["extensions"]
    assert extensions == [
        "binary_tensor_data",
        "classification",
        "model_configuration",
        "model_repository",
        "statistics",
    ]


def test_version_metadata_is_that_versions_alone(client: httpx.Client) -> None:
    assert client.get("/v2/models/news/versions/1").json()["versions"] == ["1"]
    assert client.get("/v2/models/news/versions/2").json()["versions"] == ["2"]


def binary_request(texts: list[str], **parameters: object) -> tuple[bytes, dict[str, str]]:
    raw = encode_bytes_elements(texts)
    text = {
        "name": "text",
        "datatype": "BYTES",
        "shape": [len(texts)],
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [text], "parameters": parameters}).encode()
    return header + raw, {"inference-header-content-length": str(len(header))}


def test_binary_request_and_response(client: httpx.Client) -> None:
    texts = ["the team won the cup", "shares rose"]
    body, headers = binary_request(texts, binary_data_output=True)
    response = client.post("/v2/models/news/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    raw = response.content[length:]
    sizes = [output["parameters"]["binary_data_size"] for output in header["outputs"]]
    assert [output["name"] for output in header["outputs"]] == ["label", "score", "probabilities"]
    assert sum(sizes) == len(raw) and sizes[1:] == [4 * 2, 4 * 2 * 3]
    as_json = client.post(
        "/v2/models/news/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]},
    ).json()
    labels = next(output for output in as_json["outputs"] if output["name"] == "label")["data"]
    assert raw[: sizes[0]] == encode_bytes_elements(labels)
    scores = struct.unpack("<2f", raw[sizes[0] : sizes[0] + sizes[1]])
    json_scores = next(output for output in as_json["outputs"] if output["name"] == "score")["data"]
    assert scores == pytest.approx(json_scores, abs=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda body, length: (body, str(len(body) + 1)), "the body has only"),
        (lambda body, length: (body + b"x", length), "add up to"),
        (lambda body, length: (body[:-1], length), "add up to"),
        (lambda body, length: (body, "-3"), "non-negative integer"),
    ],
)
def test_binary_sizes_are_checked(client: httpx.Client, change: Any, message: str) -> None:
    body, headers = binary_request(["a text"])
    body, length = change(body, headers["inference-header-content-length"])
    response = client.post(
        "/v2/models/news/infer", content=body, headers={"inference-header-content-length": length}
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "wrongname", "datatype": "BYTES", "shape": [1], "data": ["a"]}, "wrongname: model"),
        ({"name": "text", "datatype": "FP32", "shape": [1], "data": [1.5]}, "expects BYTES"),
        ({"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "b"]}, "shape [2, 1]"),
    ],
)
def test_inputs_are_checked_against_the_metadata(
    client: httpx.Client, tensor: dict[str, Any], message: str
) -> None:
    response = client.post("/v2/models/news/infer", json={"inputs": [tensor]})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_classification_extension(client: httpx.Client) -> None:
    request = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the cup final"]}],
        "outputs": [{"name": "probabilities", "parameters": {"class_count": 3}}],
    }
    [output] = client.post("/v2/models/news/infer", json=request).json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 3]
    scores = [float(entry.split(":")[0]) for entry in output["data"]]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-4)
    assert sorted(entry.split(":", 1)[1] for entry in output["data"]) == ["0:business", "1:sport", "2:tech"]


def test_statistics_count_what_the_server_measured(client: httpx.Client) -> None:
    def stats() -> dict[str, Any]:
        [entry] = client.get("/v2/models/news/versions/1/stats").json()["model_stats"]
        return entry

    before = stats()
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]}]}
    assert client.post("/v2/models/news/versions/1/infer", json=request).status_code == 200
    assert client.post("/v2/models/news/versions/1/infer", json={"inputs": []}).status_code == 400
    after = stats()
    assert (after["name"], after["version"]) == ("news", "1")
    assert after["inference_count"] - before["inference_count"] == 3
    counts = {kind: after["inference_stats"][kind]["count"] - before["inference_stats"][kind]["count"]
              for kind in ("success", "fail", "queue")}  # fmt: skip
    assert counts == {"success": 1, "fail": 1, "queue": 3}
    for kind in ("success", "fail", "compute_infer"):
        assert after["inference_stats"][kind]["ns"] > before["inference_stats"][kind]["ns"] >= 0, kind
    # The event loop's clock may not tick between queueing and dispatch: a wait can be 0.
    assert after["inference_stats"]["queue"]["ns"] >= before["inference_stats"]["queue"]["ns"] >= 0
    everything = client.get("/v2/models/stats").json()["model_stats"]
    assert {("news", "1"), ("news", "2"), ("echo", "1")} <= {(e["name"], e["version"]) for e in everything}
    assert [e["version"] for e in client.get("/v2/models/news/stats").json()["model_stats"]] == ["1", "2"]
    assert client.get("/v2/models/nope/stats").status_code == 404


def test_repository_index_and_config(client: httpx.Client) -> None:
    index = client.post("/v2/repository/index").json()
    assert {"name": "news", "version": "2", "state": "READY"} in index
    config = client.get("/v2/models/news/versions/1/config").json()
    assert config["name"] == "news" and config["max_batch_size"] == 32
    assert config["input"] == [
        {"name": "text", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}}
    ]
    assert config["output"][2] == {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert config["instance_group"][0]["count"] >= 1
    assert client.get("/v2/models/echo/config").json()["dynamic_batching"] == {
        "max_queue_delay_microseconds": 50_000,
        "default_queue_policy": {"max_queue_size": 512},
    }
