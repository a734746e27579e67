"""What every side-by-side benchmark checks first: the package to serve, and that a server answers it.

A server that is fast because it answers something else measures nothing, so each server must first
return the package's own probabilities for a few texts.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import httpx

from peers.package import make_benchmark_package

__all__ = ["check_answers", "expected_probabilities", "ratio", "resolve_package", "stop_on_sigterm"]


def check_answers(url: str, texts: Sequence[str], expected: list[dict[str, float]]) -> str:
    """Compare the server's probabilities with the package's own, text by text: a verdict to print."""
    worst = 0.0
    with httpx.Client(timeout=30.0) as client:
        for text, probabilities in zip(texts, expected, strict=True):
            response = client.post(url, json={"text": text})
            response.raise_for_status()
            body = response.json()
            answered = body["probabilities"]
            if set(answered) != set(probabilities) or body["label"] != max(answered, key=answered.get):
                return f"DIFFERENT labels or JSON shape: {body}"
            worst = max(worst, *(abs(answered[label] - p) for label, p in probabilities.items()))
    verdict = "same as the package" if worst < 1e-4 else "DIFFERENT from the package"
    return f"{verdict} (max |dp| {worst:.1e} on {len(texts)} texts)"


def expected_probabilities(package: Path, texts: Sequence[str]) -> list[dict[str, float]]:
    """The package's own probabilities for ``texts``, one text at a time."""
    from torchship.store import load_package

    loaded = load_package(package)
    rows = loaded.predict_proba(list(texts), batch_size=1).tolist()
    return [dict(zip(loaded.config.labels, row, strict=True)) for row in rows]


def resolve_package(model: str | None, work: Path) -> Path:
    """``model`` (a package or store reference), else ./models/bbc, else an untrained stand-in."""
    from torchship.store import resolve_model

    if model is None and Path("models/bbc").is_dir():
        model = "models/bbc"  # the demo model, where the README's commands put it
    if model is not None:
        # Absolute: the peers run in subprocesses with their own working directories.
        return resolve_model(model).resolve()
    print("no ./models/bbc: building an untrained demo-shaped package (throughput does not need training)")
    return make_benchmark_package(work / "models")


def ratio(ours: float, theirs: float) -> str:
    """``ours / theirs`` as ``1.23x``, or ``-`` when there is nothing to compare."""
    return f"{ours / theirs:.2f}x" if theirs > 0 and not math.isnan(ours) else "-"


def stop_on_sigterm() -> None:
    """Turn ``kill`` (SIGTERM) into KeyboardInterrupt, so every started server is stopped on the way out."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
