"""What a v2 request asks of its outputs, checked against the model's metadata. Pure functions.

:func:`read_requested` reads ``outputs`` (names, ``parameters.binary_data``, Triton's classification
count) and the request's ``parameters.binary_data_output``; :func:`classify` is Triton's classification
extension; :func:`check_inputs` holds the inputs to what the model's metadata declares.

    >>> classify({"name": "p", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.7, 0.2],
    ...           "parameters": {"labels": ["a", "b", "c"]}}, 2)["data"]
    ['0.700000:1:b', '0.200000:2:c']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchship.errors import UserInputError
from torchship.serving.protocols.v2_tensors import InputTensor

__all__ = ["OutputRequest", "binary_names", "check_inputs", "classify", "read_requested"]

_NUMBERS = {"FP16", "FP32", "FP64", "BF16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32"}


@dataclass(frozen=True)
class OutputRequest:
    """One entry of a request's ``outputs``: ``binary`` is None when the output leaves it to the request."""

    name: str
    binary: bool | None = None
    class_count: int = 0


def read_requested(document: dict[str, Any]) -> tuple[list[OutputRequest] | None, bool]:
    """The requested outputs (None: all of them) and the request's ``binary_data_output``."""
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise UserInputError('The request\'s "parameters" must be an object')
    binary_all = parameters.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise UserInputError("Parameter binary_data_output must be true or false")
    wanted = document.get("outputs")
    if wanted is None:
        return None, binary_all
    if not isinstance(wanted, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
    ):
        raise UserInputError('"outputs" must be a list of {"name": "...", "parameters": {...}} objects')
    requested = [_read_output(output) for output in wanted]
    if len({output.name for output in requested}) < len(requested):
        raise UserInputError('Each of "outputs" must name a different output')
    return requested, binary_all


def _read_output(output: dict[str, Any]) -> OutputRequest:
    name, parameters = output["name"], output.get("parameters", {})
    if not isinstance(parameters, dict):
        raise UserInputError(f'Output {name[:60]}: "parameters" must be an object')
    binary = parameters.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise UserInputError(f"Output {name[:60]}: binary_data must be true or false")
    # Triton's HTTP clients send "classification"; "class_count" is the name in its gRPC protocol.
    count = parameters.get("classification", parameters.get("class_count", 0))
    if type(count) is not int or count < 0:
        raise UserInputError(f"Output {name[:60]}: the classification count must be a non-negative integer")
    return OutputRequest(name, binary, count)


def binary_names(
    outputs: list[dict[str, Any]], requested: list[OutputRequest] | None, binary_all: bool
) -> set[str]:
    """The names of the outputs to send as binary data."""
    if requested is None:
        return {output["name"] for output in outputs} if binary_all else set()
    return {r.name for r in requested if (binary_all if r.binary is None else r.binary)}


def classify(tensor: dict[str, Any], count: int) -> dict[str, Any]:
    """Triton's classification of an ``[N, C]`` score tensor: the top ``count`` classes of each row (all C
    when ``count`` is larger) as BYTES ``"score:index:label"`` (``"score:index"`` without labels)."""
    name, shape = tensor["name"], tensor["shape"]
    if tensor["datatype"] not in _NUMBERS or len(shape) != 2:
        raise UserInputError(
            f"Output {name}: classification needs a numeric [batch, classes] output, this one is "
            f"{tensor['datatype']} {shape}; ask it of an output of scores such as probabilities"
        )
    rows, width = shape
    labels = tensor.get("parameters", {}).get("labels")
    top = min(count, width)
    data: list[str] = []
    for row in range(rows):
        scores = tensor["data"][row * width : (row + 1) * width]
        best = sorted(range(width), key=lambda i: -scores[i])[:top]
        data.extend(f"{scores[i]:f}:{i}" + (f":{labels[i]}" if labels else "") for i in best)
    return {"name": name, "datatype": "BYTES", "shape": [rows, top], "data": data}


def check_inputs(model: str, tensors: list[InputTensor], declared: list[dict[str, Any]]) -> None:
    """A 400 naming the input unless every input is one the model declares, with its datatype and a shape
    that fits (``-1`` is any size), and no declared input is missing."""
    expected = {spec["name"]: spec for spec in declared}
    takes = ", ".join(f"{spec['name']} ({spec['datatype']} {spec['shape']})" for spec in declared)
    for tensor in tensors:
        spec = expected.get(tensor.name)
        if spec is None:
            raise UserInputError(
                f'Input {tensor.name[:60]}: model "{model}" has no such input; it takes {takes}'
            )
        if tensor.datatype != spec["datatype"]:
            raise UserInputError(
                f'Input {tensor.name}: datatype {tensor.datatype}, model "{model}" expects {spec["datatype"]}'
            )
        if not _fits(tensor.shape, spec["shape"]):
            raise UserInputError(
                f'Input {tensor.name}: shape {list(tensor.shape)} does not fit model "{model}"\'s '
                f"{spec['shape']} (-1 is any size)"
            )
    missing = sorted(set(expected) - {tensor.name for tensor in tensors})
    if missing:
        raise UserInputError(f'Model "{model}" needs input(s) {", ".join(missing)}; it takes {takes}')


def _fits(shape: tuple[int, ...], declared: list[int]) -> bool:
    if len(shape) != len(declared):
        return False
    return all(want in (-1, got) for got, want in zip(shape, declared, strict=True))
