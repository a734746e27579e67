"""Proof against the real thing: the same archives, served by real TorchServe 0.12 (Java frontend, its
Python workers) and by torchship, give the same answers to the same requests.

The archives are made here with the real ``torch-model-archiver`` from tiny models built in the test and
the handlers in ``mar_handlers/``: TorchServe's built-in ``text_classifier`` (needs captum), a custom
``BaseHandler`` subclass (batched, with ``model-config.yaml``), a module-level ``handle(data, context)``
function, handlers that follow the built-in ``image_classifier``, ``object_detector`` and
``image_segmenter`` contracts (the built-ins themselves import torchvision, which does not import beside
the pinned CPU torch; where it does, the built-ins are served and compared too), and one handler over an
eager model (no-archive folder) and a TorchScript model (``tgz``); the function handler's archive is
``zip-store``, the others ``default``. The same handler also serves an AOTInductor archive (a ``.so``
compiled with ``torch._export.aot_compile``, loaded by BaseHandler through model-config.yaml's
``pt2: {export: {aot_compile: true}}``) and an archive with ``--requirements-file`` (a requirement that is
installed: torchship checks it, TorchServe without ``install_py_dep_per_model`` ignores it). One TorchServe
and one torchship serve them all, for the whole module; every request goes to both, and the tests assert
the same status codes, the same answers (parsed JSON, or the exact bytes), and the same headers the
handlers set.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
import itertools
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from mar_support import (
    AOTI_MODEL_YAML,
    aoti_model,
    archive,
    eager_model,
    reference_model,
    torchscript_model,
)
from serving_support import running, settings, wait_ready
from torchserve_peer import torchserve, torchserve_missing

pytestmark = pytest.mark.slow

HANDLERS = Path(__file__).with_name("mar_handlers")
LABELS = ("business", "sport", "tech")
TEXTS = (
    "shares rose after strong profits",
    "the team won the cup final",
    "a new chip makes phones faster",
    "the market fell as oil climbed",
)
HAS_CAPTUM = importlib.util.find_spec("captum") is not None
BUILTIN_VISION = ("builtin_image_classifier", "builtin_object_detector", "builtin_image_segmenter")


@functools.cache
def torchvision_imports() -> bool:
    """Whether torchvision imports beside this torch: PyPI's torchvision, built against PyPI's default
    (CUDA) torch, does not beside the CPU build this project pins ("operator torchvision::nms does not
    exist"). Tried in a child process, which a failed import cannot leave half-initialised."""
    command = [sys.executable, "-c", "import torchvision"]
    return subprocess.run(command, capture_output=True, timeout=300, check=False).returncode == 0


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every archive of this module, made with the real archiver, in one model store."""
    root = tmp_path_factory.mktemp("mar-proof")
    store = root / "store"
    build = root / "build"
    _text_archives(build / "text", store)
    _function_archive(build / "echo", store)
    _vision_archives(build / "vision", store)
    _tensor_archives(build / "tensor", store)
    _compiled_and_requirements_archives(build / "compiled", store)
    if torchvision_imports():
        _vision_archives(build / "builtin", store, builtin=True)
    return store


@pytest.fixture(scope="module")
def models(model_store: Path) -> list[str]:
    return sorted(_model_name(path) for path in model_store.iterdir())


@pytest.fixture(scope="module")
def their_urls(
    model_store: Path, models: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Real TorchServe on the store: its inference and management URLs."""
    missing = torchserve_missing()
    if missing is not None:
        pytest.skip(missing)
    with torchserve(model_store, tmp_path_factory.mktemp("torchserve"), models) as urls:
        yield urls


@pytest.fixture(scope="module")
def our_urls(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """torchship on the same store (``--model_store STORE --models all``): its URLs."""
    cache = tmp_path_factory.mktemp("archive-cache")
    with running(settings(model_store=model_store, models=("all",), archive_cache=cache)) as server:
        wait_ready(server, timeout=240)
        yield server.urls


@pytest.fixture(scope="module")
def theirs(their_urls: dict[str, str]) -> str:
    return their_urls["inference"]


@pytest.fixture(scope="module")
def ours(our_urls: dict[str, str]) -> str:
    return our_urls["inference"]


def test_both_list_every_archive_alike(their_urls: dict[str, str], our_urls: dict[str, str]) -> None:
    listed = []
    for urls in (their_urls, our_urls):
        response = httpx.get(urls["management"] + "/models", timeout=30)
        assert response.status_code == 200
        listed.append(sorted((model["modelName"], model["modelUrl"]) for model in response.json()["models"]))
    assert listed[1] == listed[0]
    assert ("tensor_scripted", "tensor_scripted.tar.gz") in listed[0]  # tgz, no-archive: as TorchServe


def test_both_describe_an_archive_alike(their_urls: dict[str, str], our_urls: dict[str, str]) -> None:
    # `text`'s model-config.yaml sets batchSize 4 and maxBatchDelay 200: both servers must apply it.
    keys = ("modelName", "modelVersion", "modelUrl", "runtime", "batchSize", "maxBatchDelay", "minWorkers")
    described = []
    for urls in (their_urls, our_urls):
        response = httpx.get(urls["management"] + "/models/text", timeout=30)
        assert response.status_code == 200
        described.append({key: response.json()[0].get(key) for key in keys})
    assert described[1] == described[0]
    assert (described[0]["batchSize"], described[0]["maxBatchDelay"]) == (4, 200)


def test_custom_handler_json_text_and_form_bodies(theirs: str, ours: str) -> None:
    for text in TEXTS:
        for request in (
            {"json": {"text": text}},
            {"content": text.encode(), "headers": {"Content-Type": "text/plain"}},
            {"content": text.encode(), "headers": {"Content-Type": "application/octet-stream"}},
            {"files": {"data": ("text.txt", text.encode(), "text/plain")}},  # curl -F data=@text.txt
        ):
            answer = _same(theirs, ours, "/predictions/text", request, headers=("x-predicted-label",))
            assert set(answer["probabilities"]) == set(LABELS)
            assert answer["label"] == max(answer["probabilities"], key=answer["probabilities"].get)


def test_custom_handler_batches_concurrent_requests(theirs: str, ours: str) -> None:
    requests = [{"json": {"text": text}} for text in TEXTS * 3]
    answers = {base: _post_concurrently(base, "/predictions/text", requests) for base in (theirs, ours)}
    for their_answer, our_answer in zip(answers[theirs], answers[ours], strict=True):
        assert our_answer.status_code == their_answer.status_code == 200
        _same_up_to_batching(our_answer.json(), their_answer.json())
    # Batched (model-config.yaml: batchSize 4) or not, each request gets its own answer.
    alone = [httpx.post(f"{ours}/predictions/text", timeout=60, **request).json() for request in requests[:4]]
    assert [response.json() for response in answers[ours][:4]] == alone


def test_function_handler_sees_the_same_request(theirs: str, ours: str) -> None:
    image = _png(0)
    for path, request in (
        ("/predictions/echo", {"json": {"values": [1, 2.5, "x"]}, "headers": {"x-echo": "hello"}}),
        ("/predictions/echo", {"files": {"data": ("image.png", image, "image/png")}}),
        ("/predictions/echo", {"files": {"data": ("a.txt", b"some text", "text/plain")}, "data": {"k": "v"}}),
        ("/predictions/echo", {"data": {"name": "value", "n": "2"}}),  # urlencoded form
    ):
        _same(theirs, ours, path, request, headers=("x-echo",))


def test_query_parameters_do_not_reach_the_handler(theirs: str, ours: str) -> None:
    # TorchServe 0.12's /predictions route hands its handler no query parameters (its legacy
    # /<model>/predict and /invocations routes do); the handler sees the body alone.
    answer = _same(theirs, ours, "/predictions/echo?top=3&mode=fast", {"json": {"values": [1]}})
    assert set(answer["parameters"]) == {"body"}


def test_handler_sees_the_request_headers_as_torchserve_passes_them(theirs: str, ours: str) -> None:
    # Header names as the client sent them (TorchServe keeps their case; torchship also finds them by
    # their lower-case name, which TorchServe does not), and the two TorchServe's frontend adds:
    # "explain" ("False" on /predictions; BaseHandler.handle reads it) and "url_path" (the path after
    # /predictions/<model>/<version>, here empty).
    names = ["X-Mixed-Case", "Content-Type", "explain", "url_path"]
    request = {"json": {"headers": names}, "headers": {"X-Mixed-Case": "1"}}
    answer = _same(theirs, ours, "/predictions/echo", request)
    assert answer["headers"]["X-Mixed-Case"] == "1"


def test_function_handler_text_and_bytes_answers(theirs: str, ours: str) -> None:
    answer = _same(
        theirs, ours, "/predictions/echo", {"content": b"shout", "headers": {"Content-Type": "text/plain"}}
    )
    assert answer == b"SHOUT"
    body = bytes(range(256))
    request = {"content": body, "headers": {"Content-Type": "application/octet-stream"}}
    assert _same(theirs, ours, "/predictions/echo", request) == body[::-1]


def test_handler_errors_answer_the_same_status(theirs: str, ours: str) -> None:
    for path, request in (
        ("/predictions/echo", {"json": {"fail": True}}),  # the handler raises: 503 Prediction failed
        ("/predictions/echo", {"json": {"code": 422}}),  # PredictionException(..., 422)
        ("/predictions/echo", {"json": {"code": 404}}),
        ("/predictions/tensor_eager", {"json": {"y": [1]}}),  # KeyError in preprocess
    ):
        _same(theirs, ours, path, request, error_message=True)
    _same(theirs, ours, "/predictions/no_such_model", {"json": {"text": "x"}})


@pytest.mark.skipif(not HAS_CAPTUM, reason="the built-in text_classifier imports captum: pip install captum")
def test_builtin_text_classifier(theirs: str, ours: str) -> None:
    for text in TEXTS:
        for request in (
            {"content": text.encode(), "headers": {"Content-Type": "text/plain"}},
            {"files": {"data": ("text.txt", text.encode(), "text/plain")}},
        ):
            answer = _same(theirs, ours, "/predictions/text_classifier", request)
            assert set(answer) == set(LABELS)
    unknown = {"content": b"zebra", "headers": {"Content-Type": "text/plain"}}  # not in the vocabulary
    _same(theirs, ours, "/predictions/text_classifier", unknown)


def test_builtin_vision_handlers(theirs: str, ours: str) -> None:
    if not torchvision_imports():
        pytest.skip("the built-in image handlers import torchvision, which does not import beside this torch")
    for seed in range(2):
        image = _png(seed)
        for name in BUILTIN_VISION:
            _same(
                theirs,
                ours,
                f"/predictions/{name}",
                {"content": image, "headers": {"Content-Type": "image/png"}},
            )
        form = {"files": {"data": ("image.png", image, "image/png")}}
        answer = _same(theirs, ours, "/predictions/builtin_image_classifier", form)
        assert len(answer) == 5  # ImageClassifier's topk


def test_image_classifier_contract(theirs: str, ours: str) -> None:
    for seed in range(3):
        image = _png(seed)
        for request in (
            {"content": image, "headers": {"Content-Type": "image/png"}},
            {"files": {"data": ("image.png", image, "image/png")}},
            {"content": base64.b64encode(image), "headers": {"Content-Type": "text/plain"}},
        ):
            answer = _same(theirs, ours, "/predictions/image_classifier", request)
            assert len(answer) == 3 and set(answer) <= {"cat", "dog", "bird", "fish", "frog"}
    requests = [{"content": _png(seed), "headers": {"Content-Type": "image/png"}} for seed in range(8)]
    answers = {
        base: _post_concurrently(base, "/predictions/image_classifier", requests) for base in (theirs, ours)
    }
    for our_answer, their_answer in zip(answers[ours], answers[theirs], strict=True):
        _same_up_to_batching(our_answer.json(), their_answer.json())


def test_object_detector_contract(theirs: str, ours: str) -> None:
    found = 0
    for seed in range(4):
        request = {"content": _png(seed), "headers": {"Content-Type": "image/png"}}
        answer = _same(theirs, ours, "/predictions/object_detector", request)
        assert isinstance(answer, list)
        found += len(answer)
    assert found > 0, "no detection passed the threshold: the comparison would prove little"


def test_image_segmenter_contract(theirs: str, ours: str) -> None:
    for seed in range(2):
        request = {"content": _png(seed), "headers": {"Content-Type": "image/png"}}
        answer = _same(theirs, ours, "/predictions/image_segmenter", request)
        assert torch.tensor(answer).shape == (6, 6, 2)  # (H, W, [class, probability])


def test_eager_no_archive_and_torchscript_tgz(theirs: str, ours: str) -> None:
    inputs = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]]
    with torch.no_grad():
        expected = reference_model()(torch.tensor(inputs)).tolist()
    for name in ("tensor_eager", "tensor_scripted"):
        for row, want in zip(inputs, expected, strict=True):
            answer = _same(theirs, ours, f"/predictions/{name}", {"json": {"x": row}})
            assert answer == pytest.approx(want, abs=1e-4)


