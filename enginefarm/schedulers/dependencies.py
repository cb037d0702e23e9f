"""Whether a load-balanced task's dependencies on other tasks are met (ipyparallel's ``after``
and ``follow``), from the states of the tasks it names. Pure: the scheduler reads the states
from the records and applies the verdict.

``after``: wait until the named tasks have finished in a way that qualifies (completed, with
``success``; failed or aborted, with ``failure``). ``follow``: the same, and run where they
ran. ``all=False`` needs one qualifying task instead of every one. A dependency that can no
longer qualify makes the task impossible; one that names tasks nobody knows is invalid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from ..task import Dependency, Status


class Verdict(Enum):
    MET = "met"
    WAITING = "waiting"
    IMPOSSIBLE = "impossible"
    INVALID = "invalid"


@dataclass(frozen=True)
class DepState:
    """What the scheduler read of one task a dependency names (status '' when it is unknown)."""

    status: str
    engine_id: int | None = None


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str = ""
    # For a met ``follow``: the engines the task may run on.
    engines: frozenset[int] | None = None


def _qualifies(dep: Dependency, state: DepState) -> bool | None:
    """True / False once the task has finished; None while it has not."""
    if state.status == Status.COMPLETED:
        return dep.success
    if state.status in (Status.FAILED, Status.ABORTED):
        return dep.failure
    return None


def judge(dep: Dependency, states: Mapping[str, DepState], location: bool = False) -> Outcome:
    """The verdict on one dependency; with ``location`` (follow), where it lets the task run."""
    unknown = [t for t in dep.ids if not states.get(t, DepState("")).status]
    if unknown:
        return Outcome(Verdict.INVALID, f"no task {unknown[0]} in the cluster")
    if not dep.ids:
        return Outcome(Verdict.MET)
    marks = {t: _qualifies(dep, states[t]) for t in dep.ids}
    good = [t for t, ok in marks.items() if ok]
    bad = [t for t, ok in marks.items() if ok is False]
    if (dep.all and bad) or (not dep.all and len(bad) == len(dep.ids)):
        return Outcome(Verdict.IMPOSSIBLE, f"task {bad[0]} ended {states[bad[0]].status}, which does not qualify "
                                           f"(success={dep.success}, failure={dep.failure})")
    if (dep.all and len(good) < len(dep.ids)) or (not dep.all and not good):
        return Outcome(Verdict.WAITING)
    if not location:
        return Outcome(Verdict.MET)
    ran = [states[t].engine_id for t in good]
    engines = {e for e in ran if e is not None}
    if dep.all and len(engines) > 1:
        return Outcome(Verdict.IMPOSSIBLE, f"the tasks it follows ran on different engines {sorted(engines)}")
    if not engines:
        return Outcome(Verdict.IMPOSSIBLE, "the tasks it follows ran on no engine")
    return Outcome(Verdict.MET, engines=frozenset(engines))


def combine(after: Dependency | None, follow: Dependency | None, states: Mapping[str, DepState],
            live: Iterable[int]) -> Outcome:
    """One verdict for both dependencies of a task; a met follow whose engines are all gone
    is impossible."""
    outcomes = []
    if after is not None:
        outcomes.append(judge(after, states))
    if follow is not None:
        outcomes.append(judge(follow, states, location=True))
    for verdict in (Verdict.INVALID, Verdict.IMPOSSIBLE, Verdict.WAITING):
        for outcome in outcomes:
            if outcome.verdict is verdict:
                return outcome
    engines = outcomes[-1].engines if follow is not None and outcomes else None
    if engines is not None and not engines & set(live):
        return Outcome(Verdict.IMPOSSIBLE, f"the engines {sorted(engines)} its follow dependency ran on are gone")
    return Outcome(Verdict.MET, engines=engines)
