"""ModelAPI classes used by the serving tests. They live in a module of their own, not in a test file,
because spawned worker processes import them by name (the tests directory is on their sys.path)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from torchship.errors import UserInputError
from torchship.serving import ModelAPI


class EchoAPI(ModelAPI):
    """Echoes each payload with the size of the batch it ran in and the worker's pid. No model file."""

    def load(self, model_path: Path | None) -> Any:
        return None

    def preprocess(self, data: list[Any]) -> list[Any]:
        return data

    def inference(self, data: list[Any]) -> list[Any]:
        return [{"echo": _show(item), "batch": len(data), "pid": os.getpid()} for item in data]

    def postprocess(self, output: list[Any]) -> list[Any]:
        if any(isinstance(item["echo"], dict) and item["echo"].get("fail") for item in output):
            raise ValueError("asked to fail")
        return [
            UserInputError("rejected on request")
            if isinstance(item["echo"], dict) and item["echo"].get("reject")
            else item
            for item in output
        ]


class SlowAPI(ModelAPI):
    """``{"sleep": seconds}`` sleeps (to test timeouts and kills), ``{"exit": code}`` kills the worker."""

    inference_calls_steps = True

    def load(self, model_path: Path | None) -> Any:
        return None

    def inference(self, data: list[Any]) -> list[Any]:
        for item in data:
            if isinstance(item, dict) and "exit" in item:
                os._exit(int(item["exit"]))
        # A slow model, not synchronisation: the time spent is the behaviour under test (timeouts, queues).
        time.sleep(max((item.get("sleep", 0.0) for item in data if isinstance(item, dict)), default=0.0))
        return [{"pid": os.getpid(), "batch": len(data)} for _ in data]


class WrongCountAPI(ModelAPI):
    """Returns one result too few."""

    def load(self, model_path: Path | None) -> Any:
        return None

    def inference(self, data: Any) -> Any:
        return list(data)[1:]


class BrokenLoadAPI(ModelAPI):
    """Cannot load its model."""

    def load(self, model_path: Path | None) -> Any:
        raise FileNotFoundError("weights.bin is missing")


class HangOnLoadAPI(ModelAPI):
    """Never finishes loading (a stuck download, a deadlock)."""

    def load(self, model_path: Path | None) -> Any:
        threading.Event().wait()


class ExitOnLoadAPI(ModelAPI):
    """Its worker process exits while loading, before it can say why (as one killed for memory would)."""

    def load(self, model_path: Path | None) -> Any:
        os._exit(3)


class TutorialAPI(ModelAPI):
    """The classic tutorial shape: ``inference`` calls ``preprocess`` and ``postprocess`` itself."""

    def inference(self, data: list[Any]) -> list[Any]:
        input = self.preprocess(data)
        output = self.model(input)
        return self.postprocess(output)

    def preprocess(self, data: list[Any]) -> torch.Tensor:
        return torch.tensor([item["x"] for item in data], dtype=torch.float32)  # (B, 2)

    def postprocess(self, output: torch.Tensor) -> list[Any]:
        return [{"y": row} for row in output.tolist()]


class ThreeStepAPI(TutorialAPI):
    """The three-step shape: the server calls preprocess, inference and postprocess in turn."""

    def inference(self, data: Any) -> Any:
        return self.model(data)


class MixedDevicesAPI(ThreeStepAPI):
    """Adds a CPU tensor to the model's output: on a GPU, the mistake the device hint is for."""

    def inference(self, data: Any) -> Any:
        return self.model(data) + torch.zeros(2)


def _show(item: Any) -> Any:
    return item.decode("latin-1") if isinstance(item, bytes) else item
