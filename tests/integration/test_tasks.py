"""Load-balanced tasks through a real scheduler and engines: submit, results, abort, barrier,
spin, clear, queue_status, the namespace options, and the LoadBalancedView."""

from __future__ import annotations

import io
import os
import time

import pytest

from enginefarm import MapTask, RemoteError, StringTask, TaskResult
from enginefarm.client.asyncresult import AsyncMapResult, AsyncResult
from enginefarm.errors import TaskError, TimeoutError

from ..harness import wait_for
from . import farm_tasks as ft
from .gatefiles import gates  # noqa: F401  (a fixture)

TIMEOUT_S = 60


@pytest.fixture
def one_engine(cluster):
    cluster.start_scheduler()
    return cluster.start_engine()


@pytest.fixture
def two_engines(cluster):
    cluster.start_scheduler()
    engines = cluster.start_engines(2)
    # Live comes just before consuming: wait until both take from the shared queue
    wait_for(lambda: ft.work_queue_consumers(cluster.settings) == 2, TIMEOUT_S, "both engines consuming")
    return engines


def status_of(client, task_id):
    return client.records.get(task_id).status


# --- submit and TaskResult ------------------------------------------------------------------
def test_map_task_result_and_timing(client, two_engines):
    before = time.time()
    task_id = client.submit(MapTask(ft.square, (7,), {"nap_s": 0.3}))
    assert isinstance(task_id, str) and task_id
    r = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert isinstance(r, TaskResult)
    assert r.taskid == task_id and r.failure is None
    assert r.result == 49
    assert r.engineid in {d.engine_id for d in two_engines}
    assert r.keys == []
    assert r.raise_exception() is None
    assert before <= r.submitted <= r.started <= r.completed <= time.time()
    assert r.duration == r.completed - r.started
    assert 0.3 <= r.duration < TIMEOUT_S
    assert r.attempts == 1


def test_string_task_push_pull_and_ns_and_run_alias(client, one_engine):
    task_id = client.submit(StringTask("c = a + b", push={"a": 1, "b": 16}, pull=["a", "c"]))
    r = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert r.failure is None
    assert r.keys == ["a", "c"]
    assert r.ns.c == 17 and r.ns["a"] == 1
    assert repr(r.ns) == "NS{'a': 1, 'c': 17}"
    assert r.c == 17
    assert r.result is None
    # A single name given as a string
    single = client.get_task_result(client.submit(StringTask("a = 17", pull="a")), block=True, timeout=TIMEOUT_S)
    assert repr(single.ns) == "NS{'a': 17}" and single.keys == ["a"]
    # run is submit under another name
    assert client.get_task_result(client.run(MapTask(pow, (2, 10))), block=True, timeout=TIMEOUT_S).result == 1024


def test_failed_tasks_carry_the_remote_error(client, one_engine):
    def bad(n):
        raise ValueError(f"bad {n}")

    r = client.get_task_result(client.submit(MapTask(bad, (7,))), block=True, timeout=TIMEOUT_S)
    assert isinstance(r.failure, RemoteError)
    assert r.failure.ename == "ValueError" and r.failure.evalue == "bad 7"
    assert "bad 7" in r.failure.traceback
    assert r.failure.engine_id == one_engine.engine_id == r.engineid
    assert r.failure.task_id == r.taskid
    assert r.result is None and r.keys == []
    with pytest.raises(RemoteError) as info:
        r.raise_exception()
    assert info.value is r.failure
    with pytest.raises(RemoteError) as info:
        r.ns
    assert info.value is r.failure
    # StringTasks: the code raises, or a pulled name is missing
    raising = client.get_task_result(client.submit(StringTask("x = 1 / 0", pull="x")), block=True,
                                     timeout=TIMEOUT_S)
    assert raising.failure.ename == "ZeroDivisionError"
    with pytest.raises(RemoteError) as info:
        raising.ns
    assert info.value.ename == "ZeroDivisionError"
    missing = client.get_task_result(client.submit(StringTask("x = 1", pull=["x", "nowhere"])), block=True,
                                     timeout=TIMEOUT_S)
    assert missing.failure.ename == "NameError"
    assert missing.failure.evalue == "name(s) not defined after the task ran: nowhere"
    assert missing.keys == []


