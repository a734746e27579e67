"""Writes the settings tables in the docs from the settings dataclasses, so that they cannot drift.

    python docs/settings_table.py            # rewrite every table in docs/*.md
    python docs/settings_table.py --check    # exit 1 naming the stale ones (tests/test_docs.py runs it)

A table is the text between a marker and ``<!-- /settings -->``; the marker says which rows:

* ``<!-- settings: ServerSettings section=connections -->``: the fields in the part of the class that a
  ``# ---- connections`` comment opens;
* ``<!-- settings: ModelSettings fields=job_queue_size,response_timeout -->``: those fields;
* ``<!-- settings: ceilings -->``: the module's ``MAX_*`` constants, the bounds no setting may pass.

Each field gets its default and its docstring, which is also its ``--help``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from torchship.serving import settings as settings_module

DOCS = Path(__file__).resolve().parent
_BLOCK = re.compile(
    r"(<!-- settings: (\w+)(?: (section|fields)=([\w ,]+?))? -->\n)(.*?)(<!-- /settings -->)", re.S
)
_SECTION = re.compile(r"^\s*# -+ (.+)$")


def field_docs(cls: type) -> dict[str, tuple[str, str]]:
    """``{field: (section, docstring)}`` from the class source: the string after each annotated field,
    and the ``# ---- name`` comment above it."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    sections = {}
    current = ""
    for number, line in enumerate(lines, start=1):
        match = _SECTION.match(line)
        if match:
            current = match[1].strip()
        sections[number] = current
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, tuple[str, str]] = {}
    for statement, following in zip(body.body, [*body.body[1:], None], strict=True):
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        text = ""
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            text = str(following.value.value)
        docs[statement.target.id] = (sections[statement.lineno], text)
    return docs


def table(class_name: str, section: str | None = None, names: list[str] | None = None) -> str:
    """The Markdown table of ``class_name``'s fields: those in ``section``, or ``names``, or all."""
    if class_name == "ceilings":
        return _ceilings()
    cls = getattr(settings_module, class_name)
    docs = field_docs(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    if names is not None:
        unknown = sorted(set(names) - set(fields))
        assert not unknown, f"{class_name} has no field {', '.join(unknown)}"
    rows = ["| setting | default | what it does |", "| --- | --- | --- |"]
    for name in names or list(fields):
        where, text = docs.get(name, ("", ""))
        if section is not None and where != section:
            continue
        field = fields[name]
        default = field.default_factory() if callable(field.default_factory) else field.default
        rows.append(f"| `{name}` | {_show(default)} | {_one_line(text)} |")
    assert len(rows) > 2, f"no {class_name} field in section {section!r}"
    return "\n".join(rows) + "\n"


def _ceilings() -> str:
    rows = ["| bound | value |", "| --- | --- |"]
    for name, value in vars(settings_module).items():
        if name.startswith("MAX_") and "DEFAULT" not in name and isinstance(value, int | float):
            rows.append(f"| `{name}` | {_show(value)} |")
    return "\n".join(rows) + "\n"


def _show(value: Any) -> str:
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
    """The docstring's first paragraph as one Markdown line: ``code`` in single backticks, pipes escaped."""
    return " ".join(text.split("\n\n")[0].split()).replace("``", "`").replace("|", "\\|")


def render(markdown: str) -> str:
    """``markdown`` with every settings block regenerated."""

    def replace(match: re.Match[str]) -> str:
        value = match[4].strip() if match[4] else None
        section = value if match[3] == "section" else None
        names = [name.strip() for name in value.split(",")] if match[3] == "fields" and value else None
        return match[1] + table(match[2], section, names) + match[6]

    return _BLOCK.sub(replace, markdown)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        fresh = render(text)
        if fresh != text:
            stale.append(path.name)
            if not check:
                path.write_text(fresh)
    if check and stale:
        print(f"stale settings tables in {', '.join(stale)}: run python docs/settings_table.py")
        return 1
    if stale:
        print(f"rewrote the settings tables in {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
