"""Length-grouped batch sampling and collation."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from torchship.data.batching import (
    LengthGroupedBatchSampler,
    TokenizedDataset,
    collate_batch,
    padding_fraction,
)


def make_dataset(size: int = 1000, seed: int = 0) -> TokenizedDataset:
    rng = random.Random(seed)
    token_ids = [[2, *(rng.randrange(4, 100) for _ in range(rng.randint(1, 400))), 3] for _ in range(size)]
    return TokenizedDataset(token_ids, [i % 3 for i in range(size)])


def wasted(batches: list[list[int]], lengths: list[int]) -> float:
    """Padding fraction of ``batches`` of indices, computed from the lengths alone."""
    total = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - sum(lengths[i] for batch in batches for i in batch) / total


def grouped(
    dataset: TokenizedDataset, batch_size: int = 16, seed: int = 0, **kwargs: object
) -> LengthGroupedBatchSampler:
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return LengthGroupedBatchSampler(sampler, batch_size, False, lengths=dataset.lengths, seed=seed, **kwargs)  # type: ignore[arg-type]


def test_collate_pads_and_stacks_labels() -> None:
    batch = collate_batch([([2, 5, 3], 1), ([2, 3], 0)], pad_id=0)
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[2, 5, 3], [2, 3, 0]]))
    torch.testing.assert_close(
        batch["attention_mask"], torch.tensor([[True, True, True], [True, True, False]])
    )
    torch.testing.assert_close(batch["labels"], torch.tensor([1, 0]))


def test_dataset_lengths() -> None:
    dataset = TokenizedDataset([[1, 2, 3], [4]], [0, 1])
    assert len(dataset) == 2 and dataset.lengths == [3, 1] and dataset[1] == ([4], 1)
    with pytest.raises(ValueError, match="2 token sequences but 1 labels"):
        TokenizedDataset([[1], [2]], [0])


@pytest.mark.parametrize(
    ("size", "drop_last", "batches"), [(1000, False, 63), (1000, True, 62), (992, True, 62)]
)
def test_every_index_once_and_len_is_right(size: int, drop_last: bool, batches: int) -> None:
    dataset = make_dataset(size)
    sampler = LengthGroupedBatchSampler(RandomSampler(dataset), 16, drop_last, lengths=dataset.lengths)
    result = list(sampler)
    assert len(result) == len(sampler) == batches
    assert sum(len(batch) != 16 for batch in result) == (size % 16 > 0 and not drop_last)  # one short batch
    counts = Counter(i for batch in result for i in batch)
    assert max(counts.values()) == 1 and len(counts) == (size // 16 * 16 if drop_last else size)


def test_length_grouping_cuts_padding() -> None:
    dataset = make_dataset()
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    baseline = wasted([order[start : start + 16] for start in range(0, 1000, 16)], dataset.lengths)
    assert baseline > 0.4
    assert wasted(list(grouped(dataset)), dataset.lengths) < baseline / 5


def test_batch_order_is_shuffled_not_sorted() -> None:
    dataset = make_dataset()
    longest = [max(dataset.lengths[i] for i in batch) for batch in grouped(dataset)]
    assert longest != sorted(longest, reverse=True)


def test_same_seed_same_batches_and_each_epoch_differs() -> None:
    dataset = make_dataset()
    first, second = grouped(dataset, seed=1), grouped(dataset, seed=1)
    epoch0 = list(first)
    assert epoch0 == list(second)
    assert list(first) != epoch0  # the next pass is another order
    assert [sorted(b) for b in grouped(dataset, seed=2)] != [sorted(b) for b in epoch0]


def test_set_epoch_picks_the_batch_order() -> None:
    # Under DDP the index order comes from a DistributedSampler (Lightning sets its epoch); the batch
    # order from this sampler's own seed and epoch.
    dataset = make_dataset()
    sampler = LengthGroupedBatchSampler(
        SequentialSampler(dataset), 16, False, lengths=dataset.lengths, seed=3
    )
    epoch0, epoch1 = list(sampler), list(sampler)
    assert epoch0 != epoch1
    sampler.set_epoch(1)
    assert list(sampler) == epoch1


def test_evaluation_order_is_sorted_by_length() -> None:
    dataset = make_dataset(100)
    sampler = LengthGroupedBatchSampler(
        SequentialSampler(dataset), 8, False, lengths=dataset.lengths, shuffle=False
    )
    flat = [i for batch in sampler for i in batch]
    assert [dataset.lengths[i] for i in flat] == sorted(dataset.lengths, reverse=True)
    assert list(sampler) == list(sampler)


@pytest.mark.parametrize("shuffle", [True, False])
def test_distributed_shards_are_disjoint_and_equally_long(shuffle: bool) -> None:
    # Under DDP, Lightning rebuilds the batch sampler around a DistributedSampler: each rank must get
    # the same number of batches (else the processes hang) and the ranks together every example.
    dataset = make_dataset(1001)
    ranks = [
        LengthGroupedBatchSampler(
            DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=shuffle, seed=0),
            16,
            False,
            lengths=dataset.lengths,
            shuffle=shuffle,
        )
        for rank in range(2)
    ]
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == 32
    seen = [{i for batch in rank_batches for i in batch} for rank_batches in batches]
    assert seen[0] | seen[1] == set(range(1001))
    assert len(seen[0] & seen[1]) <= 1  # DistributedSampler repeats one example to even out 1001


def test_padding_fraction() -> None:
    batches = [collate_batch([([1, 2, 3, 4], 0), ([1, 2], 0)], pad_id=0)]
    assert padding_fraction(batches) == pytest.approx(2 / 8)
    assert padding_fraction([]) == 0.0


def test_bad_mega_batch_factor() -> None:
    dataset = make_dataset(10)
    with pytest.raises(ValueError, match="mega_batch_factor"):
        LengthGroupedBatchSampler(
            SequentialSampler(dataset), 4, False, lengths=dataset.lengths, mega_batch_factor=0
        )
