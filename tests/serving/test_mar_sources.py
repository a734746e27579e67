"""TorchServe archives as sources: found in the model store or an allowed root, served at start
(``--models``), registered through the management API only with the operator's code opt-in, their
settings ranked as TorchServe 0.12 ranks them, described as TorchServe describes them, and restored from
the snapshot after a restart. Real archives from the real ``torch-model-archiver``, a real server."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mar_support import archive, python_file
from serving_support import describe, running, settings, wait_ready

from torchship.errors import NotFoundError, PackageError, UserInputError
from torchship.serving import ModelSettings, Server
from torchship.serving.mar.handler import TorchServeArchiveAPI
from torchship.serving.runtime.sources import ModelSources

# A module-level handle(data, context), the cheapest TorchServe handler: it names the model it serves.
ECHO_HANDLER = """\
def handle(data, context):
    if data is None:
        return None
    archived = context.manifest["model"]["modelName"]
    answers = []
    for row in data:
        body = row.get("body")
        kind = type(body).__name__
        body = body.decode() if isinstance(body, bytearray) else body
        answers.append({"model": context.model_name, "archived": archived, "body": body, "type": kind})
    return answers
"""

TUNED_CONFIG = """\
batchSize: 4
maxBatchDelay: 7
responseTimeout: 33
useJobTicket: true
handler:
  anything: for the handler itself
"""


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding ``plain.mar`` (1.0), ``tuned.mar`` (2.0, with a model-config.yaml),
    ``packed.tar.gz`` (tgz) and ``loose`` (no-archive); ``roots/extra.mar`` lies outside it, in a model
    root, beside ``roots/link.mar``, a symlink to ``outside/escape.mar`` (outside every root)."""
    work = tmp_path_factory.mktemp("mar")
    handler = python_file(work / "src", "echo_handler.py", ECHO_HANDLER)
    config = python_file(work / "src", "model-config.yaml", TUNED_CONFIG)
    store = work / "model_store"
    archive(work, "plain", handler, export_path=store)
    archive(work, "tuned", handler, version="2.0", config_file=config, export_path=store)
    archive(work, "packed", handler, archive_format="tgz", export_path=store)
    archive(work, "loose", handler, archive_format="no-archive", export_path=store)
    roots = work / "roots"
    archive(work, "extra", handler, version="3.0", export_path=roots)
    escape = archive(work, "escape", handler, export_path=work / "outside")
    (roots / "link.mar").symlink_to(escape)
    return store


def _settings(store: Path, **changes: Any) -> Any:
    base: dict[str, Any] = dict(
        model_store=store,
        model_roots=(store.parent / "roots",),
        archive_cache=store.parent / "cache",
        model_defaults=ModelSettings(workers=0),  # describe and registration need no workers
    )
    base.update(changes)
    return settings(**base)


ARCHIVE_SETTINGS = {
    "plain": {"1.0": {"batchSize": 3, "responseTimeout": 44, "noSuchKey": 1}},
    # model-config.yaml's batchSize and maxBatchDelay win over these; its minWorkers is absent.
    "renamed": {"2.0": {"batchSize": 16, "maxBatchDelay": 50, "minWorkers": 1, "defaultVersion": True}},
}


@pytest.fixture(scope="module")
def server(model_store: Path) -> Iterator[Server]:
    """Serves ``plain.mar``, and ``tuned.mar`` (2.0) and ``roots/extra.mar`` (3.0) as ``renamed``, at
    start; the API may register archives."""
    with running(
        _settings(
            model_store,
            models=(
                "plain.mar",
                "renamed=tuned.mar",
                "missing.mar",
                f"renamed={model_store.parent / 'roots' / 'extra.mar'}",  # version 3.0, not the default
            ),
            archive_settings=ARCHIVE_SETTINGS,
            allow_code_models=True,
        )
    ) as running_server:
        yield running_server


def _manage(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.urls["management"], timeout=120)


