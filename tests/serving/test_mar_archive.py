"""TorchServe archives unpacked safely: real archives made by the real ``torch-model-archiver`` in each of its
formats, hostile archives made by hand (each refused with a message, nothing written outside the cache),
``model-config.yaml`` and ``models=`` settings, and ``requirements.txt`` checks."""

from __future__ import annotations

import importlib.util
import io
import json
import stat
import tarfile
import threading
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from mar_support import archive, eager_model, python_file, reference_model, torchscript_model

from torchship.errors import ConfigError, PackageError, UserInputError
from torchship.serving.mar.archive import (
    MANIFEST_PATH,
    ModelArchive,
    archive_files,
    check_requirements,
    default_archive_cache,
    is_archive,
    model_yaml_settings,
    read_model_dir,
    torchserve_model_settings,
    unpack_archive,
)
from torchship.serving.runtime.package_files import RegistrationLimits

LIMITS = RegistrationLimits()
MODEL_YAML = """\
minWorkers: 2
maxWorkers: 3
batchSize: 4
maxBatchDelay: 25
responseTimeout: 30
parallelType: tp
useVenv: false
handler:
  labels: [a, b, c]
"""
PLAIN_MANIFEST = json.dumps({"model": {"modelName": "plain", "handler": "h.py"}})
FILES = {
    "model.py",
    "model.pt",
    "handler.py",
    "index_to_name.json",
    "a.txt",
    "sub/b.txt",
    "model-config.yaml",
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An eager model, its handler, extra files (one a folder with a subfolder), requirements and config."""
    folder = tmp_path_factory.mktemp("sources")
    eager_model(folder, seed=3)
    torchscript_model(folder, seed=3)
    python_file(folder, "handler.py", "from ts.torch_handler.base_handler import BaseHandler\n")
    (folder / "index_to_name.json").write_text('{"0": "a", "1": "b", "2": "c"}')
    (folder / "extra" / "sub").mkdir(parents=True)
    (folder / "extra" / "a.txt").write_text("a")
    (folder / "extra" / "sub" / "b.txt").write_text("b")
    (folder / "requirements.txt").write_text("packaging>=20  # installed with torch\n")
    (folder / "model-config.yaml").write_text(MODEL_YAML)
    return folder


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, sources: Path) -> dict[str, Path]:
    """The eager model archived in each format, and the TorchScript one with a built-in handler."""
    made = {}
    for archive_format in ("default", "tgz", "no-archive"):
        made[archive_format] = archive(
            tmp_path_factory.mktemp(archive_format),
            "tiny",
            sources / "handler.py",
            model_file=sources / "model.py",
            serialized_file=sources / "model.pt",
            extra_files=[sources / "extra", sources / "index_to_name.json"],
            requirements_file=sources / "requirements.txt",
            config_file=sources / "model-config.yaml",
            archive_format=archive_format,
            version="2.5",
        )
    made["scripted"] = archive(
        tmp_path_factory.mktemp("scripted"),
        "scripted",
        "image_classifier",
        serialized_file=sources / "scripted.pt",
        extra_files=[sources / "index_to_name.json"],
    )
    return made


# ------------------------------------------------------------------------------------- real archives


@pytest.mark.parametrize("archive_format", ["default", "tgz", "no-archive"])
def test_each_format_unpacks_to_a_model_dir(
    archives: dict[str, Path], archive_format: str, tmp_path: Path
) -> None:
    source = archives[archive_format]
    unpacked = unpack_archive(source, tmp_path / "cache", LIMITS)
    assert (unpacked.name, unpacked.version, unpacked.handler, unpacked.runtime) == (
        "tiny",
        "2.5",
        "handler.py",
        "python",
    )
    assert (unpacked.config_file, unpacked.requirements_file) == ("model-config.yaml", "requirements.txt")
    assert unpacked.source == source
    files = {
        item.relative_to(unpacked.path).as_posix() for item in unpacked.path.rglob("*") if item.is_file()
    }
    assert files == {*FILES, "requirements.txt", MANIFEST_PATH}
    manifest = json.loads((unpacked.path / MANIFEST_PATH).read_text())
    assert unpacked.manifest == manifest
    assert manifest["model"]["serializedFile"] == "model.pt"
    assert manifest["model"]["modelFile"] == "model.py"
    if archive_format == "no-archive":
        assert unpacked.path == source.resolve()  # served in place
    else:
        assert unpacked.path.parent == tmp_path / "cache"
        assert [item.name for item in (tmp_path / "cache").iterdir()] == [unpacked.path.name]


def test_eager_weights_survive_the_round_trip(archives: dict[str, Path], tmp_path: Path) -> None:
    unpacked = unpack_archive(archives["default"], tmp_path / "cache", LIMITS)
    spec = importlib.util.spec_from_file_location("archived_model", unpacked.path / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TinyClassifier()
    model.load_state_dict(torch.load(unpacked.path / "model.pt", weights_only=True))
    inputs = torch.randn(5, 4)
    torch.testing.assert_close(model(inputs), reference_model(seed=3)(inputs))


def test_torchscript_archive_with_a_builtin_handler(archives: dict[str, Path], tmp_path: Path) -> None:
    unpacked = unpack_archive(archives["scripted"], tmp_path / "cache", LIMITS)
    assert (unpacked.name, unpacked.version, unpacked.handler) == ("scripted", "1.0", "image_classifier")
    assert (unpacked.config_file, unpacked.requirements_file) == (None, None)
    assert sorted(item.name for item in unpacked.path.iterdir()) == [
        "MAR-INF",
        "index_to_name.json",
        "scripted.pt",
    ]
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch; TorchServe users have it
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(unpacked.path / "scripted.pt"))
    inputs = torch.randn(2, 4)
    torch.testing.assert_close(scripted(inputs), reference_model(seed=3)(inputs))


def test_tgz_suffix_and_the_cache_is_reused(archives: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "tiny.tgz"
    renamed.write_bytes(archives["tgz"].read_bytes())
    first = unpack_archive(renamed, tmp_path / "cache", LIMITS)
    marker = (first.path / "model.pt").stat().st_ino
    second = unpack_archive(archives["tgz"], tmp_path / "cache", LIMITS)  # same bytes, other name
    assert second.path == first.path
    assert (second.path / "model.pt").stat().st_ino == marker  # not unpacked again
    assert second.source == archives["tgz"]


def test_concurrent_unpacks_of_one_archive_agree(archives: dict[str, Path], tmp_path: Path) -> None:
    results: list[ModelArchive] = []
    errors: list[BaseException] = []

    def unpack() -> None:
        try:
            results.append(unpack_archive(archives["default"], tmp_path / "cache", LIMITS))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=unpack) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len({result.path for result in results}) == 1 and len(results) == 4
    assert [item.name for item in (tmp_path / "cache").iterdir()] == [results[0].path.name]  # no staging left


def test_archive_files_lists_what_models_all_serves(archives: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "a.mar").write_bytes(archives["default"].read_bytes())
    (store / "b.tar.gz").write_bytes(archives["tgz"].read_bytes())
    (store / ".hidden.mar").write_bytes(archives["default"].read_bytes())
    (store / "notes.txt").write_text("not a model")
    (store / "empty").mkdir()
    folder = store / "c"
    folder.mkdir()
    (folder / "MAR-INF").mkdir()
    (folder / MANIFEST_PATH).write_text(PLAIN_MANIFEST)
    nested = store / "d" / "inner"  # a tgz unpacked by hand: its files in one top folder
    (nested / "MAR-INF").mkdir(parents=True)
    (nested / MANIFEST_PATH).write_text(PLAIN_MANIFEST)
    assert archive_files(store) == [store / "a.mar", store / "b.tar.gz", store / "c", store / "d"]
    assert is_archive(store / "d") and not is_archive(store / "empty") and not is_archive(store / "notes.txt")
    assert unpack_archive(store / "d", tmp_path / "cache", LIMITS).path == nested.resolve()
    with pytest.raises(ConfigError, match="not a folder"):
        archive_files(tmp_path / "missing")


def test_default_archive_cache_is_private() -> None:
    cache = default_archive_cache()
    assert cache.is_dir() and stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert default_archive_cache() == cache


# ---------------------------------------------------------------------------------- hostile archives


def zip_archive(path: Path, members: dict[str, bytes], *, manifest: bool = True) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as made:
        if manifest:
            made.writestr(MANIFEST_PATH, json.dumps({"model": {"modelName": "evil", "handler": "h.py"}}))
        for name, data in members.items():
            made.writestr(name, data)
    return path


def zip_with(path: Path, mode: int, name: str, data: bytes) -> Path:
    """A zip holding one member whose Unix mode is ``mode`` (a symlink, a device)."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    with zipfile.ZipFile(zip_archive(path, {}), "a") as made:
        made.writestr(info, data)
    return path


def tar_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], **options: Any) -> Path:
    with tarfile.open(path, "w:gz", **options) as made:
        manifest = json.dumps({"model": {"modelName": "evil", "handler": "h.py"}}).encode()
        made.addfile(_tar_info(f"evil/{MANIFEST_PATH}", len(manifest)), io.BytesIO(manifest))
        for info, data in members:
            made.addfile(info, io.BytesIO(data))
    return path


