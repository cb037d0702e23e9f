"""Seed 004's Client methods over the shared history, against real engines and schedulers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from enginefarm import Client, MapTask, RemoteError
from enginefarm.errors import TaskError
from enginefarm.protocol import open_envelope
from enginefarm.serialization import loads
from enginefarm.store.records import ABORTED, COMPLETED, FAILED, PENDING, RUNNING

from .farm_tasks import wait_file, fail, anywhere
from ..harness import remove_cluster, wait_for

LONG = 120.0  # generous: the box is small and loaded


# --- run on engines (this module is pickled by value, see the end) ---------------------------
def tag(value):
    """``value`` and the pid of the engine (the child's supervisor) that ran it."""
    import os

    return value, os.getppid()


# --- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture
def engines(cluster):
    daemons = cluster.start_engines(2)
    assert sorted(d.engine_id for d in daemons) == [0, 1]
    return sorted(daemons, key=lambda d: d.engine_id)


@pytest.fixture
def other_client(settings, cluster):
    """A second client on the same cluster."""
    c = Client(settings=settings)
    yield c
    c.close()


def status_of(client, task_id):
    rows = client.db_query({"task_id": task_id}, keys=["status"])
    return rows[0]["status"] if rows else None


def wait_running(client, task_id):
    wait_for(lambda: status_of(client, task_id) == RUNNING, LONG, f"task {task_id} to start")


def apply_nb(client, target, f, *args):
    """A non-blocking apply on one engine; returns (AsyncResult, task id)."""
    ar = client[target].apply(f, *args, block=False)
    return ar, ar.task_ids[0]


# --- ids, history, outstanding, results, block ------------------------------------------------
def test_ids_history_outstanding_results_and_block(client, engines, gates):
    assert client.ids == [0, 1]
    assert client.block is True and client.history == [] and client.outstanding == set()
    # Blocking by default: the value comes back, the result is kept
    assert client[0].apply(pow, 2, 5) == 32
    first = client.history[-1]
    assert client.results == {first: 32} and client.outstanding == set()

    # Non-blocking client: an AsyncResult, outstanding until it finishes
    client.block = False
    gate = gates()
    ar = client[1].apply(wait_file, gate, "late")
    second = ar.task_ids[0]
    assert client.history == [first, second]
    assert client.outstanding == {second} and second not in client.results
    Path(gate).touch()
    assert ar.get(timeout=LONG) == "late"
    assert client.outstanding == set() and client.results[second] == "late"

    # A failure is kept as the RemoteError
    bad = client[0].apply(fail, "nope")
    with pytest.raises(RemoteError):
        bad.get(timeout=LONG)
    error = client.results[bad.task_ids[0]]
    assert isinstance(error, RemoteError) and error.ename == "ValueError" and error.evalue == "nope"
    assert client.history == [first, second, bad.task_ids[0]]
    assert client.hub_history() == client.history


# --- get_result -----------------------------------------------------------------------------------
def test_get_result_by_index_and_id_for_any_client(client, other_client, engines, gates):
    assert client[0].apply(tag, "a")[0] == "a"
    done_id = client.history[-1]
    gate = gates()
    _, slow_id = apply_nb(client, 1, wait_file, gate, "b")

    # By history index (default: the last task)
    assert client.get_result(0).get() == client.results[done_id]
    assert client.get_result(block=False).task_ids == [slow_id]
    assert client.get_result([0, -1], block=False).task_ids == [done_id, slow_id]

    # A client that did not submit them
    assert other_client.history == []
    finished = other_client.get_result(done_id)  # blocks by default; already done
    assert finished.ready() and finished.get() == client.results[done_id]
    assert finished.metadata["engine_id"] == 0 and finished.metadata["status"] == COMPLETED
    waiting = other_client.get_result(slow_id, block=False)
    assert waiting.ready() is False
    assert waiting.wait(0.3) is False
    Path(gate).touch()
    assert waiting.get(timeout=LONG) == "b"
    assert waiting.metadata["engine_id"] == 1
    both = other_client.get_result([done_id, slow_id])
    assert both.get() == [("a", engines[0].pid), "b"]
    # block=True waits even for a non-blocking client
    other_client.block = False
    client.block = False
    _, third = apply_nb(client, 0, tag, "c")
    assert other_client.get_result(third, block=True).ready() is True
    assert other_client.results[third] == ("c", engines[0].pid)

    # Failures come back as RemoteError
    _, bad = apply_nb(client, 0, fail, "broken")
    with pytest.raises(RemoteError) as info:
        other_client.get_result(bad, block=True).get()
    assert info.value.ename == "ValueError" and info.value.evalue == "broken"

    # Unknown ids and indices past the (local) history
    with pytest.raises(TaskError, match="no task 'no-such-task' in cluster"):
        other_client.get_result("no-such-task")
    with pytest.raises(TaskError, match=r"no task at history index 0 \(0 submitted\)"):
        other_client.get_result(0)
    with pytest.raises(TaskError, match=r"no task at history index 9 \(4 submitted\)"):
        client.get_result(9)


# --- result_status --------------------------------------------------------------------------------
def test_result_status(client, other_client, engines, gates):
    assert client[0].apply(pow, 3, 2) == 9
    done = client.history[-1]
    client.block = False
    gate = gates()
    _, running = apply_nb(client, 1, wait_file, gate, "x")
    wait_running(client, running)
    bad_ar, bad = apply_nb(client, 0, fail, "no")
    assert bad_ar.wait(LONG)

    assert client.result_status([done, running, bad]) == {"pending": [running], "completed": [done, bad]}
    # From another client, and with the results of the finished ones
    status = other_client.result_status([done, running, bad], status_only=False)
    assert set(status) == {"pending", "completed", done, bad}
    assert status["pending"] == [running] and status["completed"] == [done, bad]
    assert status[done] == 9
    assert isinstance(status[bad], RemoteError) and status[bad].ename == "ValueError"
    # By history index, and a single id
    assert client.result_status([0, 1]) == {"pending": [running], "completed": [done]}
    assert client.result_status(done) == {"pending": [], "completed": [done]}
    Path(gate).touch()
    assert client.wait([running], LONG)
    assert client.result_status([running], status_only=False) == {"pending": [], "completed": [running],
                                                                 running: "x"}
    with pytest.raises(TaskError, match="no task 'ghost'"):
        client.result_status(["ghost"])


# --- wait -------------------------------------------------------------------------------------------
def test_wait_with_and_without_timeout(client, engines, gates):
    client.block = False
    gate_a, gate_b = gates(), gates()
    ar_a, a = apply_nb(client, 0, wait_file, gate_a, "A")
    _, b = apply_nb(client, 1, wait_file, gate_b, "B")
    # Not finished: a timeout runs out and says so
    started = time.monotonic()
    assert client.wait([a], timeout=0.5) is False
    assert time.monotonic() - started >= 0.5
    assert client.wait(timeout=0) is False
    assert client.wait(ar_a, timeout=0) is False
    Path(gate_a).touch()
    assert client.wait([a], timeout=LONG) is True
    assert client.results[a] == "A"
    # Default jobs: everything outstanding (b still runs)
    assert client.outstanding == {b}
    assert client.wait(timeout=0.2) is False
    Path(gate_b).touch()
    assert client.wait() is True  # timeout=-1: no limit
    assert client.outstanding == set() and client.results[b] == "B"
    # History indices work too, and finished jobs return at once
    assert client.wait([0, 1], timeout=0) is True


# --- abort -------------------------------------------------------------------------------------------
def test_abort_tasks_that_have_not_started(client, engines, gates):
    client.block = False
    gate = gates()
    _, running = apply_nb(client, 0, wait_file, gate, "ran")
    wait_running(client, running)
    queued = [apply_nb(client, 0, pow, 2, n) for n in range(3)]
    ids = [t for _, t in queued]

    assert client.abort(ids[0]) is True
    assert client.abort([ids[1], running]) == [True, False]
    assert client.abort(ids[0]) is False  # already aborted
    Path(gate).touch()
    assert client.wait([running, ids[2]], LONG)
    assert client.results[running] == "ran" and client.results[ids[2]] == 4
    for ar, task_id in queued[:2]:
        with pytest.raises(RemoteError) as info:
            ar.get(timeout=LONG)
        assert info.value.ename == "TaskAborted"
        record = client.db_query({"task_id": task_id})[0]
        # It never ran: no start, no attempt
        assert record["status"] == ABORTED and record["attempts"] == 0 and "started" not in record
    assert client.abort(ids[2]) is False  # finished
    assert client.abort(1) is False  # by history index: the first aborted one
    with pytest.raises(TaskError, match="no task 'ghost'"):
        client.abort("ghost")
    assert client.db_query({"status": ABORTED}, keys=[]) == [{"task_id": ids[0]}, {"task_id": ids[1]}]


# --- resubmit ----------------------------------------------------------------------------------------
def test_resubmit_direct_tasks(client, other_client, engines, gates):
    assert client[1].apply(tag, "again") == ("again", engines[1].pid)
    old = client.history[-1]
    # Blocking: the value of the new run, on the same engine, as a new task
    assert client.resubmit(old) == ("again", engines[1].pid)
    new = client.history[-1]
    assert new != old and client.history == [old, new]
    old_rec, new_rec = client.db_query({"task_id": {"$in": [old, new]}}, keys=["kind", "engine_id", "status",
                                                                             "client_id", "request"])
    assert (new_rec["kind"], new_rec["engine_id"], new_rec["status"]) == ("apply", 1, COMPLETED)
    payloads = [open_envelope(client.ring, r["request"], expect={"task_id": r["task_id"]}).payload
                for r in (old_rec, new_rec)]
    assert payloads[0] == payloads[1]
    func, args, kwargs = loads(payloads[1])
    assert (func.__name__, args, kwargs) == ("tag", ("again",), {})

    # Non-blocking, and from a client that did not submit it
    ar = other_client.resubmit(old, block=False)
    assert len(ar.task_ids) == 1 and ar.task_ids[0] not in (old, new)
    assert ar.get(timeout=LONG) == ("again", engines[1].pid)
    assert client.db_query({"task_id": ar.task_ids[0]}, keys=["client_id"])[0]["client_id"] == other_client.client_id

    # In flight: the task goes on, and its resubmission is a new task of its own
    client.block = False
    gate = gates()
    _, busy = apply_nb(client, 0, wait_file, gate)
    again = client.resubmit(busy)
    assert again.task_ids[0] != busy and client.hub_history()[-2:] == [busy, again.task_ids[0]]
    Path(gate).touch()
    assert client.get_result(busy).get(timeout=LONG) == again.get(timeout=LONG)
    # Refused for unknown ids; nothing new is recorded
    before = client.hub_history()
    with pytest.raises(TaskError, match="no task 'ghost'"):
        client.resubmit(["ghost"])
    assert client.hub_history() == before


def test_resubmit_load_balanced_tasks(client, cluster, gates):
    cluster.start_engine()
    cluster.start_scheduler()
    # An aborted load-balanced task is never run by the scheduler
    gate = gates()
    holder = client.submit(MapTask(wait_file, (gate, "held")))
    wait_running(client, holder)
    aborted = client.submit(MapTask(pow, (2, 2)))
    assert client.abort(aborted) is True
    old = client.submit(MapTask(pow, (2, 10), retries=2))
    Path(gate).touch()
    assert client.wait([holder, old], LONG)
    assert client.results[old] == 1024

    ar = client.resubmit(old, block=False)
    new = ar.task_ids[0]
    assert new != old and ar.get(timeout=LONG) == 1024
    rec = client.db_query({"task_id": new})[0]
    assert (rec["kind"], rec["status"], rec["lb"], rec["retries"], rec["attempts"]) == ("map_task", COMPLETED,
                                                                                         True, 2, 1)
    assert client.resubmit([old]) == [1024]  # a list: a list of values
    # The aborted task is still aborted and never started
    rec = client.db_query({"task_id": aborted})[0]
    assert rec["status"] == ABORTED and rec["attempts"] == 0 and "started" not in rec
    # In flight: a new task beside the one that goes on
    gate2 = gates()
    busy = client.submit(MapTask(wait_file, (gate2, "both")))
    again = client.resubmit(busy, block=False)
    assert again.task_ids[0] != busy
    Path(gate2).touch()
    assert again.get(timeout=LONG) == "both" and client.get_task_result(busy, block=True, timeout=LONG).result == "both"


# --- purge_results -----------------------------------------------------------------------------------
def test_purge_results(client, settings, engines, gates):
    other = settings.replace(cluster=settings.cluster + "x")
    elsewhere = Client(settings=other)
    try:
        # Given finished records in another cluster (aborted before they ran)
        foreign = [elsewhere.submit(MapTask(pow, (1, 1))) for _ in range(2)]
        assert elsewhere.abort(foreign) == [True, True]

        a = client[0].apply(pow, 2, 1)
        b = client[1].apply(pow, 2, 2)
        c = client[0].apply(pow, 2, 3)
        assert (a, b, c) == (2, 4, 8)
        ta, tb, tc = client.history
        client.block = False
        bad, td = apply_nb(client, 1, fail, "x")
        assert bad.wait(LONG)
        gate = gates()
        _, tg = apply_nb(client, 0, wait_file, gate, "g")

        # By id: the record goes, and the local result with it
        assert client.purge_results(ta) == 1
        assert client.db_query({"task_id": ta}) == [] and ta not in client.hub_history()
        assert ta not in client.results and tb in client.results
        # In flight: refused, nothing removed (not even the finished one named with it)
        with pytest.raises(TaskError, match=f"cannot purge task {tg} while it is in flight"):
            client.purge_results([tb, tg])
        assert client.hub_history() == [tb, tc, td, tg]
        with pytest.raises(TaskError, match="no task 'ghost'"):
            client.purge_results(["ghost"])
        # By engine: engine 1's finished records
        assert client.purge_results(targets=[1]) == 2
        assert client.hub_history() == [tc, tg]
        # By history index (-1: the last task, here in flight)
        with pytest.raises(TaskError, match="in flight"):
            client.purge_results(-1)
        # Everything finished; what runs stays
        assert client.purge_results("all") == 1
        assert client.hub_history() == [tg] and client.results == {}
        Path(gate).touch()
        assert client.wait([tg], LONG)
        assert client.purge_results("all") == 1
        assert client.hub_history() == [] and client.db_query({}) == []

        # The other cluster's records are untouched
        assert elsewhere.hub_history() == foreign
        assert [r["status"] for r in elsewhere.db_query({})] == [ABORTED, ABORTED]
    finally:
        elsewhere.close()
        remove_cluster(other)


def test_purge_results_by_history_index_zero(client, engines):
    assert client[0].apply(pow, 2, 1) == 2
    first = client.history[0]
    assert client.purge_results(0) == 1
    assert client.db_query({"task_id": first}) == []


# --- hub_history ---------------------------------------------------------------------------------------
def test_hub_history_across_clients_in_submission_order(client, other_client):
    # No scheduler: the tasks wait, their records are there all the same
    ids = []
    for who in (client, other_client, client, other_client, other_client):
        ids.append(who.submit(MapTask(pow, (2, len(ids)))))
    assert client.hub_history() == ids
    assert other_client.hub_history() == ids
    assert client.history == [ids[0], ids[2]]
    assert other_client.history == [ids[1], ids[3], ids[4]]


def test_hub_history_keeps_submission_order_within_a_batch(client):
    ids = client.submit_many([MapTask(pow, (2, i)) for i in range(8)])
    assert client.history == ids
    assert client.hub_history() == ids


# --- queue_status -----------------------------------------------------------------------------------------
def test_queue_status_per_engine(client, engines, gates):
    assert client[1].apply(pow, 2, 2) == 4
    done = client.history[-1]
    client.block = False
    bad, failed = apply_nb(client, 1, fail, "x")
    assert bad.wait(LONG)
    gate = gates()
    _, running = apply_nb(client, 0, wait_file, gate)
    wait_running(client, running)
    waiting = sorted(apply_nb(client, 0, pow, 3, n)[1] for n in range(2))

    status = client.queue_status()
    assert status == {
        0: {"engine_id": 0, "queue": 2, "pending": 2, "running": 1, "completed": 0, "failed": 0, "aborted": 0},
        1: {"engine_id": 1, "queue": 0, "pending": 0, "running": 0, "completed": 1, "failed": 1, "aborted": 0},
        "unassigned": 0,
        PENDING: 2, RUNNING: 1, COMPLETED: 1, FAILED: 1, ABORTED: 0,
    }
    verbose = client.queue_status(verbose=True)
    assert verbose[0] == {"engine_id": 0, "queue": waiting, "pending": waiting, "running": [running],
                          "completed": [], "failed": [], "aborted": []}
    assert verbose[1] == {"engine_id": 1, "queue": [], "pending": [], "running": [], "completed": [done],
                          "failed": [failed], "aborted": []}
    assert verbose["unassigned"] == [] and verbose[PENDING] == 2
    only = client.queue_status(targets=1)
    assert [k for k in only if isinstance(k, int)] == [1] and only[1] == status[1]
    assert [k for k in client.queue_status(targets=[0]) if isinstance(k, int)] == [0]
    Path(gate).touch()
    assert client.wait(timeout=LONG)
    assert client.queue_status()[0] == {"engine_id": 0, "queue": 0, "pending": 0, "running": 0,
                                        "completed": 3, "failed": 0, "aborted": 0}


def test_queue_status_shows_tasks_waiting_for_the_scheduler(client, cluster):
    cluster.start_scheduler()  # no engines: the scheduler holds the tasks
    # (tasks with a depend always go through the scheduler)
    ids = [client.submit(MapTask(pow, (2, n), depend=anywhere)) for n in range(2)]
    wait_for(lambda: client.queue_status()["unassigned"] == 2, LONG, "the scheduler to take both tasks")
    assert client.queue_status() == {"unassigned": 2, PENDING: 2, RUNNING: 0, COMPLETED: 0, FAILED: 0,
                                     ABORTED: 0}
    assert client.queue_status(verbose=True)["unassigned"] == ids


# --- db_query through the client ---------------------------------------------------------------------------
def test_db_query_over_real_tasks(client, engines):
    t0 = time.time()
    assert client[0].apply(pow, 2, 3) == 8
    mid = time.time()
    assert client[1].apply(pow, 2, 4) == 16
    with pytest.raises(RemoteError):
        client[1].apply(fail, "q")
    a, b, c = client.history
    assert client.db_query({"submitted": {"$gt": mid}}, keys=["engine_id"]) == [
        {"task_id": b, "engine_id": 1}, {"task_id": c, "engine_id": 1}]
    assert client.db_query({"submitted": {"$gt": t0, "$lt": mid}}, keys=["summary"]) == [
        {"task_id": a, "summary": "8"}]
    assert [r["task_id"] for r in client.db_query({"engine_id": 1, "status": COMPLETED})] == [b]
    rows = client.db_query({"status": FAILED}, keys=["error", "engine_id"])
    assert [(r["task_id"], r["engine_id"], r["error"]["ename"], r["error"]["evalue"]) for r in rows] == [
        (c, 1, "ValueError", "q")]
    assert client.db_query({"completed": {"$gte": client.db_query({"task_id": b})[0]["completed"]}},
                           keys=[]) == [{"task_id": b}, {"task_id": c}]


# --- shutdown ----------------------------------------------------------------------------------------------
def test_shutdown_engines_then_the_hub(client, cluster):
    engines = sorted(cluster.start_engines(2), key=lambda d: d.engine_id)
    scheduler = cluster.start_scheduler()
    client.shutdown(targets=[1])
    assert engines[1].wait(LONG) == 0
    wait_for(lambda: client.ids == [0], LONG, "engine 1 to leave")
    assert engines[0].proc.poll() is None and scheduler.proc.poll() is None
    # The remaining engine still works
    assert client[0].apply(pow, 2, 2) == 4
    client.shutdown(hub=True)
    assert engines[0].wait(LONG) == 0
    assert scheduler.wait(LONG) == 0
    assert client.ids == []


def test_shutdown_all_engines_without_the_hub(client, cluster):
    engines = cluster.start_engines(2)
    scheduler = cluster.start_scheduler()
    client.shutdown()
    assert [d.wait(LONG) for d in engines] == [0, 0]
    assert scheduler.proc.poll() is None
    assert client.ids == []


# --- spin and clear -------------------------------------------------------------------------------------
def test_results_are_taken_in_as_they_arrive_without_a_wait(client, engines):
    client.spin()  # nothing yet: no error, nothing taken
    assert client.results == {}
    ar, task_id = apply_nb(client, 0, pow, 3, 3)
    # Nobody waits: the client's result thread takes the outcome in when it is recorded.
    wait_for(lambda: task_id in client.results, LONG, "the result to be taken in")
    assert client.results == {task_id: 27} and client.outstanding == set()
    assert client.metadata[task_id]["status"] == COMPLETED and client.metadata[task_id]["engine_id"] == 0
    client.spin()  # nothing left to take: harmless
    assert client.results == {task_id: 27}


def test_clear_targets_resets_namespaces(client, engines):
    client.direct_view().push({"a": 1, "b": 2})
    assert client.clear(targets=0) is None
    assert client.direct_view().keys() == [[], ["a", "b"]]
    assert client.clear(targets=[0, 1]) == [None, None]
    assert client.direct_view().keys() == [[], []]


def test_clear_forgets_finished_results_locally(client, engines, gates):
    assert client[0].apply(pow, 2, 6) == 64
    assert client[1].apply(pow, 2, 7) == 128
    first, second = client.history
    client.block = False
    gate = gates()
    _, busy = apply_nb(client, 0, wait_file, gate, "busy")

    assert client.clear() == 2
    assert client.results == {} and client.metadata == {}
    assert client.outstanding == {busy}
    # The records stay in the history; the results can be fetched again
    assert client.hub_history() == [first, second, busy]
    assert client.get_result(first, block=True).get() == 64
    Path(gate).touch()
    assert client.wait(timeout=LONG)
    assert client.results == {first: 64, busy: "busy"}
    assert client.clear() == 2 and client.results == {}


cloudpickle.register_pickle_by_value(sys.modules[__name__])
