"""Which device a model runs on: the ``device`` setting of serving workers and of ``torchship predict`` /
``evaluate``, spelled as torch spells it, and resolved for a worker's slot.

``auto`` and ``cuda`` spread a version's workers round-robin over the GPUs torch sees (slot ``n`` gets
``cuda:{n % count}``), as TorchServe assigns ``gpu_id``; ``auto`` falls back to the CPU where there is
none, ``cuda`` fails with a message that says why and what to do. A replacement worker takes the slot of
the one it replaces, so a crash never moves load from one GPU to another.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from torchship.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["check_device", "resolve_device"]

_DEVICE = re.compile(r"(auto|cpu|mps|(cuda|gpu)(:\d+)?)")


def check_device(value: object, name: str = "device") -> str:
    """The device spelled the way torch spells it (``gpu`` → ``cuda``, case and spaces ignored), or a
    :class:`ConfigError` naming ``name`` and the choices."""
    device = value.strip().lower() if isinstance(value, str) else ""
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"{name}: expected auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return "cuda" + device[3:] if device.startswith("gpu") else device


def resolve_device(device: str, slot: int = 0) -> torch.device:
    """The ``torch.device`` for ``device`` (a checked ``ModelSettings.device``) in worker slot ``slot``."""
    import torch

    if device == "cpu":
        return torch.device("cpu")
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' was asked for but this machine has no MPS; use --device cpu")
        return torch.device("mps")
    available = torch.cuda.is_available()
    if device == "auto" and not available:
        return torch.device("cpu")
    if not available:
        why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
        raise ConfigError(
            f"device {device!r} was asked for but {why} (torch {torch.__version__}); use --device cpu "
            "(device='cpu' in code), or install a CUDA build of torch on a machine with a GPU"
        )
    count = torch.cuda.device_count()
    if device in ("auto", "cuda"):
        return torch.device("cuda", slot % count)
    index = int(device.split(":", 1)[1])
    if index >= count:
        raise ConfigError(
            f"device {device!r} was asked for but torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}; "
            "pick one of those, or 'cuda' to spread the workers over all of them"
        )
    return torch.device("cuda", index)