def test_archives_named_at_start_are_served_with_torchserve_settings(
    server: Server, model_store: Path
) -> None:
    plain = describe(server, "/models/plain")[0]
    assert {k: plain[k] for k in ("modelVersion", "modelUrl", "runtime", "handler", "loadedAtStartup")} == {
        "modelVersion": "1.0",
        "modelUrl": "plain.mar",
        "runtime": "python",
        "handler": "echo_handler.py",
        "loadedAtStartup": True,
    }
    assert (plain["batchSize"], plain["responseTimeout"], plain["minWorkers"]) == (3, 44, 0)
    renamed = describe(server, "/models/renamed")[0]
    assert (renamed["modelVersion"], renamed["modelUrl"]) == ("2.0", "tuned.mar")
    # model-config.yaml > config.properties models= > defaults; minWorkers from models= (yaml has none).
    assert (renamed["batchSize"], renamed["maxBatchDelay"], renamed["responseTimeout"]) == (4, 7, 33)
    assert renamed["minWorkers"] == 1
    assert renamed["isDefault"] is True  # defaultVersion, over the later version 3.0
    later = describe(server, "/models/renamed/3.0")[0]
    assert (later["isDefault"], later["modelUrl"]) == (False, str(model_store.parent / "roots" / "extra.mar"))
    listed = httpx.get(server.urls["management"] + "/models", timeout=30).json()["models"]
    names = {m["modelName"]: m["modelUrl"] for m in listed}
    assert {k: names.get(k) for k in ("plain", "renamed", "missing")} == {
        "plain": "plain.mar",
        "renamed": "tuned.mar",
        "missing": None,  # missing.mar is logged; the others serve
    }


@pytest.mark.slow
def test_an_archive_served_at_start_answers_predictions(server: Server) -> None:
    wait_ready(server)
    answer = httpx.post(server.urls["inference"] + "/predictions/renamed", json={"x": 1}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "model": "renamed",
        "archived": "tuned",
        "body": {"x": 1},
        "type": "dict",
    }


def test_settings_torchship_does_not_honour_are_logged_by_name(
    model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ignored = {"tuned": {"2.0": {"noSuchKey": 1, "useVenv": True, "batchSize": 2}}}
    served = _settings(model_store, models=("tuned.mar",), archive_settings=ignored)
    with caplog.at_level(logging.WARNING, logger="torchship.serving"), running(served) as server:
        assert describe(server, "/models/tuned")[0]["batchSize"] == 4  # model-config.yaml's
    assert "config.properties models= for model tuned version 2.0" in caplog.text
    assert "noSuchKey, useVenv" in caplog.text
    assert (
        "model-config.yaml of model tuned version 2.0: torchship does not honour useJobTicket" in caplog.text
    )


@pytest.mark.slow
def test_the_api_registers_archives_from_the_model_store(server: Server) -> None:
    with _manage(server) as manage:
        answer = manage.post("/models?url=packed.tar.gz&synchronous=true&initial_workers=1")
        assert answer.status_code == 200, answer.text
        # Synchronous: the worker serves once the answer comes.
        predicted = httpx.post(server.urls["inference"] + "/predictions/packed", content=b"hi", timeout=60)
        assert predicted.json() == {
            "model": "packed",
            "archived": "packed",
            "body": "hi",
            "type": "bytearray",  # TorchServe's shape for a body that is not JSON or text
        }
        loose = manage.post(
            "/models", params={"url": "loose", "model_name": "unpacked", "synchronous": "true"}
        )
        assert loose.status_code == 200, loose.text
    packed = describe(server, "/models/packed")[0]
    assert (packed["modelVersion"], packed["modelUrl"], packed["loadedAtStartup"]) == (
        "1.0",
        "packed.tar.gz",
        False,
    )
    assert describe(server, "/models/unpacked")[0]["modelUrl"] == "loose"


def test_registration_parameters_rank_as_in_torchserve(server: Server) -> None:
    with _manage(server) as manage:
        answer = manage.post(
            "/models",
            params={
                "url": "tuned.mar",
                "model_name": "tuned_api",
                "batch_size": "9",
                "response_timeout": "90",
                "handler": "echo_handler:handle",
            },
        )
        assert answer.status_code in (200, 202), answer.text
    tuned = describe(server, "/models/tuned_api")[0]
    # batch_size given wins over model-config.yaml; its responseTimeout wins over response_timeout.
    assert (tuned["batchSize"], tuned["maxBatchDelay"], tuned["responseTimeout"]) == (9, 7, 33)
    assert tuned["handler"] == "echo_handler:handle"


def test_archives_in_the_model_roots_by_path(server: Server, model_store: Path) -> None:
    extra = model_store.parent / "roots" / "extra.mar"
    with _manage(server) as manage:
        assert manage.post("/models", params={"url": str(extra), "synchronous": "true"}).status_code == 200
    assert describe(server, "/models/extra")[0]["modelVersion"] == "3.0"


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("../outside/escape.mar", 400),
        ("/etc/passwd.mar", 400),
        ("http://host/x.mar", 400),
        ("nothing-here.mar", 404),
        ("link.mar", 400),
    ],
)
def test_archive_urls_that_leave_the_allowed_folders_are_refused(
    server: Server, model_store: Path, url: str, status: int
) -> None:
    if url == "link.mar":  # a symlink inside a root that leads out of every root
        url = str(model_store.parent / "roots" / "link.mar")
    with _manage(server) as manage:
        answer = manage.post("/models", params={"url": url})
    assert answer.status_code == status, answer.text


