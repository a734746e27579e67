"""``TorchServeArchiveAPI``: a TorchServe archive's handler, run unchanged in torchship's worker processes.

The worker loads the archive the way TorchServe's Python backend does, with TorchServe's own code (the
``ts`` package, ``pip install 'torchship[torchserve]'``): the working directory is the model folder (where
TorchServe's frontend starts its workers), the model folder and the handler's folder come first on
``sys.path``, and ``ts.model_loader.TsModelLoader`` imports the handler (a built-in name such as
``text_classifier``, a file ``handler.py``, ``module:function``) and runs its ``initialize(context)``.

Each batch runs through ``ts.service.Service.predict``, so everything TorchServe decides in its backend
is decided by the same code: the request data's shape (a list of dicts, one per request, with a
``body`` for a plain body, each form field by its name; JSON decoded, ``text/*``
decoded, anything else a ``bytearray``), the ``Context`` (manifest, ``system_properties``, request
headers, ``set_response_status``/``set_response_content_type``/``set_response_header``,
``context.metrics``), the errors (``PredictionException``'s code and message, 507 out of resources, 503
``Prediction failed``, a wrong number of results) and the encoding of the answers (bytes as they are,
``str`` as UTF-8, tensors with ``torch.save``, anything else ``json.dumps(indent=2)``). Its binary answer
is read back here into one :class:`~torchship.serving.workers.batch.Outcome` per request, with what
TorchServe's frontend then does: a failed batch answers every request with the error's code and
``{"code", "type": "InternalServerException", "message"}``; a response without a content type the handler
set has no ``Content-Type`` header.

Differences, on purpose: request header names arrive lower-case (HTTP/2 and ASGI servers lower-case them),
so ``context.get_request_header`` also finds a header by its lower-case name; the status phrase a handler
sets is not sent (the status code is); streaming answers (``send_intermediate_predict_response``) fail
their batch with 501 until torchship streams.

No arbitrary unpickling: unless the server's ``allow_unpickling`` is set, every ``torch.load`` in the worker
reads weights only (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), and an archive that needs more fails to load with a
message that names the setting.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import struct
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from torchship.errors import ConfigError, PackageError
from torchship.serving.errors import HandlerError
from torchship.serving.handler import ModelAPI
from torchship.serving.workers.batch import JSON, Outcome

__all__ = ["TorchServeArchiveAPI"]

_INSTALL = "pip install 'torchship[torchserve]'"
_UNPICKLING = (
    "the archive loads a file that needs full unpickling (torch.load with weights_only=False: a whole "
    "pickled module rather than a state dict), and unpickling runs any code the file contains. Serve it "
    "only if you trust who made it, by starting the server with --allow_unpickling; better, save the "
    "model's state_dict (torch.save(model.state_dict(), ...)) or a TorchScript file and archive that"
)
_STREAMING = (
    "the handler streams its answer (send_intermediate_predict_response), which torchship does not "
    "support yet; return the whole answer from handle()"
)
_ERROR_TYPE = "InternalServerException"  # what TorchServe's frontend names every backend error
_INT = struct.Struct("!i")
_NO_BODY = frozenset({204, 304})  # statuses whose responses carry no body (RFC 9110)


class TorchServeArchiveAPI(ModelAPI):
    """Serve an unpacked TorchServe archive: ``model_path`` is the folder holding ``MAR-INF/MANIFEST.json``.

    ``handler`` overrides the manifest's handler (TorchServe's ``handler`` registration parameter);
    ``allow_unpickling`` lets ``torch.load`` unpickle whole objects (see the module docstring). The other
    keyword arguments are :class:`~torchship.serving.settings.ModelSettings` fields.

        api = TorchServeArchiveAPI("/models/cache/mnist", name="mnist", batch_size=8)
    """

    wants_request_meta: ClassVar[bool] = True

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        name: str | None = None,
        handler: str | None = None,
        allow_unpickling: bool = False,
        **settings: Any,
    ) -> None:
        path = Path(model_path)
        super().__init__(path, name=name or _manifest_name(path), **settings)
        self.handler = handler
        self.allow_unpickling = allow_unpickling
        self.service: Any = None
        self.metrics_cache: Any = None
        self._socket: _NoStreaming | None = None
        self._request_ids: Iterator[str] = iter(())

    @property
    def model_dir(self) -> Path:
        """The unpacked archive's folder (TorchServe's ``model_dir``)."""
        assert self.model_path is not None  # set by __init__, always
        return self.model_path

    def setup(self) -> None:
        """Load the archive's handler in this worker process, as TorchServe's backend worker does."""
        if importlib.util.find_spec("ts") is None:
            raise ConfigError(
                f"Serving the TorchServe archive {self.name!r} needs TorchServe's Python package: {_INSTALL}"
            )
        model_dir = str(self.model_dir.resolve())
        manifest = _read_manifest(Path(model_dir))
        self._check_requirements(Path(model_dir), manifest)
        handler = self.handler or str(manifest.get("model", {}).get("handler", ""))
        if not handler:
            raise PackageError(f"{model_dir}/MAR-INF/MANIFEST.json names no handler; archive the model again")
        _limit_unpickling(self.allow_unpickling)
        os.chdir(model_dir)  # TorchServe's frontend starts its workers in the model folder
        _put_on_sys_path(model_dir, handler)

        from ts.model_loader import TsModelLoader  # type: ignore[import-untyped]

        from torchship.serving.mar.metrics import RecordingMetricsCache

        device = self.resolved_device()
        gpu_id = (device.index or 0) if device.type == "cuda" else None
        self.metrics_cache = RecordingMetricsCache(self.name)
        try:
            service = TsModelLoader().load(
                self.name,
                model_dir,
                handler,
                gpu_id,
                self.settings.batch_size,
                None,  # envelope: TorchServe's frontend sends the model's, which registrations never set here
                True,  # limit_max_image_pixels: TorchServe's default
                self.metrics_cache,
            )
        except Exception as exc:
            if _needs_unpickling(exc):
                raise PackageError(f"Model {self.name!r} cannot load: {_UNPICKLING}") from exc
            raise
        # Request ids unique across workers and restarts, one uuid4 per worker rather than per request.
        prefix = uuid.uuid4()
        self._request_ids = (f"{prefix}-{number}" for number in itertools.count())
        self._socket = _NoStreaming()
        service.set_cl_socket(self._socket)
        service.context.__class__ = _context_class(type(service.context))
        self.service = service
        self.model = service

    def handle_requests(self, requests: list[tuple[Any, ...]]) -> list[Outcome]:
        """Run one batch through the handler: ``requests`` are ``(content_type, body[, meta])`` as the server
        sends them (see :mod:`torchship.serving.workers.child`), the answer one outcome per request."""
        assert self.service is not None and self._socket is not None, "setup() has not run"
        decode = os.environ.get("TS_DECODE_INPUT_REQUEST") in (None, "true")
        batch = [_ts_request(request, next(self._request_ids), decode) for request in requests]
        self._socket.streamed = False
        try:
            answer = self.service.predict(batch)
        except (struct.error, TypeError, AttributeError, UnicodeError) as exc:
            # ts encodes the answers outside its handler's try: a status that is not an int, a header
            # that is not text. TorchServe's worker dies there; here the batch fails and the worker lives.
            message = (
                f"the handler's answer cannot be encoded: a response status or header is not valid ({exc})"
            )
            return [_error(500, message)] * len(requests)
        if self._socket.streamed:
            return [_error(501, _STREAMING)] * len(requests)
        return read_predict_response(bytes(answer), len(requests))

    def take_metric_updates(self) -> list[Any]:
        """The handler's ``context.metrics`` updates since the last call (shipped with the batch's answer)."""
        return self.metrics_cache.take() if self.metrics_cache is not None else []

    def _check_requirements(self, model_dir: Path, manifest: dict[str, Any]) -> None:
        """A ``requirements.txt`` in the archive is never installed: what it asks for must be there."""
        if not manifest.get("model", {}).get("requirementsFile"):
            return
        from torchship.serving.mar.archive import check_requirements, read_model_dir

        check_requirements(read_model_dir(model_dir))

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for the worker before setup(); a loaded service never crosses a process boundary.
        state = dict(self.__dict__)
        state.update(service=None, metrics_cache=None, _socket=None, model=None, _request_ids=iter(()))
        return state


def read_predict_response(answer: bytes, count: int) -> list[Outcome]:
    """``Service.predict``'s binary answer (``ts.protocol.otf_message_handler.create_predict_response``)
    as ``count`` outcomes, the way TorchServe's frontend turns it into HTTP responses."""
    reader = _Reader(answer)
    code = reader.read_int()
    message = reader.read_text()
    if code != 200:
        # TorchServe's frontend answers every request of a failed batch alike (413 becomes 507 there).
        return [_error(507 if code == 413 else code, message)] * count
    outcomes: list[Outcome] = []
    while (length := reader.read_int()) != -1:
        reader.skip(length)  # the request id: answers come in request order
        content_type = reader.read_text()
        status = reader.read_int()
        reader.read_text()  # the status phrase: not sent (see the module docstring)
        headers = [(reader.read_text(), reader.read_text()) for _ in range(reader.read_int())]
        body = reader.read_bytes()
        outcomes.append(_answer(status, content_type, headers, body))
    if len(outcomes) != count:
        raise HandlerError(f"the handler's service answered {len(outcomes)} results for {count} requests")
    return outcomes


