"""Config dataclasses' fields: the one unknown-field check, and the one reader of their docstrings.

    reject_unknown_fields(TransformerConfig, data, where="model config")
    # ConfigError: model config: unknown field(s) n_head; known fields: activation, d_ff, ...

Each ``from_dict`` (``TransformerConfig``, ``PackageConfig``, ``ModelSettings``, the snapshot's entries)
calls ``reject_unknown_fields`` before building the dataclass, so a misspelt key is named instead of
silently dropped or reported as a ``TypeError`` about ``__init__``. ``settings_fields`` reads each field's
docstring (the string under it in the class) for ``torchship serve --help`` and the docs' settings tables.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchship.errors import ConfigError

__all__ = ["SettingField", "reject_unknown_fields", "settings_fields"]

_SECTION = re.compile(r"^\s*# -+ (.+?)\s*$")
_ROLE = re.compile(r":\w+:`~?([^`]+)`")


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


@dataclass(frozen=True)
class SettingField:
    """One field of a settings dataclass as ``--help`` and the docs show it."""

    name: str
    type: Any
    """The field's annotation, resolved (``int | None``, ``tuple[str, ...]``, ``Path``)."""
    default: Any
    """The default value (``default_factory()`` where the field has a factory)."""
    doc: str
    """The docstring under the field, dedented, with its reST markup (``""`` when it has none)."""
    section: str
    """The ``# ---- name`` comment above the field in the class (``""`` when none)."""

    @property
    def help(self) -> str:
        """``doc`` as plain text for a terminal: ``code`` and ``:role:`name``` markup dropped."""
        return _ROLE.sub(r"\1", self.doc).replace("``", "")


def settings_fields(cls: type[Any]) -> list[SettingField]:
    """The fields of the settings dataclass ``cls``, in order, with type, default, docstring and section.

    The one reader of the field docstrings, for ``--help`` and for the docs' settings tables.

        >>> from torchship.serving import ModelSettings
        >>> [f.name for f in settings_fields(ModelSettings)][:2]
        ['batch_size', 'max_batch_delay']
    """
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    return [
        SettingField(field.name, hints[field.name], _default(field), *docs.get(field.name, ("", "")))
        for field in dataclasses.fields(cls)
    ]


def _field_docs(cls: type[Any]) -> dict[str, tuple[str, str]]:
    # Attribute docstrings exist only in the source: the string statement after each annotated field.
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except OSError:  # installed without its .py files: options without help beat no command at all
        return {}
    sections: dict[int, str] = {}
    current = ""
    for number, line in enumerate(source.splitlines(), start=1):
        match = _SECTION.match(line)
        current = match[1] if match else current
        sections[number] = current
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, tuple[str, str]] = {}
    for statement, following in zip(body.body, [*body.body[1:], None], strict=True):
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            doc = ""
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                doc = inspect.cleandoc(str(following.value.value))
            docs[statement.target.id] = (doc, sections[statement.lineno])
    return docs


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default