def test_get_task_result_before_the_task_finishes(client, one_engine, gates):
    gate = gates.new()
    task_id = client.submit(MapTask(ft.gate, (gate,)))
    wait_for(lambda: status_of(client, task_id) == "running", TIMEOUT_S, "the gated task to start")
    assert client.get_task_result(task_id) is None
    assert client.get_task_result(task_id, block=False) is None
    with pytest.raises(TimeoutError):
        client.get_task_result(task_id, block=True, timeout=0.3)
    gates.open(gate)
    r = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert r.result == "released"
    # Once finished, a non-blocking call returns the result too
    assert client.get_task_result(task_id).result == "released"


def test_unknown_task_and_not_a_task(client, one_engine):
    with pytest.raises(TaskError) as info:
        client.get_task_result("no-such-task")
    assert "no-such-task" in str(info.value)
    with pytest.raises(TypeError) as info:
        client.submit(pow)
    assert str(info.value) == "submit takes a MapTask or StringTask, not builtin_function_or_method"
    assert client.history == []


# --- abort --------------------------------------------------------------------------------------
def test_abort_tasks_that_have_not_started(client, one_engine, gates, tmp_path):
    trace = str(tmp_path / "ran.txt")
    # Given a task that waits in the scheduler (no engine satisfies its depend)...
    held = client.submit(MapTask(ft.record, (trace, "held"), depend=ft.zone_is("nowhere")))
    wait_for(lambda: client.records.get(held).waiting, TIMEOUT_S, "the task to wait for an engine")
    # ...and one queued behind a running task
    gate = gates.new()
    busy = client.submit(MapTask(ft.gate, (gate,)))
    wait_for(lambda: status_of(client, busy) == "running", TIMEOUT_S, "the engine to be busy")
    queued = client.submit(MapTask(ft.record, (trace, "queued")))
    # When both are aborted (and the running one too)
    assert client.abort(queued) is True
    assert client.abort([held, busy]) == [True, False]
    gates.open(gate)
    # Then neither ever runs, their results say they were aborted, the running one finishes
    for task_id in (queued, held):
        r = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
        assert r.failure is not None
        assert r.failure.ename == "TaskAborted"
        assert r.failure.evalue == "the task was aborted before it started"
        assert r.result is None
        assert status_of(client, task_id) == "aborted"
    assert client.get_task_result(busy, block=True, timeout=TIMEOUT_S).result == "released"
    # A task submitted after them runs; had the queued one run, it would have run first.
    after = client.submit(MapTask(ft.record, (trace, "after")))
    assert client.get_task_result(after, block=True, timeout=TIMEOUT_S).result == "after"
    assert ft.labels(trace) == ["after"]
    # Finished tasks cannot be aborted; unknown ones are an error
    assert client.abort(after) is False
    with pytest.raises(TaskError):
        client.abort("no-such-task")


def test_aborting_a_queued_task_is_not_a_security_event(client, one_engine, gates):
    gate = gates.new()
    busy = client.submit(MapTask(ft.gate, (gate,)))
    wait_for(lambda: status_of(client, busy) == "running", TIMEOUT_S, "the engine to be busy")
    queued = client.submit(MapTask(int, ("1",)))
    assert client.abort(queued) is True
    gates.open(gate)
    after = client.submit(MapTask(int, ("2",)))
    client.barrier([busy, queued, after], timeout=TIMEOUT_S)
    # The engine met the aborted task's message on its way to the next one
    assert client.get_task_result(after).result == 2
    assert client.records.counter("dead_lettered:replayed") == 0
    assert "dead-lettering" not in one_engine.log()


# --- barrier, spin, clear -------------------------------------------------------------------------
def test_a_large_submission_goes_out_in_runs_in_order(client, two_engines):
    """Engines start on the first tasks while the rest are still being sealed and recorded,
    and the cluster's history keeps the submission order across the runs."""
    count = 5000
    ids = client.submit_many([MapTask(pow, (2, i % 10)) for i in range(count)])
    assert client.barrier(ids, timeout=TIMEOUT_S * 3) is None
    assert [client.results[t] for t in ids[:20]] == [2 ** (i % 10) for i in range(20)]
    assert client.hub_history()[-count:] == ids
    first, last = client.records.get_many([ids[0], ids[-1]])
    assert first.started < last.submitted


