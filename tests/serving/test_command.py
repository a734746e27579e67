"""``torchship serve``'s options: generated from ModelSettings and ServerSettings, one per field with its
docstring as help, the same keys in a ``--config`` YAML file, the old option shapes kept, and bad input
answered with one line."""

from __future__ import annotations

import dataclasses
import re
from argparse import ArgumentError
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from jsonargparse import ActionConfigFile, ArgumentParser  # type: ignore[attr-defined]

from torchship.cli import build_parser, main
from torchship.dataclass_fields import settings_fields
from torchship.serving import ModelSettings, ServerSettings
from torchship.serving.command import add_settings_arguments, serve_settings

SETTINGS = [
    *settings_fields(ModelSettings),
    *(setting for setting in settings_fields(ServerSettings) if setting.name != "model_defaults"),
]


def _parse(*args: str) -> Any:
    return build_parser(only="serve").parse_args(["serve", *args])["serve"]


def _flat(text: str) -> str:
    # argparse rewraps help text, breaking lines at spaces and after hyphens.
    return re.sub(r"-\s+", "-", " ".join(text.split()))


def test_help_lists_every_setting_once_with_its_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    listed = Counter(re.findall(r"^  (--\w+)", out, flags=re.M))
    expected = {f"--{setting.name}" for setting in SETTINGS} | {"--config", "--print_config", "--model"}
    expected |= {"--ts_config", "--model_dir", "--model_name"}
    assert set(listed) == expected
    assert set(listed.values()) == {1}
    assert "--no_snapshot" in out  # use_snapshot's other name, on the same line
    for setting in SETTINGS:
        assert setting.doc, f"{setting.name} has no docstring: it is its --help"
        first_line = setting.help.splitlines()[0]
        assert _flat(first_line) in _flat(out), setting.name
    assert "``" not in out and ":func:" not in out  # reST markup is for the docs, not the terminal


def test_server_settings_fields_carry_their_section() -> None:
    sections = {setting.name: setting.section for setting in settings_fields(ServerSettings)}
    assert (sections["host"], sections["token_auth"], sections["store"]) == (
        "listeners",
        "who may call",
        "models and the store",
    )
    assert {setting.section for setting in settings_fields(ModelSettings)} == {""}
    [key_file] = [setting for setting in settings_fields(ServerSettings) if setting.name == "key_file"]
    assert (key_file.type, key_file.default) == (Path, Path("key_file.json"))


def test_defaults_are_the_settings_defaults() -> None:
    cfg = _parse()
    assert serve_settings(cfg) == ServerSettings()
    assert cfg.model == []


