"""Scheduling policies: pure functions of the pending tasks and the engines' loads.

No I/O here: the scheduler daemon feeds in what it knows and applies the plan it gets back,
so every policy is unit-testable without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class PendingTask:
    """What the scheduler knows of a task waiting to be routed."""

    task_id: str
    seq: float
    priority: int = 0
    needs_depend: bool = False
    unmet: frozenset[int] = frozenset()
    failed_on: frozenset[int] = frozenset()
    failed_at: float | None = None
    # Engines it may run on (a view's targets, where the tasks it follows ran); None: any.
    only_on: frozenset[int] | None = None
    # Waiting for the tasks it depends on (after / follow): not routed yet.
    blocked: bool = False


@dataclass
class EngineLoad:
    engine_id: int
    outstanding: int = 0


@dataclass
class Plan:
    assignments: list[tuple[str, int]] = field(default_factory=list)
    # Tasks that no live engine can take (every one said its depend does not hold).
    unsatisfiable: list[str] = field(default_factory=list)


class Scheme:
    """Orders waiting tasks and picks an engine for each."""

    name = ""

    def order(self, pending: Iterable[PendingTask]) -> list[PendingTask]:
        raise NotImplementedError

    def choose(self, task: PendingTask, free: Sequence[EngineLoad]) -> EngineLoad:
        """Least-loaded free engine, lowest id on ties."""
        return min(free, key=lambda e: (e.outstanding, e.engine_id))


class FIFO(Scheme):
    """First in, first out: tasks run in the order the scheduler received them."""

    name = "fifo"

    def order(self, pending: Iterable[PendingTask]) -> list[PendingTask]:
        return sorted(pending, key=lambda t: t.seq)


class LIFO(Scheme):
    """Last in, first out: the newest waiting task runs next."""

    name = "lifo"

    def order(self, pending: Iterable[PendingTask]) -> list[PendingTask]:
        return sorted(pending, key=lambda t: -t.seq)


class Priority(Scheme):
    """Highest priority first; FIFO among equals."""

    name = "priority"

    def order(self, pending: Iterable[PendingTask]) -> list[PendingTask]:
        return sorted(pending, key=lambda t: (-t.priority, t.seq))


SCHEMES: dict[str, type[Scheme]] = {cls.name: cls for cls in (FIFO, LIFO, Priority)}


def scheme_named(name: str) -> Scheme:
    """Raises: ValueError for an unknown scheme, listing the known ones."""
    try:
        return SCHEMES[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; choose one of {', '.join(sorted(SCHEMES))}") from None


def plan(
    scheme: Scheme,
    pending: Iterable[PendingTask],
    engines: Sequence[EngineLoad],
    slots: int,
    now: float,
    failure_penalty_s: float,
) -> Plan:
    """Decide which waiting tasks go to which engines now.

    An engine takes at most ``slots`` outstanding tasks. A task skips engines where its
    depend failed and engines outside its ``only_on``; a blocked task waits. After a failure it avoids the engines that failed it for
    ``failure_penalty_s`` seconds, as long as another live engine could take it.
    """
    result = Plan()
    live = {e.engine_id for e in engines}
    # Only engines with a slot left are looked at, and one leaves as it fills: a plan costs
    # what it assigns, not the number of engines times the tasks it looks at.
    free = {e.engine_id: EngineLoad(e.engine_id, e.outstanding) for e in engines if e.outstanding < slots}
    for task in scheme.order(pending):
        if task.blocked:
            continue
        if not free:
            break
        allowed = live - task.unmet
        if task.only_on is not None:
            allowed &= task.only_on
        if not allowed:
            result.unsatisfiable.append(task.task_id)
            continue
        penalized = task.failed_on if task.failed_at is not None and now - task.failed_at < failure_penalty_s else frozenset()
        if allowed - penalized:
            allowed -= penalized
        candidates = [e for e in free.values() if e.engine_id in allowed]
        if not candidates:
            continue
        engine = scheme.choose(task, candidates)
        engine.outstanding += 1
        if engine.outstanding >= slots:
            del free[engine.engine_id]
        result.assignments.append((task.task_id, engine.engine_id))
    return result
