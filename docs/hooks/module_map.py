"""A MkDocs hook: a map of the source tree, one line per module, read from the modules' docstrings.

A page asks for the map of a package with a pair of markers; the build replaces what stands between::

    <!-- modules: serving -->
    <!-- /modules -->

``serving`` is a folder of ``src/torchship`` (``.`` for the top level alone); the map lists its modules
and those of its sub-folders, each with the first sentence of its docstring. Files are parsed, never
imported, and a module without a docstring fails the build: a map that cannot drift from the code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parents[2] / "src" / "torchship"
BLOCK = re.compile(r"(<!-- modules: ([\w./]+) -->\n)(.*?)(<!-- /modules -->)", re.S)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs' page event: every module map of the page rendered."""
    return render(markdown)


def render(markdown: str) -> str:
    """``markdown`` with every module map filled from the source tree."""
    return BLOCK.sub(lambda m: m[1] + "\n" + module_table(m[2]) + "\n" + m[4], markdown)


def module_table(folder: str) -> str:
    """The Markdown table of the modules under ``src/torchship/<folder>``."""
    root = (SOURCE / folder).resolve()
    if not root.is_dir() or SOURCE.resolve() not in (root, *root.parents):
        raise ValueError(f"module map: no folder {folder!r} in {SOURCE}")
    paths = sorted(root.glob("*.py")) if folder == "." else sorted(root.rglob("*.py"), key=_order)
    rows = ["| module | what it is |", "| --- | --- |"]
    for path in paths:
        if path.name == "__main__.py":
            continue
        name = path.relative_to(SOURCE.resolve()).as_posix()
        rows.append(f"| `{name}` | {summary(path)} |")
    return "\n".join(rows) + "\n"


def summary(path: Path) -> str:
    """The first sentence of the module's docstring, as one Markdown line."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not docstring:
        raise ValueError(f"module map: {path} has no docstring")
    paragraph = " ".join(docstring.split("\n\n")[0].split())
    sentence = re.split(r"(?<=\.)\s+(?=[A-Z`])", paragraph, maxsplit=1)[0]
    sentence = re.sub(r":(?:class|func|meth|attr|mod|exc|data|obj):`~?([^`]+)`", r"`\1`", sentence)
    return sentence.rstrip(":").replace("``", "`").replace("|", "\\|")


def _order(path: Path) -> tuple[int, str]:
    # A folder's own modules first, then each sub-folder's, so the map reads top-down.
    return (len(path.parts), path.as_posix())
