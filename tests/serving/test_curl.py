"""``curl`` in the forms TorchServe's documentation uses, against a real server: each answers what a JSON
``POST /predictions/{model}`` answers for the same text (same label, probabilities within 1e-6).

``curl -T file`` PUTs the file with no Content-Type; ``curl -F data=@file`` sends a multipart form whose
``data`` part is the file; ``--data-binary`` sends the file as is with the type given."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from torchship.serving import Server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="the curl binary is not installed"),
]

TEXT = "the striker scored twice as the team won the cup final"


@pytest.fixture(scope="module")
def url(shared_server: Server) -> str:
    return shared_server.urls["inference"]


@pytest.fixture(scope="module")
def expected(url: str) -> Iterator[dict[str, object]]:
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/predictions/news", json={"text": TEXT})
    assert response.status_code == 200, response.text
    yield response.json()


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "file.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def curl(*args: str) -> tuple[int, dict[str, object]]:
    """Run curl; the status and the JSON answer."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}", *args],
        capture_output=True,
        check=True,
        text=True,
        timeout=90,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body)


def assert_same_answer(answer: dict[str, object], expected: dict[str, object]) -> None:
    assert answer["label"] == expected["label"]
    assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)


def test_curl_T_puts_the_file(url: str, text_file: Path, expected: dict[str, object]) -> None:
    status, answer = curl(f"{url}/predictions/news", "-T", str(text_file))
    assert status == 200, answer
    assert_same_answer(answer, expected)


def test_curl_T_to_a_version(url: str, text_file: Path) -> None:
    status, answer = curl(f"{url}/predictions/news/1", "-T", str(text_file))
    with httpx.Client(base_url=url, timeout=60) as client:
        v1 = client.post("/predictions/news/1", json={"text": TEXT}).json()
    assert status == 200, answer
    assert_same_answer(answer, v1)


def test_curl_F_data_sends_the_file_part(url: str, text_file: Path, expected: dict[str, object]) -> None:
    status, answer = curl(f"{url}/predictions/news", "-F", f"data=@{text_file}")
    assert status == 200, answer
    assert_same_answer(answer, expected)


def test_curl_F_body_field(url: str, expected: dict[str, object]) -> None:
    status, answer = curl(f"{url}/predictions/news", "-F", f"body={TEXT}")
    assert status == 200, answer
    assert_same_answer(answer, expected)


def test_curl_F_json_data_part(url: str, tmp_path: Path, expected: dict[str, object]) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"text": TEXT}), encoding="utf-8")
    status, answer = curl(f"{url}/predictions/news", "-F", f"data=@{request};type=application/json")
    assert status == 200, answer
    assert_same_answer(answer, expected)


def test_curl_F_without_an_input_part_is_a_400(url: str, text_file: Path) -> None:
    status, answer = curl(f"{url}/predictions/news", "-F", "other=1", "-F", "more=2")
    assert status == 400
    assert answer["type"] == "BadRequestException"
    assert "no input part (parts: 'other', 'more')" in str(answer["message"])


def test_curl_data_binary_text_plain(url: str, text_file: Path, expected: dict[str, object]) -> None:
    status, answer = curl(
        f"{url}/predictions/news", "--data-binary", f"@{text_file}", "-H", "Content-Type: text/plain"
    )
    assert status == 200, answer
    assert_same_answer(answer, expected)


def test_curl_d_json(url: str, expected: dict[str, object]) -> None:
    status, answer = curl(
        "-X",
        "POST",
        f"{url}/predictions/news",
        "-d",
        json.dumps({"text": TEXT}),
        "-H",
        "Content-Type: application/json",
    )
    assert status == 200, answer
    assert_same_answer(answer, expected)
