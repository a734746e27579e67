"""The docs: generated parts that cannot drift, a site that builds strictly and works offline, and endpoint
examples that are what a running server answers."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest

from torchship.serving import ModelSettings, ServerSettings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES_PAGE = DOCS / "api" / "examples.md"


def _hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return sorted(path for path in DOCS.rglob("*.md") if "hooks" not in path.parts)


# ---------------------------------------------------------------------------- generated tables


def test_every_serving_settings_block_renders_a_table() -> None:
    tables = _hook("settings_tables")
    rendered = 0
    for path in _pages():
        for block in tables.BLOCK.finditer(path.read_text(encoding="utf-8")):
            if "." in block[2]:  # training's dataclasses load Lightning; the site build checks them
                continue
            names = [name.strip() for name in block[4].split(",")] if block[3] == "fields" else None
            table = tables.table(block[2], block[4] if block[3] == "section" else None, names)
            rows = [line for line in table.splitlines() if line.startswith("| `")]
            assert rows, f"{path.name}: the block {block[1].strip()} renders no row"
            rendered += 1
    assert rendered >= 7


def test_the_settings_page_shows_every_setting() -> None:
    page = _hook("settings_tables").render((DOCS / "serving" / "settings.md").read_text(encoding="utf-8"))
    for cls in (ModelSettings, ServerSettings):
        missing = [f.name for f in dataclasses.fields(cls) if f"| `{f.name}` |" not in page]
        assert not missing, f"docs/serving/settings.md lacks {cls.__name__}.{', '.join(missing)}"


def test_a_marker_naming_an_unknown_field_fails_the_build() -> None:
    tables = _hook("settings_tables")
    with pytest.raises(ValueError, match="has no field nope"):
        tables.render("<!-- settings: ModelSettings fields=batch_size,nope -->\n<!-- /settings -->")


def test_the_module_map_lists_every_module() -> None:
    page = _hook("module_map").render((DOCS / "design.md").read_text(encoding="utf-8"))
    source = ROOT / "src" / "torchship"
    modules = [p.relative_to(source).as_posix() for p in source.rglob("*.py") if p.name != "__main__.py"]
    missing = [name for name in modules if f"| `{name}` |" not in page]
    assert not missing, f"docs/design.md's map of the code lacks {', '.join(sorted(missing))}"


def test_the_readme_opens_with_the_set_up_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
    assert len(readme.splitlines()) <= 300


# ---------------------------------------------------------------------------- the site


class _Assets(HTMLParser):
    """The URLs a page makes the browser fetch: stylesheets, scripts, images, and CSS in style blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"link": "href", "script": "src", "img": "src", "source": "src", "iframe": "src"}
        values = dict(attrs)
        if tag in wanted and values.get(wanted[tag]):
            self.urls.append(str(values[wanted[tag]]))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls.extend(_css_urls(data))


def _css_urls(css: str) -> list[str]:
    found = re.findall(r"""url\(\s*['"]?([^'")\s]+)""", css)
    return found + re.findall(r"""@import\s+['"]([^'"]+)""", css)


def _remote(url: str) -> bool:
    return url.startswith(("http://", "https://", "//"))


@pytest.mark.slow
def test_the_site_builds_strictly_and_fetches_nothing_from_the_network(tmp_path: Path) -> None:
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    remote: list[str] = []
    pages = sorted(site.rglob("*.html"))
    for page in pages:
        parser = _Assets()
        parser.feed(page.read_text(encoding="utf-8"))
        remote += [f"{page.relative_to(site)}: {url}" for url in parser.urls if _remote(url)]
    for sheet in sorted(site.rglob("*.css")):
        urls = _css_urls(sheet.read_text(encoding="utf-8"))
        remote += [f"{sheet.relative_to(site)}: {url}" for url in urls if _remote(url)]
    assert not remote, "pages that fetch from the network:\n" + "\n".join(remote)
    assert (site / "search" / "search_index.js").is_file()  # the offline plugin's search index
    reference = (site / "reference" / "serving.html").read_text(encoding="utf-8")
    assert 'id="torchship.serving.ModelAPI"' in reference, "the API reference has no ModelAPI"
    assert len(pages) >= 18


# ---------------------------------------------------------------------------- endpoint examples

# Values that differ from run to run: replaced in both texts before they are compared.
_VOLATILE = (
    (re.compile(r'"startTime": "[^"]*"'), '"startTime": "<time>"'),
    (re.compile(r'"memoryUsage": \d+'), '"memoryUsage": <bytes>'),
    (re.compile(r'"pid": \d+'), '"pid": <pid>'),
    (re.compile(r'"ns": \d+'), '"ns": <ns>'),
    (re.compile(r'(?i)(hostname)="[^"]*"'), r'\1="<host>"'),
    (re.compile(r"^(ts_\w*microseconds\{[^}]*\}) \S+$", re.M), r"\1 <microseconds>"),
    (re.compile(r"^(torchship_\w*seconds\w*\{[^}]*\}) \S+$", re.M), r"\1 <seconds>"),
)
# Decimal numbers (probabilities, metric values) are compared within float noise, not as text.
_NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")  # also in strings: "0.975364:0:business"


def _normalised(page: str) -> tuple[str, list[float]]:
    for pattern, replacement in _VOLATILE:
        page = pattern.sub(replacement, page)
    numbers = [float(n) for n in _NUMBER.findall(page)]
    return _NUMBER.sub("<number>", page), numbers


@pytest.mark.slow
def test_the_endpoint_examples_are_what_a_fresh_capture_answers(tmp_path: Path) -> None:
    fresh = tmp_path / "examples.md"
    capture = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "capture_endpoints.py"), "--out", str(fresh)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert capture.returncode == 0, f"the capture failed:\n{capture.stdout}\n{capture.stderr}"
    committed_text, committed_numbers = _normalised(EXAMPLES_PAGE.read_text(encoding="utf-8"))
    fresh_text, fresh_numbers = _normalised(fresh.read_text(encoding="utf-8"))
    diff = "\n".join(
        list(difflib.unified_diff(committed_text.splitlines(), fresh_text.splitlines(), lineterm=""))[:60]
    )
    assert committed_text == fresh_text, (
        "docs/api/examples.md is not what the server answers now; rewrite it with "
        f"python examples/capture_endpoints.py\n{diff}"
    )
    for committed, now in zip(committed_numbers, fresh_numbers, strict=True):
        assert math.isclose(committed, now, abs_tol=1e-4), (
            f"a number in docs/api/examples.md is {committed}, a fresh capture says {now}; "
            "rewrite the page with python examples/capture_endpoints.py"
        )
