"""Scheduling policies (schedulers/policy.py): ordering, slots, engine choice, depend, penalties."""

from __future__ import annotations

import pytest

from enginefarm.schedulers.policy import (
    FIFO,
    LIFO,
    SCHEMES,
    EngineLoad,
    EngineLoads,
    PendingTask,
    Priority,
    plan,
    scheme_named,
)

NOW = 1_000_000.0
PENALTY_S = 5.0


def tasks(*seqs: float, **fields) -> list[PendingTask]:
    return [PendingTask(f"t{int(s)}", s, **fields) for s in seqs]


def engines(*loads: int) -> list[EngineLoad]:
    """Engines 0..n-1 with the given outstanding counts."""
    return [EngineLoad(i, n) for i, n in enumerate(loads)]


def run(scheme, pending, engine_loads, slots=1, now=NOW, penalty=PENALTY_S):
    return plan(scheme, pending, engine_loads, slots, now, penalty)


# --- ordering ------------------------------------------------------------------------------
def test_fifo_orders_by_arrival():
    pending = tasks(3, 1, 2)
    assert [t.task_id for t in FIFO().order(pending)] == ["t1", "t2", "t3"]


def test_lifo_orders_newest_first():
    pending = tasks(3, 1, 2)
    assert [t.task_id for t in LIFO().order(pending)] == ["t3", "t2", "t1"]


def test_priority_orders_highest_first_then_fifo():
    pending = [
        PendingTask("a", 1, priority=0),
        PendingTask("b", 2, priority=5),
        PendingTask("c", 3, priority=1),
        PendingTask("d", 4, priority=5),
        PendingTask("e", 5, priority=-2),
    ]
    assert [t.task_id for t in Priority().order(pending)] == ["b", "d", "c", "a", "e"]


@pytest.mark.parametrize("scheme, expected", [
    (FIFO(), ["t1", "t2"]),
    (LIFO(), ["t5", "t4"]),
])
def test_order_decides_who_gets_the_free_slots(scheme, expected):
    # Given two engines with one free slot each and five waiting tasks
    decided = run(scheme, tasks(1, 2, 3, 4, 5), engines(0, 0), slots=1)
    # Then the first two in the scheme's order are routed, the first to engine 0
    assert decided.assignments == [(expected[0], 0), (expected[1], 1)]
    assert decided.unsatisfiable == []


def test_priority_plan_routes_the_highest_priority_task():
    pending = [PendingTask("low", 1, priority=1), PendingTask("high", 2, priority=9)]
    assert run(Priority(), pending, engines(0), slots=1).assignments == [("high", 0)]


def test_scheme_named_is_case_insensitive_and_rejects_unknown_names():
    assert isinstance(scheme_named("fifo"), FIFO)
    assert isinstance(scheme_named("LIFO"), LIFO)
    assert isinstance(scheme_named("Priority"), Priority)
    assert sorted(SCHEMES) == ["fifo", "lifo", "priority"]
    with pytest.raises(ValueError) as info:
        scheme_named("random")
    assert str(info.value) == "unknown scheme 'random'; choose one of fifo, lifo, priority"


# --- slots and engine choice ----------------------------------------------------------------
def test_each_engine_takes_at_most_slots_tasks():
    decided = run(FIFO(), tasks(1, 2, 3, 4, 5, 6), engines(0, 0), slots=2)
    assert decided.assignments == [("t1", 0), ("t2", 1), ("t3", 0), ("t4", 1)]


def test_slots_count_what_an_engine_already_holds():
    # Engine 0 is full, engine 1 has one of its two slots taken
    decided = run(FIFO(), tasks(1, 2, 3), engines(2, 1), slots=2)
    assert decided.assignments == [("t1", 1)]


def test_nothing_is_routed_when_every_engine_is_full():
    decided = run(FIFO(), tasks(1, 2), engines(1, 1), slots=1)
    assert decided.assignments == [] and decided.unsatisfiable == []


