"""Helpers for the TorchServe-archive tests: tiny models built in the test (an eager ``nn.Module`` file and
its state dict, a TorchScript file, a ``torch.export`` program) and real archives made from them with the
real ``torch-model-archiver`` (the one installed beside this Python), in each of its formats.

Test modules import these from here (``from mar_support import archive, eager_model``), never from a
``conftest``. Each archiver run gets its own temporary folder: the archiver stages its files in
``$TMPDIR/<model name>`` and deletes that folder afterwards, so two runs for the same model name (another
test, another pytest process) would otherwise clobber each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = [
    "AOTI_MODEL_YAML",
    "ARCHIVE_SUFFIXES",
    "EAGER_MODEL_SOURCE",
    "aoti_model",
    "archive",
    "archiver",
    "eager_model",
    "exported_model",
    "python_file",
    "reference_model",
    "torchscript_model",
]

# What each --archive-format writes: <name>.mar, <name>.tar.gz, or a folder <name>.
ARCHIVE_SUFFIXES = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}

# The model file of an eager archive: exactly one nn.Module class defined in it (BaseHandler instantiates
# the only class the module defines, without arguments, then loads the state dict into it).
EAGER_MODEL_SOURCE = '''\
"""A tiny linear classifier for the archive tests."""

import torch
from torch import nn


class TinyClassifier(nn.Module):
    def __init__(self, in_features: int = {in_features}, out_features: int = {out_features}) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
'''


# The model-config.yaml that makes TorchServe 0.12's BaseHandler load a ``.so`` serialized file with
# ``torch._export.aot_load`` (AOTInductor); archive it with --config-file.
AOTI_MODEL_YAML = "pt2:\n  export:\n    aot_compile: true\n"


def archiver() -> Path:
    """The ``torch-model-archiver`` script installed beside the running Python."""
    return Path(sys.executable).with_name("torch-model-archiver")


def archive(
    tmp_path: Path,
    name: str,
    handler_file_or_name: str | Path,
    *,
    serialized_file: Path | None = None,
    model_file: Path | None = None,
    extra_files: Iterable[Path | str] = (),
    requirements_file: Path | None = None,
    config_file: Path | None = None,
    archive_format: str = "default",
    version: str = "1.0",
    runtime: str | None = None,
    export_path: Path | None = None,
) -> Path:
    """Run the real ``torch-model-archiver`` and return what it wrote: ``<name>.mar`` (``default`` and
    ``zip-store``), ``<name>.tar.gz`` (``tgz``) or the folder ``<name>`` (``no-archive``), in ``export_path``
    (default ``tmp_path``). ``handler_file_or_name`` is a built-in handler name (``"text_classifier"``), a
    handler file, or ``"file.py:function"``. Raises ``AssertionError`` with the archiver's output when it
    fails."""
    target = export_path if export_path is not None else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    command = [
        str(archiver()),
        "--model-name",
        name,
        "--version",
        version,
        "--handler",
        str(handler_file_or_name),
        "--export-path",
        str(target),
        "--archive-format",
        archive_format,
        "--force",
    ]
    optional = {
        "--serialized-file": serialized_file,
        "--model-file": model_file,
        "--requirements-file": requirements_file,
        "--config-file": config_file,
        "--runtime": runtime,
    }
    for flag, value in optional.items():
        if value is not None:
            command += [flag, str(value)]
    extras = [str(item) for item in extra_files]
    if extras:
        command += ["--extra-files", ",".join(extras)]
    with tempfile.TemporaryDirectory(dir=tmp_path, prefix="archiver-") as staging:
        result = subprocess.run(
            command,
            env={**os.environ, "TMPDIR": staging},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, f"torch-model-archiver failed:\n{result.stdout}\n{result.stderr}"
    made = target / f"{name}{ARCHIVE_SUFFIXES[archive_format]}"
    assert made.exists(), f"torch-model-archiver wrote no {made}:\n{result.stdout}\n{result.stderr}"
    return made


def python_file(folder: Path, name: str, source: str) -> Path:
    """Write ``source`` (dedented) to ``folder/name`` and return the path: a handler, a model file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


