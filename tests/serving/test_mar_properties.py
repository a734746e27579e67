"""TorchServe's ``config.properties``: the properties syntax, each honoured key's meaning in torchship's
settings, the report of the keys not honoured, the ``TS_*`` variables under ``enable_envvars_config``,
KServe's own config, and inference and management on one address (one socket, both route sets, each
API's key rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_support import auth_settings, bearer, read_key, running

from torchship.errors import ConfigError
from torchship.serving.http.addresses import listener_addresses, listener_groups
from torchship.serving.mar.properties import ENVIRONMENT_KEYS, TsConfig, read_ts_config
from torchship.serving.settings import ModelSettings, ServerSettings

# What KServe's TorchServe examples put in /mnt/models/config/config.properties.
KSERVE = """\
inference_address=http://0.0.0.0:8085
management_address=http://0.0.0.0:8085
metrics_address=http://0.0.0.0:8082
grpc_inference_port=7070
grpc_management_port=7071
enable_metrics_api=true
metrics_format=prometheus
number_of_netty_threads=4
job_queue_size=10
enable_envvars_config=true
install_py_dep_per_model=true
model_store=/mnt/models/model-store
model_snapshot={"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":{"defaultVersion":true,\\
"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,"batchSize":1,"maxBatchDelay":10,"responseTimeout":120}}}}
"""


def _read(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> TsConfig:
    path = tmp_path / "config.properties"
    path.write_text(text, encoding="latin-1")
    return read_ts_config(path, environ or {})


def _reported(config: TsConfig) -> dict[str, str]:
    return dict(config.not_honoured + config.not_needed)


def test_the_properties_syntax_of_java(tmp_path: Path) -> None:
    config = _read(
        tmp_path,
        "# a comment\n"
        "! another comment\n"
        "   job_queue_size = 7\n"  # spaces around =
        "max_request_size:1000\n"  # : separates too
        "max_response_size 2000\n"  # and whitespace
        "model_store=/models/with\\ space\\u00e9\n"  # escapes
        "cors_allowed_origin=https://a.example,\\\n"  # a continuation line
        "    https://b.example\n"
        "job_queue_size=8\n",  # the last value wins, as in java.util.Properties
    )
    assert config.values == {
        "job_queue_size": 8,
        "max_request_size": 1000,
        "max_response_size": 2000,
        "model_store": "/models/with space\u00e9",
        "cors_allowed_origins": ("https://a.example", "https://b.example"),
    }
    assert [key for key, _ in config.not_honoured] == ["cors_allowed_origin"]  # inference only
    assert config.not_needed == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("inference_address=http://0.0.0.0:8085", {"inference_address": "http://0.0.0.0:8085"}),
        ("inference_address=https://10.0.0.5", {"inference_address": "https://10.0.0.5:443"}),
        ("inference_address=http://[::1]:81/", {"inference_address": "http://[::1]:81"}),
        ("management_address=http://127.0.0.1", {"management_address": "http://127.0.0.1:8081"}),
        ("management_address=https://127.0.0.1", {"management_address": "https://127.0.0.1:8444"}),
        ("metrics_address=HTTP://127.0.0.1", {"metrics_address": "http://127.0.0.1:8082"}),
        ("model_store=/mnt/models/model-store", {"model_store": "/mnt/models/model-store"}),
        ("load_models=all", {"models": ("all",)}),
        ("load_models=ALL", {"models": ("all",)}),
        ("load_models=standalone", {"models": ()}),
        ("load_models=a.mar, b=b.tar.gz,", {"models": ("a.mar", "b=b.tar.gz")}),
        ("default_workers_per_model=3", {"workers": 3}),
        ("default_workers_per_model=0", {"workers": None}),
        ("job_queue_size=100", {"job_queue_size": 100}),
        ("max_request_size=10485760", {"max_request_size": 10485760}),
        ("max_response_size=10485760", {"max_response_size": 10485760}),
        ("default_response_timeout=300", {"response_timeout": 300}),
        ("default_startup_timeout=600", {"startup_timeout": 600}),
        ("enable_model_api=true", {"allow_code_models": True}),
        ("enable_model_api=FALSE", {"allow_code_models": False}),
        ("disable_token_authorization=true", {"token_auth": False}),
        ("disable_token_authorization=false", {"token_auth": True}),
        ("enable_token_authorization=false", {"token_auth": False}),
        ("token_expiration_min=30", {"key_expiration": 30.0}),
        ("token_expiration_min=0.5", {"key_expiration": 0.5}),
        ("cors_allowed_origin=*", {"cors_allowed_origins": ("*",)}),
        ("certificate_file=cert.pem", {"tls_cert": "cert.pem"}),
        ("private_key_file=key.pem", {"tls_key": "key.pem"}),
        ("allowed_urls=file:///mnt/models/.*", {"model_roots": ("/mnt/models",)}),
        (
            r"allowed_urls=file:///srv/my\.models/,file:///opt/m,file:///srv/a\\.b/.*",
            {"model_roots": ("/srv/my.models", "/opt/m", "/srv/a.b")},
        ),
        (
            'models={"bbc": {"1.0": {"batchSize": 8, "maxBatchDelay": 5, "marName": "bbc.mar"}}}',
            {"archive_settings": {"bbc": {"1.0": {"batchSize": 8, "maxBatchDelay": 5}}}},
        ),
    ],
)
def test_each_honoured_key_becomes_its_setting(tmp_path: Path, line: str, expected: dict[str, Any]) -> None:
    config = _read(tmp_path, line + "\n")
    assert config.values == expected
    if line.startswith("cors_allowed_origin="):  # TorchServe's applies to every API, torchship's to one
        assert [why.split(":")[0] for _, why in config.not_honoured] == ["applied to the inference API only"]
    else:
        assert config.not_honoured == []


def test_the_values_make_valid_settings(tmp_path: Path) -> None:
    config = _read(
        tmp_path,
        "inference_address=https://0.0.0.0:8443\n"
        "certificate_file=c.pem\nprivate_key_file=k.pem\n"
        "default_workers_per_model=2\njob_queue_size=50\ndefault_response_timeout=300\n"
        "token_expiration_min=30\nallowed_urls=file:///srv/models/.*\nload_models=a.mar\n",
    )
    settings = config.server_settings(store=Path("store"))
    assert settings.model_defaults == ModelSettings(workers=2, job_queue_size=50, response_timeout=300)
    assert (settings.tls_cert, settings.tls_key) == (Path("c.pem"), Path("k.pem"))
    assert (settings.key_expiration, settings.model_roots) == (30.0, (Path("/srv/models"),))
    assert (settings.models, settings.store) == (("a.mar",), "store")  # a directory or an object store URL
    assert listener_addresses(settings)["inference"].tls


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("job_queue_size=many", "config.properties:2: job_queue_size must be a whole number"),
        ("default_workers_per_model=-1", "default_workers_per_model must be a whole number of at least 0"),
        ("enable_model_api=yes", "config.properties:2: enable_model_api must be true or false"),
        ("token_expiration_min=never", "token_expiration_min must be a positive number"),
        ("models={not json", "config.properties:2: models is not valid JSON"),
        ('models={"bbc": {"1.0": 3}}', "model 'bbc' must map versions to settings"),
        ("models=[1]", "models must be a JSON object"),
        ("inference_address=0.0.0.0:8080", "inference_address must be http[s]://HOST[:PORT]"),
        ("management_address=unix:/tmp/ts.sock", "does not listen on Unix sockets"),
        ("metrics_address=http://h:70000", "port 70000 is above 65535"),
        ('model_snapshot={"models": {"m": {"1.0": {"minWorkers": 1}}}}', 'version 1.0 has no "marName"'),
        ("model_store=$$NOT_SET_ANYWHERE$$", "refers to the environment variable $NOT_SET_ANYWHERE"),
        ("model_store=\\uZZ", "config.properties:2: cannot read this line: a \\u escape needs four"),
    ],
)
def test_a_bad_value_names_its_key_and_line(tmp_path: Path, line: str, words: str) -> None:
    with pytest.raises(ConfigError, match=_literal(words)):
        _read(tmp_path, "# line 1\n" + line + "\n")


def _literal(words: str) -> str:
    import re

    return re.escape(words)


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the TorchServe config .*missing\.properties"):
        read_ts_config(tmp_path / "missing.properties", {})


def test_every_key_is_applied_or_reported_with_a_reason(tmp_path: Path) -> None:
    keys = sorted(set(ENVIRONMENT_KEYS.values()) | {"vmargs", "use_native_io", "io_ratio", "version"})
    values = {
        "inference_address": "http://127.0.0.1:1",
        "management_address": "http://127.0.0.1:2",
        "metrics_address": "http://127.0.0.1:3",
        "allowed_urls": "file:///srv/.*",
        "cors_allowed_origin": "*",
        "metrics_mode": "log",
        "token_expiration_min": "5",
    }
    booleans = {"install_py_dep_per_model", "enable_metrics_api", "disable_system_metrics", "ipex_enable"}
    booleans |= {"decode_input_request", "limit_max_image_pixels", "cpu_launcher_enable", "enable_grpc_ssl"}
    booleans |= {
        "ipex_gpu_enable",
        "ts_open_inference_protocol",
        "enable_model_api",
        "model_metrics_auto_detect",
    }
    booleans |= {"disable_token_authorization", "async_logging", "prefer_direct_buffer", "debug"}
    numbers = {"default_workers_per_model", "job_queue_size", "max_request_size", "max_response_size"}
    numbers |= {"default_response_timeout", "default_startup_timeout", "number_of_gpu"}
    lines = []
    for key in keys:
        default = "true" if key in booleans else "4" if key in numbers else "x"
        lines.append(f"{key}={values.get(key, default)}")
    lines.append("not_a_setting=1")
    config = _read(tmp_path, "\n".join(lines) + "\n")
    reported = _reported(config)
    applied = {
        "inference_address", "management_address", "metrics_address", "load_models", "model_store",
        "default_workers_per_model", "job_queue_size", "max_request_size", "max_response_size",
        "default_response_timeout", "default_startup_timeout", "enable_model_api", "allowed_urls",
        "disable_token_authorization", "token_expiration_min", "cors_allowed_origin", "certificate_file",
        "private_key_file",
    }  # fmt: skip
    assert applied & set(reported) == {"cors_allowed_origin"}  # applied, to the inference API only
    assert set(keys) - applied <= set(reported), set(keys) - applied - set(reported)
    assert all(len(why) > 10 for why in reported.values())
    assert reported["not_a_setting"] == "not a TorchServe 0.12 setting (a typo?)"
    assert "never installs packages" in reported["install_py_dep_per_model"]
    assert "no gRPC" in reported["grpc_inference_port"]
    assert "KServe v1" in reported["service_envelope"]
    assert "no workflows" in reported["workflow_store"]
    assert "runs no JVM" in reported["vmargs"]
    assert dict(config.not_needed)["number_of_netty_threads"].startswith("Netty threads")
    assert "not honoured" in config.report()[0] and "not needed" in config.report()[-1]


def test_settings_with_torchships_own_behaviour_are_not_needed_others_not_honoured(tmp_path: Path) -> None:
    config = _read(
        tmp_path,
        "install_py_dep_per_model=false\nenable_metrics_api=false\nmetrics_mode=prometheus\n"
        "allowed_urls=file://.*,https://s3.amazonaws.com/.*\nload_models=a.mar,b=https://x.example/b.mar\n",
    )
    assert dict(config.not_needed) == {
        "install_py_dep_per_model": "torchship never installs packages either",
        "metrics_mode": "torchship's /metrics is always in Prometheus's format",
    }
    reasons = [why for key, why in config.not_honoured if key == "allowed_urls"]
    assert [why.split(" ")[0] for why in reasons] == ["file://.*", "https://s3.amazonaws.com/.*:"]
    assert "--model_roots" in reasons[0] and "never downloads" in reasons[1]
    assert ("load_models", "b=https://x.example/b.mar: torchship never downloads models; copy the archive "
            "into model_store") in config.not_honoured  # fmt: skip
    assert "enable_metrics_api" in dict(config.not_honoured)
    assert config.values == {"model_roots": (), "models": ("a.mar",)}


def test_ts_variables_override_only_with_enable_envvars_config(tmp_path: Path) -> None:
    environ = {
        "TS_JOB_QUEUE_SIZE": "42",
        "TS_INFERENCE_ADDRESS": "http://127.0.0.1:9000",
        "TS_TOKEN_EXPIRATION_TIME_MIN": "15",
        "TS_ALLOWED_URLS": "file:///from/env/.*",
        "TS_MODELS": "ignored: models is not a TS_ setting",
        "STORE": "/srv/store",
    }
    text = "job_queue_size=7\nmodel_store=$$STORE$$/mars\n"
    off = _read(tmp_path, text, environ)
    assert off.values == {"job_queue_size": 7, "model_store": "/srv/store/mars"}  # $$VAR$$ always
    assert dict(off.not_honoured) == dict.fromkeys(
        ["TS_JOB_QUEUE_SIZE", "TS_INFERENCE_ADDRESS", "TS_TOKEN_EXPIRATION_TIME_MIN", "TS_ALLOWED_URLS"],
        "not read: config.properties does not set enable_envvars_config=true",
    )
    on = _read(tmp_path, text + "enable_envvars_config=true\n", environ)
    assert on.values == {
        "job_queue_size": 42,
        "model_store": "/srv/store/mars",
        "inference_address": "http://127.0.0.1:9000",
        "key_expiration": 15.0,
    }
    assert on.not_honoured == [
        ("TS_ALLOWED_URLS", "not read: config.properties does not set use_env_allowed_urls=true")
    ]
    urls = _read(tmp_path, text + "enable_envvars_config=true\nuse_env_allowed_urls=true\n", environ)
    assert urls.values["model_roots"] == ("/from/env",)
    with pytest.raises(ConfigError, match="environment variable TS_JOB_QUEUE_SIZE: job_queue_size must be"):
        _read(tmp_path, "enable_envvars_config=true\n", {"TS_JOB_QUEUE_SIZE": "lots"})


def test_model_snapshot_loads_its_models_and_load_models_is_then_not_read(tmp_path: Path) -> None:
    config = _read(
        tmp_path,
        "load_models=all\n"
        'models={"a": {"1.0": {"batchSize": 2, "maxBatchDelay": 7}}}\n'
        'model_snapshot={"name": "startup.cfg", "models": {"a": {"1.0": {"marName": "a.mar", "batchSize": 4},'
        ' "2.0": {"marName": "a2.mar", "defaultVersion": true}}, "b": {"1": {"marName": "b.mar"}}}}\n',
    )
    assert config.values["models"] == ("a=a.mar", "a=a2.mar", "b=b.mar")
    assert config.values["archive_settings"] == {
        "a": {"1.0": {"batchSize": 4, "maxBatchDelay": 7}, "2.0": {"defaultVersion": True}},
        "b": {"1": {}},
    }
    assert dict(config.not_honoured) == {
        "load_models": "model_snapshot is set, so its models are loaded instead (as in TorchServe)"
    }


def test_kserves_config_properties_becomes_settings(tmp_path: Path) -> None:
    config = _read(tmp_path, KSERVE, {"TS_SERVICE_ENVELOPE": "kservev2"})
    settings = config.server_settings()
    assert (settings.inference_address, settings.management_address, settings.metrics_address) == (
        "http://0.0.0.0:8085",
        "http://0.0.0.0:8085",
        "http://0.0.0.0:8082",
    )
    assert settings.model_store == Path("/mnt/models/model-store")
    assert settings.models == ("mnist=mnist.mar",)
    assert settings.archive_settings == {
        "mnist": {
            "1.0": {
                "defaultVersion": True,
                "minWorkers": 1,
                "maxWorkers": 5,
                "batchSize": 1,
                "maxBatchDelay": 10,
                "responseTimeout": 120,
            }
        }
    }
    assert settings.model_defaults.job_queue_size == 10
    assert sorted(dict(config.not_honoured)) == [
        "grpc_inference_port",
        "grpc_management_port",
        "install_py_dep_per_model",
        "service_envelope",  # from TS_SERVICE_ENVELOPE, which KServe's runtime sets
    ]
    assert sorted(dict(config.not_needed)) == [
        "enable_metrics_api",
        "metrics_format",
        "number_of_netty_threads",
    ]
    assert listener_groups(settings, listener_addresses(settings)) == [
        ("inference", "management"),
        ("metrics",),
    ]


def test_listeners_share_a_socket_when_their_addresses_are_the_same() -> None:
    def groups(**changes: Any) -> list[tuple[str, ...]]:
        settings = ServerSettings(**changes)
        return listener_groups(settings, listener_addresses(settings))

    assert groups() == [("inference",), ("management",), ("metrics",)]
    assert groups(inference_port=0, management_port=0, metrics_port=0) == [
        ("inference",),
        ("management",),
        ("metrics",),
    ]  # port 0 from --*_port: a free port each, as always
    assert groups(management_port=8080) == [("inference", "management"), ("metrics",)]
    same = "http://127.0.0.1:0"
    assert groups(inference_address=same, management_address=same) == [
        ("inference", "management"),
        ("metrics",),
    ]  # as TorchServe: the same address is one listener, even at port 0
    with pytest.raises(ConfigError, match="only one speaks HTTPS"):
        groups(
            inference_address="https://127.0.0.1:9443",
            management_address="http://127.0.0.1:9443",
            tls_cert="c.pem",
            tls_key="k.pem",
        )


def test_one_socket_serves_inference_and_management_with_each_apis_key_rules(tmp_path: Path) -> None:
    config = _read(
        tmp_path,
        "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\n",
    )
    key_file = tmp_path / "key_file.json"
    with running(auth_settings(key_file, **config.values)) as server:
        url = server.urls["inference"]
        assert server.urls["management"] == url != server.urls["metrics"]
        assert httpx.get(url + "/ping").json() == {"status": "Healthy"}
        refused = httpx.get(url + "/models")
        assert refused.status_code == 401, refused.text
        assert refused.json()["type"] == "InvalidKeyException"
        listed = httpx.get(url + "/models", headers=bearer(read_key(key_file, "management")))
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"models": []}
        assert httpx.post(url + "/predictions/nothing", timeout=30).status_code == 404  # inference: no key
        token = httpx.get(url + "/token?type=inference", headers=bearer(read_key(key_file, "API")))
        assert token.status_code == 200, token.text
        assert httpx.get(url + "/no/such/route").status_code == 404
        assert httpx.get(server.urls["metrics"] + "/metrics").status_code == 200
