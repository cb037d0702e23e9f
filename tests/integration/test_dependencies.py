"""Task dependencies (after, follow), targets and flags on load-balanced views, for real."""

from __future__ import annotations

import pytest

from enginefarm import Dependency, MapTask, error

from . import farm_tasks as ft

TIMEOUT_S = 60


def where() -> int:
    import os

    return os.getppid()


def test_after_waits_for_the_tasks_it_names(cluster, client, tmp_path, gates):
    cluster.start_scheduler()
    cluster.start_engines(2)
    trace = str(tmp_path / "order")
    gate = gates()
    view = client.load_balanced_view()
    # Given a first task held at a gate, and a plain FIFO task (the shared queue) beside it
    first = view.apply(ft.gated_record, gate, trace, "first", block=False)
    plain = view.apply(ft.record, trace, "plain", block=False)
    # When a task is submitted to run after both
    with view.temp_flags(after=[first, plain]):
        second = view.apply(ft.record, trace, "second", block=False)
    plain.get(timeout=TIMEOUT_S)
    # Then it has not run while the first is held, and runs once it finishes
    assert not second.wait(1.0)
    assert [line.split()[0] for line in ft.lines(trace)] == ["plain"]
    ft.Gates.open(gate)
    assert second.get(timeout=TIMEOUT_S) == "second"
    assert [line.split()[0] for line in ft.lines(trace)] == ["plain", "first", "second"]


def test_a_failed_dependency_makes_the_task_impossible_unless_failure_qualifies(cluster, client):
    cluster.start_scheduler()
    cluster.start_engine()
    view = client.load_balanced_view()
    broken = view.apply(ft.fail_now, "broken", block=False)
    with pytest.raises(error.RemoteError):
        broken.get(timeout=TIMEOUT_S)
    # A task after a failed one fails as ImpossibleDependency, and never runs
    with view.temp_flags(after=broken):
        doomed = view.apply(pow, 2, 2, block=False)
    with pytest.raises(error.ImpossibleDependency) as impossible:
        doomed.get(timeout=TIMEOUT_S)
    assert broken.task_ids[0] in impossible.value.evalue
    assert client.records.get(doomed.task_ids[0]).started is None
    # One that accepts failure runs
    with view.temp_flags(after=Dependency(broken, success=False, failure=True)):
        assert view.apply(pow, 2, 3, block=False).get(timeout=TIMEOUT_S) == 8
    # all=False: any qualifying task is enough
    fine = view.apply(pow, 1, 1, block=False)
    fine.get(timeout=TIMEOUT_S)
    with view.temp_flags(after=Dependency([broken, fine], all=False)):
        assert view.apply(pow, 3, 2, block=False).get(timeout=TIMEOUT_S) == 9


def test_a_dependency_on_an_unknown_task_is_invalid(cluster, client):
    cluster.start_scheduler()
    cluster.start_engine()
    task_id = client.submit(MapTask(pow, (2, 2), after=["0" * 32]))
    result = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert isinstance(result.failure, error.InvalidDependency)


def test_follow_runs_where_the_followed_tasks_ran(cluster, client):
    cluster.start_scheduler()
    engines = cluster.start_engines(2)
    view = client.load_balanced_view()
    for _ in range(4):
        # Given a task that ran on some engine
        leader = view.apply(where, block=False)
        ran_on = leader.get(timeout=TIMEOUT_S)
        # When another follows it, Then it runs on the same engine
        with view.temp_flags(follow=leader):
            assert view.apply(where, block=False).get(timeout=TIMEOUT_S) == ran_on
    # Following tasks that ran on two engines at once cannot be met
    pinned = [client.load_balanced_view(targets=[d.engine_id]).apply(where, block=False) for d in engines]
    assert [p.get(timeout=TIMEOUT_S) for p in pinned] == [d.pid for d in engines]
    with view.temp_flags(follow=pinned):
        with pytest.raises(error.ImpossibleDependency):
            view.apply(where, block=False).get(timeout=TIMEOUT_S)


def test_targets_restrict_load_balanced_work_and_flags_label_tasks(cluster, client):
    cluster.start_scheduler()
    engines = cluster.start_engines(2)
    chosen = engines[1]
    view = client.load_balanced_view(targets=[chosen.engine_id])
    assert view.targets == [chosen.engine_id]
    # Every task of a restricted view runs on its engines
    assert set(view.map(lambda _: where(), range(12), chunksize=1, block=True)) == {chosen.pid}
    # Flags set on a view travel with its tasks; temp_flags only inside the block
    view.set_flags(label="nightly")
    labelled = view.apply(pow, 2, 4, block=False)
    with view.temp_flags(label="once", retries=2):
        once = view.apply(pow, 2, 5, block=False)
    assert labelled.get(timeout=TIMEOUT_S) == 16 and once.get(timeout=TIMEOUT_S) == 32
    rows = client.db_query({"label": "nightly"}, keys=["label", "retries"])
    assert [r["task_id"] for r in rows] == labelled.task_ids
    assert client.db_query({"task_id": once.task_ids[0]}, keys=["label", "retries"])[0]["retries"] == 2
    with pytest.raises(KeyError):
        view.set_flags(colour="red")
    with pytest.raises(error.InvalidEngineID):
        client.load_balanced_view(targets=[99])
