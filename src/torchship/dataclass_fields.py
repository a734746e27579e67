"""The one check that a mapping read from a file or a request holds only the fields of a config dataclass.

    reject_unknown_fields(TransformerConfig, data, where="model config")
    # ConfigError: model config: unknown field(s) n_head; known fields: activation, d_ff, ...

Each ``from_dict`` (``TransformerConfig``, ``PackageConfig``, ``ModelSettings``, the snapshot's entries)
calls it before building the dataclass, so a misspelt key is named instead of silently dropped or
reported as a ``TypeError`` about ``__init__``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torchship.errors import ConfigError

__all__ = ["reject_unknown_fields"]


def reject_unknown_fields(
    cls: type[Any], data: Mapping[str, Any], *, where: str = "", noun: str = "field"
) -> None:
    """Raise :class:`ConfigError` naming the keys of ``data`` that are not fields of the dataclass ``cls``,
    and the fields it has: a misspelt key is an error, not a silently ignored setting.

    ``where`` prefixes the message (``"model config: unknown field(s) ..."``); ``noun`` names what the
    keys are (``noun="model setting"``: ``"unknown model setting(s) ..."``).
    """
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}unknown {noun}(s) {', '.join(unknown)}; known {noun}s: {', '.join(sorted(known))}"
        )
