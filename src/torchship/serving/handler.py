"""``ModelAPI``: the handler contract between the server and a model.

A ``ModelAPI`` is built cheaply where the server starts (it only stores its arguments) and loaded in each
worker process by :meth:`ModelAPI.setup`. The server then calls :meth:`ModelAPI.predict` with one
**batch**: a list of request payloads, one per request (a dict/list for ``application/json``, a ``str``
for ``text/*``, ``bytes`` for anything else), and expects a list with exactly one result per request.

Two handler shapes work:

* three steps — the server calls ``preprocess(payloads)`` → ``inference(data)`` → ``postprocess(output)``;
* the classic tutorial shape — ``inference(payloads)`` calls ``self.preprocess`` and ``self.postprocess``
  itself, and the server calls only ``inference``.

Devices: each worker runs on ``self.device`` (the ``device`` setting: a GPU when torch sees one, else the
CPU). The default ``load`` puts the model there, and whatever ``preprocess`` returns is moved there too
(tensors, also inside lists, tuples and dicts), the way Lightning moves batches, so both shapes run as
written on a GPU.

The rule that tells them apart is deterministic: if the class's ``inference`` mentions ``preprocess`` or
``postprocess`` by name (``inference.__code__.co_names``), the server calls only ``inference``. Set the
class attribute ``inference_calls_steps = True/False`` to decide explicitly.

    class MyModelAPI(ModelAPI):
        def inference(self, data):
            input = self.preprocess(data)
            output = self.model(input)
            return self.postprocess(output)
        ...

    api = MyModelAPI(model_path="model.pth")
    api.start()
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from torchship.devices import resolve_device
from torchship.errors import ConfigError, TorchshipError
from torchship.serving.errors import HandlerError
from torchship.serving.model_files import load_model_file
from torchship.serving.settings import ModelSettings

__all__ = ["WORKER_PROCESS_PREFIX", "ModelAPI", "in_worker_process"]

WORKER_PROCESS_PREFIX = "torchship-worker"
"""Worker processes are named ``torchship-worker-<model>-<version>-<n>``."""


def in_worker_process() -> bool:
    """True inside a torchship worker, including while it re-imports the user's main script.

    A spawned child sets its process name before it re-runs ``__main__`` (multiprocessing's
    ``spawn.prepare``), so this is reliable even in a tutorial script with no ``__main__`` guard.
    """
    return multiprocessing.current_process().name.startswith(WORKER_PROCESS_PREFIX)


class ModelAPI:
    """Base class for model handlers; override ``load``, ``preprocess``, ``inference``, ``postprocess``.

    ``ModelAPI(model_path=..., name=..., **settings)``: ``settings`` are :class:`ModelSettings` fields
    (``batch_size``, ``max_batch_delay``, ``workers``, ``job_queue_size``, ``response_timeout``,
    ``startup_timeout``, ``torch_threads``, ``device``), checked here so a typo fails at once and not in a
    worker.
    """

    inference_calls_steps: ClassVar[bool | None] = None
    """None: decide from the code of ``inference``; True: the server calls only ``inference``; False: the
    server calls ``preprocess``, ``inference`` and ``postprocess`` in turn."""

    wants_request_meta: ClassVar[bool] = False
    """True: each request reaches the worker with its headers, query parameters and form parts, for a class
    with a ``handle_requests(requests)`` method that answers raw requests itself (TorchServe archives'
    handlers read them). False (the default): only the content type and body, which costs nothing more."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("preprocess")
        if callable(own):  # see the module docstring: what preprocess returns goes to self.device
            cls.preprocess = _returns_on_device(own)  # type: ignore[method-assign,assignment]

    def __init__(
        self, model_path: str | os.PathLike[str] | None = None, *, name: str | None = None, **settings: Any
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.name = name or _default_name(self.model_path, type(self))
        self.settings = ModelSettings.from_dict(settings)
        self.model: Any = None
        self.device: Any = None
        """The ``torch.device`` this worker runs on (from the ``device`` setting), set before ``load``."""

    def setup(self) -> None:
        """Load the model; called once in each worker process before its first batch, once the worker has
        set ``self.device`` (called elsewhere, ``load`` resolves the ``device`` setting itself)."""
        self.model = self.load(self.model_path)

    def load(self, model_path: Path | None) -> Any:
        """Return the model for ``model_path``. The default loads a torchship package directory (and sets
        ``self.package`` and ``self.tokenizer``), a TorchScript file or a ``torch.export`` ``.pt2`` file."""
        if model_path is None:
            raise ConfigError(f"{type(self).__name__} has no model_path; pass one or override load()")
        loaded = load_model_file(model_path)
        device = self.resolved_device()
        if hasattr(loaded, "tokenizer") and hasattr(loaded, "config"):  # a torchship ModelPackage
            self.package = loaded
            self.tokenizer = loaded.tokenizer
            return loaded.model.to(device)
        return loaded.to(device) if device.type != "cpu" else loaded  # loaded on the CPU already

    def resolved_device(self) -> Any:
        """``self.device``, resolved from the ``device`` setting first if no worker has set it."""
        if self.device is None:
            self.device = resolve_device(self.settings.device)
        return self.device

    def preprocess(self, data: list[Any]) -> Any:
        """Turn the batch of payloads into the model's input. Default: JSON arrays → one float tensor on
        ``self.device``. The tensors an override returns are moved to ``self.device`` for it."""
        import torch

        if data and all(isinstance(item, list | int | float) for item in data):
            return torch.as_tensor(data, dtype=torch.float32, device=self.device)
        return data

    def inference(self, data: Any) -> Any:
        """Run the model. Default: ``self.model(data)``."""
        return self.model(data)

    def postprocess(self, output: Any) -> list[Any]:
        """Turn the model's output into one JSON-able result per request. Default: tensor rows as lists."""
        import torch

        if isinstance(output, torch.Tensor):
            return output.tolist() if output.dim() > 0 else [output.item()]
        return list(output)

    def predict(self, payloads: list[Any]) -> list[Any]:
        """Run one batch the way this class is written (see the module docstring) under inference mode."""
        import torch

        with torch.inference_mode():
            if _calls_steps_itself(type(self)):
                return _as_results(self._step("inference", payloads))
            data = self._step("preprocess", payloads)
            return _as_results(self._step("postprocess", self._step("inference", data)))

    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """Open Inference Protocol metadata: ``{"inputs": [...], "outputs": [...]}`` with ``name``,
        ``datatype`` and ``shape`` each. Called in the server process, so it must not need the model."""
        return {
            "inputs": [{"name": "input", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "output", "datatype": "BYTES", "shape": [-1]}],
        }

    def start(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        management_port: int = 8081,
        metrics_port: int = 8082,
        **server_options: Any,
    ) -> None:
        """Serve this model with the full server (inference, management and metrics listeners) until
        SIGINT/SIGTERM. Ports may be 0 (the OS picks; the URLs are printed). Environment variables
        ``TORCHSHIP_HOST``, ``TORCHSHIP_INFERENCE_PORT``, ``TORCHSHIP_MANAGEMENT_PORT`` and
        ``TORCHSHIP_METRICS_PORT`` override the arguments. Does nothing inside a worker process, so a
        script without an ``if __name__ == "__main__"`` guard still works."""
        if in_worker_process():
            return
        # The one lazy import against the layering: the handler contract is imported by worker processes
        # and by `import torchship`, neither of which should load uvicorn and the server stack.
        from torchship.serving.runner import serve_api

        serve_api(
            self,
            host=host,
            inference_port=port,
            management_port=management_port,
            metrics_port=metrics_port,
            **server_options,
        )

    def _step(self, step: str, data: Any) -> Any:
        try:
            return getattr(self, step)(data)
        except TorchshipError:
            raise
        except Exception as exc:
            hint = ""
            if "same device" in str(exc):  # torch's "Expected all tensors to be on the same device, ..."
                hint = (
                    f"; this worker runs on {self.device}: move the inputs there in preprocess "
                    "(tensor.to(self.device)), or serve with device cpu"
                )
            raise HandlerError(
                f"{type(self).__name__}.{step} raised {type(exc).__name__}: {exc}{hint}"
            ) from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_path={str(self.model_path)!r}, name={self.name!r})"


