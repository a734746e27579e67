"""The dynamic batching policy: which waiting requests run together, and when. Pure: no clock, no I/O.

The caller passes ``now`` and how many workers are idle and busy; :meth:`Batcher.next_batch` answers with
the requests to send to one idle worker now, or with the time to ask again. The rule:

* a batch goes out as soon as it is full (``batch_size`` requests are waiting);
* it also goes out at once when **no other batch of this version is running**: waiting could only gain
  requests that are not there yet, so an idle server adds no delay to a lone request (overhead at
  concurrency 1 stays at the cost of one event-loop turn);
* while other batches run, a partial batch waits until its oldest request is ``max_batch_delay`` old:
  the clients of the running batches are about to send their next requests, and a fuller batch may run
  them for little more than the cost of one. At 0, the default (measured better on a CPU and on a GPU up
  to 64 clients, see :class:`~torchship.serving.settings.ModelSettings`), a free worker takes what is
  waiting. Under steady load batches form either way, because requests pile up while every worker is
  busy.

When more requests wait than fit in a batch, requests of similar size go together (a long text padded
next to short ones wastes most of the batch): the oldest request is always taken, so nothing starves,
together with the ``batch_size - 1`` requests closest to it in size (the window of the size-sorted queue
around it with the smallest spread).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Batch", "Batcher"]

T = TypeVar("T")


@dataclass(eq=False)
class _Waiting(Generic[T]):
    item: T
    size: int
    arrival: float


@dataclass(frozen=True)
class Batch(Generic[T]):
    """What :meth:`Batcher.next_batch` decided: ``items`` to run now (maybe none), or ``wake_at``."""

    items: list[T] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    wake_at: float | None = None


class Batcher(Generic[T]):
    """A bounded queue of requests that hands out batches by the rule in the module docstring.

    >>> batcher = Batcher[str](batch_size=4, max_batch_delay=0.005, capacity=100)
    >>> batcher.add("a", size=10, now=0.0)
    >>> batcher.next_batch(now=0.0, idle_workers=1, busy_workers=0).items
    ['a']
    """

    def __init__(self, batch_size: int, max_batch_delay: float, capacity: int) -> None:
        self.batch_size = batch_size
        self.max_batch_delay = max_batch_delay
        self.capacity = capacity
        self._waiting: list[_Waiting[T]] = []  # in arrival order

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[T]:
        return (waiting.item for waiting in self._waiting)

    @property
    def full(self) -> bool:
        """True when one more request would exceed the capacity."""
        return len(self._waiting) >= self.capacity

    def add(self, item: T, size: int, now: float) -> None:
        """Queue ``item`` of ``size`` (e.g. body length) that arrived at ``now``. Check :attr:`full` first."""
        self._waiting.append(_Waiting(item, size, now))

    def oldest_arrival(self) -> float | None:
        """Arrival time of the request that has waited longest, or None when the queue is empty."""
        return self._waiting[0].arrival if self._waiting else None

    def next_batch(self, now: float, idle_workers: int, busy_workers: int) -> Batch[T]:
        """The batch for one idle worker now, or when to ask again (None: ask on the next event)."""
        if not self._waiting or idle_workers <= 0:
            return Batch()
        oldest = self._waiting[0].arrival
        due = oldest + self.max_batch_delay
        if len(self._waiting) >= self.batch_size or busy_workers == 0 or now >= due:
            return self._take()
        return Batch(wake_at=due)

    def expire(self, deadline: float) -> list[T]:
        """Remove and return the requests that arrived before ``deadline`` (they waited too long)."""
        cut = 0
        while cut < len(self._waiting) and self._waiting[cut].arrival < deadline:
            cut += 1
        expired, self._waiting = self._waiting[:cut], self._waiting[cut:]
        return [waiting.item for waiting in expired]

    def remove(self, item: T) -> bool:
        """Take ``item`` out of the queue (its client went away); False if it was not waiting."""
        for index, waiting in enumerate(self._waiting):
            if waiting.item is item:
                del self._waiting[index]
                return True
        return False

    def clear(self) -> list[T]:
        """Remove and return everything waiting."""
        items = [waiting.item for waiting in self._waiting]
        self._waiting = []
        return items

    def _take(self) -> Batch[T]:
        if len(self._waiting) <= self.batch_size:
            chosen, self._waiting = self._waiting, []
        else:
            chosen = _similar_sizes(self._waiting, self.batch_size)
            taken = {id(waiting) for waiting in chosen}
            self._waiting = [waiting for waiting in self._waiting if id(waiting) not in taken]
        return Batch([w.item for w in chosen], [w.arrival for w in chosen])


def _similar_sizes(waiting: list[_Waiting[T]], count: int) -> list[_Waiting[T]]:
    """The oldest request and the ``count - 1`` others nearest in size, oldest first."""
    order = sorted(range(len(waiting)), key=lambda index: (waiting[index].size, index))
    position = order.index(0)  # where the oldest request sits in size order
    best_start, best_spread = 0, None
    # Every window of `count` consecutive sizes that contains the oldest request; keep the tightest.
    for start in range(max(0, position - count + 1), min(position, len(order) - count) + 1):
        spread = waiting[order[start + count - 1]].size - waiting[order[start]].size
        if best_spread is None or spread < best_spread:
            best_start, best_spread = start, spread
    return [waiting[index] for index in sorted(order[best_start : best_start + count])]
