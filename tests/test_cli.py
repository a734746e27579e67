from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import lightning  # noqa: F401  (see below)
import pytest
import torch
from tokenizers import Tokenizer

from torchship.cli import main
from torchship.data.tokenizer import train_tokenizer
from torchship.models.transformer import TransformerClassifier, TransformerConfig
from torchship.store import ModelStore, PackageConfig, load_package, write_package

# Lightning adds a handler bound to the sys.stderr of the moment it is first imported. Importing it here,
# outside any test's capsys, keeps its INFO lines out of the captured stderr when this file runs alone.

TEXTS = {
    "sport": [
        "the team won the match",
        "a late goal for the league leaders",
        "the coach praised his players",
    ],
    "money": ["shares fell on the market", "the bank raised its profit forecast", "stock prices rose again"],
}


def _write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def labelled_csv(tmp_path: Path) -> Path:
    return _write_csv(
        tmp_path / "labelled.csv", [(text, label) for label, texts in TEXTS.items() for text in texts]
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with one randomly initialised package, ``toy`` version 1 (no training needed)."""
    texts = [text for texts in TEXTS.values() for text in texts]
    tokenizer: Tokenizer = train_tokenizer(texts * 3, vocab_size=120, max_length=32)
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=tokenizer.get_vocab_size(),
        num_classes=2,
        d_model=16,
        n_heads=2,
        n_layers=1,
        d_ff=32,
        max_length=32,
    )
    model = TransformerClassifier(config).eval()
    package = PackageConfig(name="toy", version=1, labels=("money", "sport"), model=config, max_length=32)
    root = tmp_path / "models"
    ModelStore(root).publish(
        "toy",
        lambda d: write_package(
            d,
            config=package,
            state_dict=model.state_dict(),
            tokenizer=tokenizer,
            metrics={"test": {"accuracy": 0.75, "macro_f1": 0.7}},
        ),
    )
    return root


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(args)
    out, err = capsys.readouterr()
    return status, out, err


def _assert_user_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    for fragment in fragments:
        assert fragment in err


def test_predict_prints_label_and_probabilities(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["shares and stock", "the match"]
    status, out, _ = _run(["predict", "--model", str(store / "toy"), "--json", *texts], capsys)
    assert status == 0
    results = json.loads(out)
    expected = load_package(store / "toy" / "1").predict_proba(texts)
    for result, row in zip(results, expected, strict=True):
        probabilities = torch.tensor([result["probabilities"]["money"], result["probabilities"]["sport"]])
        torch.testing.assert_close(probabilities, row)
        assert result["label"] == ("money", "sport")[int(row.argmax())]

    status, out, _ = _run(["predict", "--model", f"{store / 'toy'}:1", *texts], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"{results[0]['label']}\tshares and stock"
    assert lines[1].split()[0] == results[0]["label"]
    assert float(lines[1].split()[1]) == pytest.approx(max(results[0]["probabilities"].values()), abs=1e-4)


def test_predict_and_evaluate_take_a_device(
    store: Path, labelled_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = ["shares and stock", "the match"]
    status, out, _ = _run(
        ["predict", "--model", str(store / "toy"), "--json", "--device", "CPU", *texts], capsys
    )
    assert status == 0
    expected = load_package(store / "toy" / "1").predict_proba(texts)
    torch.testing.assert_close(
        torch.tensor([r["probabilities"]["money"] for r in json.loads(out)]), expected[:, 0]
    )
    status, _, err = _run(["predict", "--model", str(store / "toy"), "--device", "tpu", "x"], capsys)
    _assert_user_error(status, err, "--device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'")
    if not torch.cuda.is_available():
        args = ["evaluate", "--model", str(store / "toy"), "--data", str(labelled_csv), "--device", "cuda"]
        status, _, err = _run(args, capsys)
        _assert_user_error(status, err, "device 'cuda' was asked for", "--device cpu")


def test_evaluate_prints_scores_of_the_package(
    store: Path, labelled_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = _run(
        ["evaluate", "--model", str(store / "toy"), "--data", str(labelled_csv), "--json"], capsys
    )
    assert status == 0
    report = json.loads(out)
    package = load_package(store / "toy" / "1")
    texts = [text for texts in TEXTS.values() for text in texts]
    truth = [label for label, texts in TEXTS.items() for _ in texts]
    predicted = [package.labels[i] for i in package.predict_proba(texts).argmax(dim=1).tolist()]
    assert report["examples"] == 6
    assert report["accuracy"] == pytest.approx(sum(p == t for p, t in zip(predicted, truth, strict=True)) / 6)
    assert sum(map(sum, report["confusion_matrix"])) == 6
    assert {label: s["support"] for label, s in report["per_class"].items()} == {"money": 3, "sport": 3}

    status, out, _ = _run(["evaluate", "--model", str(store / "toy"), "--data", str(labelled_csv)], capsys)
    assert status == 0
    assert f"accuracy  {report['accuracy']:.4f}" in out
    assert "money" in out and "sport" in out


def test_models_lists_versions_with_test_scores(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(["models", "--store", str(store), "--json"], capsys)
    assert status == 0
    [row] = json.loads(out)
    assert (row["name"], row["version"], row["accuracy"], row["macro_f1"]) == ("toy", 1, 0.75, 0.7)
    status, out, _ = _run(["models", "--store", str(store)], capsys)
    assert "0.7500" in out.splitlines()[1]


def test_train_with_a_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(["train", "--data", str(tmp_path / "nope.csv"), "--name", "x"], capsys)
    _assert_user_error(status, err, "nope.csv")


def test_train_with_a_missing_column(labelled_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(
        ["train", "--data", str(labelled_csv), "--name", "x", "--text_column", "body"], capsys
    )
    _assert_user_error(status, err, "body", "labelled.csv")


def test_train_with_bad_options(labelled_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--data", str(labelled_csv), "--name", "x"]
    status, _, err = _run([*base, "--trainer.max_epochz", "3"], capsys)
    _assert_user_error(status, err, "--trainer.max_epochz")
    status, _, err = _run([*base, "--trainer.max_epochs", "many"], capsys)
    _assert_user_error(status, err, "trainer.max_epochs", "many")
    status, _, err = _run([*base, "--trainer.accelerator", "abacus"], capsys)
    _assert_user_error(status, err, "abacus")
    status, _, err = _run([*base, "--model.d_model", "30"], capsys)
    _assert_user_error(status, err, "model.d_model")
    status, _, err = _run([*base, "--optim.lr", "-1"], capsys)
    _assert_user_error(status, err, "optim.lr")
    status, _, err = _run(["train", "--data", str(labelled_csv)], capsys)
    _assert_user_error(status, err, "name")


def test_predict_and_evaluate_with_an_unknown_model(
    tmp_path: Path, store: Path, labelled_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(["predict", "--model", str(tmp_path / "models" / "nope"), "text"], capsys)
    _assert_user_error(status, err, "nope")
    status, _, err = _run(["predict", "--model", f"{store / 'toy'}:7", "text"], capsys)
    _assert_user_error(status, err, "version 7")
    status, _, err = _run(["evaluate", "--model", str(tmp_path), "--data", str(labelled_csv)], capsys)
    _assert_user_error(status, err)


def test_evaluate_with_labels_the_model_does_not_know(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_csv(tmp_path / "other.csv", [("a new phone", "tech")])
    status, _, err = _run(["evaluate", "--model", str(store / "toy"), "--data", str(data)], capsys)
    _assert_user_error(status, err, "'tech'")


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"torchship {version('torchship')}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--workers", "many"], "error: workers: expected an integer or null, got 'many'"),
        (["serve", "--max_batch_delay", "x"], "error: max_batch_delay: expected a number, got 'x'"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_in_words(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(["--help"], capsys)
    assert status == 0
    assert "train" in out and "serve" in out
    status, out, _ = _run(["train", "--help"], capsys)
    assert status == 0
    assert "--trainer.accelerator" in out and "--trainer.devices" in out and "--model.d_model" in out


@pytest.mark.slow
def test_train_prints_where_it_published(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(text, label) for label, texts in TEXTS.items() for text in texts] * 5
    data = _write_csv(tmp_path / "train.csv", rows)
    args = [
        "train", "--data", str(data), "--store", str(tmp_path / "models"), "--name", "tiny",
        "--vocab_size", "120", "--max_length", "32", "--batch_size", "8",
        "--model.d_model", "16", "--model.n_heads", "2", "--model.n_layers", "1", "--model.d_ff", "32",
        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    status, out, _ = _run(args, capsys)
    assert status == 0
    assert f"published tiny version 1 at {tmp_path / 'models' / 'tiny' / '1'}" in out
    assert "test: accuracy" in out
    status, _, err = _run([*args, "--version", "1"], capsys)
    _assert_user_error(status, err, "version 1")


def test_serve_command_never_imports_lightning() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from torchship.cli import build_parser; "
        "build_parser(only='serve').parse_args(['serve', '--store', 'x']); "
        "print('lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_options_come_from_a_yaml_config(tmp_path: Path) -> None:
    from torchship.cli import build_parser

    config = tmp_path / "run.yaml"
    config.write_text(
        "data: news.csv\nname: news\nmax_length: 256\n"
        "model:\n  d_model: 64\n  n_layers: 1\n"
        "optim:\n  lr: 0.001\n"
        "trainer:\n  accelerator: cpu\n  devices: 2\n  strategy: ddp\n  precision: bf16-mixed\n"
    )
    cfg = build_parser().parse_args(["train", "--config", str(config), "--trainer.max_epochs", "7"])
    train = cfg.train
    assert (train.data, train.name, train.max_length) == ("news.csv", "news", 256)
    assert (train.model.d_model, train.model.n_layers, train.optim.lr) == (64, 1, 0.001)
    trainer = train.trainer
    assert (trainer.accelerator, trainer.strategy, trainer.precision) == ("cpu", "ddp", "bf16-mixed")
    assert int(trainer.devices) == 2
    assert trainer.max_epochs == 7
    for option in ("num_nodes", "max_steps", "gradient_clip_val", "accumulate_grad_batches"):
        assert option in trainer
    for option in ("log_every_n_steps", "deterministic"):
        assert option in trainer
    assert "callbacks" not in trainer and "logger" not in trainer


def test_torchserve_flags_become_the_serve_options_of_the_same_meaning(tmp_path: Path) -> None:
    from torchship.serving.torchserve_command import torchserve_arguments

    warnings: list[str] = []
    parsed, command = torchserve_arguments(
        [
            "--start",
            "--model-store=/mnt/models/model-store",  # as KServe's runtime writes them
            "--ts-config=/mnt/models/config/config.properties",
            "--models",
            "a.mar,b=b.mar",
            "c.mar",
            "--ncs",
            "--dt",
            "--enable-model-api",
            "--foreground",
            "--log-config",
            "log4j2.xml",
            "--device",  # any `torchship serve` option follows
            "cpu",
        ],
        {},
        warnings.append,
    )
    assert parsed.start and parsed.foreground
    assert command == [
        "serve",
        "--ts_config",
        "/mnt/models/config/config.properties",
        "--model_store",
        "/mnt/models/model-store",
        "--models",
        "a.mar",
        "b=b.mar",
        "c.mar",
        "--no_snapshot",
        "--token_auth",
        "false",
        "--allow_code_models",
        "true",
        "--device",
        "cpu",
    ]
    assert warnings == [
        "--log-config log4j2.xml is not read: torchship logs to stderr through Python's logging"
    ]
    # TS_CONFIG_FILE wins over --ts-config, as in TorchServe; the space-separated form works too
    _, command = torchserve_arguments(
        ["--ts-config", "x.properties", "--model-store", "store"], {"TS_CONFIG_FILE": "env.properties"}, print
    )
    assert command == ["serve", "--ts_config", "env.properties", "--model_store", "store"]


def test_torchserve_start_reads_the_config_into_serve_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    properties = tmp_path / "config.properties"
    properties.write_text("inference_address=http://0.0.0.0:8085\nmanagement_address=http://0.0.0.0:8085\n")
    args = [
        "torchserve",
        "--start",
        f"--model-store={tmp_path}",
        f"--ts-config={properties}",
        "--print_config",
    ]
    status, out, _ = _run(args, capsys)
    assert status == 0
    printed = yaml.safe_load(out)
    assert (printed["model_store"], printed["inference_address"]) == (str(tmp_path), "http://0.0.0.0:8085")
    status, _, err = _run(["torchserve", "--start", "--workflow-store", "wf"], capsys)
    _assert_user_error(status, err, "--workflow-store: torchship serves no workflows")
    status, out, _ = _run(["torchserve", "--help"], capsys)
    assert status == 0 and "always runs in the foreground" in out and "--model-store" in out


def test_torchserve_stop_says_when_none_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    status, out, _ = _run(["torchserve", "--stop"], capsys)
    assert status == 0 and out.startswith("torchship torchserve is not running")
    (tmp_path / f".torchship-torchserve-{os.getuid()}.pid").write_text("999999999\n")  # a stale pid file
    status, out, _ = _run(["torchserve", "--stop"], capsys)
    assert status == 0 and out.startswith("torchship torchserve is not running")


@pytest.mark.slow
def test_torchserve_start_serves_and_stop_stops_it(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import queue
    import subprocess
    import sys
    import tempfile
    import threading
    import time

    import httpx

    properties = tmp_path / "config.properties"
    properties.write_text(  # KServe's shape: inference and management on one address
        "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\n"
        "default_workers_per_model=1\ngrpc_inference_port=7070\n"
    )
    model_store = tmp_path / "model-store"
    model_store.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    torchserve = [sys.executable, "-m", "torchship", "torchserve"]
    start = [
        *torchserve,
        "--start",
        f"--model-store={model_store}",
        f"--ts-config={properties}",
        "--store",
        str(store),
        "--metrics_port",
        "0",
    ]
    server = subprocess.Popen(
        start, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    logged: list[str] = []  # stderr, drained as it comes so that the server never blocks on a full pipe
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout or ()], daemon=True).start()
    stderr_reader = threading.Thread(target=lambda: logged.extend(server.stderr or ()), daemon=True)
    stderr_reader.start()
    try:
        urls: dict[str, str] = {}
        while True:  # the lines printed once every listener is up, the last one "list models: ..."
            line = lines.get(timeout=120)
            if line.startswith("torchship: ") and "http" in line:
                name, url = line.split()[1:3]
                urls[name] = url.removesuffix("/metrics")
            if "list models:" in line:
                break
        assert urls["inference"] == urls["management"] != urls["metrics"]
        key = json.loads((tmp_path / "key_file.json").read_text())["management"]["key"]
        deadline = time.monotonic() + 120
        while httpx.get(urls["inference"] + "/ping").json() != {"status": "Healthy"}:  # workers loading
            assert time.monotonic() < deadline, "the model did not load within 120 s"
            time.sleep(0.05)  # polling interval: /ping decides
        assert httpx.get(urls["management"] + "/models").status_code == 401
        listed = httpx.get(urls["management"] + "/models", headers={"Authorization": f"Bearer {key}"})
        assert [model["modelName"] for model in listed.json()["models"]] == ["toy"]
        answer = httpx.post(urls["inference"] + "/predictions/toy", json={"text": "the team won"}, timeout=60)
        assert answer.status_code == 200, answer.text
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the server keeps its pid file
        status, _, err = _run(["torchserve", "--start", "--store", str(store)], capsys)
        _assert_user_error(status, err, "torchship torchserve is already running")
        status, out, _ = _run(["torchserve", "--stop"], capsys)
        assert (status, out) == (0, "torchship torchserve has stopped.\n")
        assert server.wait(timeout=60) == 0
        stderr_reader.join(timeout=30)  # the process has exited: its stderr ends, and the reader with it
        assert any("grpc_inference_port is not honoured" in line for line in logged), "".join(logged)
        assert not list(tmp_path.glob(".torchship-torchserve-*.pid"))
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
