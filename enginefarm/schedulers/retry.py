"""What happens to a task after it failed, lost its engine or found its depend unmet.

The one place that decides between running a load-balanced task again and recording its
outcome for good. Engines call it with a task's outcome, reapers with a dead engine's tasks;
it does no I/O, so every rule is a unit test away.

Seed 003's rules: a failure is retried while ``attempt <= retries`` (attempts count runs,
so ``retries=2`` allows three); an unmet depend goes back without counting as an attempt; a
task whose engine (or engine process) died is run again elsewhere, until it has lost
``max_engine_losses`` engines. Targeted (MultiEngine) commands are never run again.

Two kinds of unmet: seed 003's ``depend`` judges an engine's properties, which can change, so
a task no engine satisfies waits. ``@depend`` and ``@require`` (ipyparallel's) judge the
engine itself and refuse with ``UnmetDependency``; nothing tells the cluster when that would
change, so once every live engine has refused, the task fails with ImpossibleDependency. A
task that has both waits, as any task with a depend on properties does: an engine that
refused it for its properties may yet change them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# Outcomes that are not the task's own failure: the engine's process died under it, or it
# was interrupted (a drain ran out, a second SIGTERM): it is run again elsewhere.
LOST_ERRORS = frozenset({"EngineProcessDied", "TaskInterrupted"})

# The engine refused the task itself (@depend, @require), and what the task fails with when
# every live engine has.
UNMET_ERROR = "UnmetDependency"
IMPOSSIBLE_ERROR = "ImpossibleDependency"


class Action(Enum):
    RECORD = "record"  # the outcome is final
    REQUEUE = "requeue"  # back to the scheduler for another engine


@dataclass(frozen=True)
class Decision:
    action: Action
    # Which engine list of the record names this engine ('failed_on', 'lost_on', 'unmet').
    listed_as: str = ""
    # Added to the record's attempts: -1 when the task never really ran.
    attempts_delta: int = 0
    # Metric label: why it runs again ('failed', 'lost', 'unmet'), or '' when recorded.
    reason: str = ""
    # Appended to the error of a task given up on.
    note: str = ""
    # The error name a task given up on is recorded under, when not its own ('' keeps it).
    ename: str = ""

    @property
    def requeue(self) -> bool:
        return self.action is Action.REQUEUE


RECORD = Decision(Action.RECORD)


def after_outcome(lb: bool, ok: bool, unmet: bool, ename: str, attempt: int, retries: int,
                  losses: int, max_losses: int, untried: int | None = None) -> Decision:
    """An engine ran (or tried to run) a task: record the outcome, or run it again?

    Args:
        attempt: which run this was (1 for the first).
        losses: engines the task lost before this run.
        untried: for an UnmetDependency, the live engines that have not refused the task
            yet (this one not counted); None when not known.
    """
    if ok or not lb:
        return RECORD
    if unmet:
        if ename == UNMET_ERROR and untried == 0:
            return Decision(Action.RECORD, ename=IMPOSSIBLE_ERROR, note=" (every live engine refused the task)")
        return Decision(Action.REQUEUE, "unmet", -1, "unmet")
    if ename in LOST_ERRORS:
        return _lost(losses, max_losses)
    if attempt <= retries:
        return Decision(Action.REQUEUE, "failed_on", 0, "failed")
    return RECORD


def counts_refusals(ename: str, depends_on_properties: bool) -> bool:
    """Whether an unmet outcome is weighed against the live engines (``untried`` of
    ``after_outcome``): only an engine's own refusal of a task without a property depend."""
    return ename == UNMET_ERROR and not depends_on_properties


def after_engine_loss(lb: bool, claimed: bool, started: bool, losses: int, max_losses: int) -> Decision:
    """An engine died holding a task (routed to it, claimed by it, or running on it).

    Args:
        claimed: the engine had claimed it (its attempts count includes that claim).
        started: the record says it began to run there.
    """
    if not lb:
        return RECORD
    if not started:
        # Never ran: it goes back, and a claim that never started is not an attempt.
        return Decision(Action.REQUEUE, "", -1 if claimed else 0, "")
    return _lost(losses, max_losses)


def _lost(losses: int, max_losses: int) -> Decision:
    if losses + 1 >= max_losses:
        return Decision(Action.RECORD, note=f" (it lost {losses + 1} engines; giving up)")
    return Decision(Action.REQUEUE, "lost_on", 0, "lost")
