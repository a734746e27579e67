"""The store watcher: a server converges on its store by itself, without a management call.

Every ``interval`` seconds one pass (:meth:`StoreWatcher.reconcile`) reads the store's listing and pin
files and makes the registry match them:

* the wanted versions of a model are its newest ``keep_versions`` (all when None) plus the pinned one;
* a wanted version not served yet is fetched (an object store downloads and checks it) and registered;
  the pass waits until it has loaded, and the registry makes the newest serving version the default
  only once it serves, so requests keep going to the warm older version meanwhile;
* the pinned version becomes the default once it serves; when the pin file goes, the default is the
  newest serving version again;
* a version the watcher serves that is no longer wanted (older than ``keep_versions``, or removed from
  the store) is unregistered, which drains it, but only once another version of the model serves: a
  new version that cannot load never leaves the model without one that can (a model removed from the
  store altogether is unregistered at once, but only when a second pass in a row misses it too: one
  listing that comes back empty, as an object store's can for a moment, does not unload every replica's
  models);
* a version that cannot be fetched or loaded is logged with the reason, counted in
  ``torchship_store_failures_total``, unregistered, and tried again later: on the next pass, then after
  twice as long each time, at most every :data:`MAX_RETRY_DELAY` seconds (a broken version does not
  start a worker process every few seconds forever); a pass waits for a loading version at most its
  ``startup_timeout`` plus :data:`SETTLE_MARGIN` seconds;
* a pin file naming a version that is not published is ignored, with a warning (once per pin);
* the version that is, or is about to be, the default gets the default worker count, the others what the
  server gives older versions (one each unless ``--workers`` says): when the pin moves or a new version
  arrives, the new default is scaled up at once and the old one down once it no longer takes requests.

Only versions the watcher registered are ever unregistered: one registered through the management API
is left alone, and the watcher does not register a version of that name and number over it. A pass that
cannot read the store changes nothing (an unreachable store is not an empty one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchship.errors import NotFoundError, TorchshipError
from torchship.serving.errors import HandlerError
from torchship.serving.runtime.metrics import Metrics
from torchship.serving.runtime.registry import Registry
from torchship.serving.runtime.versions import ServedVersion, VersionSpec
from torchship.store.view import StoreView

__all__ = ["StoreWatcher", "VersionBuilder", "default_version", "retry_delay", "wanted_versions"]

logger = logging.getLogger("torchship.serving")

VersionBuilder = Callable[[str, int, Path], tuple[VersionSpec, int, int]]
"""``(name, version, package_dir)`` -> what to register, and its workers while it is the model's default
and while it is not. Called off the event loop (it reads the package's config)."""

MAX_RETRY_DELAY = 600.0
"""Seconds at most between two tries of a version that failed to download or load (the delay doubles
from one interval on each failure)."""

SETTLE_MARGIN = 30.0
"""Seconds a pass waits for a loading version past its ``startup_timeout`` (by then its worker pool has
given up on the load itself) before it counts the version as failed: no pass waits forever."""


def retry_delay(interval: float | None, failures: int) -> float:
    """Seconds before a version that failed ``failures`` times in a row is tried again: ``interval``,
    doubled on each further failure, at most :data:`MAX_RETRY_DELAY` (however many failures)."""
    # The exponent is capped: 2.0 ** 1024 overflows, and MAX_RETRY_DELAY is reached long before.
    return min((interval or 0.0) * 2.0 ** min(max(failures - 1, 0), 32), MAX_RETRY_DELAY)


def wanted_versions(published: Sequence[int], pin: int | None, keep: int | None) -> set[int]:
    """The versions to serve: the newest ``keep`` of ``published`` (all when None), plus ``pin`` when it
    is published."""
    wanted = set(published[-keep:] if keep is not None else published)
    if pin is not None and pin in published:
        wanted.add(pin)
    return wanted


def default_version(published: Sequence[int], pin: int | None) -> int | None:
    """The version that should end up the default: the pinned one when published, else the newest."""
    if pin is not None and pin in published:
        return pin
    return max(published, default=None)


@dataclass(frozen=True)
class _StoreState:
    """One read of the store: published versions and pins by model."""

    listing: dict[str, list[int]]
    pins: dict[str, int | None]
    held: frozenset[str] = frozenset()
    """Models missing from this listing for the first time, kept as the last pass saw them."""


class StoreWatcher:
    """Keeps a registry in step with a store; see the module docstring.

    ``build`` turns a fetched package into a :class:`VersionSpec` (the server's settings decide the
    handler and the workers). ``interval`` None: one pass at start (:meth:`reconcile`) and no loop.
    """

    def __init__(
        self,
        view: StoreView,
        registry: Registry,
        metrics: Metrics,
        build: VersionBuilder,
        *,
        interval: float | None,
        keep_versions: int | None,
    ) -> None:
        self.view = view
        self.interval = interval
        self.keep_versions = keep_versions
        self._registry = registry
        self._metrics = metrics
        self._build = build
        self._served: dict[tuple[str, int], ServedVersion] = {}  # what this watcher registered
        self._pinned: dict[str, int] = {}  # the default each pin file set, to undo when it goes
        self._pins: dict[str, int | None] = {}  # the last pins read (a malformed pin file keeps them)
        # (failures so far, loop time before which it is not tried again) of versions that failed
        self._retry: dict[tuple[str, int], tuple[int, float]] = {}
        # Workers of each version this watcher registered: (as the default, otherwise), and which it has
        self._workers: dict[tuple[str, int], tuple[int, int]] = {}
        self._sized_as_default: dict[tuple[str, int], bool] = {}
        self._task: asyncio.Task[None] | None = None
        self._removals: set[asyncio.Task[None]] = set()
        # The last listing and pins each model had, and the models the last pass found missing
        self._seen: dict[str, tuple[list[int], int | None]] = {}
        self._missing: set[str] = set()
        self._unpublished_pins: set[tuple[str, int]] = set()  # warned about once each
        self._failure_series: set[tuple[str, int]] = set()  # versions with a store_failures series

    @property
    def failing(self) -> list[tuple[str, int]]:
        """The store versions that could not be fetched or loaded and wait to be tried again."""
        return sorted(self._retry)

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the polling loop (after the server listens); nothing without an interval."""
        if self.interval is not None and self._task is None:
            self._task = asyncio.ensure_future(self._loop(self.interval))

    async def stop(self) -> None:
        """Stop polling; a pass in progress is cancelled, but versions it was unregistering finish
        stopping (their workers must not outlive the server). A view that downloads (an object store's)
        is closed first: a download running in a thread would otherwise keep the process alive."""
        close = getattr(self.view, "close", None)
        if close is not None:
            close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)

    async def _loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except Exception:  # the loop outlives any one pass: the next one may well succeed
                logger.exception("store watcher: the pass over %s failed", self.view.location)

    # ------------------------------------------------------------------------------------ a pass
    async def reconcile(self, *, wait: bool = True) -> None:
        """One pass over the store. ``wait`` False (at start, before the server listens): register the new
        versions and return while they load; the next pass settles them."""
        try:
            state = await asyncio.to_thread(self._read)
        except Exception as exc:  # s3fs, botocore and OS errors alike: nothing is changed on a failed read
            logger.error(
                "store watcher: cannot read the store %s (%s); serving what is loaded, trying again on "
                "the next pass",
                self.view.location,
                _reason(exc),
            )
            self._metrics.store_passes.labels("failed").inc()
            return
        self._forget_unregistered()
        state = self._hold_missing(state)
        self._forget_retries(state)
        for name, published in sorted(state.listing.items()):
            if name in state.held:
                continue  # the listing may be wrong about it: change nothing until the next pass
            pin = state.pins.get(name)
            self._check_pin(name, pin, published)
            target = default_version(published, pin)
            for version in sorted(wanted_versions(published, pin, self.keep_versions), reverse=True):
                if self._registered(name, version) is None and self._due(name, version):
                    await self._add(name, version, version == target, initial=not wait)
        if wait:
            await self._settle()
        self._apply_pins(state, once_serving=wait)
        await self._remove_unwanted(state)
        await self._resize(state)
        await self._evict()
        self._metrics.store_passes.labels("ok").inc()

    def _read(self) -> _StoreState:
        listing = self.view.listing()
        pins: dict[str, int | None] = {}
        for name in listing:
            try:
                pins[name] = self.view.pin(name)
            except TorchshipError as exc:  # a malformed pin file: keep following the last good one
                logger.error("store watcher: %s; keeping the previous pin of %s", exc.message, name)
                pins[name] = self._pins.get(name)
        self._pins = pins
        return _StoreState(listing, pins)

    async def _add(self, name: str, version: int, is_default: bool, *, initial: bool) -> None:
        try:
            spec, as_default, otherwise = await asyncio.to_thread(self._fetch, name, version, initial)
            workers = as_default if is_default else otherwise
            served = await self._registry.register(spec, workers=workers, synchronous=False)
        except Exception as exc:  # a download, a checksum, a config: this version only, retried later
            self._failed(name, version, _reason(exc))
            return
        self._served[name, version] = served
        self._workers[name, version] = (as_default, otherwise)
        self._sized_as_default[name, version] = is_default
        logger.info("store watcher: loading %s version %d from %s", name, version, self.view.location)

    def _fetch(self, name: str, version: int, initial: bool) -> tuple[VersionSpec, int, int]:
        spec, as_default, otherwise = self._build(name, version, self.view.local(name, version))
        return dataclasses.replace(spec, loaded_at_startup=initial), as_default, otherwise

    def _due(self, name: str, version: int) -> bool:
        """Whether a version is not waiting out the delay after a failure."""
        retry = self._retry.get((name, version))
        return retry is None or asyncio.get_running_loop().time() >= retry[1]

    async def _resize(self, state: _StoreState) -> None:
        """Give the version that is to be the default the default's workers at once, and an old default
        the fewer workers of other versions once it no longer takes requests (a management ``scale`` in
        between is left alone: only a change of role resizes)."""
        for (name, version), served in list(self._served.items()):
            published = state.listing.get(name, [])
            to_be_default = version == default_version(published, state.pins.get(name))
            if to_be_default == self._sized_as_default.get((name, version), to_be_default):
                continue
            if not to_be_default and self._registry.is_default(served):
                continue  # still takes the requests until its successor serves: shrink it on a later pass
            as_default, otherwise = self._workers[name, version]
            workers = as_default if to_be_default else otherwise
            self._sized_as_default[name, version] = to_be_default
            if workers == served.target_workers:
                continue
            try:
                await self._registry.scale(name, served.version, workers, synchronous=False)
            except TorchshipError as exc:  # over the server's worker limits: serve with what it has
                logger.warning("store watcher: cannot scale %s version %d: %s", name, version, exc.message)
                continue
            logger.info("store watcher: %s version %d now has %d workers", name, version, workers)

    async def _settle(self) -> None:
        """Wait for this watcher's versions that do not serve yet; unregister those that cannot load."""
        loading = [served for served in self._served.values() if served.serving_workers == 0]
        outcomes = await asyncio.gather(
            *(self._wait_loaded(served) for served in loading), return_exceptions=True
        )
        failed: list[tuple[ServedVersion, BaseException]] = []
        for served, outcome in zip(loading, outcomes, strict=True):
            key = (served.name, int(served.version))
            if not isinstance(outcome, BaseException):
                self._retry.pop(key, None)
            elif not self._registry_holds(served):  # unregistered meanwhile (management API): not a failure
                self._served.pop(key, None)
                logger.info("store watcher: %s version %s was unregistered while loading", *key)
            elif served.target_workers > 0:  # scaled to 0 meanwhile: left as whoever did it wants it
                failed.append((served, outcome))
        for served, error in failed:
            self._served.pop((served.name, int(served.version)), None)
            self._failed(served.name, int(served.version), _reason(error))
        await self._unregister([served for served, _ in failed])

    @staticmethod
    async def _wait_loaded(served: ServedVersion) -> None:
        if served.load_error is not None:  # failed already (registered by a pass that did not wait)
            raise HandlerError(served.load_error)
        # The pool gives up on a load after startup_timeout and ends the wait; this is the backstop.
        timeout = served.spec.api.settings.startup_timeout + SETTLE_MARGIN
        try:
            await asyncio.wait_for(served.wait_ready(), timeout)
        except asyncio.TimeoutError:
            raise HandlerError(
                f"its workers did not load within {timeout:g}s (startup_timeout plus {SETTLE_MARGIN:g}s)"
            ) from None

    def _apply_pins(self, state: _StoreState, *, once_serving: bool) -> None:
        """Make each pinned version the default (``once_serving``: only once it serves, else at once, as
        at start while everything loads); where a pin file went, undo the default it set."""
        for name, published in state.listing.items():
            pin = state.pins.get(name)
            served = self._registered(name, pin) if pin is not None and pin in published else None
            if served is None or (once_serving and served.serving_workers == 0):
                continue
            if not (self._registry.is_default(served) and self._registry.has_explicit_default(name)):
                self._registry.set_default(name, served.version)
                logger.info("store watcher: %s version %s is pinned: the default now", name, served.version)
            self._pinned[name] = int(served.version)
        for name, version in list(self._pinned.items()):
            pin = state.pins.get(name)
            if pin is not None and pin in state.listing.get(name, []):
                continue  # still pinned, or pinned anew: the old default stays until the new one serves
            del self._pinned[name]
            served = self._registered(name, version)
            # Undo only the pin's own default: one a client set since then stays.
            if served is not None and self._registry.is_default(served):
                self._registry.clear_default(name)
                logger.info("store watcher: the pin of %s is gone: the default is the newest again", name)

    async def _remove_unwanted(self, state: _StoreState) -> None:
        unwanted: dict[str, list[ServedVersion]] = {}
        for (name, version), served in self._served.items():
            published = state.listing.get(name, [])
            if version not in wanted_versions(published, state.pins.get(name), self.keep_versions):
                unwanted.setdefault(name, []).append(served)
        removing: list[ServedVersion] = []
        for name, versions in unwanted.items():
            if state.listing.get(name) and not self._another_serves(name, versions):
                continue  # the store has versions to switch to, and none serves yet: keep these
            removing += versions
        for served in removing:
            del self._served[served.name, int(served.version)]
            logger.info(
                "store watcher: unloading %s version %s (no longer wanted in %s)",
                served.name,
                served.version,
                self.view.location,
            )
        await self._unregister(removing)

    def _another_serves(self, name: str, leaving: Iterable[ServedVersion]) -> bool:
        """Whether a version of ``name`` other than those ``leaving`` serves (takes their requests)."""
        others = [v for v in self._versions(name) if all(v is not served for served in leaving)]
        return any(served.serving_workers > 0 for served in others)

    async def _unregister(self, versions: Sequence[ServedVersion]) -> None:
        """Unregister (drain, then stop) ``versions`` together; shielded, so that a pass cancelled at
        shutdown does not leave their workers running (:meth:`stop` waits for them)."""
        if not versions:
            return
        task = asyncio.ensure_future(self._unregister_all(versions))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)
        await asyncio.shield(task)

    async def _unregister_all(self, versions: Sequence[ServedVersion]) -> None:
        async def one(served: ServedVersion) -> None:
            if self._registry_holds(served):
                await self._registry.unregister(served.name, served.version)

        await asyncio.gather(*(one(served) for served in versions))

    async def _evict(self) -> None:
        """Let a view with a local cache (an object store's) drop what is no longer served."""
        evict = getattr(self.view, "evict", None)
        if evict is None:
            return
        try:
            await asyncio.to_thread(evict, set(self._served))
        except OSError as exc:  # a cache that cannot shrink now may next time; serving goes on
            logger.warning("store watcher: cannot evict from the version cache: %s", exc)

    # ------------------------------------------------------------------------------- helpers
    def _failed(self, name: str, version: int, reason: str) -> None:
        logger.error(
            "store watcher: not serving %s version %d from %s: %s; the current default keeps serving, "
            "trying again on the next pass",
            name,
            version,
            self.view.location,
            reason,
        )
        self._metrics.store_failures.labels(name, str(version)).inc()
        self._failure_series.add((name, version))
        failures = self._retry.get((name, version), (0, 0.0))[0] + 1
        delay = retry_delay(self.interval, failures)
        self._retry[name, version] = (failures, asyncio.get_running_loop().time() + delay)

    def _hold_missing(self, state: _StoreState) -> _StoreState:
        """A model this watcher serves that is missing from the listing (its folder deleted, or a listing
        that came back empty by mistake) is acted on only when the next pass misses it too; meanwhile it
        stays as the last pass saw it (``held``)."""
        missing = {name for name, _ in self._served if not state.listing.get(name)}
        held = missing - self._missing
        for name in sorted(missing - held):
            logger.warning(
                "store watcher: %s is still missing from %s: unloading it", name, self.view.location
            )
        for name in sorted(held):
            logger.warning(
                "store watcher: %s is missing from the listing of %s; serving it on until the next pass "
                "confirms it is gone",
                name,
                self.view.location,
            )
        self._missing = held
        listing, pins = dict(state.listing), dict(state.pins)
        for name in held:
            listing[name], pins[name] = self._seen.get(name, ([], None))
        for name, published in listing.items():
            self._seen[name] = (published, pins.get(name))
        for name in [name for name in self._seen if name not in listing]:
            del self._seen[name]
        return _StoreState(listing, pins, frozenset(held))

    def _forget_retries(self, state: _StoreState) -> None:
        """Versions gone from the store: no retry to wait for, no failure series to keep (names and
        numbers come and go with the store: kept, they would pile up in memory and in every scrape)."""
        for key in [key for key in self._retry if key[1] not in state.listing.get(key[0], [])]:
            del self._retry[key]
        for name, version in [k for k in self._failure_series if k[1] not in state.listing.get(k[0], [])]:
            self._failure_series.discard((name, version))
            with contextlib.suppress(KeyError):
                self._metrics.store_failures.remove(name, str(version))

    def _check_pin(self, name: str, pin: int | None, published: Sequence[int]) -> None:
        """Warn, once per pin, about a pin file naming a version that is not published (it is ignored)."""
        if pin is None or pin in published:
            self._unpublished_pins = {key for key in self._unpublished_pins if key[0] != name}
            return
        if (name, pin) not in self._unpublished_pins:
            self._unpublished_pins.add((name, pin))
            logger.warning(
                "store watcher: the pin file of %s in %s names version %d, which is not published "
                "(versions: %s); ignoring it: the default is the newest version",
                name,
                self.view.location,
                pin,
                ", ".join(map(str, published)) or "none",
            )

    def _registered(self, name: str, version: int) -> ServedVersion | None:
        """The served version ``name``/``version``, whoever registered it, or None."""
        try:
            return self._registry.get(name, str(version))
        except NotFoundError:
            return None

    def _versions(self, name: str) -> list[ServedVersion]:
        try:
            return self._registry.versions(name)
        except NotFoundError:
            return []

    def _registry_holds(self, served: ServedVersion) -> bool:
        return self._registered(served.name, int(served.version)) is served

    def _forget_unregistered(self) -> None:
        """Versions unregistered by someone else (the management API) are no longer this watcher's."""
        for key, served in list(self._served.items()):
            if not self._registry_holds(served):
                del self._served[key]
        for key in [key for key in self._workers if key not in self._served]:
            self._workers.pop(key)
            self._sized_as_default.pop(key, None)


def _reason(error: BaseException) -> str:
    if isinstance(error, TorchshipError):
        return error.message
    return str(error) or type(error).__name__
