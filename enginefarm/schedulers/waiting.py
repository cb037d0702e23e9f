"""What a scheduler remembers of the tasks it holds that depend on other tasks (``after``,
``follow``): which tasks each waits for, who waits for each task, and where a met ``follow``
lets a task run. In memory only: a scheduler that takes over rebuilds it from the requests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..task import Dependency
from .dependencies import DepState, Outcome, Verdict, combine


class DependencyBook:
    def __init__(self) -> None:
        self._deps: dict[str, tuple[Dependency | None, Dependency | None]] = {}
        self._dependants: dict[str, set[str]] = {}
        self._followed: dict[str, frozenset[int]] = {}

    def add(self, task_id: str, after: Dependency | None, follow: Dependency | None) -> None:
        self._deps[task_id] = (after, follow)
        for dep_id in _ids(after, follow):
            self._dependants.setdefault(dep_id, set()).add(task_id)

    def blocked(self) -> list[str]:
        return sorted(self._deps)

    def dependants_of(self, task_id: str) -> list[str]:
        return sorted(self._dependants.get(task_id, ()))

    def named_by(self, task_ids: Iterable[str]) -> list[str]:
        """Every task the given tasks depend on."""
        return [d for t in task_ids if t in self._deps for d in _ids(*self._deps[t])]

    def decide(self, task_ids: Iterable[str], states: Mapping[str, DepState],
               live: Iterable[int]) -> list[tuple[str, Outcome]]:
        """The tasks whose dependencies are now decided (met, impossible or invalid), which
        stop being tracked here; a met follow's engines are kept (see ``stranded``)."""
        decided = []
        live_ids = list(live)
        for task_id in task_ids:
            if task_id not in self._deps:
                continue
            outcome = combine(*self._deps[task_id], states, live_ids)
            if outcome.verdict is Verdict.WAITING:
                continue
            self.forget(task_id)
            if outcome.verdict is Verdict.MET and outcome.engines is not None:
                self._followed[task_id] = outcome.engines
            decided.append((task_id, outcome))
        return decided

    def stranded(self, live: Iterable[int]) -> list[tuple[str, frozenset[int]]]:
        """Tasks that must run where the tasks they follow ran, once those engines are all gone
        (no longer tracked from now on)."""
        alive = set(live)
        gone = [(t, engines) for t, engines in self._followed.items() if not engines & alive]
        for task_id, _ in gone:
            del self._followed[task_id]
        return gone

    def forget(self, task_id: str) -> None:
        self._followed.pop(task_id, None)
        for dep_id in _ids(*self._deps.pop(task_id, (None, None))):
            waiting = self._dependants.get(dep_id)
            if waiting is not None:
                waiting.discard(task_id)
                if not waiting:
                    del self._dependants[dep_id]

    def clear(self) -> None:
        self._deps.clear()
        self._dependants.clear()
        self._followed.clear()


def _ids(*deps: Dependency | None) -> list[str]:
    return [d for dep in deps if dep is not None for d in dep.ids]