def test_the_api_needs_the_operators_code_opt_in(model_store: Path) -> None:
    with running(_settings(model_store)) as server, _manage(server) as manage:
        answer = manage.post("/models?url=plain.mar")
        assert answer.status_code == 400
        assert "--allow_code_models" in answer.json()["message"]
        assert "enable_model_api" in answer.json()["message"]
        assert manage.get("/models").json()["models"] == []


def test_sources_resolve_archives_without_a_server(model_store: Path, tmp_path: Path) -> None:
    sources = ModelSources(
        None,
        [model_store.parent / "roots"],
        model_store=model_store,
        archive_cache=tmp_path / "cache",
        archive_api=TorchServeArchiveAPI,
        allow_code_models=True,
    )
    source = sources.resolve("tuned.mar", None, 1, handler="other:handle")
    assert (source.name, source.version, source.url, source.handler) == (
        "tuned",
        "2.0",
        "tuned.mar",
        TorchServeArchiveAPI,
    )
    assert source.options == {"allow_unpickling": False, "handler": "other:handle"}
    assert (source.path / "MAR-INF" / "MANIFEST.json").is_file()
    assert source.path.is_relative_to(tmp_path / "cache")
    with pytest.raises(UserInputError, match="outside the model store"):
        sources.resolve("../../etc/x.mar", None, 1)
    with pytest.raises(NotFoundError):
        sources.resolve("nothing.mar", None, 1)
    other_runtime = shutil.copytree(model_store / "loose", tmp_path / "lsp")
    manifest = other_runtime / "MAR-INF" / "MANIFEST.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"runtime": "LSP"}))
    with pytest.raises(PackageError, match="runtime 'LSP'"):
        sources.archive(other_runtime, None)
    names = [(s.name, s.url) for s in sources.startup_archives(["all"])]
    assert names == [
        ("loose", "loose"),
        ("packed", "packed.tar.gz"),
        ("plain", "plain.mar"),
        ("tuned", "tuned.mar"),
    ]


def test_archives_come_back_after_a_restart(
    model_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = tmp_path / "snapshot.json"
    first = _settings(
        model_store, models=("all",), use_snapshot=True, snapshot=snapshot, allow_code_models=True
    )
    with running(first) as server, _manage(server) as manage:
        extra = str(model_store.parent / "roots" / "extra.mar")
        assert manage.post("/models", params={"url": extra, "model_name": "plain"}).status_code in (200, 202)
        assert manage.put("/models/plain/3.0/set-default").status_code == 200
        # Already served: refused, and the record of the one named at start is unchanged (see below).
        assert manage.post("/models", params={"url": "plain.mar"}).status_code == 409
    again = _settings(model_store, use_snapshot=True, snapshot=snapshot, allow_code_models=True)
    with running(again) as server:
        plain = {d["modelVersion"]: d for d in describe(server, "/models/plain/all")}
        assert sorted(plain) == ["1.0", "3.0"]
        assert plain["3.0"]["isDefault"] is True
        assert (plain["3.0"]["modelUrl"], plain["3.0"]["loadedAtStartup"]) == (extra, True)
    # Without the opt-in now: the archives named at start come back, the one the API registered does not.
    restart = _settings(model_store, use_snapshot=True, snapshot=snapshot)
    with caplog.at_level(logging.WARNING, logger="torchship.serving"), running(restart) as server:
        versions = {
            (d["modelName"], d["modelVersion"])
            for m in ("plain", "packed", "loose", "tuned")
            for d in describe(server, f"/models/{m}/all")
        }
        assert versions == {("plain", "1.0"), ("packed", "1.0"), ("loose", "1.0"), ("tuned", "2.0")}
    assert "allow_code_models is off" in caplog.text
