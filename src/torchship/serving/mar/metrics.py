"""``context.metrics`` for TorchServe handlers: TorchServe's metric cache, recording instead of logging.

A handler calls ``context.metrics.add_counter(...)``, ``add_time``, ``add_size``, ``add_percent``,
``add_metric``, or ``get_metric(name, MetricTypes.X).add_or_update(value, dimension_values)``. In
TorchServe each update is a ``[METRICS]`` log line that its Java frontend parses; here the cache is ts's own
(:class:`ts.metrics.metric_cache_yaml_impl.MetricsCacheYamlImpl`, with TorchServe's ``metrics.yaml``, so
``HandlerTime`` and ``PredictionTime`` exist as in TorchServe and the same calls succeed or fail the same
way), and only the last step differs: a validated update is kept as a plain tuple, shipped to the server
with the batch's answer, and exposed on ``/metrics`` (:mod:`torchship.serving.runtime.metrics`).

This module imports ``ts``: import it only once ``ts`` is known to be installed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ts  # type: ignore[import-untyped]
from ts.metrics.caching_metric import CachingMetric  # type: ignore[import-untyped]
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl  # type: ignore[import-untyped]

__all__ = ["MAX_UPDATES_PER_BATCH", "MetricUpdate", "RecordingMetricsCache"]

logger = logging.getLogger("torchship.serving.worker")

MetricUpdate = tuple[str, str, str, tuple[str, ...], tuple[str, ...], float]
"""One update: (name, type "counter"/"gauge"/"histogram", unit, dimension names, dimension values, value)."""

MAX_UPDATES_PER_BATCH = 10_000
"""Metric updates one batch may ship to the server; further ones are dropped (one warning per worker),
so a handler that updates a metric in a tight loop cannot make a batch's answer grow without bound."""

_METRICS_YAML = os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml")


class RecordingMetric(CachingMetric):  # type: ignore[misc]
    """A ts ``CachingMetric`` whose validated updates go to its cache's list instead of the log."""

    def __init__(self, cache: RecordingMetricsCache, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache = cache

    def add_or_update(self, value: Any, dimension_values: Any = (), request_id: str = "") -> None:
        try:
            dimensions = self._validate_and_get_dimensions(list(dimension_values or ()))
            self._validate_metric_value(value)
            number = float(value)
        except (TypeError, ValueError) as exc:
            # TorchServe logs a bad update and goes on: the handler's request still succeeds.
            logger.error(
                "[METRICS]Failed to update metric %s with value %r: %s", self.metric_name, value, exc
            )
            return
        self._cache.record(
            (
                str(self.metric_name),
                str(self.metric_type.value),
                str(self.unit),
                tuple(str(dimension.name) for dimension in dimensions),
                tuple(str(dimension.value) for dimension in dimensions),
                number,
            )
        )


class RecordingMetricsCache(MetricsCacheYamlImpl):  # type: ignore[misc]
    """The ``context.metrics`` of an archive's handler; :meth:`take` returns the updates since last time."""

    def __init__(self, model_name: str) -> None:
        self._updates: list[MetricUpdate] = []
        self._dropped = False
        super().__init__(config_file_path=_METRICS_YAML)
        self.model_name = model_name
        self.initialize_cache()

    def add_metric_to_cache(
        self, metric_name: str, unit: str, dimension_names: Any = None, metric_type: Any = None
    ) -> RecordingMetric:
        from ts.metrics.metric_type_enum import MetricTypes  # type: ignore[import-untyped]

        metric_type = MetricTypes.COUNTER if metric_type is None else metric_type
        self._check_type(metric_name, str, "`metric_name` must be a str")
        self._check_type(unit, str, "`unit` must be a str")
        self._check_type(metric_type, MetricTypes, "`metric_type` must be a MetricTypes enum")
        if dimension_names:
            self._check_type(
                dimension_names, list, "`dimension_names` should be a list of dimension name strings"
            )
        metric = RecordingMetric(
            self,
            metric_name=metric_name,
            unit=unit,
            dimension_names=list(dimension_names or []),
            metric_type=metric_type,
        )
        self.cache.setdefault(metric_type, {})[metric_name] = metric
        return metric

    def record(self, update: MetricUpdate) -> None:
        if len(self._updates) < MAX_UPDATES_PER_BATCH:
            self._updates.append(update)
        elif not self._dropped:
            self._dropped = True
            logger.warning(
                "model %s: a batch made more than %d metric updates (MAX_UPDATES_PER_BATCH); further ones "
                "are dropped",
                self.model_name,
                MAX_UPDATES_PER_BATCH,
            )

    def take(self) -> list[MetricUpdate]:
        """The updates recorded since the last call, oldest first."""
        updates, self._updates = self._updates, []
        return updates
