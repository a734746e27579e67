"""Fixtures for the serving tests: a store with two versions of a tiny text classifier, a ``torch.export``
model, and one shared server for the read-only tests. The helpers they use live in ``serving_support``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from serving_support import publish_classifier, running, settings, sum_and_difference, wait_ready

from torchship.serving import Server


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with ``news`` versions 1 and 2 (different weights)."""
    root = tmp_path_factory.mktemp("store")
    publish_classifier(root, "news", seed=1)
    publish_classifier(root, "news", seed=2)
    return root


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`sum_and_difference` saved with ``torch.export`` (any batch size)."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        sum_and_difference(), (torch.randn(4, 2),), dynamic_shapes={"input": {0: batch}}
    )
    path = tmp_path_factory.mktemp("exported") / "model.pt2"
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="session")
def shared_server(store_root: Path, scripted_model: Path) -> Iterator[Server]:
    """One server for the read-only tests: the store (news v1, v2) and the test handlers."""
    from serving_handlers import EchoAPI, ThreeStepAPI, TutorialAPI, WrongCountAPI

    apis = [
        EchoAPI(name="echo", workers=1, batch_size=8, max_batch_delay=50),
        EchoAPI(name="echo2", workers=2, batch_size=4),
        WrongCountAPI(name="wrong", workers=1),
        TutorialAPI(model_path=scripted_model, name="tutorial", workers=1),
        ThreeStepAPI(model_path=scripted_model, name="threestep", workers=1),
    ]
    with running(settings(store=store_root, max_request_size=4096), apis) as server:
        wait_ready(server)
        yield server
