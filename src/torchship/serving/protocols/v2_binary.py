"""The Open Inference Protocol's binary tensor data extension, both directions. Pure functions.

A request with ``Inference-Header-Content-Length: N`` is N bytes of JSON followed by raw tensor bytes;
each input with ``parameters.binary_data_size`` takes its bytes in input order. BYTES elements are a
4-byte little-endian length and the bytes; numeric tensors are little-endian raw values. Everything a
client states (the header length, each size, each element's length) is checked against the bytes that
arrived before anything is built from it.

    >>> header, raw = split_body(b'{"inputs": []}xy', "14")
    >>> header, raw
    (b'{"inputs": []}', b'xy')
    >>> encode_bytes_elements(["hi"])
    b'\\x02\\x00\\x00\\x00hi'
"""

from __future__ import annotations

import math
import struct
from typing import Any

from torchship.errors import UserInputError
from torchship.serving.errors import HandlerError

__all__ = [
    "BINARY_HEADER",
    "attach_binary_inputs",
    "binary_outputs",
    "encode_bytes_elements",
    "split_body",
]

BINARY_HEADER = "Inference-Header-Content-Length"
"""The header that gives the length of the JSON part of a body, in requests and responses."""

# struct codes of the numeric datatypes, little-endian; BF16 is read as its upper 16 bits of an FP32.
_CODES = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
    "BF16": "H",
}


_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of ``body``; all JSON when there is no header."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise UserInputError(f"{BINARY_HEADER} must be a non-negative integer, got {header_length[:40]!r}")
    length = int(text)
    if length > len(body):
        raise UserInputError(
            f"{BINARY_HEADER} is {length} but the body has only {len(body)} bytes; send the JSON header "
            "followed by the tensor bytes"
        )
    return body[:length], body[length:]


def attach_binary_inputs(document: dict[str, Any], raw: bytes) -> None:
    """Give each input with ``parameters.binary_data_size`` its values (as ``data``), read from ``raw`` in
    input order. The sizes must add up to exactly ``len(raw)``; shape and values are checked later, as for
    JSON data."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        if raw:
            raise UserInputError(f'The request has {len(raw)} binary bytes but no "inputs" to take them')
        return
    sized: list[tuple[dict[str, Any], int]] = []
    for tensor in inputs:
        size = _binary_size(tensor) if isinstance(tensor, dict) else None
        if size is not None:
            sized.append((tensor, size))
    total = sum(size for _, size in sized)
    if total != len(raw):
        raise UserInputError(
            f"The inputs' binary_data_size add up to {total} bytes but {len(raw)} follow the JSON header "
            f"({BINARY_HEADER}); they must match exactly"
        )
    view, offset = memoryview(raw), 0
    for tensor, size in sized:
        tensor["data"] = _decode(tensor, view[offset : offset + size])
        offset += size


def _binary_size(tensor: dict[str, Any]) -> int | None:
    parameters = tensor.get("parameters")
    if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    name = str(tensor.get("name"))[:60]
    if type(size) is not int or size < 0:
        raise UserInputError(f"Input {name}: binary_data_size must be a non-negative integer")
    if "data" in tensor:
        raise UserInputError(f'Input {name}: has both "data" and binary_data_size; send one of them')
    return size


def _decode(tensor: dict[str, Any], raw: memoryview) -> list[Any]:
    name, datatype, shape = str(tensor.get("name"))[:60], tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise UserInputError(f'Input {name}: "shape" must be a list of non-negative integers')
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes_elements(name, raw, count)
    code = _CODES.get(datatype) if isinstance(datatype, str) else None
    if code is None:
        raise UserInputError(f"Input {name}: unknown datatype {str(datatype)[:40]!r}")
    width = struct.calcsize(code)
    if len(raw) != count * width:  # before anything is unpacked
        raise UserInputError(
            f"Input {name}: shape {shape} of {datatype} needs {count * width} bytes, binary_data_size is "
            f"{len(raw)}"
        )
    values = list(struct.unpack(f"<{count}{code}", raw))
    if datatype == "BF16":
        return [struct.unpack("<f", struct.pack("<I", value << 16))[0] for value in values]
    return values


def _decode_bytes_elements(name: str, raw: memoryview, count: int) -> list[str]:
    data, offset = bytes(raw), 0
    elements: list[str] = []
    size, read_length = len(data), _LENGTH.unpack_from
    try:
        while offset < size:
            if len(elements) >= count:
                raise UserInputError(
                    f"Input {name}: the binary data holds more than the shape's {count} elements"
                )
            if offset + 4 > size:
                raise UserInputError(
                    f"Input {name}: a BYTES element's 4-byte length is cut off at byte {offset}"
                )
            (length,) = read_length(data, offset)
            offset += 4
            if offset + length > size:
                raise UserInputError(
                    f"Input {name}: element {len(elements)} claims {length} bytes, "
                    f"only {size - offset} remain"
                )
            elements.append(data[offset : offset + length].decode("utf-8"))
            offset += length
    except UnicodeDecodeError:
        raise UserInputError(f"Input {name}: element {len(elements)} is not UTF-8 text") from None
    if len(elements) != count:
        raise UserInputError(
            f"Input {name}: the shape needs {count} elements, the binary data holds {len(elements)}"
        )
    return elements


def encode_bytes_elements(values: list[str]) -> bytes:
    """BYTES elements as the extension sends them: a 4-byte little-endian length, then the bytes."""
    parts = []
    for value in values:
        encoded = value.encode("utf-8")
        parts.append(struct.pack("<I", len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def _pack(name: str, datatype: str, values: list[Any]) -> bytes:
    try:
        return struct.pack(f"<{len(values)}{_CODES[datatype]}", *values)
    except (struct.error, OverflowError):  # a handler's 1e300 as FP32, or an int past INT64
        raise HandlerError(
            f"Output {name}: the model returned a value that does not fit {datatype}; ask for the output "
            'as JSON ("binary_data": false)'
        ) from None


def binary_outputs(outputs: list[dict[str, Any]], binary: set[str]) -> bytes:
    """Move the ``data`` of each output named in ``binary`` into the returned bytes (in output order),
    leaving ``parameters.binary_data_size`` in its place."""
    parts = []
    for output in outputs:
        if output["name"] not in binary:
            continue
        data = output.pop("data")
        if output["datatype"] == "BYTES":
            encoded = encode_bytes_elements(data)
        else:
            encoded = _pack(output["name"], output["datatype"], data)
        output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(encoded)}
        parts.append(encoded)
    return b"".join(parts)