def _answer(status: int, content_type: str, headers: list[tuple[str, str]], body: bytes) -> Outcome:
    if not 200 <= status <= 599:
        # 1xx is no final answer: a client would wait for another, or switch protocols, on a kept-alive
        # connection.
        return _error(500, f"the handler set the response status {status}, which is not a final HTTP status")
    if status in _NO_BODY:
        body = b""  # sent anyway, it would be read as the start of the next response on the connection
    extra: list[tuple[str, str]] = []
    for key, value in headers:
        if key.lower() == "content-type":  # also sent as the content type (TorchServe sets it twice)
            content_type = value  # this copy is framed by its bytes: the real value (see _context_class)
        else:
            extra.append((key, value))
    return Outcome(status, content_type, body, "", tuple(extra))


def _error(status: int, message: str) -> Outcome:
    status = status if 400 <= status <= 599 else 500
    return Outcome(status, JSON, message.encode("utf-8", "backslashreplace"), _ERROR_TYPE)


class _Reader:
    """Reads the big-endian, length-prefixed fields of TorchServe's backend protocol."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def read_int(self) -> int:
        try:
            (value,) = _INT.unpack_from(self._data, self._at)
        except struct.error:
            raise HandlerError("the handler's service answered a truncated response") from None
        self._at += _INT.size
        return int(value)

    def read_bytes(self) -> bytes:
        length = self.read_int()
        start, self._at = self._at, self._at + length
        if length < 0 or self._at > len(self._data):
            raise HandlerError("the handler's service answered a malformed response (a field's length)")
        return self._data[start : self._at]

    def skip(self, length: int) -> None:
        self._at += length

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8", "replace")


def _ts_request(request: tuple[Any, ...], request_id: str, decode: bool) -> dict[str, Any]:
    """One request as TorchServe's backend reads it off its socket (``otf_message_handler``): request
    headers, then the parameters its frontend makes (the form's fields, or the body as ``body``), each
    value decoded as ``_retrieve_input_data`` decodes it."""
    content_type, body = request[0], request[1]
    meta = request[2] if len(request) > 2 and request[2] is not None else {}
    parameters: list[dict[str, Any]] = []
    parts = meta.get("parts")
    if parts is None:
        parameters.append(_parameter("body", _mime_type(content_type), body, decode))
    else:
        parameters.extend(_parameter(name, part_type, data, decode) for name, part_type, data in parts)
    return {
        "requestId": request_id.encode("ascii"),
        "headers": [
            {"name": name.encode("utf-8"), "value": value.encode("utf-8")}
            for name, value in meta.get("headers", ())
        ],
        "parameters": parameters,
    }


def _mime_type(content_type: str) -> str:
    """The media type without parameters (Netty's ``HttpUtil.getMimeType``, which TorchServe sends)."""
    return content_type.split(";", 1)[0].strip()


def _parameter(name: str, content_type: str, value: bytes, decode: bool) -> dict[str, Any]:
    """A parameter decoded as TorchServe's backend does (``decode``: ``TS_DECODE_INPUT_REQUEST``)."""
    data: Any = bytearray(value)
    # TorchServe forwards what does not decode as it came.
    if decode and content_type == "application/json":
        with contextlib.suppress(ValueError):
            data = json.loads(value.decode("utf-8"))
    elif decode and content_type.startswith("text"):
        with contextlib.suppress(UnicodeDecodeError):
            data = value.decode("utf-8")
    return {"name": name, "contentType": content_type, "value": data}


class _NoStreaming:
    """The ``context.cl_socket`` of a handler: TorchServe's streaming writes partial answers to it."""

    def __init__(self) -> None:
        self.streamed = False

    def sendall(self, data: bytes) -> None:
        self.streamed = True
        from ts.utils.util import PredictionException  # type: ignore[import-untyped]

        raise PredictionException(_STREAMING, 501)


_CONTEXT_CLASSES: dict[type, type] = {}


def _context_class(base: type) -> type:
    """``base`` (ts's ``Context``) whose request headers a lower-case name also finds: the server receives
    header names lower-cased, and handlers ask for them as clients write them (``Content-Type``)."""
    if base in _CONTEXT_CLASSES.values():
        return base
    if base not in _CONTEXT_CLASSES:
        from ts.context import RequestProcessor  # type: ignore[import-untyped]

        class _RequestProcessor(RequestProcessor):  # type: ignore[misc]
            def get_request_property(self, key: str) -> Any:
                value = self._request_header.get(key)
                if value is None and isinstance(key, str):
                    value = self._request_header.get(key.lower())
                return value

        def set_processor(self: Any, processors: Any) -> None:
            for processor in processors or ():
                if type(processor) is RequestProcessor:
                    processor.__class__ = _RequestProcessor  # same object, one more lookup
            self._request_processor = processors

        ts_context: Any = base

        # ts frames the content type and the status phrase by their length in characters but writes
        # their UTF-8 bytes: anything but ASCII there would shift every later field of the answer. Both
        # go out ASCII (the content type is also a response header, read from there with its real value).
        def get_response_content_type(self: Any, idx: int) -> Any:
            return _ascii(ts_context.get_response_content_type(self, idx))

        def get_response_status(self: Any, idx: int) -> Any:
            code, phrase = ts_context.get_response_status(self, idx)
            return code, _ascii(phrase)

        prop = property(lambda self: self._request_processor, set_processor)
        _CONTEXT_CLASSES[base] = type(
            base.__name__,
            (base,),
            {
                "request_processor": prop,
                "get_response_content_type": get_response_content_type,
                "get_response_status": get_response_status,
            },
        )
    return _CONTEXT_CLASSES[base]


def _ascii(value: Any) -> Any:
    return value.encode("ascii", "backslashreplace").decode("ascii") if isinstance(value, str) else value


def _put_on_sys_path(model_dir: str, handler: str) -> None:
    """The model folder first on ``sys.path``, and a ``dir/module:function`` handler's folder before it
    (TorchServe's frontend puts both on the worker's ``PYTHONPATH``)."""
    folders = [model_dir]
    if ":" in handler:
        module = handler.split(":", 1)[0]
        if "/" in module:
            folders.insert(0, os.path.join(model_dir, module.rsplit("/", 1)[0]))
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def _limit_unpickling(allow: bool) -> None:
    """Weights-only ``torch.load`` for the whole worker, or (allowed) TorchServe-era full unpickling for
    calls that do not say (torch's default became weights-only after the handlers were written)."""
    os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" if allow else "TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"


def _needs_unpickling(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if "Weights only load failed" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "MAR-INF" / "MANIFEST.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(
            f"{model_dir} is not an unpacked TorchServe archive: it has no MAR-INF/MANIFEST.json"
        ) from None
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path} cannot be read ({exc}); archive the model again") from None
    if not isinstance(manifest, dict):
        raise PackageError(f"{path} is not a JSON object; archive the model again")
    return manifest


def _manifest_name(model_dir: Path) -> str | None:
    """The manifest's model name, or None (then ModelAPI names the model after its folder)."""
    try:
        name = _read_manifest(model_dir).get("model", {}).get("modelName")
    except PackageError:
        return None
    return name if isinstance(name, str) and name else None