def test_barrier_waits_for_every_task(client, two_engines):
    def fails():
        raise RuntimeError("expected")

    ids = [client.submit(MapTask(ft.square, (i, 0.05))) for i in range(6)]
    ids.append(client.submit(MapTask(fails)))
    assert client.barrier(ids, timeout=TIMEOUT_S) is None
    assert all(t in client.results for t in ids)
    results = [client.get_task_result(t) for t in ids]
    assert [r.result for r in results[:-1]] == [i * i for i in range(6)]
    assert results[-1].failure.ename == "RuntimeError"


def test_barrier_times_out(client, one_engine, gates):
    gate = gates.new()
    done = client.submit(MapTask(int, ("5",)))
    client.barrier([done], timeout=TIMEOUT_S)
    slow = client.submit(MapTask(ft.gate, (gate,)))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        client.barrier([done, slow], timeout=0.5)
    assert time.monotonic() - start >= 0.5
    gates.open(gate)
    client.barrier([done, slow], timeout=TIMEOUT_S)


def test_a_finished_task_is_taken_in_without_a_wait(client, one_engine):
    task_id = client.submit(MapTask(int, ("12",)))
    wait_for(lambda: task_id in client.results, TIMEOUT_S, "the result to be taken in")
    assert client.results[task_id] == 12
    assert task_id not in client.outstanding
    assert client.spin() is None


def test_clear_forgets_finished_results_only(client, one_engine, gates):
    gate = gates.new()
    finished = [client.submit(MapTask(int, (str(i),))) for i in range(3)]
    client.barrier(finished, timeout=TIMEOUT_S)
    pending = client.submit(MapTask(ft.gate, (gate,)))
    assert client.clear() == 3
    assert not any(t in client.results or t in client.metadata for t in finished)
    assert pending in client.outstanding
    assert client.clear() == 0
    # The records stay in the cluster: a result can be fetched again
    assert client.get_task_result(finished[2]).result == 2
    gates.open(gate)
    assert client.get_task_result(pending, block=True, timeout=TIMEOUT_S).result == "released"
    assert client.clear() == 2


# --- queue_status ---------------------------------------------------------------------------------
STATUS_KEYS = ("pending", "running", "completed", "failed", "aborted")


def busy_engine(client, gates):
    """Two completed tasks and one failed, then one task running until its gate opens."""
    client.barrier([client.submit(MapTask(int, ("1",))), client.submit(MapTask(int, ("2",))),
                    client.submit(MapTask(ft.fail_now))], timeout=TIMEOUT_S)
    gate = gates.new()
    busy = client.submit(MapTask(ft.gate, (gate,)))
    wait_for(lambda: status_of(client, busy) == "running", TIMEOUT_S, "the engine to be busy")
    return gate, busy


def totals(status):
    return {k: status[k] for k in STATUS_KEYS}


def test_queue_status_counts(client, one_engine, gates):
    engine = one_engine.engine_id
    assert client.queue_status() == {
        engine: {"engine_id": engine, "queue": 0, **{k: 0 for k in STATUS_KEYS}},
        "unassigned": 0, **{k: 0 for k in STATUS_KEYS},
    }
    gate, busy = busy_engine(client, gates)
    waiting = [client.submit(MapTask(int, (str(i),))) for i in range(3)]
    status = client.queue_status()
    assert totals(status) == {"pending": 3, "running": 1, "completed": 2, "failed": 1, "aborted": 0}
    assert set(status) == {engine, "unassigned", *STATUS_KEYS}
    assert set(status[engine]) == {"engine_id", "queue", *STATUS_KEYS}
    assert (status[engine]["running"], status[engine]["completed"], status[engine]["failed"]) == (1, 2, 1)
    assert client.abort(waiting[2]) is True
    assert totals(client.queue_status()) == {"pending": 2, "running": 1, "completed": 2, "failed": 1, "aborted": 1}
    gates.open(gate)
    client.barrier([busy, *waiting], timeout=TIMEOUT_S)
    final = client.queue_status()
    assert totals(final) == {"pending": 0, "running": 0, "completed": 5, "failed": 1, "aborted": 1}
    assert final["unassigned"] == 0 and final[engine]["queue"] == 0
    assert (final[engine]["running"], final[engine]["completed"]) == (0, 5)


def test_queue_status_accounts_for_every_waiting_task(client, one_engine, gates):
    engine = one_engine.engine_id
    gate, busy = busy_engine(client, gates)
    client.submit_many([MapTask(int, (str(i),)) for i in range(3)])
    status = client.queue_status()
    assert status["pending"] == 3
    assert status["unassigned"] + status[engine]["queue"] == 3


