"""The scheduler daemon's schemes and depend, against real engines.

The scheduler gives every engine one task at a time here (``scheduler_slots=1``), so with the
engine busy the queued tasks wait in the scheduler, and the order they then run in is the
scheme's. Plain tasks under FIFO skip the scheduler: they wait in the engines' shared queue,
which is FIFO too.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from enginefarm import MapTask
from enginefarm.config import Settings

from ..harness import wait_for
from ..redismonitor import RedisMonitor
from . import farm_tasks as ft

TIMEOUT_S = 60


@pytest.fixture
def settings(key_file: str) -> Settings:
    """Like conftest's, with one task per engine at a time."""
    return Settings.load(
        env={},
        cluster=f"t{uuid.uuid4().hex[:10]}",
        key_file=key_file,
        heartbeat_interval_s=0.5,
        engine_timeout_s=3.0,
        drain_timeout_s=20.0,
        scheduler_slots=1,
    )


@pytest.fixture
def gates(tmp_path):
    handle = ft.Gates(tmp_path)
    yield handle
    handle.open_all()


def status_of(client, task_id):
    return client.records.get(task_id).status


def run_queued(client, gates, trace, tasks, through_scheduler=True, **options):
    """Keep the only engine busy (with a task given ``options``), queue ``tasks`` one
    submission at a time, then let them run; returns the labels in the order they ran."""
    gate = gates.new()
    busy = client.submit(MapTask(ft.gate, (gate,), **options))
    wait_for(lambda: status_of(client, busy) == "running", TIMEOUT_S, "the engine to be busy")
    ids = [client.submit(task) for task in tasks]
    if through_scheduler:
        wait_for(lambda: client.records.backlog_size() == len(tasks), TIMEOUT_S,
                 f"all {len(tasks)} tasks to wait in the scheduler")
        # Nothing was routed behind the running task: one slot per engine
        assert client.registry.pending_count(client.records.get(busy).engine_id) == 1
    gates.open(gate)
    client.barrier([busy, *ids], timeout=TIMEOUT_S)
    assert [client.get_task_result(t).failure for t in ids] == [None] * len(ids)
    return ft.labels(trace)


@pytest.mark.parametrize("scheme, options, expected", [
    # Plain FIFO tasks go past the scheduler, through the engines' shared queue
    ("fifo", {}, ["0", "1", "2", "3", "4", "5"]),
    # A depend sends them through the scheduler, which keeps FIFO order too
    ("fifo", {"depend": ft.anywhere}, ["0", "1", "2", "3", "4", "5"]),
    ("lifo", {}, ["5", "4", "3", "2", "1", "0"]),
], ids=["fifo", "fifo-scheduled", "lifo"])
def test_queued_tasks_run_in_scheme_order(cluster, client, gates, tmp_path, scheme, options, expected):
    cluster.start_scheduler(scheme=scheme)
    cluster.start_engine()
    trace = str(tmp_path / "order.txt")
    tasks = [MapTask(ft.record, (trace, i), **options) for i in range(6)]
    through_scheduler = scheme != "fifo" or bool(options)
    assert run_queued(client, gates, trace, tasks, through_scheduler, **options) == expected


def test_priority_scheme_runs_highest_priority_first(cluster, client, gates, tmp_path):
    cluster.start_scheduler(scheme="priority")
    cluster.start_engine()
    trace = str(tmp_path / "order.txt")
    priorities = [1, 5, 3, 5, 0, -1]
    tasks = [MapTask(ft.record, (trace, i), priority=p) for i, p in enumerate(priorities)]
    # Highest first; the two with priority 5 in submission order
    assert run_queued(client, gates, trace, tasks) == ["1", "3", "2", "0", "4", "5"]


