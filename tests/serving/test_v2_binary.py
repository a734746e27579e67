"""The binary tensor data extension's pure functions: every size a client states is checked first."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from torchship.errors import UserInputError
from torchship.serving.errors import HandlerError
from torchship.serving.protocols.v2_binary import (
    attach_binary_inputs,
    binary_outputs,
    encode_bytes_elements,
    split_body,
)

ONE_A = b"\x01\x00\x00\x00a"  # one BYTES element, "a"


def request(*inputs: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": list(inputs)}


def sized(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def test_split_body_takes_the_header_length() -> None:
    header = json.dumps(request()).encode()
    assert split_body(header + b"raw", str(len(header))) == (header, b"raw")
    assert split_body(b"{}", None) == (b"{}", b"")


@pytest.mark.parametrize("length", ["-1", "abc", "", "٣", "9" * 30, "5"])
def test_split_body_refuses_bad_lengths(length: str) -> None:
    with pytest.raises(UserInputError, match="Inference-Header-Content-Length"):
        split_body(b"{}", length)


def test_bytes_and_numbers_are_read_in_input_order() -> None:
    texts = encode_bytes_elements(["héllo", ""])
    numbers = struct.pack("<3f", 1.5, -2.0, 0.25)
    document = request(sized("text", "BYTES", [2], len(texts)), sized("x", "FP32", [1, 3], len(numbers)))
    attach_binary_inputs(document, texts + numbers)
    assert document["inputs"][0]["data"] == ["héllo", ""]
    assert document["inputs"][1]["data"] == [1.5, -2.0, 0.25]


@pytest.mark.parametrize(
    ("datatype", "code", "values"),
    [("INT64", "q", [-(2**63), 7]), ("UINT8", "B", [0, 255]), ("BOOL", "?", [True, False]),
     ("FP16", "e", [0.5, -1.0]), ("FP64", "d", [1e300, -0.0])],
)  # fmt: skip
def test_numeric_datatypes_are_little_endian(datatype: str, code: str, values: list[Any]) -> None:
    raw = struct.pack(f"<{len(values)}{code}", *values)
    document = request(sized("x", datatype, [len(values)], len(raw)))
    attach_binary_inputs(document, raw)
    assert document["inputs"][0]["data"] == values


def test_bf16_is_the_upper_half_of_an_fp32() -> None:
    raw = struct.pack("<2H", 0x3FC0, 0xC000)  # 1.5, -2.0
    document = request(sized("x", "BF16", [2], len(raw)))
    attach_binary_inputs(document, raw)
    assert document["inputs"][0]["data"] == [1.5, -2.0]


@pytest.mark.parametrize(
    ("document", "raw", "message"),
    [
        (request(sized("t", "BYTES", [1], 6)), ONE_A, "add up to 6 bytes but 5"),
        (request(sized("t", "BYTES", [1], 3)), b"\x01\x00\x00", "4-byte length is cut off"),
        (request(sized("t", "BYTES", [1], 5)), b"\xff\xff\xff\x7fa", "claims 2147483647 bytes"),
        (request(sized("t", "BYTES", [1], 10)), ONE_A * 2, "more than the shape's 1"),
        (request(sized("t", "BYTES", [2], 5)), ONE_A, "needs 2 elements, the binary data holds 1"),
        (request(sized("t", "BYTES", [1], 5)), b"\x01\x00\x00\x00\xff", "not UTF-8"),
        (request(sized("x", "FP32", [2], 4)), b"\x00" * 4, "needs 8 bytes, binary_data_size is 4"),
        (request(sized("x", "FP32", [10**12], 4)), b"\x00" * 4, "needs 4000000000000 bytes"),
        (request(sized("x", "WAT", [1], 4)), b"\x00" * 4, "unknown datatype"),
        (request(sized("x", "FP32", [1], -4)), b"", "non-negative integer"),
        (request({**sized("x", "FP32", [1], 4), "data": [1.0]}), b"\x00" * 4, "both"),
        (request(sized("x", "FP32", [-1], 4)), b"\x00" * 4, "non-negative integers"),
        ({"inputs": "nope"}, b"\x00", "no \"inputs\""),
    ],
)  # fmt: skip
def test_sizes_a_client_states_are_checked(document: dict[str, Any], raw: bytes, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        attach_binary_inputs(document, raw)


def test_binary_outputs_replace_data_with_sizes() -> None:
    outputs = [
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"]},
        {"name": "score", "datatype": "FP32", "shape": [2], "data": [0.5, 0.25]},
        {"name": "kept", "datatype": "INT64", "shape": [1], "data": [3]},
    ]
    raw = binary_outputs(outputs, {"label", "score"})
    assert raw == encode_bytes_elements(["a", "bc"]) + struct.pack("<2f", 0.5, 0.25)
    assert outputs[0] == {"name": "label", "datatype": "BYTES", "shape": [2],
                          "parameters": {"binary_data_size": 11}}  # fmt: skip
    assert outputs[1]["parameters"] == {"binary_data_size": 8} and "data" not in outputs[1]
    assert outputs[2]["data"] == [3]


def test_a_value_that_does_not_fit_its_datatype_is_a_handler_error() -> None:
    outputs = [{"name": "score", "datatype": "FP32", "shape": [1], "data": [1e300]}]
    with pytest.raises(HandlerError, match="score: the model returned a value that does not fit FP32"):
        binary_outputs(outputs, {"score"})
