"""The tutorial snippet in examples/ runs as written, in a subprocess, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serving_support import stdout_lines

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_tutorial_snippet_serves_as_written(tmp_path: Path) -> None:
    for script in ("make_model.py", "serve.py"):
        shutil.copy(EXAMPLES / "tutorial" / script, tmp_path / script)
    subprocess.run([sys.executable, "make_model.py"], cwd=tmp_path, check=True, capture_output=True)
    env = {**os.environ, "TORCHSHIP_INFERENCE_PORT": "0", "TORCHSHIP_MANAGEMENT_PORT": "0",
           "TORCHSHIP_METRICS_PORT": "0"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "serve.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = stdout_lines(process)
        urls: dict[str, str] = {}
        while len(urls) < 2:
            line = lines.get(timeout=120)
            if line.startswith("torchship: inference") or line.startswith("torchship: management"):
                urls[line.split()[1]] = line.split()[2]
        body = {"features": [0.1, 0.2, 0.3, 0.4]}
        response = httpx.post(f"{urls['inference']}/predictions/model", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert len(response.json()["probabilities"]) == 3
        assert sum(response.json()["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        keys = json.loads((tmp_path / "key_file.json").read_text())  # token authorization is on by default
        headers = {"Authorization": f"Bearer {keys['management']['key']}"}
        [described] = httpx.get(f"{urls['management']}/models/model", headers=headers, timeout=30).json()
        worker_pid = described["workers"][0]["pid"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert not Path(f"/proc/{worker_pid}").exists() or _is_zombie(worker_pid)
        assert not (tmp_path / "key_file.json").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
