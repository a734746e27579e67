"""KServe's ``kserve-torchserve`` runtime with ``torchship`` in place of ``torchserve``: the folder KServe's
storage initializer leaves in ``/mnt/models`` (``model-store/<name>.mar`` and ``config/config.properties``
with the keys KServe's TorchServe examples set), the runtime's exact arguments and environment
(``../shared/kserve/kserve-torchserve-runtime.yaml``), a real subprocess.

The one change to KServe's files: the addresses name 127.0.0.1 and free ports instead of 0.0.0.0 and fixed
ones, and ``model_store`` names this folder instead of ``/mnt/models/model-store``. Token authorization is
turned off the way a KServe deployment can, through ``TS_DISABLE_TOKEN_AUTHORIZATION`` (read because
``enable_envvars_config=true``). One server serves the whole module; the last test stops it with
``torchship torchserve --stop`` (SIGTERM to the recorded pid) and asserts a clean exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mar_support import KSERVE_CONFIG as CONFIG
from mar_support import KSERVE_MODEL as MODEL
from mar_support import KSERVE_SNAPSHOT as SNAPSHOT
from mar_support import archive
from serving_support import start_logged

pytestmark = pytest.mark.slow

HANDLERS = Path(__file__).with_name("mar_handlers")
START_DEADLINE_S = 180.0


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base: str  # inference and management, one port as KServe's config has it
    metrics: str
    env: dict[str, str]
    stderr: Path
    root: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("kserve")
    mnt = root / "mnt-models"
    store = mnt / "model-store"
    archive(root, MODEL, HANDLERS / "mar_kserve_handler.py", export_path=store)
    ports = _free_ports(4)
    config = mnt / "config" / "config.properties"
    config.parent.mkdir(parents=True)
    config.write_text(
        CONFIG.format(
            inference=ports[0],
            metrics=ports[1],
            grpc=ports[2],
            grpc_management=ports[3],
            model_store=store,
            snapshot=json.dumps(SNAPSHOT, separators=(",", ":")),
        ),
        encoding="utf-8",
    )
    tmp = root / "tmp"  # its own temporary folder: the pid file and the archive cache live there
    tmp.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "TS_SERVICE_ENVELOPE": "kserve",  # the runtime's env, for a v1 InferenceService
        "TS_DISABLE_TOKEN_AUTHORIZATION": "true",
    }
    env.pop("TS_CONFIG_FILE", None)
    command = [sys.executable, "-m", "torchship", "torchserve", "--start"]
    command += [f"--model-store={store}", f"--ts-config={config}"]  # the runtime's args
    process, _, stderr = start_logged(command, env, root)
    here = Served(process, f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", env, stderr, root)
    try:
        _wait_ready(here)
        yield here
    finally:
        if process.poll() is None:  # a test failed before stopping it: leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def test_kserve_v1_predict(served: Served) -> None:
    assert httpx.get(f"{served.base}/v1/models/{MODEL}", timeout=30).json() == {"name": MODEL, "ready": True}
    response = httpx.post(
        f"{served.base}/v1/models/{MODEL}:predict",
        json={"instances": [[1, 2, 3], [4.5, 0.5], {"x": [10]}]},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "predictions": [{"sum": 6.0, "count": 3}, {"sum": 5.0, "count": 2}, {"sum": 10.0, "count": 1}]
    }


def test_open_inference_protocol_v2_infer(served: Served) -> None:
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}
    response = httpx.post(f"{served.base}/v2/models/{MODEL}/infer", json=request, timeout=60)
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert outputs["sum"]["data"] == [6.0, 15.0] and outputs["sum"]["shape"] == [2]
    assert outputs["count"]["data"] == [3, 3]


def test_torchserve_predictions_and_management_on_one_port(served: Served) -> None:
    assert httpx.get(f"{served.base}/ping", timeout=30).status_code == 200
    response = httpx.post(f"{served.base}/predictions/{MODEL}", json={"x": [1.5, 2]}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {"sum": 3.5, "count": 2}
    # KServe's config puts the management API on the inference port; the snapshot's settings applied.
    described = httpx.get(f"{served.base}/models/{MODEL}", timeout=30).json()[0]
    assert described["modelUrl"] == f"{MODEL}.mar"
    assert (described["minWorkers"], described["maxWorkers"]) == (1, 5)
    assert (described["batchSize"], described["maxBatchDelay"]) == (1, 10)
    assert (described["responseTimeout"], described["loadedAtStartup"]) == (120, True)
    assert described["jobQueueStatus"]["remainingCapacity"] == 10  # job_queue_size, nothing pending
    metrics = httpx.get(f"{served.metrics}/metrics", timeout=30)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def test_startup_report_names_the_keys_not_honoured(served: Served) -> None:
    # Each key (or TS_* variable: TS_SERVICE_ENVELOPE is service_envelope) torchship does not act on is a
    # warning naming it; the keys that tune what torchship does not have (Netty) are noted as not needed.
    report = served.stderr.read_text(encoding="utf-8", errors="replace")
    warned = set(re.findall(r"WARNING .*config\.properties: (\w+) is not honoured: ", report))
    assert warned == {
        "grpc_inference_port",
        "grpc_management_port",
        "install_py_dep_per_model",
        "service_envelope",
    }, report[-3000:]
    noted = set(re.findall(r"config\.properties: (\w+) is not needed: ", report))
    assert noted == {"enable_metrics_api", "metrics_format", "number_of_netty_threads"}, report[-3000:]


def test_torchserve_stop_ends_it_cleanly(served: Served) -> None:
    # Last in the module: `torchship torchserve --stop` finds the pid file in the same TMPDIR, sends
    # SIGTERM, and waits for the server to exit; the server exits 0 and removes its pid file.
    stop = subprocess.run(
        [sys.executable, "-m", "torchship", "torchserve", "--stop"],
        env=served.env,
        cwd=served.root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert stop.returncode == 0, stop.stderr
    assert "has stopped" in stop.stdout
    assert served.process.wait(30) == 0, served.stderr.read_text(errors="replace")[-3000:]
    assert not list((served.root / "tmp").glob(".torchship-torchserve-*.pid"))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.base}/ping", timeout=5)


def _wait_ready(served: Served) -> None:
    """Poll KServe's readiness route until the model has a loaded worker; fail with the server's log when
    it exits or the deadline passes."""
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        if served.process.poll() is not None:
            raise AssertionError(f"torchship exited with {served.process.returncode}:\n{_tail(served)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{served.base}/v1/models/{MODEL}", timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{MODEL} not ready after {START_DEADLINE_S:.0f}s:\n{_tail(served)}")
        time.sleep(0.2)  # polling interval, not synchronisation: the readiness route decides


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (config.properties needs explicit ports: KServe's has them)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(served: Served, lines: int = 40) -> str:
    return "\n".join(served.stderr.read_text(errors="replace").splitlines()[-lines:])