def test_queue_status_through_the_scheduler(cluster, client, gates):
    # The priority scheme sends every task through the scheduler, which keeps two per engine
    cluster.start_scheduler(scheme="priority")
    engine = cluster.start_engine().engine_id
    gate, busy = busy_engine(client, gates)
    waiting = [client.submit(MapTask(int, (str(i),))) for i in range(3)]
    wait_for(lambda: client.records.backlog_size() == 2 and client.registry.pending_count(engine) == 2,
             TIMEOUT_S, "one task routed behind the running one and two in the backlog")
    status = client.queue_status()
    assert totals(status) == {"pending": 3, "running": 1, "completed": 2, "failed": 1, "aborted": 0}
    assert status["unassigned"] == 2
    assert status[engine]["queue"] == 1
    assert (status[engine]["running"], status[engine]["completed"], status[engine]["failed"]) == (1, 2, 1)
    verbose = client.queue_status(verbose=True)
    assert verbose[engine]["queue"] == [waiting[0]]
    assert sorted(verbose["unassigned"]) == sorted(waiting[1:])
    assert verbose[engine]["running"] == [busy]
    gates.open(gate)
    client.barrier([busy, *waiting], timeout=TIMEOUT_S)
    final = client.queue_status()
    assert totals(final) == {"pending": 0, "running": 0, "completed": 6, "failed": 1, "aborted": 0}
    assert final["unassigned"] == 0 and final[engine]["queue"] == 0


def test_queue_status_unassigned_drops_an_aborted_task(cluster, client, gates):
    cluster.start_scheduler(scheme="priority")
    cluster.start_engine()
    gate, busy = busy_engine(client, gates)
    waiting = [client.submit(MapTask(int, (str(i),))) for i in range(3)]
    wait_for(lambda: client.queue_status()["unassigned"] == 2, TIMEOUT_S, "two tasks in the backlog")
    assert client.abort(waiting[2]) is True
    assert client.queue_status()["aborted"] == 1
    gates.open(gate)
    client.barrier([busy, *waiting], timeout=TIMEOUT_S)
    assert client.queue_status()["pending"] == 0
    wait_for(lambda: client.queue_status()["unassigned"] == 0, TIMEOUT_S, "the aborted task to leave the backlog")


# --- namespace options ------------------------------------------------------------------------------
def test_clear_before_and_clear_after(client, one_engine):
    def run(task):
        return client.get_task_result(client.submit(task), block=True, timeout=TIMEOUT_S)

    assert run(StringTask("kept = 1", pull="kept")).kept == 1
    # Without clearing, the namespace persists between tasks on an engine
    assert run(StringTask("seen = 'kept' in globals()", pull="seen")).seen is True
    # clear_before: the task starts from an empty namespace (its push still applies)
    r = run(StringTask("seen = 'kept' in globals(); total = a + 1", push={"a": 1}, pull=["seen", "total"],
                       clear_before=True))
    assert (r.seen, r.total) == (False, 2)
    # clear_after: what the task defined is gone once it finished, but its pull still worked
    assert run(StringTask("temp = 5", pull="temp", clear_after=True)).temp == 5
    assert run(StringTask("left = sorted(k for k in globals() if not k.startswith('__'))", pull="left")).left == []
    # MapTasks reset the engine namespace too
    client[one_engine.engine_id].push({"x": 1})
    assert client[one_engine.engine_id].keys() == ["left", "x"]
    assert run(MapTask(int, ("3",), clear_after=True)).result == 3
    assert client[one_engine.engine_id].keys() == []


def test_clear_after_runs_even_when_the_task_fails(client, one_engine):
    r = client.get_task_result(client.submit(StringTask("junk = 1; raise KeyError('k')", clear_after=True)),
                               block=True, timeout=TIMEOUT_S)
    assert r.failure.ename == "KeyError"
    assert client[one_engine.engine_id].keys() == []