def _tar_info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, link
    return info


HOSTILE_ZIPS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "traversal": (lambda p: zip_archive(p, {"../escaped.txt": b"x"}), r"leaves its folder \('\.\.'\)"),
    "absolute": (lambda p: zip_archive(p, {"/tmp/escaped.txt": b"x"}), "absolute name '/tmp/escaped.txt'"),
    "symlink": (
        lambda p: zip_with(p, stat.S_IFLNK | 0o777, "a", b"/etc/passwd"),
        "holds a symlink 'a' -> '/etc/passwd'; archives with links are refused",
    ),
    "device": (lambda p: zip_with(p, stat.S_IFCHR | 0o600, "tty", b""), "not a regular file or folder"),
    "fifo": (lambda p: zip_with(p, stat.S_IFIFO | 0o600, "pipe", b""), "not a regular file or folder"),
    "no manifest": (
        lambda p: zip_archive(p, {"model.py": b""}, manifest=False),
        "holds no MAR-INF/MANIFEST.json",
    ),
    "manifest not json": (
        lambda p: zip_archive(p, {MANIFEST_PATH: b"{nope"}, manifest=False),
        "MANIFEST.json is not valid JSON",
    ),
    "manifest without model": (
        lambda p: zip_archive(p, {MANIFEST_PATH: b'{"runtime": "python"}'}, manifest=False),
        'has no "model" object',
    ),
    "bad model name": (
        lambda p: zip_archive(p, {MANIFEST_PATH: b'{"model": {"modelName": "../x"}}'}, manifest=False),
        r"no usable model\.modelName \('\.\./x'\)",
    ),
    "missing config file": (
        lambda p: zip_archive(
            p,
            {MANIFEST_PATH: b'{"model": {"modelName": "x", "configFile": "model-config.yaml"}}'},
            manifest=False,
        ),
        "names model.configFile 'model-config.yaml', which the archive does not hold",
    ),
    "not a zip": (lambda p: (p.write_bytes(b"plain text"), p)[1], "not a readable zip archive"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_hostile_zip_is_refused(case: str, tmp_path: Path) -> None:
    make, message = HOSTILE_ZIPS[case]
    (tmp_path / "in").mkdir()
    source = make(tmp_path / "in" / "evil.mar")
    with pytest.raises(PackageError, match=message) as caught:
        unpack_archive(source, tmp_path / "in" / "cache", LIMITS)
    assert caught.value.message.startswith("evil.mar")
    assert_nothing_written(tmp_path)


def test_hostile_tars_are_refused(tmp_path: Path) -> None:
    cases = {
        "traversal": ([(_tar_info("evil/../../escaped.txt", 1), b"x")], r"leaves its folder \('\.\.'\)"),
        "absolute": ([(_tar_info("/tmp/escaped.txt", 1), b"x")], "absolute name '/tmp/escaped.txt'"),
        "symlink": (
            [(_tar_info("evil/a", kind=tarfile.SYMTYPE, link="/etc/passwd"), b"")],
            "holds a symlink 'evil/a' -> '/etc/passwd'; archives with links are refused",
        ),
        "hardlink": (
            [(_tar_info("evil/b", kind=tarfile.LNKTYPE, link="evil/MAR-INF/MANIFEST.json"), b"")],
            "holds a hard link 'evil/b' -> 'evil/MAR-INF/MANIFEST.json'",
        ),
        "device": ([(_tar_info("evil/tty", kind=tarfile.CHRTYPE), b"")], "not a regular file or folder"),
        "fifo": ([(_tar_info("evil/pipe", kind=tarfile.FIFOTYPE), b"")], "not a regular file or folder"),
    }
    for case, (members, message) in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        source = tar_archive(folder / "evil.tar.gz", members)
        with pytest.raises(PackageError, match=message):
            unpack_archive(source, folder / "cache", LIMITS)
        assert list((folder / "cache").iterdir()) == [], case
    assert_nothing_written(tmp_path)


def test_tar_without_manifest_or_gzip_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar.gz"
    with tarfile.open(plain, "w") as made:  # not compressed
        made.addfile(_tar_info("x.txt", 1), io.BytesIO(b"x"))
    with pytest.raises(PackageError, match="not a readable gzip-compressed tar archive"):
        unpack_archive(plain, tmp_path / "cache", LIMITS)
    bare = tmp_path / "bare.tar.gz"
    with tarfile.open(bare, "w:gz") as made:
        made.addfile(_tar_info("model/x.txt", 1), io.BytesIO(b"x"))
    with pytest.raises(PackageError, match=r"bare\.tar\.gz holds no MAR-INF/MANIFEST\.json"):
        unpack_archive(bare, tmp_path / "cache", LIMITS)


def test_a_huge_tar_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    info = _tar_info("evil/x.txt", 1)
    info.pax_headers = {"comment": "x" * (3 << 20)}
    source = tar_archive(tmp_path / "evil.tar.gz", [(info, b"x")], format=tarfile.PAX_FORMAT)
    with pytest.raises(PackageError, match="tar header larger than"):
        unpack_archive(source, tmp_path / "cache", LIMITS)


@pytest.mark.parametrize("suffix", [".mar", ".tar.gz"])
def test_file_count_and_size_limits(suffix: str, tmp_path: Path) -> None:
    members = {f"f{index}.txt": b"x" for index in range(8)}
    if suffix == ".mar":
        many = zip_archive(tmp_path / f"many{suffix}", members)
        big = zip_archive(tmp_path / f"big{suffix}", {"weights.bin": b"\0" * 5000})
    else:
        many = tar_archive(tmp_path / f"many{suffix}", [(_tar_info(f"evil/{n}", 1), b"x") for n in members])
        big = tar_archive(tmp_path / f"big{suffix}", [(_tar_info("evil/weights.bin", 5000), b"\0" * 5000)])
    with pytest.raises(UserInputError, match="more than max_package_files=5"):
        unpack_archive(many, tmp_path / "cache", RegistrationLimits(max_package_files=5))
    with pytest.raises(UserInputError, match="more than max_package_size=1000"):
        unpack_archive(big, tmp_path / "cache", RegistrationLimits(max_package_size=1000))
    with pytest.raises(UserInputError, match=f"big{suffix} is [0-9]+ bytes, more than max_archive_size=100 "):
        unpack_archive(big, tmp_path / "cache", RegistrationLimits(max_archive_size=100))
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_zip_bomb_is_refused_on_its_declared_size(tmp_path: Path) -> None:
    source = zip_archive(tmp_path / "bomb.mar", {"zeros.bin": b"\0" * (20 << 20)})
    assert source.stat().st_size < 100_000  # a ratio of hundreds
    with pytest.raises(
        UserInputError, match=r"bomb\.mar unpacks to 20971[0-9]+ bytes, more than max_package_size"
    ):
        unpack_archive(source, tmp_path / "cache", RegistrationLimits(max_package_size=1 << 20))
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_zip_that_lies_about_its_sizes_writes_no_more_than_it_declares(tmp_path: Path) -> None:
    source = tmp_path / "liar.mar"
    with zipfile.ZipFile(zip_archive(source, {}), "a", zipfile.ZIP_DEFLATED) as made:
        made.writestr("zeros.bin", b"\0" * (4 << 20))
        made.filelist[-1].file_size = 100  # the central directory claims 100 bytes
    with pytest.raises(PackageError, match=r"liar\.mar is not a readable zip archive"):
        unpack_archive(source, tmp_path / "cache", RegistrationLimits(max_package_size=1 << 20))
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_no_archive_folder_with_a_symlink_is_refused(archives: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "MAR-INF").mkdir()
    (folder / MANIFEST_PATH).write_text((archives["no-archive"] / MANIFEST_PATH).read_text())
    (folder / "model.pt").symlink_to("/etc/passwd")
    with pytest.raises(UserInputError, match="symlink"):
        unpack_archive(folder, tmp_path / "cache", LIMITS)
    with pytest.raises(PackageError, match="not a model archive"):
        unpack_archive(tmp_path / "notes.txt", tmp_path / "cache", LIMITS)


def assert_nothing_written(tmp_path: Path) -> None:
    """Nothing landed outside the cache: no escaped file anywhere near, and every cache is empty."""
    for escaped in (tmp_path / "escaped.txt", tmp_path.parent / "escaped.txt", Path("/tmp/escaped.txt")):
        assert not escaped.exists(), escaped
    for cache in tmp_path.rglob("cache"):
        assert list(cache.iterdir()) == [], cache


# ----------------------------------------------------------------------------------- settings, requirements


def test_model_yaml_settings(archives: dict[str, Path], tmp_path: Path) -> None:
    unpacked = unpack_archive(archives["default"], tmp_path / "cache", LIMITS)
    changes, ignored = model_yaml_settings(unpacked)
    assert changes == {
        "workers": 2,
        "max_workers": 3,
        "batch_size": 4,
        "max_batch_delay": 25,
        "response_timeout": 30,
    }
    assert ignored == ["parallelType"]  # useVenv: false asks nothing; handler: is the handler's


def archive_with_yaml(tmp_path: Path, text: str) -> ModelArchive:
    (tmp_path / "MAR-INF").mkdir(parents=True, exist_ok=True)
    (tmp_path / "model-config.yaml").write_text(text)
    return ModelArchive(
        path=tmp_path, source=tmp_path / "x.mar", manifest={}, name="x", version="1.0", handler="h.py",
        config_file="model-config.yaml",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "changes", "ignored"),
    [
        ("batchSize: 0\nmaxBatchDelay: -1\nstartupTimeout: 0\n", {}, []),  # TorchServe's "not set"
        ("minWorkers: 2\n", {}, ["minWorkers"]),  # workers only as a pair
        ("minWorkers: 3\nmaxWorkers: 2\n", {}, ["minWorkers", "maxWorkers"]),
        ("deviceType: cpu\njobQueueSize: 7\n", {"device": "cpu", "job_queue_size": 7}, []),
        ("deviceType: gpu\ndeviceIds: [1]\n", {"device": "auto"}, ["deviceIds"]),
        (
            "batchSize: 4.0\nbatch_size: 2\ncontinuousBatching: true\n",
            {},
            ["batchSize", "continuousBatching", "batch_size"],
        ),
        ("", {}, []),
        ("pt2: {compile: {enable: true}}\nmy_section: 1\n", {}, []),
    ],
)  # fmt: skip
def test_model_yaml_meaning(tmp_path: Path, text: str, changes: dict[str, Any], ignored: list[str]) -> None:
    assert model_yaml_settings(archive_with_yaml(tmp_path, text)) == (changes, ignored)


