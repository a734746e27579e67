"""Hostile clients, handlers and archives against the TorchServe-archive support: the server answers each
with a clear JSON error or a safe response, keeps its connections in step, and stays up.

One server serves a handler that does what the request's ``X-Do`` header asks (a content type with CR/LF,
a 1xx or 204 status, a status that is not an int, a header value with a control character, an explicit
``torch.load(weights_only=False)`` of a pickle that would run code); its model store holds what a
registration URL must not reach (a FIFO named like an archive, a symlink out of the store). The archives'
own tricks (a zip of many empty members, YAML with tags and aliases, a manifest with odd names, a
no-archive folder with a link) are checked without a server.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mar_support import archive, python_file
from serving_support import running, settings, wait_until

from torchship.errors import ConfigError, PackageError, UserInputError
from torchship.serving import Server
from torchship.serving.mar.archive import (
    check_requirements,
    model_yaml_settings,
    read_model_dir,
    unpack_archive,
)
from torchship.serving.mar.model_config import read_model_yaml
from torchship.serving.mar.properties import read_ts_config
from torchship.serving.protocols import torchserve
from torchship.serving.protocols.torchserve import handler_headers, outcome_response
from torchship.serving.runtime.metrics import MAX_HANDLER_LABELS, HandlerMetrics
from torchship.serving.runtime.package_files import RegistrationLimits
from torchship.serving.settings import ModelSettings
from torchship.serving.workers.batch import Outcome

HOSTILE_HANDLER = """
import os
import pickle

import torch


class RunsCode:
    def __reduce__(self):
        return (os.mkdir, (os.environ["HOSTILE_MARKER"],))


