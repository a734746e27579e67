"""Starting and stopping: `torchship serve` from the command line, and a graceful stop that lets
in-flight requests finish."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from serving_handlers import SlowAPI
from serving_support import bearer, describe, read_key, settings, stdout_lines, wait_until

from torchship.serving import Server, ServerThread
from torchship.serving.settings import default_workers

pytestmark = pytest.mark.slow


def test_a_graceful_stop_finishes_in_flight_requests() -> None:
    thread = ServerThread(Server(settings(), apis=[SlowAPI(name="slow", workers=1)]))
    with thread as server:
        wait_until(lambda: server.registry.get("slow").serving_workers == 1, 120, "the worker")
        answers: list[int] = []
        url = server.urls["inference"] + "/predictions/slow"
        request = threading.Thread(
            target=lambda: answers.append(httpx.post(url, json={"sleep": 2}, timeout=60).status_code)
        )
        request.start()
        wait_until(lambda: describe(server, "/models/slow")[0]["workers"][0]["status"] == "BUSY", what="busy")
        thread.runner.stop()  # what SIGTERM does
        request.join()
    assert answers == [200]
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.urls["inference"] + "/ping")


def test_torchship_serve_command_serves_a_store_and_stops_on_sigint(store_root: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torchship",
        "serve",
        "--store",
        str(store_root),
        "--no_snapshot",
        "--inference_port",
        "0",
        "--management_port",
        "0",
        "--metrics_port",
        "0",
        "--batch_size",
        "8",
        "--startup_timeout",
        "90",
        "--key_file",
        str(tmp_path / "key_file.json"),
    ]
    log = (tmp_path / "stderr.log").open("w")  # a file, not a pipe nobody reads: a full pipe would block it
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    lines = stdout_lines(process)
    try:
        printed = [lines.get(timeout=120) for _ in range(5)]
        inference = printed[0].split()[-1]
        assert printed[3].startswith("torchship: model news (version 2) -> POST")
        assert "curl -X POST" in printed[4]
        response = httpx.post(f"{inference}/predictions/news", json={"text": "a goal"}, timeout=120)
        assert response.status_code == 200, response.text
        management = printed[1].split()[-1]
        key_file = tmp_path / "key_file.json"  # token authorization is on by default, as in TorchServe
        assert httpx.get(f"{management}/models/news").status_code == 401
        headers = bearer(read_key(key_file, "management"))
        [described] = httpx.get(f"{management}/models/news", headers=headers).json()
        assert (described["batchSize"], described["startupTimeout"]) == (8, 90)
        # The default number of workers: one per core (at most 4) on a machine without a GPU, for the
        # latest version; one for older versions.
        assert described["minWorkers"] == default_workers() >= 1
        [older] = httpx.get(f"{management}/models/news/1", headers=headers).json()
        assert older["minWorkers"] == 1 and not older["isDefault"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert not key_file.exists()  # generated keys do not outlive the server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
