"""Serving on a GPU: the built-in handler and both tutorial shapes, workers spread over the GPUs, answers
equal to the CPU's. Skipped where torch sees no CUDA GPU (CI has none; run them on a GPU machine with
``pytest -m gpu``)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import torch
from serving_handlers import MixedDevicesAPI, ThreeStepAPI, TutorialAPI
from serving_support import TEXTS, describe, running, settings, wait_ready

from torchship.serving import TextClassifierAPI
from torchship.serving.settings import ModelSettings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_the_text_classifier_serves_on_the_gpu_like_on_the_cpu(store_root: Path) -> None:
    cpu = TextClassifierAPI(model_path=store_root / "news" / "1", device="cpu")
    cpu.setup()
    expected = cpu.predict([{"text": text} for text in TEXTS])
    with running(settings(store=store_root, model_defaults=ModelSettings(workers=2))) as server:
        wait_ready(server)
        [described] = describe(server, "/models/news/1")
        assert [(w["device"], w["gpu"], w["gpuUsage"]) for w in described["workers"]] == [
            (f"cuda:{slot % torch.cuda.device_count()}", True, f"gpuId::{slot % torch.cuda.device_count()}")
            for slot in range(2)
        ]
        # GPU workers keep the default scheduling policy (CPU workers run as SCHED_BATCH).
        assert [os.sched_getscheduler(w["pid"]) for w in described["workers"]] == [os.SCHED_OTHER] * 2
        with httpx.Client(base_url=server.urls["inference"], timeout=60) as client:
            answers = [client.post("/predictions/news/1", json={"text": text}).json() for text in TEXTS]
    for answer, want in zip(answers, expected, strict=True):
        assert answer["label"] == want["label"]
        assert answer["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)


def test_both_handler_shapes_run_on_the_gpu_as_written(scripted_model: Path) -> None:
    for cls in (TutorialAPI, ThreeStepAPI):
        api = cls(model_path=scripted_model)  # device auto: the GPU
        api.setup()
        assert api.device.type == "cuda"
        assert api.predict([{"x": [1.0, 2.0]}, {"x": [0.0, 1.0]}]) == [{"y": [3.0, -1.0]}, {"y": [1.0, -1.0]}]


def test_a_device_mismatch_answers_500_with_what_to_do(scripted_model: Path) -> None:
    api = MixedDevicesAPI(model_path=scripted_model, name="mixed")
    with running(settings(), [api]) as server:
        wait_ready(server)
        response = httpx.post(
            server.urls["inference"] + "/predictions/mixed", json={"x": [1.0, 2.0]}, timeout=60
        )
    assert response.status_code == 500
    assert "move the inputs there in preprocess (tensor.to(self.device))" in response.json()["message"]