def test_model_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"model-config\.yaml is not valid YAML"):
        model_yaml_settings(archive_with_yaml(tmp_path, "a: [\n"))
    with pytest.raises(PackageError, match="must hold a mapping"):
        model_yaml_settings(archive_with_yaml(tmp_path, "- 1\n"))
    with pytest.raises(
        ConfigError, match=r"x.mar: model-config.yaml: batch_size.*\(from batchSize=100000000\)"
    ):
        model_yaml_settings(archive_with_yaml(tmp_path, "batchSize: 100000000\n"))


def test_torchserve_model_settings_for_config_properties_models() -> None:
    values = {
        "defaultVersion": True,
        "marName": "news.mar",
        "minWorkers": 0,
        "maxWorkers": "2",
        "batchSize": 8,
        "maxBatchDelay": 100,
        "responseTimeout": 90,
        "runtimeType": "python",
        "colour": "blue",
    }
    changes, ignored = torchserve_model_settings(values, "config.properties models=news/1.0")
    assert changes == {
        "workers": 0,
        "max_workers": 2,
        "batch_size": 8,
        "max_batch_delay": 100,
        "response_timeout": 90,
    }
    assert ignored == ["colour"]
    assert torchserve_model_settings({"runtimeType": "LSP", "batchSize": "x"}, "m")[1] == [
        "runtimeType",
        "batchSize",
    ]
    with pytest.raises(
        ConfigError, match=r"^config.properties models=news/1.0: .*\(from minWorkers=3, maxWorkers=1\)"
    ):
        torchserve_model_settings({"minWorkers": 3, "maxWorkers": 1}, "config.properties models=news/1.0")