def test_a_config_file_gives_every_kind_of_setting_and_flags_override_it(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(
        "store: models\n"
        "model: [extra/pkg]\n"
        "batch_size: 8\n"
        "workers: 2\n"
        "max_workers: 4\n"
        "torch_threads: null\n"
        "device: cpu\n"
        "inference_port: 0\n"
        "tls_cert: c.pem\n"
        "tls_key: k.pem\n"
        "key_file: keys/key_file.json\n"
        "token_auth: false\n"
        "inference_auth: true\n"
        "key_expiration: 30\n"
        "cors_allowed_origins: [https://a.example]\n"
        "allowed_hosts: [api.example.com]\n"
        "model_roots: [roots/one, roots/two]\n"
        "store_quota: null\n"
        "use_snapshot: false\n"
    )
    overrides = "--batch_size 16 --cors_allowed_origins https://b.example https://c.example --health_auth"
    cfg = _parse("--config", str(config), *overrides.split(), "--workers", "3", "--inference_auth", "false")
    assert cfg.model == ["extra/pkg"]
    assert serve_settings(cfg) == ServerSettings(
        store=Path("models"),
        inference_port=0,
        tls_cert=Path("c.pem"),
        tls_key=Path("k.pem"),
        key_file=Path("keys/key_file.json"),
        token_auth=False,
        inference_auth=False,
        key_expiration=30.0,
        health_auth=True,
        cors_allowed_origins=("https://b.example", "https://c.example"),
        allowed_hosts=("api.example.com",),
        model_roots=(Path("roots/one"), Path("roots/two")),
        store_quota=None,
        use_snapshot=False,
        model_defaults=ModelSettings(batch_size=16, workers=3, max_workers=4, device="cpu"),
    )


def test_print_config_writes_a_config_file_that_gives_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = "--store s --model p --no_snapshot --tls_cert c.pem --tls_key k.pem --model_roots r --workers 2"
    assert (
        main(["serve", *flags.split(), "--cors_allowed_origins", "https://a.example", "--print_config"]) == 0
    )
    config = tmp_path / "serve.yaml"
    config.write_text(capsys.readouterr().out)
    from_file = _parse("--config", str(config))
    assert serve_settings(from_file) == serve_settings(
        _parse(*flags.split(), "--cors_allowed_origins", "https://a.example")
    )
    assert from_file.model == ["p"]


def test_the_options_keep_the_shapes_scripts_use() -> None:
    flags = "--keys_from_file --metrics_auth --allow_code_models --no_snapshot --token_auth false"
    settings = serve_settings(_parse(*flags.split(), "--model", "a", "b", "--model_roots", "r1", "r2"))
    assert (settings.keys_from_file, settings.metrics_auth, settings.allow_code_models) == (True, True, True)
    assert (settings.use_snapshot, settings.token_auth) == (False, False)
    assert settings.model_roots == (Path("r1"), Path("r2"))
    assert _parse("--model", "a", "b").model == ["a", "b"]
    assert serve_settings(_parse("--use_snapshot", "false", "--health_auth", "true")).use_snapshot is False
    assert serve_settings(_parse("--store_quota", "null", "--workers", "null")).store_quota is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["--batch_size", "x"], "batch_size: expected an integer, got 'x'"),
        (["--health_auth", "maybe"], "health_auth: expected true or false, got 'maybe'"),
        (["--store", "s", "--batch_size", "0"], "batch_size: must be between 1 and 4096, got 0"),
        (["--store", "s", "--workers", "2", "--max_workers", "1"], "max_workers: must be between 2"),
        (["--store", "s", "--tls_cert", "c.pem"], "tls_cert and tls_key: give both"),
        (["--store", "s", "--inference_port", "70000"], "inference_port: must be between 0 and 65535"),
        ([], "nothing to serve: give --store DIR"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_bad_config_file_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        "model_defaults:\n  batch_size: 3\n": "does not accept option 'model_defaults.batch_size'",
        "batch_size: many\n": "batch_size: expected an integer, got 'many'",
        "batch_size: [1\n": "Problems parsing config",
        "cors_allowed_origins: https://a.example\n": "write it as a YAML list",
        "job_queue_size: 0\nstore: s\n": "job_queue_size: must be between 1",
    }
    for number, (text, message) in enumerate(cases.items()):
        config = tmp_path / f"serve{number}.yaml"
        config.write_text(text)
        assert main(["serve", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "File does not exist" in capsys.readouterr().err


@dataclass(frozen=True)
class Awkward:
    """Types the settings may come to use, beyond those they use today."""

    mode: Literal["fast", "exact"] = "fast"
    """A choice of two."""
    limit: int | None = None
    """None: no limit."""
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per-label weights."""
    path: Path = Path("here")
    """A path."""
    paths: tuple[Path, ...] = ()
    """Some paths."""
    pair: tuple[int, int] = (1, 2)
    """A fixed-length tuple."""
    use_cache: bool = True
    """Keep a cache."""


def test_every_kind_of_field_type_reads_from_flags_and_from_a_config_file(tmp_path: Path) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    add_settings_arguments(parser, Awkward, "awkward")
    # A bare Path reads as a str (the settings dataclasses make it a Path again).
    defaults = {"mode": "fast", "limit": None, "weights": {}, "path": "here", "paths": [], "pair": (1, 2)}
    assert vars(parser.parse_args([])) == {"config": None, **defaults, "use_cache": True}

    flags = '--mode exact --limit 3 --weights {"a":0.5} --path p --paths p1 p2 --pair [3,4] --no_cache'
    expected = {"mode": "exact", "limit": 3, "weights": {"a": 0.5}, "path": "p", "paths": ["p1", "p2"]}
    assert vars(parser.parse_args(flags.split())) == {
        "config": None,
        **expected,
        "pair": (3, 4),
        "use_cache": False,
    }
    assert parser.parse_args(["--use_cache", "--limit", "null"]).use_cache is True
    with pytest.raises(ArgumentError, match="mode"):
        parser.parse_args(["--mode", "slow"])

    config = tmp_path / "awkward.yaml"
    config.write_text(
        "mode: exact\nlimit: 3\nweights: {a: 0.5}\npath: p\npaths: [p1, p2]\nuse_cache: false\n"
    )
    values = vars(parser.parse_args(["--config", str(config), "--pair", "[3, 4]"]))
    assert {**values, "config": None} == {"config": None, **expected, "pair": (3, 4), "use_cache": False}


def test_ts_config_gives_defaults_that_flags_and_config_files_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    properties = tmp_path / "config.properties"
    properties.write_text(
        "job_queue_size=10\nmax_request_size=1000\ndefault_workers_per_model=3\nload_models=a.mar,b=b.mar\n"
        "model_store=/mnt/store\ninference_address=http://0.0.0.0:8085\ngrpc_inference_port=7070\n"
        "vmargs=-Xmx4g\n"
    )
    config = tmp_path / "serve.yaml"
    config.write_text("max_request_size: 2000\n")
    for flags in (
        ["--ts_config", str(properties), "--config", str(config), "--job_queue_size", "5"],
        ["--job_queue_size", "5", f"--ts_config={properties}", "--config", str(config)],  # order is no matter
    ):
        assert main(["serve", *flags, "--print_config"]) == 0
        out, err = capsys.readouterr()
        printed = yaml.safe_load(out)
        assert (printed["job_queue_size"], printed["max_request_size"]) == (5, 2000)  # flag, then --config
        assert (printed["workers"], printed["models"], printed["model_store"]) == (
            3,
            ["a.mar", "b=b.mar"],
            "/mnt/store",
        )
        assert printed["inference_address"] == "http://0.0.0.0:8085"
        assert err.splitlines() == [
            f"warning: {properties}: grpc_inference_port is not honoured: torchship serves no gRPC API: "
            "clients use REST (TorchServe's inference API, the Open Inference Protocol v2 under /v2, KServe "
            "v1 under /v1)",
            f"note: {properties}: vmargs is not needed: JVM options: torchship runs no JVM",
        ]
    # named in a --config file too, and then a key of that file still wins over it
    config.write_text(f"ts_config: {properties}\njob_queue_size: 7\n")
    cfg = build_parser(only="serve")
    from torchship.serving.command import apply_ts_config

    args = ["serve", "--config", str(config)]
    assert apply_ts_config(cfg, args, {}) is not None
    settings = serve_settings(cfg.parse_args(args)["serve"])
    assert (settings.model_defaults.job_queue_size, settings.max_request_size) == (7, 1000)
    assert settings.models == ("a.mar", "b=b.mar")


def test_a_bad_ts_config_is_one_line_naming_the_key_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    properties = tmp_path / "config.properties"
    properties.write_text('# models\nmodels={"bbc": \n')
    assert main(["serve", "--ts_config", str(properties), "--store", "s"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config.properties:2: models is not valid JSON") and err.count("\n") == 1
    assert main(["serve", "--ts_config", str(tmp_path / "none.properties")]) == 2
    assert "cannot read the TorchServe config" in capsys.readouterr().err


# ------------------------------------------------------------------ --model_dir: KServe's /mnt/models


def _touch(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _parse_with_defaults(*args: str) -> Any:
    """``serve`` arguments parsed as ``torchship serve`` parses them (``--ts_config``/``--model_dir``
    defaults first)."""
    from torchship.serving.command import apply_ts_config

    parser = build_parser(only="serve")
    apply_ts_config(parser, ["serve", *args], {})
    return parser.parse_args(["serve", *args])["serve"]


def test_model_dir_tells_the_three_layouts_apart(tmp_path: Path) -> None:
    from torchship.serving.command import find_model_dir

    package = tmp_path / "package"
    _touch(package / "config.json")
    store = tmp_path / "store"
    _touch(store / "bbc" / "2" / "config.json")
    torchserve = tmp_path / "torchserve"
    _touch(torchserve / "model-store" / "bbc.mar", "")
    config = _touch(torchserve / "config" / "config.properties", "job_queue_size=10\n")
    bare_torchserve = tmp_path / "bare"
    (bare_torchserve / "model-store").mkdir(parents=True)
    found = {path.name: find_model_dir(path) for path in (package, store, torchserve, bare_torchserve)}
    assert {name: dir.layout for name, dir in found.items()} == {
        "package": "package",
        "store": "store",
        "torchserve": "torchserve",
        "bare": "torchserve",
    }
    assert (found["torchserve"].ts_config, found["bare"].ts_config) == (config, None)


def test_a_model_dir_copied_from_an_object_store_is_checked_against_its_commit_marker(tmp_path: Path) -> None:
    """KServe's storage initializer copies a version as it finds it: an unfinished publish (a claim, no
    marker) is refused, and with a marker every file must be the one published."""
    import json

    from torchship.errors import ConfigError
    from torchship.serving.command import find_model_dir
    from torchship.store.marker import file_digest

    package = tmp_path / "package"
    _touch(package / "config.json", '{"name": "bbc"}')
    _touch(package / "model.safetensors", "weights")
    _touch(package / ".claim", "{}")
    with pytest.raises(ConfigError, match=r"a version whose publish had not finished \(\.claim but no"):
        find_model_dir(package)

    files = {
        name: {"size": (package / name).stat().st_size, "sha256": file_digest(package / name)}
        for name in ("config.json", "model.safetensors")
    }
    marker = {"format": 1, "name": "bbc", "version": 3, "files": files}
    _touch(package / ".published.json", json.dumps(marker))
    assert find_model_dir(package).layout == "package"

    _touch(package / "model.safetensors", "WEIGHTS")  # same size, other bytes
    with pytest.raises(ConfigError, match=r"model\.safetensors: sha256 differs from the one written"):
        find_model_dir(package)


def test_an_unknown_or_missing_model_dir_says_what_it_found_and_what_it_expects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _touch(tmp_path / "model.pt", "")
    _touch(tmp_path / "bbc" / "notes.txt", "")
    assert main(["serve", "--model_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--model_dir {tmp_path} holds bbc/, model.pt, none of the layouts it serves" in err
    assert (
        "expected a torchship package (config.json at the top); a store (<name>/<version>/config.json)" in err
    )
    assert "TorchServe's layout (model-store/ with the .mar archives, config/config.properties)" in err
    assert main(["serve", "--model_dir", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert f"--model_dir {tmp_path / 'absent'}: found nothing there; expected a folder holding" in err
    assert "give the InferenceService a storageUri, or give --store instead" in err


def test_a_torchserve_model_dir_gives_model_store_ts_config_and_all_models_as_defaults(
    tmp_path: Path,
) -> None:
    store = tmp_path / "model-store"
    store.mkdir()
    # KServe's file names /mnt/models/model-store: the folder's own model-store wins over it.
    _touch(
        tmp_path / "config" / "config.properties", "job_queue_size=10\nmodel_store=/mnt/models/model-store\n"
    )
    cfg = _parse_with_defaults("--model_dir", str(tmp_path))
    assert (str(cfg.model_store), cfg.models, cfg.job_queue_size) == (str(store), ["all"], 10)
    assert cfg.ts_config == str(tmp_path / "config" / "config.properties")
    # Options given still win over what the folder and its file stand for.
    cfg = _parse_with_defaults("--model_dir", str(tmp_path), "--models", "a.mar", "--job_queue_size", "5")
    assert (cfg.models, cfg.job_queue_size) == (["a.mar"], 5)
    # The models a config.properties names are served, not all of them.
    _touch(tmp_path / "config" / "config.properties", "load_models=b.mar\n")
    assert _parse_with_defaults("--model_dir", str(tmp_path)).models == ["b.mar"]


def test_a_store_model_dir_is_the_store_and_an_explicit_store_wins(tmp_path: Path) -> None:
    _touch(tmp_path / "bbc" / "1" / "config.json")
    settings = serve_settings(_parse_with_defaults("--model_dir", str(tmp_path), "--model_name", "news"))
    assert settings.store == str(tmp_path)
    # With --store (an InferenceService without a storageUri), /mnt/models is not even looked at.
    cfg = _parse_with_defaults("--model_dir", str(tmp_path / "absent"), "--store", "s3://bucket/models")
    assert serve_settings(cfg).store == "s3://bucket/models"
