"""The package's layering, read from its import statements (grimp: every import, also inside functions).

serving/ has two boundaries: the server side (``runtime/``, ``server``) against the worker side
(``workers/``), and HTTP (``http/``, ``protocols/``) against the model runtime. These tests keep them.
"""

from __future__ import annotations

import grimp
import pytest

# The one import against the layering: ModelAPI.start() runs the whole server, which the handler contract
# (imported by worker processes and by `import torchship`) must not load until then.
ALLOWED_CYCLE_EDGES = {("torchship.serving.handler", "torchship.serving.runner")}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("torchship", exclude_type_checking_imports=True)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_there_is_no_import_cycle(graph: grimp.ImportGraph) -> None:
    edges = {
        module: {
            imported
            for imported in graph.find_modules_directly_imported_by(module)
            if (module, imported) not in ALLOWED_CYCLE_EDGES
        }
        for module in graph.modules
    }
    assert _cycles(edges) == []


def test_the_allowed_lazy_import_still_exists(graph: grimp.ImportGraph) -> None:
    """If it goes, so should the exception above."""
    for importer, imported in ALLOWED_CYCLE_EDGES:
        assert graph.direct_import_exists(importer=importer, imported=imported)


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("layer", "must_not_import"),
    [
        # The worker side runs in the child processes: no server state, no HTTP, no protocols.
        (
            "torchship.serving.workers",
            [
                "torchship.serving.runtime",
                "torchship.serving.http",
                "torchship.serving.protocols",
                "torchship.serving.server",
                "torchship.serving.runner",
            ],
        ),
        # The server side's state knows nothing of HTTP or the protocols that drive it.
        (
            "torchship.serving.runtime",
            [
                "torchship.serving.http",
                "torchship.serving.protocols",
                "torchship.serving.server",
                "torchship.serving.runner",
            ],
        ),
        ("torchship.serving.server", ["torchship.serving.http", "torchship.serving.protocols"]),
        # HTTP knows nothing of models: no handlers, no server, no protocols.
        (
            "torchship.serving.http",
            [
                "torchship.serving.runtime",
                "torchship.serving.workers",
                "torchship.serving.protocols",
                "torchship.serving.server",
                "torchship.serving.runner",
                "torchship.serving.apps",
                "torchship.serving.handler",
                "torchship.serving.text_classifier",
                "torch",
            ],
        ),
        # TorchServe archives: a handler adapter behind the worker contract and the archive files it
        # loads; the protocols and the server drive it, never the other way round.
        (
            "torchship.serving.mar",
            [
                "torchship.serving.http",
                "torchship.serving.protocols",
                "torchship.serving.server",
                "torchship.serving.runner",
                "torchship.serving.apps",
                "torchship.serving.runtime.registry",
                "torchship.serving.runtime.versions",
            ],
        ),
        # Training, data, models and the store never load the server.
        ("torchship.training", ["torchship.serving"]),
        ("torchship.data", ["torchship.serving"]),
        ("torchship.models", ["torchship.serving"]),
        ("torchship.store", ["torchship.serving"]),
    ],
)
def test_layers_do_not_import_upwards(
    graph: grimp.ImportGraph, layer: str, must_not_import: list[str]
) -> None:
    importers = (
        {layer} | graph.find_descendants(layer) if graph.is_module_squashed(layer) is False else {layer}
    )
    found = [
        f"{importer} -> {imported}"
        for importer in sorted(importers)
        for imported in sorted(graph.find_modules_directly_imported_by(importer))
        for forbidden in must_not_import
        if imported == forbidden or imported.startswith(forbidden + ".")
    ]
    assert found == []