def archive_with_requirements(tmp_path: Path, text: str) -> ModelArchive:
    (tmp_path / "requirements.txt").write_text(text)
    return ModelArchive(
        path=tmp_path, source=tmp_path / "x.mar", manifest={}, name="x", version="1.0", handler="h.py",
        requirements_file="requirements.txt",
    )  # fmt: skip


def test_satisfied_requirements_pass(archives: dict[str, Path], tmp_path: Path) -> None:
    check_requirements(unpack_archive(archives["default"], tmp_path / "cache", LIMITS))
    text = (
        "# comment\n\n--extra-index-url https://example.org/simple\npackaging\n"
        "torch>=2.0 ; python_version >= '3'\n"
        "not-a-real-package-9f3a ; python_version < '3'\n"
        "packaging>=20 \\\n    --hash=sha256:0000 \\\n    --hash=sha256:1111\n"
    )
    check_requirements(archive_with_requirements(tmp_path, text))


def test_missing_requirements_are_named(tmp_path: Path) -> None:
    text = "packaging\nnot-a-real-package-9f3a==1.2 --hash=sha256:00\npackaging<1\n"
    with pytest.raises(PackageError) as caught:
        check_requirements(archive_with_requirements(tmp_path, text))
    message = caught.value.message
    assert "x.mar needs not-a-real-package-9f3a==1.2 (not installed); packaging<1 (" in message
    assert "is installed)" in message
    assert "pip install 'not-a-real-package-9f3a==1.2' 'packaging<1'" in message