class _TinyClassifier(torch.nn.Module):
    """The eager model file's class, defined here too: what an archived model must answer."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # type: ignore[no-any-return]


def reference_model(in_features: int = 4, out_features: int = 3, seed: int = 0) -> torch.nn.Module:
    """The archived models' weights (``seed``) in the eager model file's class, in eval mode: what an
    archived model must answer, computed in the test."""
    torch.manual_seed(seed)
    return _TinyClassifier(in_features, out_features).eval()


def eager_model(
    folder: Path, *, in_features: int = 4, out_features: int = 3, seed: int = 0
) -> tuple[Path, Path]:
    """``(model.py, model.pt)``: a model file defining ``TinyClassifier`` and its state dict (a plain
    tensor dict, loadable with ``weights_only=True``); weights from ``seed``, same as
    :func:`reference_model`."""
    model_file = python_file(
        folder, "model.py", EAGER_MODEL_SOURCE.format(in_features=in_features, out_features=out_features)
    )
    weights = folder / "model.pt"
    torch.save(reference_model(in_features, out_features, seed).state_dict(), weights)
    return model_file, weights


def torchscript_model(
    folder: Path, *, in_features: int = 4, out_features: int = 3, seed: int = 0, name: str = "scripted.pt"
) -> Path:
    """The same linear model as :func:`eager_model`, traced to a TorchScript file (``torch.jit.load``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch; TorchServe users have it
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(
            reference_model(in_features, out_features, seed), torch.randn(1, in_features)
        )
        torch.jit.save(traced, str(path))
    return path


def exported_model(
    folder: Path, *, in_features: int = 4, out_features: int = 3, seed: int = 0, name: str = "model.pt2"
) -> Path:
    """The same linear model saved with ``torch.export`` (any batch size), for ``torch.export.load``. The
    archiver copies any serialized file; TorchServe 0.12's BaseHandler has no loader for this format (its
    ``pt2`` paths are ``torch.compile`` and AOTInductor ``.so`` files), so a handler that loads it is
    custom."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        reference_model(in_features, out_features, seed),
        (torch.randn(2, in_features),),
        dynamic_shapes=({0: batch},),
    )
    torch.export.save(program, str(path))
    return path


def aoti_model(
    folder: Path, *, in_features: int = 4, out_features: int = 3, seed: int = 0, name: str = "model.so"
) -> Path:
    """The same linear model compiled ahead of time by AOTInductor (``torch._export.aot_compile``) into a
    shared library, batch sizes 1 to 1024: what TorchServe 0.12's BaseHandler loads for a ``.so`` serialized
    file when the archive's model-config.yaml is :data:`AOTI_MODEL_YAML`. Slow (a C++ compile, a minute or
    more on a small CPU): build it once per session and mark its tests slow."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    batch = torch.export.Dim("batch", min=1, max=1024)
    with (
        warnings.catch_warnings()
    ):  # aot_compile is deprecated for aoti_compile_and_package; BaseHandler uses it
        warnings.simplefilter("ignore")
        made = torch._export.aot_compile(
            reference_model(in_features, out_features, seed),
            (torch.randn(2, in_features),),
            dynamic_shapes=({0: batch},),
            options={"aot_inductor.output_path": str(path)},
        )
    assert Path(made) == path, made
    return path


# ---------------------------------------------------------------- KServe's TorchServe layout
KSERVE_MODEL = "adder"
"""The model of the /mnt/models layouts (test_mar_kserve_layout, tests/deploy/test_kserve)."""
# What KServe's TorchServe examples put in config/config.properties (addresses and model_store rewritten).
KSERVE_CONFIG = """\
inference_address=http://127.0.0.1:{inference}
management_address=http://127.0.0.1:{inference}
metrics_address=http://127.0.0.1:{metrics}
grpc_inference_port={grpc}
grpc_management_port={grpc_management}
enable_metrics_api=true
metrics_format=prometheus
number_of_netty_threads=4
job_queue_size=10
enable_envvars_config=true
install_py_dep_per_model=true
model_store={model_store}
model_snapshot={snapshot}
"""
KSERVE_SNAPSHOT = {
    "name": "startup.cfg",
    "modelCount": 1,
    "models": {
        KSERVE_MODEL: {
            "1.0": {
                "defaultVersion": True,
                "marName": f"{KSERVE_MODEL}.mar",
                "minWorkers": 1,
                "maxWorkers": 5,
                "batchSize": 1,
                "maxBatchDelay": 10,
                "responseTimeout": 120,
            }
        }
    },
}
