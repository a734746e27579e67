"""Query parameters as TorchServe reads them: typed, with defaults, and a 400 that names a bad one."""

from __future__ import annotations

from collections.abc import Mapping

from torchship.errors import UserInputError

__all__ = ["parse_bool", "parse_float", "parse_int"]


def parse_int(params: Mapping[str, str], name: str, default: int) -> int:
    """An integer query parameter; 400 naming it if it is not one."""
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserInputError(f"Parameter {name} must be an integer, got {value!r}") from None


def parse_float(params: Mapping[str, str], name: str) -> float | None:
    """A number query parameter, or None when absent; 400 naming it if it is not a number."""
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise UserInputError(f"Parameter {name} must be a number, got {value!r}") from None


def parse_bool(params: Mapping[str, str], name: str, default: bool) -> bool:
    """``true``/``false`` (any case, also 1/0); 400 naming the parameter otherwise."""
    value = params.get(name)
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise UserInputError(f"Parameter {name} must be true or false, got {value!r}")
