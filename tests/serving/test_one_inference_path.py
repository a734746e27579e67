"""One inference path: ``torchship predict``, ``torchship evaluate``, ``ModelPackage.predict_proba`` and a
running server give the same probabilities for the same texts (short ones, long ones read as several
windows), alone and in mixed batches."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import lightning  # noqa: F401  (imported outside capsys: the CLI's train parser imports it, see test_cli)
import pytest
import torch
from serving_support import LABELS, TEXTS, metric, publish_classifier, running, settings, wait_ready

from torchship.cli import main
from torchship.data.tokenizer import pad_token_ids
from torchship.data.windows import split_windows
from torchship.serving import Server
from torchship.store import load_package

pytestmark = pytest.mark.slow

NAME = "long"
MAX_LENGTH = 12  # tokens per window, [CLS] and [SEP] included: most texts below need several
OVERLAP = 3
SHORT = ["a goal", "software", "shares rose"]
LONG = [" ".join(TEXTS), " ".join(TEXTS[:2]), TEXTS[0]]  # 102, 34 and 20 tokens: 14, 5 and 3 windows
MIXED = [SHORT[0], LONG[0], SHORT[1], LONG[1], LONG[2], SHORT[2]]
TOLERANCE = 1e-5  # float rounding between batch shapes, and the server's 6 decimals


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one package that reads long texts as windows of ``MAX_LENGTH`` tokens; its seeded,
    untrained model has a head scaled up so that its windows disagree (near-uniform answers would hide a
    path that averages the wrong thing)."""
    root = tmp_path_factory.mktemp("store")
    publish_classifier(
        root, NAME, seed=0, head_scale=60, long_texts="windows", max_length=MAX_LENGTH, window_overlap=OVERLAP
    )
    return root


@pytest.fixture(scope="module")
def expected(store: Path) -> dict[str, list[float]]:
    """Each text on its own, written out here: every window run alone (no padding, no grouping), the
    windows' logits averaged, then softmax."""
    package = load_package(store / NAME / "1")
    answers = {}
    for text in SHORT + LONG:
        windows = split_windows(package.tokenizer.encode(text).ids, MAX_LENGTH, OVERLAP)
        assert (len(windows) > 1) == (text in LONG)
        with torch.inference_mode():
            logits = torch.cat([package.model(*pad_token_ids([window], 0)) for window in windows])  # (W, C)
        answer = torch.softmax(logits.mean(dim=0), dim=-1)
        if text in LONG:  # a path that read the first window only, or averaged probabilities, would differ
            assert (answer - torch.softmax(logits[0], dim=-1)).abs().max() > 100 * TOLERANCE
            assert (answer - torch.softmax(logits, dim=-1).mean(dim=0)).abs().max() > 100 * TOLERANCE
        answers[text] = answer.tolist()
    return answers


def _assert_same(rows: list[list[float]], texts: list[str], expected: dict[str, list[float]]) -> None:
    for row, text in zip(rows, texts, strict=True):
        assert row == pytest.approx(expected[text], abs=TOLERANCE), text


def _by_label(probabilities: dict[str, float]) -> list[float]:
    return [probabilities[label] for label in LABELS]


def test_predict_proba_alone_and_in_a_mixed_batch(store: Path, expected: dict[str, list[float]]) -> None:
    package = load_package(store / NAME / "1")
    _assert_same(package.predict_proba(MIXED).tolist(), MIXED, expected)
    _assert_same(package.predict_proba(MIXED, batch_size=2).tolist(), MIXED, expected)
    for text in MIXED:
        _assert_same(package.predict_proba([text]).tolist(), [text], expected)


def test_the_predict_command(
    store: Path, expected: dict[str, list[float]], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["predict", "--model", str(store / NAME), "--json", *MIXED]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [result["text"] for result in results] == MIXED
    _assert_same([_by_label(result["probabilities"]) for result in results], MIXED, expected)


def test_the_evaluate_command(
    store: Path, expected: dict[str, list[float]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = [LABELS[i % len(LABELS)] for i in range(len(MIXED))]
    data = tmp_path / "labelled.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *zip(MIXED, truth, strict=True)])
    capsys.readouterr()
    assert main(["evaluate", "--model", str(store / NAME), "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = [expected[text] for text in MIXED]
    losses = [-math.log(row[LABELS.index(label)]) for row, label in zip(rows, truth, strict=True)]
    assert report["loss"] == pytest.approx(sum(losses) / len(losses), abs=TOLERANCE)
    hits = [LABELS[row.index(max(row))] == label for row, label in zip(rows, truth, strict=True)]
    assert report["accuracy"] == pytest.approx(sum(hits) / len(hits))


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[Server]:
    with running(settings(store=store)) as server:
        wait_ready(server)
        yield server


def test_the_server_one_text_per_request(server: Server, expected: dict[str, list[float]]) -> None:
    with httpx.Client(base_url=server.urls["inference"], timeout=60) as client:
        for text in MIXED:
            response = client.post(f"/predictions/{NAME}", json={"text": text})
            assert response.status_code == 200, response.text
            _assert_same([_by_label(response.json()["probabilities"])], [text], expected)


def test_the_server_in_a_mixed_batch(server: Server, expected: dict[str, list[float]]) -> None:
    batches_before = metric(server, "torchship_batch_size_count", model=NAME, version="1")
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(MIXED)], "data": MIXED}]}
    with httpx.Client(base_url=server.urls["inference"], timeout=60) as client:
        response = client.post(f"/v2/models/{NAME}/infer", json=request)
    assert response.status_code == 200, response.text
    (probabilities,) = [output for output in response.json()["outputs"] if output["name"] == "probabilities"]
    data = probabilities["data"]
    _assert_same([data[i : i + len(LABELS)] for i in range(0, len(data), len(LABELS))], MIXED, expected)
    # The v2 request's texts went to the one worker as requests of their own, several to a batch.
    batches = metric(server, "torchship_batch_size_count", model=NAME, version="1") - batches_before
    assert 1 <= batches < len(MIXED)