@pytest.mark.parametrize("line", ["-e .", "-r other.txt", "./wheels/x.whl", "https://example.org/x.whl"])
def test_requirement_lines_that_cannot_be_checked(tmp_path: Path, line: str) -> None:
    text = f"packaging \\\n  --hash=sha256:00\n{line}\n"
    with pytest.raises(
        PackageError, match=rf"requirements.txt line 3 \({line!r}\) cannot be checked without"
    ):
        check_requirements(archive_with_requirements(tmp_path, text))


def test_a_manifest_without_name_or_version_gets_torchserve_defaults(tmp_path: Path) -> None:
    source = zip_archive(
        tmp_path / "my model.mar", {MANIFEST_PATH: b'{"model": {"handler": "h.py"}}'}, manifest=False
    )
    unpacked = unpack_archive(source, tmp_path / "cache", LIMITS)
    assert (unpacked.name, unpacked.version, unpacked.handler, unpacked.runtime) == (
        "my_model",
        "1.0",
        "h.py",
        "python",
    )


def test_read_model_dir_reads_an_unpacked_archive_back(archives: dict[str, Path], tmp_path: Path) -> None:
    unpacked = unpack_archive(archives["default"], tmp_path / "cache", LIMITS)
    assert read_model_dir(unpacked.path, archives["default"]) == unpacked
    with pytest.raises(PackageError, match="not an unpacked TorchServe archive"):
        read_model_dir(tmp_path)
