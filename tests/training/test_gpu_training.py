"""Training on a GPU through the command line, the way the README shows it (``--trainer.accelerator gpu
--trainer.devices 1``), in bf16 mixed precision, and a package that loads and predicts on the CPU.
Skipped where torch sees no CUDA GPU (CI has none; run it on a GPU machine with ``pytest -m gpu``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from torchship.store import load_package

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_train_on_one_gpu_in_bf16_publishes_a_cpu_package(topics_csv: Path, tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "torchship", "train", "--data", str(topics_csv),
        "--store", str(tmp_path / "models"), "--name", "gpu", "--vocab_size", "200", "--max_length", "64",
        "--model.d_model", "32", "--model.n_heads", "2", "--model.n_layers", "1", "--model.d_ff", "64",
        "--optim.lr", "5e-3", "--trainer.max_epochs", "5", "--trainer.enable_progress_bar", "false",
        "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "published gpu version 1" in done.stdout
    path = tmp_path / "models" / "gpu" / "1"
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.8
    with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.float32}  # noqa: SIM118
    package = load_package(path)
    assert package.config.training["trainer"]["accelerator"] == "gpu"
    texts = ["the team score a goal in the match", "bank shares and stock price", "new phone chip and code"]
    probabilities = package.predict_proba(texts)
    assert [package.labels[i] for i in probabilities.argmax(dim=1).tolist()] == ["sport", "money", "tech"]
