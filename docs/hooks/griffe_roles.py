"""A griffe extension for the API reference: the reStructuredText of torchship's docstrings as Markdown.

The docstrings are written to read well in ``help()`` and in ``--help``, with ``:class:`~a.B```-style
roles and ``::`` before a literal block, which Markdown does not know. This turns each role into a code
span (``B``; the ``~`` form keeps only the last name, as Sphinx shows it) and each ``::`` at the end of a
line into ``:`` (the indented block after it is code in Markdown too), so the reference pages read as the
docstrings do.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(?<=\S)::$", re.M)


def plain(docstring: str) -> str:
    """``docstring`` with every Sphinx role turned into a Markdown code span, and ``::`` into ``:``."""
    text = _ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", docstring)
    return _LITERAL.sub(":", text)


class SphinxRoles(griffe.Extension):
    """Rewrites the docstrings of every object of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _rewrite(pkg)


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = plain(obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member)
