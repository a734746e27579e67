"""The docs' settings tables are generated from the settings dataclasses: a stale one fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_settings_tables_match_the_settings() -> None:
    spec = importlib.util.spec_from_file_location("settings_table", DOCS / "settings_table.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    stale = [
        path.name
        for path in sorted(DOCS.glob("*.md"))
        if generator.render(path.read_text()) != path.read_text()
    ]
    assert not stale, f"stale settings tables in {', '.join(stale)}: run python docs/settings_table.py"
    assert "<!-- settings: ServerSettings" in (DOCS / "security.md").read_text()
