"""Query parameters as TorchServe reads them: typed, with defaults, and a 400 that names a bad one."""

from __future__ import annotations

import math
from collections.abc import Mapping

from torchship.errors import UserInputError

__all__ = ["parse_bool", "parse_float", "parse_int"]


def parse_int(params: Mapping[str, str], name: str, default: int) -> int:
    """An integer query parameter; 400 naming it if it is not one."""
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        if not value.isascii():  # int() reads other scripts' digits too (a full-width one is 1)
            raise ValueError(value)
        return int(value)  # more digits than sys.get_int_max_str_digits() is a ValueError too
    except ValueError:
        raise UserInputError(f"Parameter {name} must be an integer, got {_shown(value)}") from None


def parse_float(params: Mapping[str, str], name: str) -> float | None:
    """A number query parameter, or None when absent; 400 naming it if it is not a number."""
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        if not value.isascii():
            raise ValueError(value)
        number = float(value)
    except ValueError:
        raise UserInputError(f"Parameter {name} must be a number, got {_shown(value)}") from None
    if not math.isfinite(number):
        raise UserInputError(f"Parameter {name} must be a finite number, got {_shown(value)}")
    return number


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
    raise UserInputError(f"Parameter {name} must be true or false, got {_shown(value)}")


def _shown(value: str, limit: int = 40) -> str:
    """``value`` quoted for a message, cut to ``limit`` characters (a client may send megabytes)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"