def test_no_engines_no_plan():
    decided = run(FIFO(), tasks(1), [], slots=1)
    assert decided.assignments == [] and decided.unsatisfiable == []


def test_least_loaded_engine_wins_lowest_id_on_ties():
    # Loads 2, 0, 1 with three slots: t1 -> engine 1 (0 tasks); then loads 2,1,1: t2 -> engine 1
    # (tie with 2, lower id); loads 2,2,1: t3 -> engine 2; loads 2,2,2: t4 -> engine 0.
    decided = run(FIFO(), tasks(1, 2, 3, 4), engines(2, 0, 1), slots=3)
    assert decided.assignments == [("t1", 1), ("t2", 1), ("t3", 2), ("t4", 0)]


def test_plan_does_not_modify_the_loads_it_is_given():
    given = engines(0, 1)
    run(FIFO(), tasks(1, 2, 3), given, slots=3)
    assert [(e.engine_id, e.outstanding) for e in given] == [(0, 0), (1, 1)]


# --- depend: engines where it did not hold ----------------------------------------------------
def test_task_skips_engines_where_its_depend_failed():
    pending = [PendingTask("t1", 1, needs_depend=True, unmet=frozenset({0}))]
    # Engine 0 is the least loaded, but the task's depend failed there
    decided = run(FIFO(), pending, engines(0, 1), slots=2)
    assert decided.assignments == [("t1", 1)]
    assert decided.unsatisfiable == []


def test_task_unmet_on_every_live_engine_is_reported_and_others_still_run():
    pending = [
        PendingTask("stuck", 1, needs_depend=True, unmet=frozenset({0, 1})),
        PendingTask("fine", 2),
    ]
    decided = run(FIFO(), pending, engines(0, 0), slots=1)
    assert decided.unsatisfiable == ["stuck"]
    assert decided.assignments == [("fine", 0)]


def test_unmet_on_engines_that_are_gone_does_not_block_a_live_one():
    pending = [PendingTask("t1", 1, needs_depend=True, unmet=frozenset({0, 7}))]
    decided = run(FIFO(), pending, [EngineLoad(3, 0)], slots=1)
    assert decided.assignments == [("t1", 3)] and decided.unsatisfiable == []


def test_task_waits_when_its_only_allowed_engine_is_full():
    pending = [PendingTask("t1", 1, needs_depend=True, unmet=frozenset({0}))]
    decided = run(FIFO(), pending, engines(0, 1), slots=1)
    # Not unsatisfiable: engine 1 could take it once it has a free slot.
    assert decided.assignments == [] and decided.unsatisfiable == []


# --- failure penalty -------------------------------------------------------------------------
def test_retry_avoids_the_engine_that_failed_it_during_the_penalty():
    failed = PendingTask("t1", 1, failed_on=frozenset({0}), failed_at=NOW - 1.0)
    decided = run(FIFO(), [failed], engines(0, 1), slots=2)
    assert decided.assignments == [("t1", 1)]


def test_penalty_expires():
    failed = PendingTask("t1", 1, failed_on=frozenset({0}), failed_at=NOW - PENALTY_S - 0.1)
    decided = run(FIFO(), [failed], engines(0, 1), slots=2)
    assert decided.assignments == [("t1", 0)]


def test_penalized_engine_is_used_when_it_is_the_only_live_one():
    failed = PendingTask("t1", 1, failed_on=frozenset({0}), failed_at=NOW - 1.0)
    assert run(FIFO(), [failed], engines(0), slots=1).assignments == [("t1", 0)]


def test_penalized_engine_is_used_when_every_other_engine_failed_it_too():
    failed = PendingTask("t1", 1, failed_on=frozenset({0, 1}), failed_at=NOW - 1.0)
    decided = run(FIFO(), [failed], engines(1, 0), slots=2)
    assert decided.assignments == [("t1", 1)]


def test_retry_waits_for_an_unpenalized_engine_rather_than_taking_the_penalized_one():
    failed = PendingTask("t1", 1, failed_on=frozenset({0}), failed_at=NOW - 1.0)
    decided = run(FIFO(), [failed], engines(0, 1), slots=1)
    assert decided.assignments == [] and decided.unsatisfiable == []


