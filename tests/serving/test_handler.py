"""ModelAPI: cheap construction, the two handler shapes, the default loader and what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from serving_handlers import ThreeStepAPI, TutorialAPI
from serving_support import sum_and_difference

from torchship.errors import ConfigError, PackageError
from torchship.serving import ModelAPI, TextClassifierAPI
from torchship.serving.errors import HandlerError
from torchship.serving.handler import in_worker_process


def test_construction_is_cheap_and_checks_settings(tmp_path: Path) -> None:
    api = ModelAPI(model_path=tmp_path / "does-not-exist.pth", batch_size=4)
    assert (api.name, api.model, api.settings.batch_size) == ("does-not-exist", None, 4)
    with pytest.raises(ConfigError, match="unknown model setting"):
        ModelAPI(model_path="m.pth", batchsize=4)
    with pytest.raises(ConfigError, match="batch_size"):
        ModelAPI(model_path="m.pth", batch_size=0)


def test_a_package_is_named_after_its_config(store_root: Path) -> None:
    assert TextClassifierAPI(model_path=store_root / "news" / "1").name == "news"


def test_both_handler_shapes_give_the_same_results(scripted_model: Path) -> None:
    for cls in (TutorialAPI, ThreeStepAPI):
        api = cls(model_path=scripted_model)
        api.setup()
        assert api.predict([{"x": [1.0, 2.0]}, {"x": [0.0, 1.0]}]) == [{"y": [3.0, -1.0]}, {"y": [1.0, -1.0]}]


class _Explicit(ModelAPI):
    inference_calls_steps = True
    calls: list[str] = []

    def load(self, model_path: Path | None) -> Any:
        return None

    def inference(self, data: list[Any]) -> list[Any]:
        self.calls.append("inference")
        return data

    def preprocess(self, data: list[Any]) -> Any:
        self.calls.append("preprocess")
        return data


def test_the_class_attribute_overrides_the_detection() -> None:
    api = _Explicit()
    api.setup()
    assert api.predict([1, 2]) == [1, 2]
    assert _Explicit.calls == ["inference"]


def test_step_failures_name_the_class_and_step(scripted_model: Path) -> None:
    api = ThreeStepAPI(model_path=scripted_model)
    api.setup()
    with pytest.raises(HandlerError, match=r"ThreeStepAPI\.preprocess raised KeyError"):
        api.predict([{"wrong": 1}])


def test_default_loader_takes_torchscript_and_export(tmp_path: Path, scripted_model: Path) -> None:
    scripted = tmp_path / "scripted.pth"
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.script(sum_and_difference()), str(scripted))
    for path in (scripted, scripted_model):
        api = ModelAPI(model_path=path)
        api.setup()
        assert api.predict([[1.0, 2.0]]) == [[3.0, -1.0]]


@pytest.mark.parametrize("payload", ["state_dict", "module"])
def test_default_loader_refuses_pickles_and_says_what_to_do(tmp_path: Path, payload: str) -> None:
    layer = sum_and_difference()
    path = tmp_path / "model.pth"
    torch.save(layer.state_dict() if payload == "state_dict" else layer, path)
    with pytest.raises(PackageError, match=r"TorchScript|torch\.export") as error:
        ModelAPI(model_path=path).setup()
    assert "override" in str(error.value).lower() or "overriding" in str(error.value)


def test_default_loader_explains_safetensors_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(PackageError, match="weights only"):
        ModelAPI(model_path=tmp_path / "w.safetensors").setup()
    with pytest.raises(PackageError, match="not found"):
        ModelAPI(model_path=tmp_path / "missing.pt").setup()
    with pytest.raises(PackageError, match=r"no config\.json"):
        ModelAPI(model_path=tmp_path).setup()


def test_start_is_a_no_op_only_inside_workers() -> None:
    assert not in_worker_process()
