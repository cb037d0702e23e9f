"""Results and remote errors as ipyparallel users handle them, against real engines."""

from __future__ import annotations

import pytest

from enginefarm import MapTask, error
from enginefarm.errors import CompositeError, RemoteError

from . import farm_tasks as ft
from ..harness import wait_for

TIMEOUT_S = 60


def fails(label: str) -> None:
    raise ValueError(f"failed on purpose: {label}")


def shout(text: str) -> str:
    import sys

    print(f"out {text}")
    print(f"err {text}", file=sys.stderr)
    return text.upper()


def test_remote_failures_raise_subclasses_by_meaning(cluster, client, tmp_path, gates):
    engine = cluster.start_engine()
    view = client[engine.engine_id]
    # A task that ran past its time limit is a TaskTimeout
    with pytest.raises(error.TaskTimeout) as late:
        client.get_task_result(client.submit(MapTask(ft.square, (2, 30.0), timeout=0.5)), block=True,
                               timeout=TIMEOUT_S).raise_exception()
    assert isinstance(late.value, RemoteError) and late.value.ename == "TaskTimeout"
    # A task whose engine process died is an EngineError
    with pytest.raises(error.EngineError) as died:
        view.apply(ft.exit_engine_process, str(tmp_path / "trace"))
    assert died.value.ename == "EngineProcessDied"
    # A task aborted before it ran is a TaskAborted, and `except RemoteError` catches it too
    gate = gates()
    blocker = view.apply(ft.gate, gate, block=False)
    queued = view.apply(pow, 2, 2, block=False)
    assert client.abort(queued.task_ids[0]) is True
    ft.Gates.open(gate)
    blocker.get(timeout=TIMEOUT_S)
    with pytest.raises(RemoteError) as aborted:
        queued.get(timeout=TIMEOUT_S)
    assert isinstance(aborted.value, error.TaskAborted)
    # An ordinary exception stays a plain RemoteError
    with pytest.raises(RemoteError) as plain:
        view.apply(fails, "x")
    assert type(plain.value) is RemoteError and plain.value.ename == "ValueError"


def test_composite_error_renders_raises_and_limits_tracebacks(cluster, client, capsys):
    cluster.start_engines(2)
    with pytest.raises(CompositeError) as both:
        client.direct_view().apply(fails, "both")
    composite = both.value
    # Each failure can be re-raised on its own, and its traceback printed
    with pytest.raises(RemoteError) as second:
        composite.raise_exception(1)
    assert second.value is composite.errors[1] and second.value.engine_id == 1
    composite.print_traceback(0)
    assert "failed on purpose: both" in capsys.readouterr().out
    # Drawing every traceback stops at tb_limit
    composite.tb_limit = 1
    rendered = composite.render_traceback()
    assert rendered.count("failed on purpose: both") == 1 and "1 more exceptions" in rendered


def test_async_result_attributes_and_items(cluster, client):
    engines = cluster.start_engines(2)
    ar = client.direct_view().apply(shout, "hi", block=False)
    assert ar.get(timeout=TIMEOUT_S) == ["HI", "HI"]
    ids = [d.engine_id for d in engines]
    # Metadata as attributes and items, one entry per task
    assert ar.engine_id == ids == ar["engine_id"]
    assert ar.stdout == ["out hi\n", "out hi\n"] and ar.stderr == ["err hi\n", "err hi\n"]
    assert all(s <= b <= c for s, b, c in zip(ar.submitted, ar.started, ar.completed))
    assert ar.get_dict() == {ids[0]: "HI", ids[1]: "HI"}
    assert ar[1] == "HI"
    # Timings: the wall time spans the tasks, the serial time adds their runs up
    runs = [(c - b).total_seconds() for b, c in zip(ar.started, ar.completed)]
    assert ar.wall_time >= max(runs) > 0
    assert ar.serial_time == pytest.approx(sum(runs))
    assert ar.elapsed >= ar.wall_time
    # A single-engine result gives bare values and its one id
    one = client[ids[0]].apply(shout, "one", block=False)
    assert one.get(timeout=TIMEOUT_S) == "ONE"
    assert one.engine_id == ids[0] and one.msg_id == one.task_ids[0] and one.stdout == "out one\n"
    assert one.get_dict() == {ids[0]: "ONE"}


def test_get_can_return_exceptions_instead_of_raising(cluster, client):
    cluster.start_scheduler()
    cluster.start_engines(2)
    view = client.load_balanced_view()
    ar = view.map(lambda x: 1 / x, [1, 0, 2, 4], block=False, chunksize=1)
    values = ar.get(timeout=TIMEOUT_S, return_exceptions=True)
    assert values[0] == 1.0 and values[2] == 0.5 and values[3] == 0.25
    assert isinstance(values[1], RemoteError) and values[1].ename == "ZeroDivisionError"
    with pytest.raises(RemoteError):
        ar.get(timeout=TIMEOUT_S)


