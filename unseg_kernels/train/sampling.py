"""A resumable, seeded, shardable stream of dataset indices for step-based training.

The stream is a pure function of ``(seed, position)``: epoch e is a permutation drawn from
a generator seeded with ``(seed, e)``, epochs are concatenated, and with ``world_size`` W
process r takes every W-th element starting at r. Resuming needs only the number of samples
this process has consumed, so a resumed run sees exactly the data order it would have
seen, whatever DataLoader workers prefetched before it stopped.

Each element is a :class:`SampleKey`: the dataset index plus a per-sample seed, so random
choices made while loading (a nearest neighbour drawn at random, augmentations) depend on
the position in the stream and not on which worker loaded it.

Example:
    >>> sampler = InfiniteSampler(len(ds), seed=0)
    >>> loader = DataLoader(ds, batch_size=8, sampler=sampler)  # ds[SampleKey] -> sample
    >>> ...; sampler.consumed += 8  # after each step
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.utils.data import Sampler

MASK64 = (1 << 64) - 1
SEED_BITS = 62  # seeds stay below 2**63, the largest torch.Generator seed


def mix_seed(*values: int) -> int:
    """A well-spread seed from integers (SplitMix64 finaliser over each value in turn).
    Deterministic across processes, unlike ``hash`` of strings."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & MASK64
        h ^= h >> 29
    return h >> (64 - SEED_BITS)


class SampleKey(NamedTuple):
    """One element of the stream: the dataset ``index`` and a ``seed`` for anything random
    done while loading it."""

    index: int
    seed: int


class InfiniteSampler(Sampler[SampleKey]):
    """An endless stream of :class:`SampleKey`, resumable from any position.

    Args:
        size: dataset length.
        seed: base seed of the data order.
        shuffle: permute each epoch (else 0..size-1 repeated).
        rank: this process's index among ``world_size`` (DistributedDataParallel).
        world_size: processes sharing the stream.

    Attributes:
        consumed: samples this process has used; the training loop advances it, and
            iteration starts there.
    """

    def __init__(
        self, size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.rank, self.world_size = rank, world_size
        self.consumed = 0

    def _epoch(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator().manual_seed(mix_seed(self.seed, 0, epoch))
        return torch.randperm(self.size, generator=g)

    def __iter__(self) -> Iterator[SampleKey]:
        position = self.consumed * self.world_size + self.rank
        epoch, perm = None, None
        while True:
            e, offset = divmod(position, self.size)
            if e != epoch:
                epoch, perm = e, self._epoch(e)
            yield SampleKey(int(perm[offset]), mix_seed(self.seed, 1, position))
            position += self.world_size

    def state_dict(self) -> dict[str, int | bool]:
        return {
            "seed": self.seed,
            "size": self.size,
            "shuffle": self.shuffle,
            "world_size": self.world_size,
            "consumed": self.consumed,
        }

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        for key in ("seed", "size", "shuffle", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has "
                    f"{key}={getattr(self, key)}; resume with the same data and settings"
                )
        self.consumed = int(state["consumed"])