def test_tasks_spread_over_engines_one_at_a_time(cluster, client, gates, tmp_path):
    # Engines first: the scheduler knows both from the start. LIFO: every task goes through it
    engines = cluster.start_engines(2)
    cluster.start_scheduler(scheme="lifo")
    gate = gates.new()
    # Two engines, one slot each: two gated tasks occupy both, the third waits in the scheduler
    ids = [client.submit(MapTask(ft.gate, (gate,))) for _ in range(3)]
    wait_for(lambda: client.queue_status()["running"] == 2 and client.records.backlog_size() == 1,
             TIMEOUT_S, "both engines busy and one task waiting")
    status = client.queue_status()
    assert status["unassigned"] == 1
    assert [status[d.engine_id]["queue"] for d in engines] == [0, 0]
    gates.open(gate)
    client.barrier(ids, timeout=TIMEOUT_S)
    assert {client.get_task_result(t).engineid for t in ids[:2]} == {d.engine_id for d in engines}


def test_scheduled_task_is_not_queued_behind_a_busy_engine(cluster, client, gates):
    cluster.start_scheduler()
    busy_engine = cluster.start_engine()
    gate = gates.new()
    # Engine 0 runs a plain task (the FIFO fast path) that holds it until the gate opens
    busy = client.submit(MapTask(ft.gate, (gate,)))
    wait_for(lambda: status_of(client, busy) == "running", TIMEOUT_S, "engine 0 to be busy")
    idle_engine = cluster.start_engine()
    wait_for(lambda: client.ids == [busy_engine.engine_id, idle_engine.engine_id], TIMEOUT_S, "both engines live")
    # A task that goes through the scheduler (it has a depend) should go to the idle engine
    task_id = client.submit(MapTask(int, ("7",), depend=ft.anywhere))
    try:
        r = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    finally:
        gates.open(gate)
    assert (r.result, r.engineid) == (7, idle_engine.engine_id)


def test_unknown_scheme_is_refused(cluster):
    daemon = cluster.start_scheduler(scheme="random", wait=False)
    assert daemon.wait(60) == 1
    assert "unknown scheme 'random'; choose one of fifo, lifo, priority" in daemon.log()


# --- depend ------------------------------------------------------------------------------------
def test_depend_routes_only_to_engines_where_it_holds(cluster, client, tmp_path):
    cluster.start_scheduler()
    north = cluster.start_engine(properties={"zone": "north"})
    south = cluster.start_engine(properties={"zone": "south"})
    trace = str(tmp_path / "ran.txt")
    ids = [client.submit(MapTask(ft.record, (trace, i), depend=ft.zone_is("south"))) for i in range(6)]
    client.barrier(ids, timeout=TIMEOUT_S)
    results = [client.get_task_result(t) for t in ids]
    assert [r.failure for r in results] == [None] * 6
    assert {r.engineid for r in results} == {south.engine_id}
    # Each ran exactly once, and only on the south engine (never on north)
    assert sorted(ft.labels(trace)) == [str(i) for i in range(6)]
    assert set(ft.pids(trace)) == {south.pid}
    # A depend that did not hold is not an attempt
    assert [r.attempts for r in results] == [1] * 6
    # Tasks without depend may still go to either engine
    free = [client.submit(MapTask(ft.record, (trace, "free"))) for _ in range(4)]
    client.barrier(free, timeout=TIMEOUT_S)
    assert north.pid in ft.pids(trace)


def test_depend_sees_json_properties(cluster, client):
    cluster.start_scheduler()
    cluster.start_engine(properties={"gpu": "false", "mem": "8"})
    big = cluster.start_engine(properties={"gpu": "true", "mem": "64"})

    def needs_big_gpu(properties):
        return properties.get("gpu") is True and properties.get("mem", 0) >= 32

    ids = [client.submit(MapTask(int, ("1",), depend=needs_big_gpu)) for _ in range(4)]
    client.barrier(ids, timeout=TIMEOUT_S)
    assert {client.get_task_result(t).engineid for t in ids} == {big.engine_id}