def _returns_on_device(preprocess: Callable[[ModelAPI, Any], Any]) -> Callable[[ModelAPI, Any], Any]:
    @functools.wraps(preprocess)
    def wrapper(self: ModelAPI, data: Any) -> Any:
        result = preprocess(self, data)
        device = self.device
        return result if device is None or device.type == "cpu" else _to_device(result, device)

    return wrapper


def _to_device(data: Any, device: Any) -> Any:
    """Tensors in ``data`` (also inside lists, tuples, NamedTuples and dicts) on ``device``."""
    import torch

    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if type(data) in (list, tuple):
        return type(data)(_to_device(item, device) for item in data)
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # a NamedTuple keeps its type
        return type(data)(*(_to_device(item, device) for item in data))
    if type(data) is dict:
        return {key: _to_device(value, device) for key, value in data.items()}
    return data  # anything else, other containers included, as the handler made it


def _calls_steps_itself(cls: type[ModelAPI]) -> bool:
    if cls.inference_calls_steps is not None:
        return cls.inference_calls_steps
    code = getattr(cls.inference, "__code__", None)
    return code is not None and not {"preprocess", "postprocess"}.isdisjoint(code.co_names)


def _as_results(output: Any) -> list[Any]:
    if isinstance(output, list):
        return output
    if isinstance(output, tuple):
        return list(output)
    import torch

    if isinstance(output, torch.Tensor) and output.dim() > 0:
        return output.tolist()  # type: ignore[no-any-return]
    raise HandlerError(
        f"the handler returned {type(output).__name__}; return a list with one result per request"
    )


def _default_name(model_path: Path | None, cls: type[ModelAPI]) -> str:
    """The package's own name, else the file's stem (``model.pth`` → ``model``), else the class name."""
    if model_path is not None:
        config = model_path / "config.json"
        if config.is_file():
            try:
                name = json.loads(config.read_text(encoding="utf-8")).get("name")
            except (OSError, ValueError):
                name = None
            if isinstance(name, str) and name:
                return name
        stem = model_path.stem if model_path.suffix else model_path.name
        if stem:
            return stem
    return cls.__name__.lower()
