"""What ``ModelAPI.load`` accepts by default: a torchship package, TorchScript, or a ``torch.export`` file.

Only a torchship package is data: safetensors weights and JSON, nothing in it runs when it loads. The two
model files are code, and are loaded only because the operator chose them:

* TorchScript holds the model's program, which ``torch.jit.load`` compiles and the worker runs;
* ``torch.export.load`` unpickles parts of a ``.pt2`` file (``pickle.loads`` and ``torch.load`` with
  ``weights_only=False`` for some weights, constants and custom objects, in torch 2.x), and torch offers
  no load that refuses those parts, so a crafted ``.pt2`` can run any code.

So the operator decides: a ``model_path`` given in code (``MyAPI(model_path="model.pt2").start()``) is
loaded, as the operator's own choice, while the management API registers a model file only when the
server runs with ``allow_code_models`` (see :mod:`torchship.serving.runtime.sources`). Plain pickles
(``torch.save`` of a model or a state dict) are refused everywhere: besides running code from the file, a
state dict alone does not say how to build the model. The message says what to do instead.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

from torchship.errors import PackageError

__all__ = ["load_model_file"]

_PICKLE_ADVICE = (
    "it looks like a pickled PyTorch file (torch.save of a model or a state_dict), which torchship does "
    "not load because unpickling can run code from the file. Save the model with "
    "torch.jit.save(torch.jit.script(model), path) or torch.export.save(torch.export.export(model, "
    "example_inputs), 'model.pt2'), keep the weights as safetensors and build the model yourself by "
    "overriding ModelAPI.load(self, model_path), or serve a torchship package directory"
)


def load_model_file(path: str | Path) -> Any:
    """Load ``path`` for serving: a package directory → ``ModelPackage``; TorchScript → ``ScriptModule``;
    ``.pt2`` → the exported program's module. Anything else is a :class:`PackageError` that says why.

    TorchScript and ``.pt2`` files run code from the file while they load (see the module docstring):
    pass only files the operator trusts."""
    path = Path(path)
    if not path.exists():
        raise PackageError(f"model file not found: {path}")
    if path.is_dir():
        return _load_package(path)
    if path.suffix == ".safetensors":
        raise PackageError(
            f"cannot load {path}: a safetensors file holds weights only, not the model's code. Override "
            "ModelAPI.load(self, model_path) to build your model and load the weights with "
            "safetensors.torch.load_file, or serve a torchship package directory"
        )
    kind = _archive_kind(path)
    if kind == "torchscript":
        import torch

        with warnings.catch_warnings():  # deprecated in recent torch, still what many users have
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    if kind == "export":
        import torch

        with path.open("rb") as file:  # a file object: torch.export.load insists on ".pt2" for names
            return torch.export.load(file).module()
    if kind == "pickle":
        raise PackageError(f"cannot load {path}: {_PICKLE_ADVICE}")
    raise PackageError(
        f"cannot load {path}: not a torchship package directory, a TorchScript file or a torch.export "
        "(.pt2) file. Override ModelAPI.load(self, model_path) to load other formats"
    )


def _load_package(path: Path) -> Any:
    if not (path / "config.json").is_file():
        raise PackageError(
            f"{path} is a directory but not a torchship model package (no config.json); point model_path "
            "at a package directory (a store's <name>/<version>) or at a model file"
        )
    from torchship.store import load_package

    return load_package(path)


def _archive_kind(path: Path) -> str:
    """'torchscript', 'export', 'pickle' or 'unknown', from the names inside the zip archive."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as file:
            head = file.read(2)
        # Legacy (pre-1.6) torch.save files are plain pickles: protocol 2+ starts with b"\x80".
        return "pickle" if head[:1] == b"\x80" else "unknown"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if any(name.endswith("/archive_format") or name == "archive_format" for name in names):
        return "export"
    if any("/code/" in name or name.startswith("code/") for name in names):
        return "torchscript"
    if any(name.endswith("data.pkl") for name in names):
        return "pickle"
    return "unknown"