def test_failed_on_without_a_failure_time_is_no_penalty():
    task = PendingTask("t1", 1, failed_on=frozenset({0}), failed_at=None)
    assert run(FIFO(), [task], engines(0, 1), slots=2).assignments == [("t1", 0)]


def test_penalty_and_unmet_combine():
    # Depend failed on 1, engine 0 failed the task: only engine 2 is both allowed and unpenalized
    task = PendingTask("t1", 1, unmet=frozenset({1}), failed_on=frozenset({0}), failed_at=NOW)
    assert run(FIFO(), [task], engines(0, 0, 3), slots=4).assignments == [("t1", 2)]


def test_many_full_engines_leave_the_plan_to_the_free_ones():
    # 1,000 engines, every one full but engines 7 and 500, which have a slot each
    loads = [EngineLoad(i, 1 if i in (7, 500) else 2) for i in range(1000)]
    out = run(LIFO(), tasks(1, 2, 3, 4), loads, slots=2)
    # The two newest tasks take the two slots (least loaded, lowest id first); the rest wait
    assert out.assignments == [("t4", 7), ("t3", 500)] and out.unsatisfiable == []
    # A task restricted to full engines waits even while others are free
    held = PendingTask("t9", 9, only_on=frozenset({1, 2}))
    assert run(FIFO(), [held, *tasks(5)], loads, slots=2).assignments == [("t5", 7)]


# --- the scheduler's running loads ------------------------------------------------------------
def test_plan_leaves_the_schedulers_loads_as_it_found_them():
    loads = EngineLoads(2, {0: 0, 1: 1, 2: 2})
    decided = run(FIFO(), tasks(1, 2, 3, 4), loads, slots=2)
    assert decided.assignments == [("t1", 0), ("t2", 0), ("t3", 1)]
    assert [loads.load(e) for e in (0, 1, 2)] == [0, 1, 2] and loads.least_loaded() == 0


def test_plan_refuses_loads_kept_for_another_slot_count():
    with pytest.raises(ValueError):
        run(FIFO(), tasks(1), EngineLoads(2, {0: 0}), slots=3)


def test_loads_follow_changes_and_drops():
    loads = EngineLoads(2, {5: 0, 3: 1, 9: 2})
    assert loads.least_loaded() == 5
    loads.change(5, 1)  # 5 and 3 hold one each: the lower id
    assert loads.least_loaded() == 3
    loads.change(3, 1)
    loads.change(5, 1)
    assert loads.least_loaded() is None and not loads.any_free()
    loads.change(9, -2)
    assert loads.least_loaded() == 9
    loads.drop(9)
    assert loads.least_loaded() is None and 9 not in loads
    loads.change(9, -1)  # a task ending on an engine that is gone changes nothing
    assert 9 not in loads and not loads.any_free()
    loads.change(3, -5)  # never below zero
    assert loads.load(3) == 0 and loads.least_loaded() == 3


def test_loads_agree_with_a_full_scan_over_random_changes():
    import random

    rng = random.Random(7)
    loads = EngineLoads(3, {e: rng.randrange(4) for e in range(40)})
    truth = {e: loads.load(e) for e in loads.engines()}
    for step in range(5000):
        e = rng.randrange(45)
        if step % 500 == 499:
            truth = {e: rng.randrange(4) for e in range(rng.randrange(10, 45))}
            loads.reset(truth)
        elif rng.random() < 0.02:
            loads.drop(e)
            truth.pop(e, None)
        else:
            delta = rng.choice((-1, 1))
            loads.change(e, delta)
            if e in truth:
                truth[e] = max(0, truth[e] + delta)
        free = [x for x, n in truth.items() if n < 3]
        expected = min(free, key=lambda x: (truth[x], x)) if free else None
        assert loads.least_loaded() == expected
        assert loads.any_free() == bool(free)
