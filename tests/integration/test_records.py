"""Task records and the history: what a record holds, that it is written once, db_query with
every operator (values straddling each bound), index use, and History.cull."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest

from enginefarm import Client, MapTask
from enginefarm.keys import KeyRing
from enginefarm.names import Names
from enginefarm.protocol import new_id, open_envelope, seal
from enginefarm.serialization import loads
from enginefarm.store import History, Records, connect
from enginefarm.store.records import (
    ABORTED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    STATUSES,
    NewTask,
    error_fields,
)

from .farm_tasks import wait_file
from ..harness import Cluster, wait_for

LONG = 120.0  # generous: the box is small and loaded


# --- run on engines (this module is pickled by value, see the end) ---------------------------
def chatty(n):
    import sys

    print("out", n)
    print("err", n, file=sys.stderr)
    return {"n": n, "square": n * n}


def explode(message):
    print("before the failure")
    raise ValueError(message)


def big(n):
    return "y" * n


def flood(n_out, n_err):
    import sys

    sys.stdout.write("x" * n_out)
    sys.stderr.write("e" * n_err)
    return n_out + n_err


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def store(settings, cluster):
    """The cluster's Records and History, on a Redis connection of the test's own."""
    r = connect(settings.redis_url)
    names = Names(settings.cluster)
    ring = KeyRing.from_files(settings.resolved_key_file, settings.old_key_files)
    yield SimpleNamespace(redis=r, names=names, ring=ring, records=Records(r, names, ring),
                          history=History(r, names))
    r.close()


@pytest.fixture
def farm(cluster):
    """One engine (id 0) and an active scheduler."""
    engine = cluster.start_engine()
    scheduler = cluster.start_scheduler()
    return SimpleNamespace(engine=engine, scheduler=scheduler)


def seconds(moment: datetime) -> float:
    """db_query gives moments as timezone-aware datetimes."""
    assert moment.tzinfo is not None
    return moment.timestamp()


def record_of(client, task_id, keys=None):
    rows = client.db_query({"task_id": task_id}, keys=keys)
    assert len(rows) == 1, rows
    return rows[0]


def raw(store, task_id):
    return store.redis.hgetall(store.names.task(task_id))


def in_status_sets(store, task_id):
    return [s for s in STATUSES if store.redis.sismember(store.names.status_index(s), task_id)]


# --- what a record holds ---------------------------------------------------------------------
def test_records_of_direct_and_load_balanced_tasks(client, farm, store):
    before = time.time()
    # Given one direct task and two load-balanced ones (one succeeds, one raises)
    assert client[0].apply(chatty, 3) == {"n": 3, "square": 9}
    direct_id = client.history[-1]
    ok_id = client.submit(MapTask(chatty, (4,)))
    bad_id = client.submit(MapTask(explode, ("kaboom",)))
    assert client.wait([ok_id, bad_id], timeout=LONG)
    after = time.time()

    # Then each has one record with every field
    direct = record_of(client, direct_id)
    assert {k: direct[k] for k in ("task_id", "kind", "status", "engine_id", "client_id", "attempts",
                                    "stdout", "stderr", "summary")} == {
        "task_id": direct_id, "kind": "apply", "status": COMPLETED, "engine_id": 0,
        "client_id": client.client_id, "attempts": 1, "stdout": "out 3\n", "stderr": "err 3\n",
        "summary": repr({"n": 3, "square": 9}),
    }
    assert "error" not in direct and "lb" not in direct
    assert before <= seconds(direct["submitted"]) <= seconds(direct["started"]) <= seconds(direct["completed"]) <= after

    ok = record_of(client, ok_id)
    assert {k: ok[k] for k in ("kind", "status", "engine_id", "client_id", "attempts", "stdout", "stderr",
                               "summary", "lb")} == {
        "kind": "map_task", "status": COMPLETED, "engine_id": 0, "client_id": client.client_id,
        "attempts": 1, "stdout": "out 4\n", "stderr": "err 4\n", "summary": repr({"n": 4, "square": 16}),
        "lb": True,
    }
    assert "error" not in ok
    assert before <= seconds(ok["submitted"]) <= seconds(ok["started"]) <= seconds(ok["completed"]) <= after

    bad = record_of(client, bad_id)
    assert (bad["kind"], bad["status"], bad["engine_id"], bad["attempts"], bad["stdout"]) == (
        "map_task", FAILED, 0, 1, "before the failure\n")
    assert "summary" not in bad
    assert bad["error"]["ename"] == "ValueError"
    assert bad["error"]["evalue"] == "kaboom"
    assert bad["error"]["traceback"].startswith("Traceback (most recent call last):")
    assert bad["error"]["traceback"].rstrip().endswith("ValueError: kaboom")
    assert before <= seconds(bad["submitted"]) <= seconds(bad["started"]) <= seconds(bad["completed"]) <= after

    # The result itself stays sealed in the record (not in db_query's default fields).
    assert "result" not in ok and "request" not in ok
    assert client.results[ok_id] == {"n": 4, "square": 16}

    # And the sealed request is kept, bound to its task, enough to run the task again.
    for task_id, kind, call in [(direct_id, "apply", (3,)), (ok_id, "map_task", (4,))]:
        request = record_of(client, task_id, keys=["request"])["request"]
        assert isinstance(request, bytes)
        envelope = open_envelope(store.ring, request, expect={"task_id": task_id})
        assert envelope.header["kind"] == kind and envelope.header["client_id"] == client.client_id
        body = loads(envelope.payload)
        func, args, kwargs = body if kind == "apply" else body["call"]
        assert (func(*args, **kwargs), args, kwargs) == (chatty(*call), call, {})


def test_started_is_written_when_the_task_starts(client, farm, gates):
    gate = gates()
    task_id = client.submit(MapTask(wait_file, (gate, "done")))
    # Given the task running on the engine (it waits for its gate)
    running = wait_for(
        lambda: [r for r in client.db_query({"task_id": task_id, "status": RUNNING})],
        LONG, "the task to start")[0]
    # Then its record already has started, and no completion yet
    assert running["engine_id"] == 0 and running["attempts"] == 1
    assert running["submitted"] <= running["started"] <= datetime.now(timezone.utc)
    assert "completed" not in running
    assert client.db_query({"started": {"$exists": True}}, keys=["status"]) == [
        {"task_id": task_id, "status": RUNNING}]

    # When it is released, it completes and keeps the same start time
    Path(gate).touch()
    assert client.wait([task_id], timeout=LONG)
    done = record_of(client, task_id)
    assert done["status"] == COMPLETED and done["summary"] == "'done'"
    assert done["started"] == running["started"] <= done["completed"]


def test_output_is_capped_with_a_marker(settings, tmp_path):
    capped = settings.replace(output_cap_bytes=100)
    cluster = Cluster(capped, str(tmp_path))
    client = Client(settings=capped)
    try:
        cluster.start_engine()
        # 250 characters on stdout (cap 100), exactly 100 on stderr (not over the cap)
        assert client[0].apply(flood, 250, 100) == 350
        record = record_of(client, client.history[-1])
        assert record["stdout"] == "x" * 100 + "\n[enginefarm: output truncated, 150 more characters dropped]\n"
        assert record["stderr"] == "e" * 100
        assert client[0].apply(flood, 0, 101) == 101
        record = record_of(client, client.history[-1])
        assert record["stdout"] == ""
        assert record["stderr"] == "e" * 100 + "\n[enginefarm: output truncated, 1 more characters dropped]\n"
        # The result summary is small too (the result itself is kept whole)
        assert client[0].apply(big, 1000) == "y" * 1000
        record = record_of(client, client.history[-1])
        assert record["summary"] == "'" + "y" * 196 + "..." and len(record["summary"]) == 200
    finally:
        client.close()
        cluster.teardown()


# --- written once ----------------------------------------------------------------------------
def test_a_finished_record_is_never_overwritten(client, cluster, store):
    cluster.start_engine()
    assert client[0].apply(chatty, 5) == {"n": 5, "square": 25}
    task_id = client.history[-1]
    snapshot = raw(store, task_id)
    assert snapshot[b"status"] == b"completed"
    records = store.records

    # A late or redelivered completion, a second claim, a failure or a retry: all refused
    assert records.finish(task_id, FAILED, {"error": json.dumps(error_fields("Late", "late"))}) is False
    assert records.finish(task_id, COMPLETED, {"stdout": "second run"}) is False
    assert records.transition(task_id, [RUNNING], COMPLETED, {"summary": "'other'"}) == (False, COMPLETED, 0)
    assert records.transition(task_id, [PENDING, RUNNING], ABORTED) == (False, COMPLETED, 0)
    assert records.claim(task_id, 0) == (False, COMPLETED, 0)
    assert records.claim(task_id, 1) == (False, COMPLETED, 0)
    assert records.fail(task_id, error_fields("TaskAborted", "too late")) is False
    assert records.requeue(task_id, 0, "failed_on") is False
    assert raw(store, task_id) == snapshot
    assert not store.redis.sismember(store.names.engine_claimed(0), task_id)
    assert store.redis.scard(store.names.engine_claimed(1)) == 0

    # And the engine itself refuses a redelivered copy of the message
    client.publisher.publish(client.names.direct_exchange, client.names.engine_routing_key(0), snapshot[b"request"])
    # (the engine's queue is FIFO: once the next task is done, the copy was handled)
    assert client[0].apply(chatty, 6) == {"n": 6, "square": 36}
    assert raw(store, task_id) == snapshot
    assert in_status_sets(store, task_id) == [COMPLETED]
    assert client.hub_history().count(task_id) == 1
    assert client.hub_history() == client.history
    assert len(client.db_query({})) == 2


def test_transitions_of_unknown_tasks_create_nothing(client, store):
    ghost = new_id()
    assert store.records.transition(ghost, [PENDING], RUNNING) == (False, "", 0)
    assert store.records.claim(ghost, 0) == (False, "", 0)
    assert store.records.finish(ghost, COMPLETED, {}) is False
    assert raw(store, ghost) == {}
    assert client.hub_history() == []


def test_an_engine_declared_dead_claims_nothing(client, settings, store):
    from enginefarm.errors import EngineDeclaredDead
    from enginefarm.store import Registry

    registry = Registry(store.redis, store.names, settings.engine_timeout_s)
    engine_id = registry.register({"pid": 1}, 8)
    assert registry.activate(engine_id)
    first, second = client.submit(MapTask(chatty, (1,))), client.submit(MapTask(chatty, (2,)))
    # A live engine claims
    assert store.records.settle(engine_id, claims=[first], only_if_live=True) == [(True, PENDING, 1)]
    # When it is declared dead (a reaper took it out of the live set), its next round trip
    # still records what it finished, but claims nothing more
    assert registry.mark_dead(engine_id)
    with pytest.raises(EngineDeclaredDead):
        store.records.settle(engine_id, finished=[(first, COMPLETED, {"summary": "1"})], claims=[second],
                             only_if_live=True)
    assert in_status_sets(store, first) == [COMPLETED]
    assert in_status_sets(store, second) == [PENDING] and b"_claimed_key" not in raw(store, second)
    assert not store.redis.sismember(store.names.engine_claimed(engine_id), second)
    # (without only_if_live, as before, a claim does not look at the live set)
    assert store.records.claim(second, engine_id)[0]


def test_an_aborted_task_cannot_be_claimed(client, store):
    task_id = client.submit(MapTask(chatty, (1,)))  # no scheduler: it stays pending
    assert client.abort(task_id) is True
    snapshot = raw(store, task_id)
    assert store.records.claim(task_id, 0) == (False, ABORTED, 0)
    assert store.records.finish(task_id, COMPLETED, {"summary": "1"}) is False
    assert raw(store, task_id) == snapshot
    rec = record_of(client, task_id)
    assert rec["status"] == ABORTED and rec["attempts"] == 0 and "started" not in rec
    assert rec["error"]["ename"] == "TaskAborted"


# --- db_query: one test per operator ---------------------------------------------------------
@pytest.fixture
def dataset(client, store):
    """Five load-balanced records, submitted one after the other, taken through their states
    with the same Records calls engines make:

    T0 completed on engine 0 (attempts 1); T1 failed on engine 1 after a retry (attempts 2,
    first run on engine 0); T2 running on engine 0; T3 pending; T4 aborted before it ran.
    ``between`` holds client-side times taken between consecutive submissions.
    """
    ids, between = [], []
    for i in range(5):
        if i:
            between.append(time.time())
        ids.append(client.submit(MapTask(abs, (-i,))))
    t0, t1, t2, t3, t4 = ids
    r = store.records
    assert r.claim(t0, 0)[0] and r.finish(t0, COMPLETED, {"summary": "0", "stdout": "zero\n"})
    assert r.claim(t1, 0)[0] and r.requeue(t1, 0, "failed_on")
    assert r.claim(t1, 1) == (True, PENDING, 2)
    assert r.finish(t1, FAILED, {"error": json.dumps(error_fields("ValueError", "one", "tb"))})
    assert r.claim(t2, 0)[0]
    assert r.fail(t4, error_fields("TaskAborted", "aborted"), allowed=(PENDING,), status=ABORTED)
    recs = {t: rec for t, rec in zip(ids, r.get_many(ids))}
    return SimpleNamespace(ids=ids, between=between, recs=recs)


def q(client, query, keys=("task_id",)):
    return [row["task_id"] for row in client.db_query(query, keys=list(keys))]


def test_query_equality(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"status": "pending"}) == [t3]
    assert q(client, {"engine_id": 0}) == [t0, t2]
    assert q(client, {"attempts": 2}) == [t1]
    assert q(client, {"kind": "map_task"}) == dataset.ids
    assert q(client, {"task_id": t2}) == [t2]
    assert q(client, {"submitted": dataset.recs[t3].submitted}) == [t3]
    assert q(client, {"status": "nonsense"}) == []


def test_query_gt(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    # Only tasks submitted AFTER t, whether t lies between submissions or on one.
    assert q(client, {"submitted": {"$gt": dataset.between[1]}}) == [t2, t3, t4]
    assert q(client, {"submitted": {"$gt": dataset.recs[t2].submitted}}) == [t3, t4]
    assert q(client, {"submitted": {"$gt": dataset.recs[t4].submitted}}) == []
    assert q(client, {"attempts": {"$gt": 1}}) == [t1]
    assert q(client, {"completed": {"$gt": dataset.recs[t0].completed}}) == [t1, t4]


def test_query_lt(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"submitted": {"$lt": dataset.between[1]}}) == [t0, t1]
    assert q(client, {"submitted": {"$lt": dataset.recs[t2].submitted}}) == [t0, t1]
    assert q(client, {"submitted": {"$lt": dataset.recs[t0].submitted}}) == []
    assert q(client, {"attempts": {"$lt": 1}}) == [t3, t4]
    assert q(client, {"completed": {"$lt": dataset.recs[t4].completed}}) == [t0, t1]


def test_query_gte(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"submitted": {"$gte": dataset.between[1]}}) == [t2, t3, t4]
    assert q(client, {"submitted": {"$gte": dataset.recs[t2].submitted}}) == [t2, t3, t4]
    assert q(client, {"attempts": {"$gte": 1}}) == [t0, t1, t2]
    assert q(client, {"completed": {"$gte": dataset.recs[t1].completed}}) == [t1, t4]


def test_query_lte(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"submitted": {"$lte": dataset.between[1]}}) == [t0, t1]
    assert q(client, {"submitted": {"$lte": dataset.recs[t2].submitted}}) == [t0, t1, t2]
    assert q(client, {"attempts": {"$lte": 1}}) == [t0, t2, t3, t4]
    assert q(client, {"started": {"$lte": dataset.recs[t2].started}}) == [t0, t1, t2]


def test_query_range_on_both_sides(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"submitted": {"$gt": dataset.between[0], "$lt": dataset.between[3]}}) == [t1, t2, t3]
    assert q(client, {"submitted": {"$gte": dataset.recs[t1].submitted,
                                    "$lte": dataset.recs[t3].submitted}}) == [t1, t2, t3]
    assert q(client, {"submitted": {"$gt": dataset.recs[t1].submitted,
                                    "$lt": dataset.recs[t3].submitted}}) == [t2]


def test_query_ne(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"status": {"$ne": COMPLETED}}) == [t1, t2, t3, t4]
    # Records without the field count as "not equal" (Mongo semantics).
    assert q(client, {"engine_id": {"$ne": 0}}) == [t1, t3, t4]
    assert q(client, {"submitted": {"$ne": dataset.recs[t2].submitted}}) == [t0, t1, t3, t4]


def test_query_in(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"status": {"$in": [COMPLETED, FAILED]}}) == [t0, t1]
    assert q(client, {"status": {"$in": [ABORTED, "nonsense"]}}) == [t4]
    assert q(client, {"engine_id": {"$in": [1, 5]}}) == [t1]
    assert q(client, {"attempts": {"$in": [0, 2]}}) == [t1, t3, t4]
    assert q(client, {"status": {"$in": []}}) == []


def test_query_nin(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"status": {"$nin": [PENDING, RUNNING]}}) == [t0, t1, t4]
    assert q(client, {"engine_id": {"$nin": [0]}}) == [t1, t3, t4]
    assert q(client, {"attempts": {"$nin": [1]}}) == [t1, t3, t4]


def test_query_exists(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"started": {"$exists": True}}) == [t0, t1, t2]
    assert q(client, {"started": {"$exists": False}}) == [t3, t4]
    assert q(client, {"error": {"$exists": True}}) == [t1, t4]
    assert q(client, {"completed": {"$exists": False}}) == [t2, t3]
    assert q(client, {"failed_on": {"$exists": True}}) == [t1]


def test_query_combined_across_fields(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    assert q(client, {"status": {"$in": [COMPLETED, RUNNING]}, "engine_id": 0,
                      "submitted": {"$gt": dataset.recs[t0].submitted}}) == [t2]
    assert q(client, {"status": {"$ne": PENDING}, "attempts": {"$lt": 2},
                      "error": {"$exists": False}}) == [t0, t2]
    assert q(client, {"engine_id": 1, "status": COMPLETED}) == []


def test_query_keys_select_fields(client, dataset):
    t0, t1, t2, t3, t4 = dataset.ids
    rows = client.db_query({"status": {"$in": [COMPLETED, PENDING]}}, keys=["status", "engine_id", "stdout"])
    # task_id always comes along; a field the record lacks is left out
    assert rows == [
        {"task_id": t0, "status": COMPLETED, "engine_id": 0, "stdout": "zero\n"},
        {"task_id": t3, "status": PENDING},
    ]
    assert client.db_query({"task_id": t1}, keys=["error", "attempts"]) == [
        {"task_id": t1, "error": {"ename": "ValueError", "evalue": "one", "traceback": "tb"}, "attempts": 2}]
    assert client.db_query({"task_id": t1}, keys=[]) == [{"task_id": t1}]
    # The default: every field but the sealed request and result
    full = client.db_query({"task_id": t0})[0]
    assert {"task_id", "kind", "status", "engine_id", "client_id", "submitted", "started", "completed",
            "attempts", "stdout", "summary", "lb"} <= set(full)
    assert "request" not in full and "result" not in full


def test_query_rejects_malformed_queries(client, dataset):
    from enginefarm.store.query import QueryError

    with pytest.raises(QueryError, match="unknown operator"):
        client.db_query({"status": {"$regex": "p.*"}})
    with pytest.raises(QueryError, match="takes a list"):
        client.db_query({"status": {"$in": "pending"}})
    with pytest.raises(QueryError, match="a query is a dict"):
        client.db_query(["status"])


def test_indexes_serve_status_engine_and_submitted_queries(dataset, store):
    t0, t1, t2, t3, t4 = dataset.ids
    h = store.history
    recs = dataset.recs
    # Index lookups return the candidate ids, oldest first
    assert h._candidates({"status": COMPLETED}) == [t0]
    assert h._candidates({"status": {"$in": [PENDING, ABORTED]}}) == [t3, t4]
    assert h._candidates({"engine_id": 1}) == [t1]
    # (the engine index lists every task an engine ran, even one that moved on)
    assert h._candidates({"engine_id": 0}) == [t0, t1, t2]
    assert h._candidates({"engine_id": {"$in": [1]}, "status": FAILED}) == [t1]
    assert h._candidates({"submitted": {"$gte": recs[t3].submitted}}) == [t3, t4]
    assert h._candidates({"submitted": {"$lte": recs[t1].submitted}}) == [t0, t1]
    assert h._candidates({"submitted": {"$gte": recs[t1].submitted, "$lte": recs[t2].submitted},
                          "status": RUNNING}) == [t2]
    assert h._candidates({"status": "nonsense"}) == []
    # Other queries scan the history
    for query in ({}, {"kind": "map_task"}, {"status": {"$ne": COMPLETED}}, {"status": {"$nin": [PENDING]}},
                  {"engine_id": {"$exists": True}}, {"attempts": {"$gt": 0}},
                  {"completed": {"$gt": 0}}, {"submitted": {"$ne": 1.0}}, {"submitted": 5.0}):
        assert h._candidates(query) is None, query


# --- History.cull ----------------------------------------------------------------------------
def add_record(store, state, engine_id=0):
    """A load-balanced record created with Records.create and taken to ``state``."""
    task_id = new_id()
    request = seal(store.ring, {"task_id": task_id, "kind": "map_task", "lb": True})
    store.records.create([NewTask(task_id, "map_task", "someone", request, None, {"lb": "1"})])
    r = store.records
    if state in (RUNNING, COMPLETED, FAILED):
        assert r.claim(task_id, engine_id)[0]
    if state in (COMPLETED, FAILED):
        assert r.finish(task_id, state, {"summary": "x"})
    if state == ABORTED:
        assert r.fail(task_id, error_fields("TaskAborted", "x"), allowed=(PENDING,), status=ABORTED)
    return task_id


def backdate(store, task_id, submitted_ago, completed_ago=None):
    """Pretend a record was submitted (and completed) that many seconds ago."""
    now = time.time()
    store.redis.zadd(store.names.history, {task_id: now - submitted_ago})
    store.redis.hset(store.names.task(task_id), "submitted", repr(now - submitted_ago))
    if completed_ago is not None:
        store.redis.hset(store.names.task(task_id), "completed", repr(now - completed_ago))


def assert_gone(store, task_id):
    n = store.names
    assert store.records.get(task_id) is None
    assert store.redis.zscore(n.history, task_id) is None
    assert in_status_sets(store, task_id) == []
    assert not store.redis.sismember(n.engine_index(0), task_id)


def test_cull_removes_finished_records_past_their_ttl(store):
    old = {s: add_record(store, s) for s in (COMPLETED, FAILED, ABORTED, RUNNING, PENDING)}
    for s, task_id in old.items():
        backdate(store, task_id, 1000, 900 if s in (COMPLETED, FAILED, ABORTED) else None)
    # submitted long ago but finished recently: its time to live runs from completion
    late = add_record(store, COMPLETED)
    backdate(store, late, 1000, 10)
    fresh = add_record(store, FAILED)

    assert store.history.cull(ttl_s=100, max_records=1000, interval_s=0.01) == 3
    for s in (COMPLETED, FAILED, ABORTED):
        assert_gone(store, old[s])
    assert store.history.task_ids() == [old[RUNNING], old[PENDING], late, fresh]
    assert [r.status for r in store.records.get_many([old[RUNNING], old[PENDING], late, fresh])] == [
        RUNNING, PENDING, COMPLETED, FAILED]
    assert store.records.status_counts() == {PENDING: 1, RUNNING: 1, COMPLETED: 1, FAILED: 1, ABORTED: 0}


def test_cull_trims_the_oldest_finished_beyond_the_cap(store):
    done = [add_record(store, s) for s in (COMPLETED, FAILED, ABORTED, COMPLETED, COMPLETED, FAILED)]
    for age, task_id in zip(range(60, 0, -10), done):  # distinct, increasing submission times
        backdate(store, task_id, age, age - 1)
    assert store.history.cull(ttl_s=10_000, max_records=4, interval_s=0.01) == 2
    for task_id in done[:2]:
        assert_gone(store, task_id)
    assert store.history.task_ids() == done[2:]


def test_cull_never_removes_pending_or_running_records(store):
    finished = [add_record(store, s) for s in (COMPLETED, ABORTED, FAILED)]
    busy = [add_record(store, PENDING), add_record(store, RUNNING)]
    for age, task_id in zip(range(50, 0, -10), finished + busy):
        backdate(store, task_id, age)
    for task_id in finished:
        store.redis.hset(store.names.task(task_id), "completed", repr(time.time() - 1))
    # A cap of 0 removes every finished record, and nothing in flight, even past the TTL
    assert store.history.cull(ttl_s=0, max_records=0, interval_s=0.01) == 3
    assert store.history.task_ids() == busy
    assert store.records.status_counts() == {PENDING: 1, RUNNING: 1, COMPLETED: 0, FAILED: 0, ABORTED: 0}


def test_cull_trims_finished_records_even_when_older_ones_are_in_flight(store):
    busy = add_record(store, RUNNING)
    finished = [add_record(store, COMPLETED) for _ in range(3)]
    for age, task_id in zip((40, 30, 20, 10), [busy, *finished]):
        backdate(store, task_id, age, None if task_id == busy else age - 1)
    # Cap 2 with 4 records: the two oldest finished ones go, the running one stays
    assert store.history.cull(ttl_s=10_000, max_records=2, interval_s=0.01) == 2
    assert store.history.task_ids() == [busy, finished[2]]


def test_cull_runs_at_most_once_per_interval(store):
    first = [add_record(store, COMPLETED) for _ in range(3)]
    assert store.history.cull(ttl_s=10_000, max_records=1, interval_s=2.0) == 2
    assert store.history.task_ids() == first[2:]
    more = [add_record(store, COMPLETED) for _ in range(2)]
    # Within the interval, another cull (any process of the cluster) does nothing
    assert store.history.cull(ttl_s=10_000, max_records=1, interval_s=2.0) == 0
    assert store.history.task_ids() == [first[2], *more]
    # Once the interval has passed, it trims again
    assert wait_for(lambda: store.history.cull(ttl_s=10_000, max_records=1, interval_s=2.0), 30,
                    "the cull interval to pass") == 2
    assert store.history.task_ids() == [more[1]]


def test_purge_keeps_in_flight_records(store):
    pending, running, done = add_record(store, PENDING), add_record(store, RUNNING), add_record(store, COMPLETED)
    assert store.history.purge([pending, running, done, new_id()]) == 1
    assert store.history.task_ids() == [pending, running]
    assert_gone(store, done)


cloudpickle.register_pickle_by_value(sys.modules[__name__])