def handle(data, context):
    if data is None:
        return None
    answers = []
    for idx, row in enumerate(data):
        do = context.get_request_header(idx, "x-do") or ""
        if do == "content-type-crlf":
            context.set_response_content_type(idx, "text/plain\\r\\nX-Injected: yes")
        elif do == "content-type-unicode":
            context.set_response_content_type(idx, "text/plain; name=\\u20ac")
        elif do.startswith("status-"):
            status = do.split("-", 1)[1]
            context.set_response_status(int(status) if status.isdigit() else status, "x", idx)
        elif do == "header-control":
            context.set_response_header(idx, "X-Bad", "a\\x01b")
            context.set_response_header(idx, "X-Good", "fine")
        elif do == "unpickle":
            path = os.path.join(os.environ["HOSTILE_MARKER"] + ".pt")
            with open(path, "wb") as file:
                pickle.dump(RunsCode(), file)
            try:
                torch.load(path, weights_only=False)
                answers.append("loaded")
            except Exception as exc:
                answers.append("refused: " + str(exc)[:60])
            continue
        answers.append("ok")
    return answers
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with the hostile handler's archive, a FIFO named ``fifo.mar``, ``out.mar`` and
    ``outdir``, symlinks to an archive and a no-archive folder outside the store, and ``linked``, a
    no-archive folder holding a symlink."""
    root = tmp_path_factory.mktemp("hostile")
    handler = python_file(root / "src", "hostile.py", HOSTILE_HANDLER)
    store = root / "store"
    archive(root, "hostile", handler, export_path=store)
    outside = archive(root, "outside", handler, export_path=root / "outside")
    os.mkfifo(store / "fifo.mar")
    (store / "out.mar").symlink_to(outside)
    linked = archive(root, "linked", handler, archive_format="no-archive", export_path=store)
    (linked / "passwd").symlink_to("/etc/passwd")
    loose = archive(root, "loose", handler, archive_format="no-archive", export_path=root / "outside")
    (store / "outdir").symlink_to(loose)
    return root


@pytest.fixture(scope="module")
def server(work: Path) -> Iterator[Server]:
    server_settings = settings(
        model_store=work / "store",
        models=("hostile.mar",),
        archive_cache=work / "cache",
        allow_code_models=True,
        model_defaults=ModelSettings(workers=1, batch_size=1),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOSTILE_MARKER", str(work / "pwned"))  # set before the workers start: they inherit it
        with running(server_settings) as running_server:
            yield from _ready(running_server)


def _ready(running_server: Server) -> Iterator[Server]:
    """``running_server`` once the hostile handler has loaded."""

    def ready() -> bool:
        versions = running_server.registry.all_versions()
        for version in versions:
            if version.load_error is not None and version.serving_workers == 0:
                raise AssertionError(f"{version.name} cannot load: {version.load_error}")
        return bool(versions) and all(v.serving_workers >= 1 for v in versions)

    wait_until(ready, 240, "the hostile handler to load")
    yield running_server


def _ask(client: httpx.Client, server: Server, do: str) -> httpx.Response:
    return client.post(f"{server.urls['inference']}/predictions/hostile", headers={"X-Do": do}, content=b"x")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("do", "message"),
    [
        ("content-type-crlf", "content type"),
        ("content-type-unicode", "content type"),
        ("status-100", "not a final HTTP status"),
        ("status-101", "not a final HTTP status"),
        ("status-abc", "cannot be encoded"),
    ],
)
def test_handler_answers_that_cannot_be_sent_are_json_errors(server: Server, do: str, message: str) -> None:
    with httpx.Client(timeout=30) as client:  # one connection: the next answer must still be in step
        answer = _ask(client, server, do)
        assert answer.status_code == 500, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert message in answer.json()["message"]
        assert "x-injected" not in answer.headers
        assert _ask(client, server, "").content == b"ok"


@pytest.mark.slow
@pytest.mark.parametrize("status", [204, 304])
def test_statuses_without_a_body_send_none(server: Server, status: int) -> None:
    with httpx.Client(timeout=30) as client:
        answer = _ask(client, server, f"status-{status}")
        assert answer.status_code == status
        assert answer.content == b""
        after = _ask(client, server, "")  # the dropped body is not read as the next response
        assert (after.status_code, after.content) == (200, b"ok")


@pytest.mark.slow
def test_header_values_with_control_characters_are_dropped(server: Server) -> None:
    with httpx.Client(timeout=30) as client:
        answer = _ask(client, server, "header-control")
        assert answer.status_code == 200
        assert answer.headers["x-good"] == "fine"
        assert "x-bad" not in answer.headers
        assert _ask(client, server, "").content == b"ok"


@pytest.mark.slow
def test_an_explicit_full_unpickling_is_refused_without_the_flag(server: Server, work: Path) -> None:
    with httpx.Client(timeout=30) as client:
        answer = _ask(client, server, "unpickle")
    assert answer.status_code == 200
    assert answer.text.startswith("refused: Weights only load failed")
    assert not (work / "pwned").exists()  # the pickle's code did not run


@pytest.mark.slow
@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("fifo.mar", 400),  # a FIFO named like an archive: refused without blocking on its open
        ("out.mar", 400),  # a symlink out of the model store
        ("outdir", 400),  # a symlink to a no-archive folder out of the model store
        ("linked", 400),  # a no-archive folder in the store holding a symlink
        ("../outside/outside.mar", 400),
        ("/proc/self/environ", 400),
        ("/dev/zero.mar", 400),
        ("x" * 5000 + ".mar", 400),
        ("odd\r\nname%00.mar", 404),
    ],
)
def test_registration_urls_that_must_not_reach_files(server: Server, url: str, status: int) -> None:
    with httpx.Client(base_url=server.urls["management"], timeout=30) as manage:
        answer = manage.post("/models", params={"url": url})
        assert answer.status_code == status, answer.text
        assert answer.json()["code"] == status
        assert [m["modelName"] for m in manage.get("/models").json()["models"]] == ["hostile"]


# ------------------------------------------------------------------------------------- without a server


def test_response_content_types_are_checked_and_the_cache_is_bounded() -> None:
    for index in range(3 * torchserve.MAX_CACHED_CONTENT_TYPES):
        response = outcome_response(Outcome(200, f"text/x-{index}", b"ok", ""))
        assert response.content_type == f"text/x-{index}".encode()
    assert len(torchserve._CONTENT_TYPES) <= torchserve.MAX_CACHED_CONTENT_TYPES
    for bad in ("a\r\nb: c", "a\x0bb", "\u20ac", "a" * 10_000):
        response = outcome_response(Outcome(200, bad, b"ok", "", (("X-A", "b"),)))
        assert response.status == 500
        assert "content type" in json.loads(response.body)["message"]
    assert handler_headers((("X-A", "a\tb"), ("X-B", "a\x7fb"), ("X-C", "a\x1bb"))) == ((b"x-a", b"a\tb"),)


def _many_members(path: Path, count: int) -> Path:
    with zipfile.ZipFile(path, "w") as made:
        for index in range(count):
            made.writestr(str(index), b"")
    return path


def test_a_zip_of_many_members_is_refused_from_its_end_record(tmp_path: Path) -> None:
    source = _many_members(tmp_path / "many.mar", 2000)
    with pytest.raises(UserInputError, match=r"declares 2000 members.*max_package_files=100"):
        unpack_archive(source, tmp_path / "cache", RegistrationLimits(max_package_files=100))
    assert not any((tmp_path / "cache").glob("*/*"))  # nothing unpacked


def _model_folder(tmp_path: Path, manifest: dict[str, Any], files: dict[str, str]) -> Path:
    """A no-archive folder as torch-model-archiver makes one, its manifest then edited by hand."""
    handler = python_file(tmp_path / "src", "handler.py", "def handle(data, context):\n    return data\n")
    folder = archive(tmp_path, "tampered", handler, archive_format="no-archive", export_path=tmp_path / "s")
    path = folder / "MAR-INF" / "MANIFEST.json"
    written = json.loads(path.read_text())
    written["model"].update(manifest)
    path.write_text(json.dumps(written))
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(20)
)


def test_model_config_yaml_is_read_safely(tmp_path: Path) -> None:
    folder = _model_folder(
        tmp_path / "laughs", {"configFile": "model-config.yaml"}, {"model-config.yaml": BILLION_LAUGHS}
    )
    model = read_model_dir(folder)
    assert model_yaml_settings(model) == ({}, [])  # aliases stay shared references: nothing expands
    assert set(read_model_yaml(model)) >= {"a", "u"}

    tagged = _model_folder(
        tmp_path / "tagged",
        {"configFile": "model-config.yaml"},
        {"model-config.yaml": "batchSize: !!python/object/apply:os.mkdir ['pwned']\n"},
    )
    with pytest.raises(PackageError, match="not valid YAML"):
        model_yaml_settings(read_model_dir(tagged))
    assert not Path("pwned").exists()


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        ({"modelName": "../escape"}, "modelName"),
        ({"modelName": "a/b"}, "modelName"),
        ({"modelName": ["x"]}, "modelName"),
        ({"modelVersion": "1/../2"}, "modelVersion"),
        ({"modelVersion": {"x": 1}}, "modelVersion"),
        ({"handler": 5}, "handler"),
        ({"configFile": "../../etc/passwd"}, "configFile"),
        ({"requirementsFile": "/etc/passwd"}, "requirementsFile"),
    ],
)
def test_manifest_values_that_could_leave_their_place_are_refused(
    tmp_path: Path, manifest: dict[str, Any], match: str
) -> None:
    with pytest.raises(PackageError, match=match):
        read_model_dir(_model_folder(tmp_path, manifest, {}))


def test_a_deeply_nested_manifest_is_a_package_error(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, {}, {})
    (folder / "MAR-INF" / "MANIFEST.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(PackageError, match=r"MANIFEST\.json"):
        read_model_dir(folder)


def test_a_no_archive_folder_with_a_link_is_refused(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, {}, {})
    (folder / "secret").symlink_to("/etc/hostname")
    with pytest.raises(UserInputError, match="symlink"):
        unpack_archive(folder, tmp_path / "cache", RegistrationLimits())
    (folder / "secret").unlink()
    shutil.move(folder / "MAR-INF", tmp_path / "real-mar-inf")
    (folder / "MAR-INF").symlink_to(tmp_path / "real-mar-inf")
    with pytest.raises((UserInputError, PackageError)):
        unpack_archive(folder, tmp_path / "cache", RegistrationLimits())


def test_a_fifo_in_place_of_an_archive_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.mar")
    with pytest.raises(PackageError, match="not a regular file"):
        unpack_archive(tmp_path / "fifo.mar", tmp_path / "cache", RegistrationLimits())


def test_config_properties_report_no_secret_values(tmp_path: Path) -> None:
    config = tmp_path / "config.properties"
    config.write_text(
        "keystore=keystore.p12\nkeystore_pass=$$KEYSTORE_PASS$$\nno_such_key=$$KEYSTORE_PASS$$\n"
        "enable_envvars_config=true\n"
    )
    secret = "hunter2-secret-value"
    read = read_ts_config(config, {"KEYSTORE_PASS": secret, "TS_KEYSTORE_PASS": secret})
    report = "\n".join(read.report())
    assert "keystore_pass" in report and "no_such_key" in report
    assert secret not in report and secret not in repr(read.values)


def test_config_properties_models_json_nested_too_deep_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.properties"
    config.write_text("models=" + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="models is not valid JSON"):
        read_ts_config(config, {})


def test_handler_metrics_bound_names_and_dimensions() -> None:
    metrics = HandlerMetrics("host", lambda name: False)
    owner = metrics.owner("m", "1.0")
    many = tuple(f"D{index}" for index in range(MAX_HANDLER_LABELS + 1))
    metrics.apply(
        owner,
        [
            ("N" * 5000, "counter", "Count", (), (), 1.0),  # a name every scrape would carry
            ("Wide", "counter", "Count", many, tuple("v" for _ in many), 1.0),
            ("LongDimension", "counter", "Count", ("D" * 5000,), ("v",), 1.0),
            ("Fine", "counter", "Count", ("Kind",), ('a\n"b',), 2.0),
        ],
    )
    rendered = metrics.render()
    assert "NNNN" not in rendered and "Wide" not in rendered and "LongDimension" not in rendered
    assert 'Fine{Kind="a\\n\\"b",Hostname="host"} 2.0' in rendered


def _tampered_mar(tmp_path: Path, extra: list[tuple[str, bytes]]) -> Path:
    """A .mar made by torch-model-archiver, copied member by member with ``extra`` members added."""
    handler = python_file(tmp_path / "src", "handler.py", "def handle(data, context):\n    return data\n")
    made = archive(tmp_path, "tampered", handler, export_path=tmp_path / "made")
    target = tmp_path / "tampered.mar"
    with zipfile.ZipFile(made) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            copy.writestr(info, original.read(info))
        for name, data in extra:
            copy.writestr(name, data)
    return target


@pytest.mark.parametrize(
    "extra",
    [
        [("a", b"file"), ("a/b", b"under a file")],  # a name that is both a file and a folder
        [("x\\..\\..\\escape", b"")],  # Windows separators
        [("d/" * 2100 + "deep", b"")],  # deeper than the file system's longest path
    ],
)
def test_zip_member_names_that_cannot_be_extracted_are_package_errors(
    tmp_path: Path, extra: list[tuple[str, bytes]]
) -> None:
    with pytest.raises(PackageError):
        unpack_archive(_tampered_mar(tmp_path, extra), tmp_path / "cache", RegistrationLimits())
    assert not (tmp_path / "escape").exists()


def test_a_duplicate_manifest_is_read_as_extracted(tmp_path: Path) -> None:
    evil = json.dumps({"model": {"modelName": "../evil", "handler": "handler.py"}}).encode()
    with pytest.warns(UserWarning, match="Duplicate name"), pytest.raises(PackageError, match="modelName"):
        unpack_archive(
            _tampered_mar(tmp_path, [("MAR-INF/MANIFEST.json", evil)]),
            tmp_path / "cache",
            RegistrationLimits(),
        )


@pytest.mark.parametrize(
    "line",
    ["-r /etc/passwd", "-e git+https://example.com/x.git#egg=x", "./local/wheel.whl", "x @ file:///tmp"],
)
def test_requirements_that_would_install_something_are_refused(tmp_path: Path, line: str) -> None:
    folder = _model_folder(
        tmp_path, {"requirementsFile": "requirements.txt"}, {"requirements.txt": line + "\n"}
    )
    with pytest.raises(PackageError, match="never installs"):
        check_requirements(read_model_dir(folder))
