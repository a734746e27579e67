"""Registry logic (versions, defaults, conflicts) with zero workers, so no process is started."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from serving_handlers import EchoAPI

from torchship.errors import ConfigError, ConflictError, NotFoundError, VersionNotFoundError
from torchship.serving.runtime.metrics import Metrics
from torchship.serving.runtime.registry import Registry, version_key
from torchship.serving.runtime.versions import VersionSpec


def _spec(name: str, version: str) -> VersionSpec:
    return VersionSpec(EchoAPI(name=name), version, f"{name}/{version}", "serving_handlers:EchoAPI")


def test_version_key_orders_numbers_as_numbers() -> None:
    assert sorted(["10", "2", "1.10", "1.9"], key=version_key) == ["1.9", "1.10", "2", "10"]


def test_defaults_follow_the_latest_unless_set() -> None:
    async def scenario() -> Any:
        registry = Registry(Metrics())
        changes: list[str] = []
        registry.on_change = lambda: changes.append("changed")
        for version in ("1", "10", "2"):
            await registry.register(_spec("m", version), workers=0)
        latest = registry.get("m").version
        registry.set_default("m", "1")
        explicit = registry.get("m").version
        await registry.register(_spec("m", "11"), workers=0)
        still = registry.get("m").version
        await registry.unregister("m", "1")
        after_removal = registry.get("m").version
        with pytest.raises(ConflictError):
            await registry.register(_spec("m", "2"), workers=0)
        with pytest.raises(VersionNotFoundError):
            registry.get("m", "1")
        await registry.unregister("m")
        with pytest.raises(NotFoundError):
            registry.get("m")
        return latest, explicit, still, after_removal, len(changes)

    assert asyncio.run(scenario()) == ("10", "1", "1", "11", 7)


def test_an_unpicklable_handler_is_a_clear_error_and_is_not_registered() -> None:
    class LocalAPI(EchoAPI):  # defined in a function: spawned workers could never import it
        pass

    async def scenario() -> None:
        registry = Registry(Metrics())
        spec = VersionSpec(LocalAPI(name="local"), "1", "local", "tests:LocalAPI")
        with pytest.raises(ConfigError, match="must be picklable"):
            await registry.register(spec, workers=1)
        assert registry.names() == []

    asyncio.run(scenario())