def test_task_waits_until_an_engine_satisfies_its_depend(cluster, client, tmp_path):
    cluster.start_scheduler()
    north = cluster.start_engine(properties={"zone": "north"})
    trace = str(tmp_path / "ran.txt")
    task_id = client.submit(MapTask(ft.record, (trace, "east"), depend=ft.zone_is("east")))
    # While no engine satisfies it, the task waits and its record says why
    waiting = wait_for(lambda: client.records.get(task_id).waiting, TIMEOUT_S,
                       "the record to say the task is waiting")
    assert waiting == f"no live engine satisfies its depend (engines [{north.engine_id}] said no)"
    record = client.records.get(task_id)
    assert record.status == "pending" and record.attempts == 0
    assert client.get_task_result(task_id) is None
    assert ft.lines(trace) == []
    # Other work is not held up by it
    assert client.get_task_result(client.submit(MapTask(int, ("4",))), block=True, timeout=TIMEOUT_S).result == 4
    # When a matching engine starts, the task runs there
    east = cluster.start_engine(properties={"zone": "east"})
    r = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert r.failure is None and r.result == "east"
    assert r.engineid == east.engine_id
    assert ft.pids(trace) == [east.pid]
    assert client.records.get(task_id).waiting == ""


def test_task_runs_when_an_engine_gains_the_property(cluster, client):
    cluster.start_scheduler()
    engine = cluster.start_engine(properties={"zone": "north"})
    task_id = client.submit(MapTask(int, ("9",), depend=ft.zone_is("west")))
    wait_for(lambda: client.records.get(task_id).waiting, TIMEOUT_S, "the task to wait")
    client[engine.engine_id].set_properties({"zone": "west"})
    r = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert (r.failure, r.result, r.engineid) == (None, 9, engine.engine_id)


def test_depend_that_raises_fails_the_task(cluster, client):
    cluster.start_scheduler()
    engine = cluster.start_engine(properties={"zone": "north"})

    def broken(properties):
        return properties["rack"] == 3

    r = client.get_task_result(client.submit(MapTask(int, ("1",), depend=broken)), block=True, timeout=TIMEOUT_S)
    assert r.failure is not None
    assert r.failure.ename == "DependError"
    assert r.failure.evalue == "depend raised KeyError: 'rack'"
    assert r.engineid == engine.engine_id
    assert r.result is None


class ClaimReads(RedisMonitor):
    """The SMEMBERS calls Redis gets on the given keys."""

    def __init__(self, redis_url: str, keys: set[str]) -> None:
        self.keys, self.count = keys, 0
        super().__init__(redis_url, self._count)

    def _count(self, command: dict[str, Any]) -> None:
        words = str(command.get("command", "")).split()
        if len(words) == 2 and words[0].upper() == "SMEMBERS" and words[1] in self.keys:
            self.count += 1


def test_a_burst_of_tasks_reads_the_engines_claims_per_housekeeping_not_per_task(cluster, client, settings):
    engines = cluster.start_engines(2)
    cluster.start_scheduler(scheme="lifo")
    keys = {cluster.names.engine_claimed(d.engine_id) for d in engines}
    # When 300 tasks go through the scheduler at once
    reads = ClaimReads(settings.redis_url, keys)
    try:
        started = time.monotonic()
        ids = client.submit_many([MapTask(abs, (-i,)) for i in range(300)])
        client.barrier(ids, timeout=TIMEOUT_S)
        elapsed = time.monotonic() - started
    finally:
        reads.close()
    assert [client.results[t] for t in ids] == list(range(300))
    # Then what the engines claimed was read about once per housekeeping (at most every
    # heartbeat interval), not once per task: the cost of a dispatch does not grow with the
    # number of engines
    housekeepings = elapsed / min(0.5, settings.heartbeat_interval_s) + 3
    assert 0 < reads.count <= len(engines) * housekeepings, (reads.count, elapsed)
