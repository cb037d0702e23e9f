"""What each live engine holds, kept up to date one task at a time.

The scheduler changes an engine's count as it routes a task and as a task ends, and rebuilds
the whole at housekeeping. The engines with a slot left sit in one heap per load, so the
least-loaded engine (lowest id on ties) is found without looking at every engine: routing a
task costs the same with 10 engines as with 1,000.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, KeysView, Mapping
from dataclasses import dataclass


@dataclass
class EngineLoad:
    engine_id: int
    outstanding: int = 0


class EngineLoads:
    """Outstanding tasks per live engine, for an engine that takes at most ``slots``.

    The heaps are lazy: an engine's entry stays in the heap of a load it has left and is
    dropped when it reaches the top, so every change is O(log engines). ``reset`` starts them
    afresh, which also bounds how many stale entries pile up.
    """

    def __init__(self, slots: int, loads: Mapping[int, int] | None = None) -> None:
        self.slots = max(1, slots)
        self._load: dict[int, int] = {}
        self._heaps: list[list[int]] = [[] for _ in range(self.slots)]
        self._free = 0
        if loads:
            self.reset(loads)

    @classmethod
    def of(cls, engines: Iterable[EngineLoad], slots: int) -> EngineLoads:
        return cls(slots, {e.engine_id: e.outstanding for e in engines})

    def reset(self, loads: Mapping[int, int]) -> None:
        """The live engines are exactly ``loads``' keys, holding its values."""
        self._load = {e: max(0, n) for e, n in loads.items()}
        self._heaps = [[] for _ in range(self.slots)]
        for engine_id, n in self._load.items():
            if n < self.slots:
                self._heaps[n].append(engine_id)
        for heap in self._heaps:
            heapq.heapify(heap)
        self._free = sum(len(h) for h in self._heaps)

    def __len__(self) -> int:
        return len(self._load)

    def __contains__(self, engine_id: object) -> bool:
        return engine_id in self._load

    def engines(self) -> KeysView[int]:
        """The live engines, as a set-like view (not a copy)."""
        return self._load.keys()

    def load(self, engine_id: int) -> int:
        return self._load[engine_id]

    def has_slot(self, engine_id: int) -> bool:
        n = self._load.get(engine_id)
        return n is not None and n < self.slots

    def any_free(self) -> bool:
        return self._free > 0

    def change(self, engine_id: int, delta: int) -> None:
        """An engine's count moves by ``delta``; an engine not live is ignored (it is gone, or
        the next reset brings it in with what it holds)."""
        old = self._load.get(engine_id)
        if old is None:
            return
        new = max(0, old + delta)
        if new == old:
            return
        self._load[engine_id] = new
        if old < self.slots:
            self._free -= 1
        if new < self.slots:
            self._free += 1
            heapq.heappush(self._heaps[new], engine_id)

    def drop(self, engine_id: int) -> None:
        """An engine is gone: it takes nothing more."""
        old = self._load.pop(engine_id, None)
        if old is not None and old < self.slots:
            self._free -= 1

    def least_loaded(self) -> int | None:
        """The engine with a slot left that holds least, lowest id on ties; None if all are full."""
        for level, heap in enumerate(self._heaps):
            while heap and self._load.get(heap[0]) != level:
                heapq.heappop(heap)
            if heap:
                return heap[0]
        return None
