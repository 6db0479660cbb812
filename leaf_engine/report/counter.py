"""A counter that keeps at most a fixed number of keys, with a bound on what it lost.

Heavy hitters in bounded memory, after Space-Saving (Metwally et al., 2005), pruned in
batches: when more than 2·capacity keys are held, only the `capacity` most counted stay.
`floor` is the largest count ever evicted; a key that enters later starts at the floor
(an overestimate), with the floor as its error. So for every key held,

    count - count_error <= true count <= count

and the same for `prompts`. Until the first eviction every figure is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar


@dataclass(slots=True)  # one per key held: tens of thousands at capacity
class Tally:
    """What is counted per key. `seen` and `score_sum` cover only occurrences observed since
    the key last entered the table; `checked`/`fixed` likewise, per prompt."""

    count: int = 0
    count_error: int = 0
    prompts: int = 0
    prompts_error: int = 0
    seen: int = 0
    score_sum: float = 0.0
    checked: int = 0  # prompts whose spans with this key were verified
    fixed: int = 0  # of those, prompts where pruning such a span made both models right

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.seen if self.seen else None


T = TypeVar("T", bound=Tally)


class BoundedCounter(Generic[T]):
    """Keys to tallies, at most 2·capacity of them between prunes."""

    def __init__(self, capacity: int, new: Callable[[], T]):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._new = new
        self._items: dict[str, T] = {}
        self.floor = 0  # the largest count evicted so far
        self.prompts_floor = 0
        self.evicted = 0  # keys dropped so far

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    @property
    def truncated(self) -> bool:
        return self.evicted > 0

    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def tally(self, key: str) -> T:
        """The key's tally, entered at the floor if it is not held."""
        found = self._items.get(key)
        if found is None:
            found = self._new()
            found.count = found.count_error = self.floor
            found.prompts = found.prompts_error = self.prompts_floor
            self._items[key] = found
        return found

    def prune(self) -> None:
        """Keep the `capacity` most counted keys once more than twice that are held."""
        if len(self._items) <= 2 * self.capacity:
            return
        ranked = self.top(len(self._items))
        for key, tally in ranked[self.capacity :]:
            self.floor = max(self.floor, tally.count)
            self.prompts_floor = max(self.prompts_floor, tally.prompts)
            del self._items[key]
            self.evicted += 1

    def top(self, n: int) -> list[tuple[str, T]]:
        """The n most counted keys: by count, then prompts, then key (deterministic)."""
        ranked = sorted(self._items.items(), key=lambda kv: (-kv[1].count, -kv[1].prompts,
                                                             kv[0]))
        return ranked[:n]
