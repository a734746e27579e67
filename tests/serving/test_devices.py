"""The ``device`` setting: how it is spelled and checked, where a worker runs, and how what
``preprocess`` returns follows the model. What needs a GPU is in ``test_gpu_serving.py``; here the
``meta`` device stands in for "not the CPU", so the moving itself is tested on any machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from serving_handlers import ThreeStepAPI, TutorialAPI
from serving_support import settings

from torchship.cli import main
from torchship.devices import resolve_device
from torchship.errors import ConfigError
from torchship.serving import ModelAPI, Server
from torchship.serving.settings import ModelSettings, default_torch_threads, default_workers, usable_cores

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine with no GPU")


def test_device_spellings_are_normalised_or_refused() -> None:
    assert ModelSettings().device == "auto"
    assert [ModelSettings(device=d).device for d in ("GPU", " cuda:1 ", "gpu:0", "cpu", "mps")] == [
        "cuda",
        "cuda:1",
        "cuda:0",
        "cpu",
        "mps",
    ]
    for bad in ("tpu", "cuda:x", "", 0):
        with pytest.raises(ConfigError, match="device: expected auto, cpu, cuda, cuda:N or mps"):
            ModelSettings(device=bad)  # type: ignore[arg-type]


def test_cpu_and_auto_resolve_without_a_gpu() -> None:
    assert resolve_device("cpu", slot=3) == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected


@no_cuda
def test_asking_for_a_gpu_without_one_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=r"torch .*--device cpu"):
            resolve_device(device)
    with pytest.raises(ConfigError, match="--device cpu"):  # the server refuses before any worker starts
        Server(settings(model_defaults=ModelSettings(device="cuda")))
    with pytest.raises(ConfigError, match="--device cpu"):
        Server(settings(), apis=[TutorialAPI(model_path=tmp_path / "m.pt2", device="gpu")])

    assert main(["serve", "--store", str(tmp_path), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device 'cuda' was asked for") and "Traceback" not in err
    assert main(["serve", "--store", str(tmp_path), "--device", "tpu"]) == 2
    assert "device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'" in capsys.readouterr().err


class Pair(NamedTuple):
    ids: torch.Tensor
    note: str


class _Nested(ModelAPI):
    def preprocess(self, data: list[Any]) -> Any:
        x = torch.tensor(data, dtype=torch.float32)
        return {"x": x, "pair": Pair(x + 1, "kept"), "more": [x, (x, "text")], "n": 3}


def test_what_preprocess_returns_follows_the_device(scripted_model: Path) -> None:
    api = _Nested()
    assert api.preprocess([1.0])["x"].device.type == "cpu"  # no device yet: nothing moves
    api.device = torch.device("meta")
    out = api.preprocess([1.0, 2.0])
    assert out["x"].device.type == "meta" and out["n"] == 3
    assert (
        isinstance(out["pair"], Pair) and out["pair"].ids.device.type == "meta" and out["pair"].note == "kept"
    )
    assert out["more"][0].device.type == "meta" and out["more"][1][0].device.type == "meta"
    assert out["more"][1][1] == "text"

    # Both handler shapes, as written: the tutorial's inference calls self.preprocess itself.
    for cls in (TutorialAPI, ThreeStepAPI):
        api = cls(model_path=scripted_model, device="cpu")
        api.device = torch.device("meta")
        assert api.preprocess([{"x": [1.0, 2.0]}]).device.type == "meta"
    base = ModelAPI(model_path=scripted_model)
    base.device = torch.device("meta")
    assert base.preprocess([[1.0, 2.0]]).device.type == "meta"  # the default preprocess builds it there


def test_setup_outside_a_worker_resolves_the_setting(scripted_model: Path) -> None:
    api = ThreeStepAPI(model_path=scripted_model, device="cpu")
    api.setup()
    assert api.device == torch.device("cpu")
    assert api.predict([{"x": [1.0, 2.0]}]) == [{"y": [3.0, -1.0]}]


def test_the_default_worker_count_follows_the_device_and_the_cores() -> None:
    cores = usable_cores()
    assert ModelSettings().workers is None
    assert ModelSettings(workers=3).worker_count == 3
    assert ModelSettings(workers=0).worker_count == 0
    assert default_workers("cpu") == min(cores, 4)
    assert default_workers("cuda:1") == default_workers("mps") == 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert ModelSettings().worker_count == default_workers("auto") == (gpus or min(cores, 4))
    with pytest.raises(ConfigError, match="workers: must be between 0 and 4096, got -1"):
        ModelSettings(workers=-1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity masks are Linux's")
def test_the_default_worker_count_follows_the_affinity_mask() -> None:
    original = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(original)})  # as a container or taskset limited to one core sees it
        assert usable_cores() == 1
        assert default_workers("cpu") == 1 and default_torch_threads(1) == 1
    finally:
        os.sched_setaffinity(0, original)