def test_purging_local_hub_and_everything(cluster, client):
    engines = cluster.start_engines(2)
    first, second = (client[d.engine_id].apply(pow, 2, d.engine_id + 1, block=False) for d in engines)
    assert first.get(timeout=TIMEOUT_S) == 2 and second.get(timeout=TIMEOUT_S) == 4
    one, two = first.task_ids[0], second.task_ids[0]
    # Local: this client forgets its copy, the hub keeps the record
    assert client.purge_local_results(one) == 1
    assert one not in client.results and client.db_query({"task_id": one}, keys=["status"])
    assert client.get_result(one).get(timeout=TIMEOUT_S) == 2  # read back from the hub
    assert client.purge_local_results(targets=[engines[1].engine_id]) == 1 and two not in client.results
    # Hub: the record goes, a copy held here stays
    assert client.purge_hub_results(one) == 1
    assert client.db_query({"task_id": one}) == [] and client.results[one] == 2
    # Everything: records, results and this client's history
    assert client.purge_everything() == 1
    assert client.hub_history() == [] and client.history == [] and client.results == {}


def test_an_owner_takes_the_results_out_of_the_client(cluster, client):
    engine = cluster.start_engine()
    done = client[engine.engine_id].apply(pow, 3, 3, block=False)
    done.get(timeout=TIMEOUT_S)
    client.purge_local_results("all")
    owned = client.get_result(done.task_ids, owner=True, block=False)
    assert owned.get(timeout=TIMEOUT_S) == [27]
    assert done.task_ids[0] not in client.results
    # It keeps them itself
    assert owned.ready() and owned.successful() and owned.get() == [27]


def test_abort_on_results_and_on_load_balanced_views(cluster, client, gates):
    cluster.start_scheduler()
    cluster.start_engine()
    gate = gates()
    view = client.load_balanced_view()
    holder = view.apply(ft.gate, gate, block=False)
    wait_for(lambda: client.records.get(holder.task_ids[0]).status == "running", TIMEOUT_S, "the gate task to run")
    waiting = view.apply(pow, 2, 2, block=False)
    also = view.map(abs, [-1, -2], chunksize=1, block=False)
    # An AsyncResult aborts its own tasks; a view aborts what it has outstanding
    assert waiting.abort() is True
    # The aborted task settles and leaves what the view has outstanding
    wait_for(waiting.done, TIMEOUT_S, "the aborted task to settle")
    assert waiting.task_ids[0] not in view.outstanding
    # (the running gate task is not aborted; the two queued map tasks are)
    assert sorted(view.abort()) == [False, True, True]
    ft.Gates.open(gate)
    assert holder.get(timeout=TIMEOUT_S) == "released"
    with pytest.raises(error.TaskAborted):
        waiting.get(timeout=TIMEOUT_S)
    with pytest.raises(error.RemoteError):
        also.get(timeout=TIMEOUT_S)
    assert view.outstanding == set()


def test_records_and_metadata_give_moments_as_datetimes_and_know_msg_id(cluster, client):
    from datetime import datetime, timedelta, timezone

    engine = cluster.start_engine()
    before = datetime.now(timezone.utc)
    ar = client[engine.engine_id].apply(pow, 2, 6, block=False)
    assert ar.get(timeout=TIMEOUT_S) == 64
    task_id = ar.task_ids[0]
    # Metadata and records: timezone-aware datetimes
    meta = ar.metadata
    assert meta["submitted"].tzinfo is not None and before <= meta["submitted"] <= meta["completed"]
    row = client.db_query({"msg_id": task_id}, keys=["msg_id", "submitted", "completed"])[0]
    assert row["msg_id"] == row["task_id"] == task_id and row["completed"] == meta["completed"]
    # Queries take datetimes (and epoch seconds still)
    assert [r["task_id"] for r in client.db_query({"submitted": {"$gte": before}}, keys=[])] == [task_id]
    later = before + timedelta(hours=1)
    assert client.db_query({"submitted": {"$gte": later}}) == []
    assert [r["task_id"] for r in client.db_query({"submitted": {"$gt": before.timestamp()}}, keys=[])] == [task_id]
    # A moment read back from db_query matches its own record, at a datetime's resolution
    for _ in range(20):
        done = client[engine.engine_id].apply(pow, 2, 1, block=False)
        done.get(timeout=TIMEOUT_S)
        mine = client.db_query({"task_id": done.task_ids[0]}, keys=["completed"])[0]["completed"]
        for condition in ({"$gte": mine}, {"$lte": mine}, mine):
            rows = client.db_query({"task_id": done.task_ids[0], "completed": condition}, keys=[])
            assert [r["task_id"] for r in rows] == done.task_ids, condition
        assert client.db_query({"task_id": done.task_ids[0], "completed": {"$gt": mine}}) == []
    # The seed's TaskResult keeps seconds
    lb = client.get_task_result(task_id)
    assert isinstance(lb.submitted, float) and lb.duration is not None and lb.duration >= 0


def test_abort_on_a_direct_view_takes_what_waits_on_its_engines(cluster, client, gates):
    engines = cluster.start_engines(2)
    gate = gates()
    first, second = (client[d.engine_id] for d in engines)
    held = first.apply(ft.gate, gate, block=False)
    wait_for(lambda: client.records.get(held.task_ids[0]).status == "running", TIMEOUT_S, "the gate task to run")
    queued_first = first.apply(pow, 2, 2, block=False)
    elsewhere = second.apply(pow, 3, 3, block=False)
    assert elsewhere.get(timeout=TIMEOUT_S) == 27
    # Only what waits on the view's engine is aborted; what runs there goes on
    assert sorted(first.abort()) == [False, True]
    ft.Gates.open(gate)
    assert held.get(timeout=TIMEOUT_S) == "released"
    with pytest.raises(error.TaskAborted):
        queued_first.get(timeout=TIMEOUT_S)