def test_aoti_and_requirements_archives(theirs: str, ours: str) -> None:
    inputs = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
    with torch.no_grad():
        expected = reference_model()(torch.tensor(inputs)).tolist()
    for name in ("tensor_aoti", "tensor_requirements"):
        for row, want in zip(inputs, expected, strict=True):
            answer = _same(theirs, ours, f"/predictions/{name}", {"json": {"x": row}})
            assert answer == pytest.approx(want, abs=1e-4)
    # Concurrent requests reach the AOTI model as one batch (dynamic batch dimension) on both servers.
    requests = [{"json": {"x": row}} for row in inputs * 2]
    answers = {
        base: _post_concurrently(base, "/predictions/tensor_aoti", requests) for base in (theirs, ours)
    }
    for our_answer, their_answer in zip(answers[ours], answers[theirs], strict=True):
        assert our_answer.status_code == their_answer.status_code == 200
        _same_up_to_batching(our_answer.json(), their_answer.json())


def _same(
    theirs: str,
    ours: str,
    path: str,
    request: dict[str, Any],
    headers: Sequence[str] = (),
    error_message: bool = False,
) -> Any:
    """POST ``request`` to both servers; assert the same status, answer and ``headers`` (and, with
    ``error_message``, the same error message); return the answer (parsed JSON, else bytes)."""
    their_response = httpx.post(theirs + path, timeout=60, **request)
    our_response = httpx.post(ours + path, timeout=60, **request)
    what = f"POST {path} {_short(request)}"
    assert our_response.status_code == their_response.status_code, (
        f"{what}: TorchServe {their_response.status_code} {their_response.text[:300]!r}, "
        f"torchship {our_response.status_code} {our_response.text[:300]!r}"
    )
    for name in headers:
        assert our_response.headers.get(name) == their_response.headers.get(name), f"{what}: header {name}"
    if their_response.status_code != 200:
        # TorchServe's error body: {"code", "type", "message"}.
        their_error, our_error = their_response.json(), our_response.json()
        assert our_error["code"] == their_error["code"], what
        if error_message:
            assert our_error["message"] == their_error["message"], what
        return None
    their_type = _media_type(their_response)
    if their_type:  # set by the handler through the context: torchship must send the same
        assert _media_type(our_response) == their_type, f"{what}: content type"
    their_answer, our_answer = _answer(their_response), _answer(our_response)
    assert our_answer == their_answer, what
    return their_answer