# --- LoadBalancedView ---------------------------------------------------------------------------------
def test_lb_apply(client, two_engines):
    lbv = client.load_balanced_view()
    ar = lbv.apply(ft.square, 9, block=False)
    assert isinstance(ar, AsyncResult)
    assert ar.get(timeout=TIMEOUT_S) == 81
    assert ar.metadata.engine_id in {d.engine_id for d in two_engines}
    assert lbv.apply(divmod, 17, 5) == (3, 2)  # the client blocks by default
    assert lbv.apply_sync(ft.square, 3, nap_s=0.01) == 9
    with pytest.raises(RemoteError) as info:
        lbv.apply(divmod, 1, 0)
    assert info.value.ename == "ZeroDivisionError"


def test_lb_map_ordered_with_chunks(client, two_engines):
    lbv = client.load_balanced_view()
    ar = lbv.map(ft.square, range(10), chunksize=3, block=False)
    assert isinstance(ar, AsyncMapResult)
    assert len(ar) == 10 and len(ar.task_ids) == 4
    assert ar.chunk_sizes == [3, 3, 3, 1]
    assert list(ar) == [i * i for i in range(10)]
    assert ar.progress == 10
    assert ar.get(timeout=TIMEOUT_S) == [i * i for i in range(10)]


def test_lb_map_several_sequences_and_blocking(client, two_engines):
    lbv = client.load_balanced_view()
    assert lbv.map(lambda a, b: a + b, [1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    assert lbv.map_sync(str, range(25)) == [str(i) for i in range(25)]
    # Automatic chunks: 4 per engine
    ar = lbv.map_async(abs, range(-40, 40))
    assert len(ar.task_ids) == 8 and len(ar) == 80
    assert ar.get(timeout=TIMEOUT_S) == [abs(i) for i in range(-40, 40)]
    with pytest.raises(TypeError):
        lbv.map(abs)


def test_lb_map_failure_raises(client, two_engines):
    def inverse(x):
        return 1 / x

    ar = client.load_balanced_view().map(inverse, [1, 2, 0, 4], chunksize=1, block=False)
    with pytest.raises(RemoteError) as info:
        ar.get(timeout=TIMEOUT_S)
    assert info.value.ename == "ZeroDivisionError"
    items = iter(ar)
    assert [next(items), next(items)] == [1.0, 0.5]
    with pytest.raises(RemoteError):
        next(items)


def test_lb_map_iterates_in_order_as_results_arrive(client, two_engines, gates):
    gate = gates.new()

    wait_on = ft.gate

    def item(x):
        return wait_on(x) if isinstance(x, str) else x

    ar = client.load_balanced_view().map(item, [1, gate, 3], chunksize=1, block=False)
    items = iter(ar)
    # The first item is there while the second is still held back...
    assert next(items) == 1
    wait_for(lambda: ar.progress == 2, TIMEOUT_S, "the first and third items")
    assert not ar.ready()
    # ...and the third, although finished, comes only after the second
    gates.open(gate)
    assert list(items) == ["released", 3]
    assert ar.progress == 3 == len(ar)


def test_lb_map_unordered_yields_in_completion_order(client, two_engines, gates):
    gate = gates.new()

    wait_on = ft.gate

    def item(x):
        return wait_on(x) if isinstance(x, str) else x

    # Two engines, two tasks: each gets one
    ar = client.load_balanced_view().map(item, [gate, 2], chunksize=1, ordered=False, block=False)
    items = iter(ar)
    assert next(items) == 2
    assert ar.progress == 1
    gates.open(gate)
    assert list(items) == ["released"]


def test_wait_interactive(client, two_engines, gates):
    gate = gates.new()
    stream = io.StringIO()
    ar = client.load_balanced_view().map(ft.gate, [gate, gate], chunksize=1, block=False)
    assert ar.wait_interactive(interval_s=0.05, timeout=0.3, stream=stream) is False
    assert ar.progress == 0
    gates.open(gate)
    assert ar.wait_interactive(interval_s=0.05, stream=stream) is True
    assert ar.progress == 2
    # Not a terminal: the bar stays silent
    assert stream.getvalue() == ""


def test_wait_interactive_on_a_terminal_draws_the_bar(client, one_engine):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    ar = client.load_balanced_view().map(ft.square, range(4), [0.2] * 4, chunksize=2, block=False)
    assert ar.wait_interactive(interval_s=0.05, stream=stream) is True
    drawn = stream.getvalue()
    # tqdm's text bar: redrawn in place, left on its own line when done.
    assert drawn.endswith("\n")
    assert "4/4" in drawn and "100%" in drawn and "tasks" in drawn
    assert os.linesep not in drawn[:-1]
