"""Scheduling policies: pure functions of the pending tasks and the engines' loads.

No I/O here: the scheduler daemon feeds in what it knows and applies the plan it gets back,
so every policy is unit-testable without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .loads import EngineLoad, EngineLoads

__all__ = ["EngineLoad", "EngineLoads", "PendingTask", "Plan", "Scheme", "plan", "scheme_named"]


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
class Plan:
    assignments: list[tuple[str, int]] = field(default_factory=list)
    # Tasks that no live engine can take (every one said its depend does not hold).
    unsatisfiable: list[str] = field(default_factory=list)


class Scheme:
    """Orders waiting tasks; each goes to the least-loaded engine it may run on, lowest id
    on ties (see ``plan``)."""

    name = ""

    def order(self, pending: Iterable[PendingTask]) -> list[PendingTask]:
        raise NotImplementedError


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
    engines: Sequence[EngineLoad] | EngineLoads,
    slots: int,
    now: float,
    failure_penalty_s: float,
) -> Plan:
    """Decide which waiting tasks go to which engines now.

    An engine takes at most ``slots`` outstanding tasks. A task skips engines where its
    depend failed and engines outside its ``only_on``; a blocked task waits. After a failure
    it avoids the engines that failed it for ``failure_penalty_s`` seconds, as long as another
    live engine could take it.

    ``engines`` given as EngineLoads (the scheduler's, kept up to date as it routes) is left as
    it was found; a task free to go anywhere then costs O(log engines), not a look at each.
    """
    if isinstance(engines, EngineLoads):
        if engines.slots != max(1, slots):
            raise ValueError(f"the loads are kept for {engines.slots} slots, not {slots}")
        loads = engines
    else:
        loads = EngineLoads.of(engines, slots)
    result = Plan()
    if not loads.any_free():
        return result
    taken: list[int] = []
    try:
        for task in scheme.order(pending):
            if task.blocked:
                continue
            if not loads.any_free():
                break
            penalized = task.failed_on if task.failed_at is not None and now - task.failed_at < failure_penalty_s else frozenset()
            if task.only_on is None and not task.unmet and not penalized:
                engine = loads.least_loaded()
            else:
                allowed = _allowed(task, loads, penalized)
                if allowed is None:
                    result.unsatisfiable.append(task.task_id)
                    continue
                engine = _least_loaded_of(allowed, loads)
            if engine is None:
                continue
            # Tentative, so that the next task sees this one; undone below, since the
            # scheduler counts a task against its engine once it has routed it.
            loads.change(engine, 1)
            taken.append(engine)
            result.assignments.append((task.task_id, engine))
    finally:
        for engine in taken:
            loads.change(engine, -1)
    return result


def _allowed(task: PendingTask, loads: EngineLoads, penalized: frozenset[int]) -> set[int] | None:
    """The live engines a constrained task may go to; None if there is none at all."""
    live = loads.engines()
    allowed = {e for e in task.only_on if e in live} if task.only_on is not None else set(live)
    allowed -= task.unmet
    if not allowed:
        return None
    if allowed - penalized:
        allowed -= penalized
    return allowed


def _least_loaded_of(allowed: set[int], loads: EngineLoads) -> int | None:
    free = [e for e in allowed if loads.has_slot(e)]
    return min(free, key=lambda e: (loads.load(e), e)) if free else None