def _answer(response: httpx.Response) -> Any:
    """The handler's answer: JSON parsed (TorchServe sends no content type for a handler's JSON unless
    the handler sets one), other bytes as they are."""
    try:
        return json.loads(response.content)
    except ValueError:
        return response.content


def _same_up_to_batching(ours: Any, theirs: Any) -> None:
    """Concurrent requests batch differently on two servers, and a batched matmul may round the last bits
    differently from a lone one, which a handler's rounding to 5 digits may carry into the last digit: the
    same labels in the same order, numbers equal to 1.5e-5."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs)
        for key in theirs:
            _same_up_to_batching(ours[key], theirs[key])
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs)
        for our_item, their_item in zip(ours, theirs, strict=True):
            _same_up_to_batching(our_item, their_item)
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1.5e-5)
    else:
        assert ours == theirs


def _post_concurrently(base: str, path: str, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send every request at once (one thread each), so the server can batch them; answers in order."""
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda request: client.post(base + path, **request), requests))


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def _short(request: dict[str, Any]) -> str:
    return repr(request)[:200]


def _model_name(path: Path) -> str:
    return path.name.removesuffix(".mar").removesuffix(".tar.gz")


def _text_archives(build: Path, store: Path) -> None:
    """``text`` (custom handler) and, with captum, ``text_classifier`` (the built-in handler)."""
    build.mkdir(parents=True)
    vocab = {word: index for index, word in enumerate(sorted({w for t in TEXTS for w in t.split()}), 1)}
    (build / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (build / "index_to_name.json").write_text(json.dumps(dict(enumerate(LABELS))), encoding="utf-8")
    (build / "model-config.yaml").write_text(
        "batchSize: 4\nmaxBatchDelay: 200\nhandler:\n  round_digits: 5\n", encoding="utf-8"
    )
    weights = _state_dict(build / "text_model.pt", "text_model", "TextModel", seed=3)
    model_file = HANDLERS / "text_model.py"
    archive(
        build,
        "text",
        HANDLERS / "mar_text_handler.py",
        model_file=model_file,
        serialized_file=weights,
        extra_files=[build / "index_to_name.json", build / "vocab.json"],
        config_file=build / "model-config.yaml",
        export_path=store,
    )
    if not HAS_CAPTUM:
        return
    # The built-in handler looks words and their bigrams up in source_vocab.pt (a plain dict here: it
    # loads with torch.load's weights_only default; TorchServe's examples pickle a torchtext Vocab).
    tokens = sorted({token for text in TEXTS for token in _words_and_bigrams(text.split())})
    torch.save({token: index for index, token in enumerate(tokens, 1)}, build / "source_vocab.pt")
    archive(
        build,
        "text_classifier",
        "text_classifier",
        model_file=model_file,
        serialized_file=weights,
        extra_files=[build / "index_to_name.json", build / "source_vocab.pt"],
        export_path=store,
    )


def _function_archive(build: Path, store: Path) -> None:
    build.mkdir(parents=True)
    # The archiver's zip-store format: a .mar whose files are stored, not compressed.
    archive(
        build, "echo", HANDLERS / "mar_function_handler.py", archive_format="zip-store", export_path=store
    )


def _vision_archives(build: Path, store: Path, builtin: bool = False) -> None:
    """The three vision archives: with handlers that follow the built-ins' contracts, or (``builtin``)
    with the built-in handlers themselves, as ``builtin_<name>``."""
    build.mkdir(parents=True)
    classes = build / "classes" / "index_to_name.json"
    classes.parent.mkdir()
    classes.write_text(json.dumps(dict(enumerate(("cat", "dog", "bird", "fish", "frog")))), encoding="utf-8")
    objects = build / "objects" / "index_to_name.json"
    objects.parent.mkdir()
    objects.write_text(json.dumps({"1": "car", "2": "tree", "3": "house", "4": "person"}), encoding="utf-8")
    batched = build / "model-config.yaml"
    batched.write_text("batchSize: 4\nmaxBatchDelay: 200\n", encoding="utf-8")
    transforms = HANDLERS / "plain_transforms.py"
    for name, model, cls, extras, config in (
        ("image_classifier", "classifier_model", "TinyImageClassifier", [classes], batched),
        ("object_detector", "detector_model", "TinyDetector", [objects], None),
        ("image_segmenter", "segmenter_model", "TinySegmenter", [], None),
    ):
        archive(
            build,
            f"builtin_{name}" if builtin else name,
            name if builtin else HANDLERS / f"mar_{name}.py",
            model_file=HANDLERS / f"{model}.py",
            serialized_file=_state_dict(build / f"{model}.pt", model, cls, seed=5),
            extra_files=extras if builtin else [transforms, *extras],
            config_file=config,
            export_path=store,
        )


def _tensor_archives(build: Path, store: Path) -> None:
    """The archiver's other modes: an eager model in a no-archive folder, TorchScript in a tgz."""
    model_file, weights = eager_model(build / "eager")
    handler = HANDLERS / "mar_tensor_handler.py"
    archive(
        build,
        "tensor_eager",
        handler,
        model_file=model_file,
        serialized_file=weights,
        archive_format="no-archive",
        export_path=store,
    )
    scripted = torchscript_model(build / "scripted")
    archive(
        build, "tensor_scripted", handler, serialized_file=scripted, archive_format="tgz", export_path=store
    )


def _compiled_and_requirements_archives(build: Path, store: Path) -> None:
    """``tensor_aoti``: the model compiled by AOTInductor into a ``.so``, which BaseHandler loads when
    model-config.yaml says ``pt2: {export: {aot_compile: true}}`` (batched, so a batch reaches the dynamic
    batch dimension); ``tensor_requirements``: a TorchScript archive with ``--requirements-file``."""
    build.mkdir(parents=True)
    handler = HANDLERS / "mar_tensor_handler.py"
    config = build / "model-config.yaml"
    config.write_text(AOTI_MODEL_YAML + "batchSize: 4\nmaxBatchDelay: 100\n", encoding="utf-8")
    compiled = aoti_model(build / "aoti")
    archive(build, "tensor_aoti", handler, serialized_file=compiled, config_file=config, export_path=store)
    requirements = build / "requirements.txt"
    requirements.write_text(
        "# installed beside the server: checked, never installed\npackaging>=20\n", encoding="utf-8"
    )
    made = archive(
        build,
        "tensor_requirements",
        handler,
        serialized_file=torchscript_model(build / "scripted"),
        requirements_file=requirements,
        export_path=store,
    )
    with zipfile.ZipFile(made) as files:  # what both servers read: the manifest names the file
        manifest = json.loads(files.read("MAR-INF/MANIFEST.json"))
        assert files.read(manifest["model"]["requirementsFile"]).endswith(b"packaging>=20\n")


def _state_dict(path: Path, module: str, cls: str, seed: int) -> Path:
    """Instantiate ``cls`` from ``mar_handlers/<module>.py`` with weights from ``seed``; save its state."""
    spec = importlib.util.spec_from_file_location(f"mar_proof_{module}", HANDLERS / f"{module}.py")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    torch.manual_seed(seed)
    torch.save(getattr(loaded, cls)().state_dict(), path)
    return path


def _words_and_bigrams(words: list[str]) -> list[str]:
    return words + [f"{first} {second}" for first, second in itertools.pairwise(words)]


def _png(seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    """A small RGB PNG with pixels from ``seed``."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    image = Image.frombytes("RGB", size, bytes(pixels.flatten().tolist()))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
