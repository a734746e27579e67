"""A MkDocs hook: the settings tables of the docs, rendered from the settings dataclasses at build time.

A page asks for a table with a pair of markers; the build replaces whatever stands between them::

    <!-- settings: ServerSettings section=connections -->
    <!-- /settings -->

The opening marker says which rows:

* ``<!-- settings: ModelSettings -->``: every field of the class (a name alone is a class of
  ``torchship.serving.settings``; ``torchship.training.options.OptimOptions`` names any other dataclass);
* ``<!-- settings: ServerSettings section=connections -->``: the fields in the part of the class that a
  ``# ---- connections`` comment opens;
* ``<!-- settings: ModelSettings fields=job_queue_size,response_timeout -->``: those fields;
* ``<!-- settings: ceilings -->``: the module's ``MAX_*`` constants, the bounds no setting may pass.

Each field gets its default and its docstring, which is also its ``torchship serve --help``. The tables
are never committed, so they cannot go stale; a marker that names an unknown class, section or field
fails the build.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any

from torchship.dataclass_fields import settings_fields
from torchship.serving import settings as settings_module

BLOCK = re.compile(
    r"(<!-- settings: ([\w.]+)(?: (section|fields)=([\w ,]+?))? -->\n)(.*?)(<!-- /settings -->)", re.S
)
_SECTION = re.compile(r"^\s*# -+ (.+)$")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs' page event: every settings block of the page rendered."""
    return render(markdown)


def render(markdown: str) -> str:
    """``markdown`` with every settings block filled from the dataclasses."""

    def replace(match: re.Match[str]) -> str:
        value = match[4].strip() if match[4] else None
        section = value if match[3] == "section" else None
        names = [name.strip() for name in value.split(",")] if match[3] == "fields" and value else None
        return match[1] + "\n" + table(match[2], section, names) + "\n" + match[6]

    return BLOCK.sub(replace, markdown)


def table(class_name: str, section: str | None = None, names: list[str] | None = None) -> str:
    """The Markdown table of ``class_name``'s fields: those in ``section``, or ``names``, or all."""
    if class_name == "ceilings":
        return _ceilings()
    module_name, _, name = class_name.rpartition(".")
    module = importlib.import_module(module_name) if module_name else settings_module
    cls = getattr(module, name, None)
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise ValueError(f"settings table: {name!r} is not a dataclass of {module.__name__}")
    docs = {field.name: (field.section, field.doc) for field in settings_fields(cls)}
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(names or ()) - set(fields))
    if unknown:
        raise ValueError(f"settings table: {class_name} has no field {', '.join(unknown)}")
    noun = "setting" if module is settings_module else "option"
    rows = [f"| {noun} | default | what it does |", "| --- | --- | --- |"]
    for name in names or list(fields):
        where, text = docs.get(name, ("", ""))
        if section is None or where == section:
            rows.append(f"| `{name}` | {_show(_default(fields[name]))} | {_one_line(text)} |")
    if len(rows) == 2:
        raise ValueError(f"settings table: no {class_name} field in section {section!r}")
    return "\n".join(rows) + "\n"


def _default(field: dataclasses.Field[Any]) -> Any:
    factory = field.default_factory
    return factory() if callable(factory) else field.default


def _ceilings() -> str:
    rows = ["| bound | value |", "| --- | --- |"]
    for name, value in vars(settings_module).items():
        if name.startswith("MAX_") and "DEFAULT" not in name and isinstance(value, int | float):
            rows.append(f"| `{name}` | {_show(value)} |")
    return "\n".join(rows) + "\n"


def _show(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, bool) or value is None:
        return f"`{value}`"
    if isinstance(value, int) and value >= 1 << 20:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20)):
            if value % size == 0:
                return f"`{value}` ({value // size} {unit})"
        return f"`{value}` ({value / 1e6:.1f} MB)"
    if isinstance(value, tuple) and not value:
        return "none"
    if dataclasses.is_dataclass(value):
        return f"`{type(value).__name__}()`"
    return f"`{value}`"


def _one_line(text: str) -> str:
    """The docstring's first paragraph as one Markdown line: roles and ``code`` as `code`, pipes escaped."""
    line = " ".join(text.split("\n\n")[0].split())
    line = re.sub(r":(?:class|func|meth|attr|mod|exc|data|obj):`~?([^`]+)`", r"`\1`", line)
    return line.replace("``", "`").replace("|", "\\|")
