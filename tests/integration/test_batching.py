"""Engines take quick tasks a few at a time; these tests pin down what that must not cost:
load balancing behind a long task, and a record that trails its message."""

from __future__ import annotations

import time

import pytest

from enginefarm import MapTask
from enginefarm.protocol import new_id, seal
from enginefarm.serialization import dumps
from enginefarm.store.records import NewTask

from ..harness import wait_for
from . import farm_tasks as ft
from .gatefiles import gates  # noqa: F401  (a fixture)

TIMEOUT_S = 60


@pytest.fixture
def two_engines(cluster):
    engines = cluster.start_engines(2)
    wait_for(lambda: ft.work_queue_consumers(cluster.settings) == 2, TIMEOUT_S, "both engines consuming")
    return engines


def test_quick_tasks_behind_a_long_one_run_on_the_idle_engine(client, two_engines, gates, tmp_path):
    log = str(tmp_path / "runs.log")
    # Quick work first, so that both engines claim in batches and take ahead
    warm = client.submit_many([MapTask(ft.record, (log, f"w{i}")) for i in range(100)])
    client.barrier(warm, timeout=TIMEOUT_S)
    # Given one task that blocks, published together with quick ones
    gate = gates.new()
    blocker, *quick = client.submit_many([MapTask(ft.gate, (gate,))]
                                         + [MapTask(ft.record, (log, f"q{i}")) for i in range(30)])
    # Then every quick task finishes while the blocker still runs: none waits behind it
    client.barrier(quick, timeout=TIMEOUT_S)
    assert client.records.get(blocker).status == "running"
    blocking_engine = client.records.get(blocker).engine_id
    assert {client.records.get(t).engine_id for t in quick} == {d.engine_id for d in two_engines} - {blocking_engine}
    assert sorted(ft.labels(log)[100:]) == sorted(f"q{i}" for i in range(30))
    # And the engine that stepped aside takes work again once the blocker is done
    gates.open(gate)
    assert client.get_task_result(blocker, block=True, timeout=TIMEOUT_S).result == "released"
    wait_for(lambda: ft.work_queue_consumers(client.settings) == 2, TIMEOUT_S, "the busy engine consuming again")
    again = client.submit_many([MapTask(ft.record, (log, f"a{i}")) for i in range(40)])
    client.barrier(again, timeout=TIMEOUT_S)
    assert {client.records.get(t).engine_id for t in again} == {d.engine_id for d in two_engines}


def publish_before_record(client, queue: str, x: int) -> str:
    """Publish ``square(x)`` to ``queue`` first and write its record a little later, as a
    client's write can trail its message; returns the task id once it has finished."""
    task, task_id = MapTask(ft.square, (x,)), new_id()
    header = {"task_id": task_id, "kind": task.kind, "client_id": client.client_id, "lb": True, **task.header()}
    body = seal(client.ring, header, dumps(task.request()))
    client.publisher.publish("", queue, body)
    time.sleep(0.3)
    client.records.create([NewTask(task_id, "map_task", client.client_id, body, None, {"lb": "1"})])
    client.outstanding.add(task_id)
    client.barrier([task_id], timeout=TIMEOUT_S)
    return task_id


def test_a_message_that_arrives_before_its_record_still_runs(client, cluster):
    cluster.start_engine()
    client.ids  # connect
    task_id = publish_before_record(client, client.names.work_queue, 6)
    assert client.results[task_id] == 36
    assert client.publisher.link.queue_depths([client.names.dead_queue])[client.names.dead_queue] == 0


def test_a_submission_that_reaches_the_scheduler_before_its_record_still_runs(client, cluster):
    # Under LIFO every load-balanced task goes through the scheduler, which must wait for a
    # trailing record as the engines do, neither refusing the message as a replay nor dropping it.
    cluster.start_scheduler("lifo")
    cluster.start_engine()
    client.ids  # connect
    task_id = publish_before_record(client, client.names.tasks_queue, 7)
    assert client.results[task_id] == 49
    assert client.records.get(task_id).engine_id == 0
    assert client.publisher.link.queue_depths([client.names.dead_queue])[client.names.dead_queue] == 0
