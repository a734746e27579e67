"""The batching policy, with an explicit clock: no server, no sleep."""

from __future__ import annotations

from torchship.serving.runtime.batcher import Batcher


def make(batch_size: int = 4, delay: float = 0.005, capacity: int = 100) -> Batcher[str]:
    return Batcher[str](batch_size=batch_size, max_batch_delay=delay, capacity=capacity)


def test_a_lone_request_on_an_idle_server_goes_at_once() -> None:
    batcher = make()
    batcher.add("a", size=10, now=0.0)
    assert batcher.next_batch(now=0.0, idle_workers=1, busy_workers=0).items == ["a"]


def test_no_idle_worker_means_no_batch() -> None:
    batcher = make()
    batcher.add("a", size=10, now=0.0)
    decision = batcher.next_batch(now=1.0, idle_workers=0, busy_workers=1)
    assert (decision.items, decision.wake_at) == ([], None)
    assert len(batcher) == 1


def test_a_partial_batch_waits_while_other_batches_run_until_its_delay() -> None:
    batcher = make()
    batcher.add("a", size=10, now=0.0)
    batcher.add("b", size=10, now=0.001)
    waiting = batcher.next_batch(now=0.002, idle_workers=1, busy_workers=1)
    assert waiting.items == [] and waiting.wake_at == 0.005
    assert batcher.next_batch(now=0.005, idle_workers=1, busy_workers=1).items == ["a", "b"]


def test_a_full_batch_goes_at_once_even_while_others_run() -> None:
    batcher = make(batch_size=2)
    for name in "abc":
        batcher.add(name, size=10, now=0.0)
    assert batcher.next_batch(now=0.0, idle_workers=1, busy_workers=1).items == ["a", "b"]
    assert list(batcher) == ["c"]


def test_similar_sizes_go_together_and_the_oldest_never_waits() -> None:
    batcher = make(batch_size=3)
    for name, size in [("old", 500), ("s1", 10), ("l1", 480), ("s2", 12), ("l2", 520), ("s3", 11)]:
        batcher.add(name, size=size, now=0.0)
    first = batcher.next_batch(now=0.0, idle_workers=1, busy_workers=0).items
    assert first == ["old", "l1", "l2"]
    assert batcher.next_batch(now=0.0, idle_workers=1, busy_workers=0).items == ["s1", "s2", "s3"]


def test_expire_removes_requests_older_than_the_deadline() -> None:
    batcher = make()
    batcher.add("old", size=1, now=0.0)
    batcher.add("new", size=1, now=5.0)
    assert batcher.expire(deadline=1.0) == ["old"]
    assert list(batcher) == ["new"]
    assert batcher.oldest_arrival() == 5.0


def test_capacity_and_clear() -> None:
    batcher = make(capacity=2)
    batcher.add("a", size=1, now=0.0)
    assert not batcher.full
    batcher.add("b", size=1, now=0.0)
    assert batcher.full
    assert batcher.remove("a") and not batcher.remove("a")
    assert batcher.clear() == ["b"] and len(batcher) == 0
