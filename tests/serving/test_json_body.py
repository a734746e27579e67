"""Request bodies parsed as JSON: every way a body can fail to be one is a 400 that says why."""

from __future__ import annotations

import pytest

from torchship.errors import UserInputError
from torchship.serving.json_body import parse_json


def test_documents_parse_and_surrogate_pairs_are_text() -> None:
    assert parse_json(b'{"url": "bbc", "n": [1, 2.5]}', "The body") == {"url": "bbc", "n": [1, 2.5]}
    assert parse_json(b'"\\ud83d\\ude00"', "The body") == "\U0001f600"  # a pair is one character
    deep = parse_json(b"[" * 200 + b"]" * 200, "The body")  # deep, but within what the decoder parses
    for _ in range(199):
        [deep] = deep
    assert deep == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "The body is not valid JSON (Expecting property name"),
        (b"\xff", "The body is not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"1" * 5000, "at most 4300 digits"),
        (b"[NaN]", "NaN is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
        (b'"\\ud800"', "lone surrogate"),
        (b'{"\\udfff": 1}', "lone surrogate"),
    ],
)
def test_every_failure_is_a_user_input_error(body: bytes, reason: str) -> None:
    with pytest.raises(UserInputError) as raised:
        parse_json(body, "The body")
    assert reason in raised.value.message
