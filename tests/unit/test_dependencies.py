"""The verdict on after / follow dependencies, from the states of the tasks they name."""

from __future__ import annotations

from enginefarm.schedulers.dependencies import DepState, Verdict, combine, judge
from enginefarm.schedulers.policy import FIFO, EngineLoad, PendingTask, plan
from enginefarm.task import Dependency

DONE = DepState("completed", 0)
FAILED = DepState("failed", 1)
RUNNING = DepState("running", 1)


def test_after_waits_until_every_task_finished_then_is_met():
    dep = Dependency(("a", "b"))
    assert judge(dep, {"a": DONE, "b": RUNNING}).verdict is Verdict.WAITING
    assert judge(dep, {"a": DONE, "b": DepState("completed", 1)}).verdict is Verdict.MET


def test_a_failure_that_does_not_qualify_is_impossible_at_once():
    outcome = judge(Dependency(("a", "b")), {"a": FAILED, "b": RUNNING})
    assert outcome.verdict is Verdict.IMPOSSIBLE and "task a ended failed" in outcome.reason
    assert judge(Dependency(("a",), success=False, failure=True), {"a": FAILED}).verdict is Verdict.MET
    assert judge(Dependency(("a",), success=False, failure=True), {"a": DONE}).verdict is Verdict.IMPOSSIBLE
    assert judge(Dependency(("a",), failure=True), {"a": DepState("aborted")}).verdict is Verdict.MET


def test_any_needs_one_qualifying_task_and_is_impossible_only_when_none_can():
    dep = Dependency(("a", "b"), all=False)
    assert judge(dep, {"a": FAILED, "b": RUNNING}).verdict is Verdict.WAITING
    assert judge(dep, {"a": FAILED, "b": DONE}).verdict is Verdict.MET
    assert judge(dep, {"a": FAILED, "b": FAILED}).verdict is Verdict.IMPOSSIBLE


def test_an_unknown_task_is_invalid():
    outcome = judge(Dependency(("a", "ghost")), {"a": DONE, "ghost": DepState("")})
    assert outcome.verdict is Verdict.INVALID and "ghost" in outcome.reason


def test_follow_gives_where_the_tasks_ran_and_refuses_two_engines():
    assert judge(Dependency(("a",)), {"a": DONE}, location=True).engines == frozenset({0})
    spread = {"a": DONE, "b": DepState("completed", 1)}
    assert judge(Dependency(("a", "b")), spread, location=True).verdict is Verdict.IMPOSSIBLE
    assert judge(Dependency(("a", "b"), all=False), spread, location=True).engines == frozenset({0, 1})


def test_combine_puts_invalid_before_impossible_before_waiting_and_checks_follow_engines_live():
    after, follow = Dependency(("a",)), Dependency(("b",))
    states = {"a": RUNNING, "b": DepState("")}
    assert combine(after, follow, states, [0, 1]).verdict is Verdict.INVALID
    states = {"a": DONE, "b": DONE}
    assert combine(after, follow, states, [0, 1]).engines == frozenset({0})
    gone = combine(after, follow, states, [1])
    assert gone.verdict is Verdict.IMPOSSIBLE and "gone" in gone.reason
    assert combine(after, None, states, []).verdict is Verdict.MET


def test_plan_skips_blocked_tasks_and_keeps_tasks_on_their_engines():
    engines = [EngineLoad(0), EngineLoad(1)]
    blocked = PendingTask("blocked", 1, blocked=True)
    pinned = PendingTask("pinned", 2, only_on=frozenset({1}))
    nowhere = PendingTask("nowhere", 3, only_on=frozenset({7}))
    decided = plan(FIFO(), [blocked, pinned, nowhere], engines, slots=2, now=0.0, failure_penalty_s=5.0)
    assert decided.assignments == [("pinned", 1)]
    assert decided.unsatisfiable == ["nowhere"]
