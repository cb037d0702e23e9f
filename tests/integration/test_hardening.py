"""Findings of an outside review, each tried for real against running daemons.

An attacker with Redis write access rewrites records the way they would; a key holder sends
poison; a careless operator leaves malformed fields behind. Each test waits for the daemon to
show it has seen the input (a counter, a dead letter, a record), then checks that nothing ran
that should not have and that the daemons are still alive and working.
"""

from __future__ import annotations

import json
import time

import pytest
import redis

from enginefarm import Client, MapTask
from enginefarm.errors import RemoteError
from enginefarm.protocol import new_id, seal
from enginefarm.serialization import dumps
from enginefarm.store.records import NewTask

from . import farm_tasks as ft
from ..harness import Cluster, wait_for

TIMEOUT_S = 60
# Short, so that expiring and renewing dispatch tickets happens within a test.
WINDOW_S = 4.0


@pytest.fixture
def settings(settings):
    return settings.replace(redispatch_window_s=WINDOW_S)



def errors_counted(client: Client, component: str, kind: str) -> int:
    return client.records.counter(f"errors:{component}:{kind}")


def rewind(r: redis.Redis, cluster: Cluster, task_id: str, **fields: str) -> None:
    """What a Redis writer does to make a finished task look as if it never ran."""
    names = cluster.names
    key = names.task(task_id)
    status = r.hget(key, "status").decode()
    r.hset(key, mapping={"status": "pending", **fields})
    r.hdel(key, "completed", "started", "result")
    r.srem(names.status_index(status), task_id)
    r.sadd(names.status_index("pending"), task_id)
    r.lpush(names.scheduler_events, task_id)


def alive(*daemons) -> bool:
    return all(d.proc.poll() is None for d in daemons)


# --- finding 1: a Redis writer cannot make engines run a finished task again ----------------
@pytest.mark.parametrize("route", ["scheduler", "shared-queue"])
def test_a_rewound_load_balanced_task_is_not_run_again(route, cluster, client, tmp_path):
    # Given a finished load-balanced task (routed by the scheduler, or taken from the shared queue)
    scheduler = cluster.start_scheduler()
    engine = cluster.start_engine()
    trace = str(tmp_path / "runs")
    priority = 1 if route == "scheduler" else 0
    task_id = client.submit(MapTask(ft.record, (trace, "ran"), priority=priority))
    assert client.get_task_result(task_id, block=True, timeout=TIMEOUT_S).result == "ran"
    before = errors_counted(client, "scheduler", "no-ticket")
    # When a Redis writer sets it back to pending and tells the scheduler to look at it
    rewind(cluster.redis(), cluster, task_id)
    # Then the scheduler refuses to dispatch it again (no fresh ticket), and it never runs again
    wait_for(lambda: errors_counted(client, "scheduler", "no-ticket") > before or len(ft.lines(trace)) > 1,
             TIMEOUT_S, "the scheduler to refuse the rewound task (or to run it again)")
    assert ft.lines(trace) == [f"ran {engine.pid}"]
    assert alive(scheduler, engine)
    assert client.load_balanced_view().apply(pow, 2, 5, block=True) == 32


def test_a_rewound_direct_task_is_never_the_schedulers_to_dispatch(cluster, client, tmp_path):
    # Given a finished targeted command
    scheduler = cluster.start_scheduler()
    engine = cluster.start_engine()
    trace = str(tmp_path / "runs")
    ar = client[engine.engine_id].apply(ft.record, trace, "ran", block=False)
    assert ar.get(timeout=TIMEOUT_S) == "ran"
    before = errors_counted(client, "scheduler", "not-load-balanced")
    # When a Redis writer dresses it up as a pending load-balanced task with a fresh-looking ticket
    r = cluster.redis()
    ticket = client.records.ticket(ar.task_ids[0])  # as if captured from some legitimate moment
    rewind(r, cluster, ar.task_ids[0], lb="1", _ticket=ticket)
    r.zadd(cluster.names.scheduler_pending, {ar.task_ids[0]: time.time()})
    # Then the scheduler looks only at the signed request: a targeted command is not its to route
    wait_for(lambda: errors_counted(client, "scheduler", "not-load-balanced") > before or len(ft.lines(trace)) > 1,
             TIMEOUT_S, "the scheduler to leave the targeted command alone (or to run it again)")
    assert ft.lines(trace) == [f"ran {engine.pid}"]
    assert alive(scheduler, engine)


def test_a_captured_ticket_expires_after_the_window(cluster, client, tmp_path):
    # Given a load-balanced task whose ticket was captured while it waited (its depend unmet)
    scheduler = cluster.start_scheduler()
    engine = cluster.start_engine()
    trace = str(tmp_path / "runs")
    task_id = client.submit(MapTask(ft.record, (trace, "ran"), depend=ft.zone_is("east")))
    r = cluster.redis()
    key = cluster.names.task(task_id)
    wait_for(lambda: client.records.get(task_id).waiting, TIMEOUT_S, "the task to wait for its depend")
    captured = r.hget(key, "_ticket")
    assert captured
    client[engine.engine_id].set_properties({"zone": "east"})
    assert client.get_task_result(task_id, block=True, timeout=TIMEOUT_S).result == "ran"
    # When the window passes and a Redis writer rewinds the task with the captured ticket
    deadline = time.time() + WINDOW_S
    wait_for(lambda: time.time() > deadline, WINDOW_S + 5, "the redispatch window to pass")
    before = errors_counted(client, "scheduler", "no-ticket")
    rewind(r, cluster, task_id, _ticket=captured)
    # Then the expired ticket is refused and the task does not run again
    wait_for(lambda: errors_counted(client, "scheduler", "no-ticket") > before, TIMEOUT_S,
             "the scheduler to refuse the expired ticket")
    assert ft.lines(trace) == [f"ran {engine.pid}"]
    assert alive(scheduler, engine)


def test_a_task_waiting_longer_than_the_window_still_runs_after_a_failover(settings, tmp_path):
    # A window long enough for a standby to start within what is left of it on a loaded machine.
    window_s = 12.0
    cluster = Cluster(settings.replace(redispatch_window_s=window_s), str(tmp_path))
    try:
        # Given a task that waits in the backlog for longer than the redispatch window
        first = cluster.start_scheduler()
        engine = cluster.start_engine()
        with Client(settings=cluster.settings) as client:
            task_id = client.submit(MapTask(pow, (2, 7), depend=ft.zone_is("west")))
            key = cluster.names.task(task_id)
            r = cluster.redis()
            wait_for(lambda: r.hget(key, "_ticket"), TIMEOUT_S, "the scheduler to take the task")
            original = r.hget(key, "_ticket")
            deadline = time.time() + window_s
            wait_for(lambda: time.time() > deadline, window_s + 5, "the first ticket's window to pass")
            # When the active scheduler has renewed its ticket meanwhile, then dies, and a standby takes over
            assert r.hget(key, "_ticket") != original
            first.signal(9)
            first.wait(30)
            second = cluster.start_scheduler()
            client[engine.engine_id].set_properties({"zone": "west"})
            # Then the standby dispatches it: a legitimate wait is never mistaken for a replay
            assert client.get_task_result(task_id, block=True, timeout=TIMEOUT_S).result == 128
            assert alive(second, engine)
    finally:
        cluster.teardown()


# --- finding 2: resubmit runs what the signed request says, not the record's kind ------------
@pytest.mark.parametrize("forged_kind", ["execute", "kill"])
def test_resubmit_takes_the_kind_from_the_signed_request(forged_kind, cluster, client, tmp_path):
    # Given finished targeted commands: a pull of a string that is code, and an execute
    engine = cluster.start_engine()
    canary = tmp_path / "canary"
    view = client[engine.engine_id]
    view.push({"code": f"open({str(canary)!r}, 'w').write('ran')"})
    pulled = view.pull("code", block=False)
    pulled.get(timeout=TIMEOUT_S)
    executed = view.execute("x = 41 + 1", block=False)
    executed.get(timeout=TIMEOUT_S)
    # When a Redis writer changes what the records say they were
    r = cluster.redis()
    target = pulled if forged_kind == "execute" else executed
    r.hset(cluster.names.task(target.task_ids[0]), "kind", forged_kind)
    # Then resubmit sends the signed kind: the pull pulls, the execute executes; nothing else
    again = client.resubmit(target.task_ids[0], block=False)
    value = again.get(timeout=TIMEOUT_S)
    if forged_kind == "execute":
        assert value == f"open({str(canary)!r}, 'w').write('ran')"
        assert not canary.exists()
        assert client.records.get(again.task_ids[0]).kind == "pull"
    else:
        assert client.records.get(again.task_ids[0]).kind == "execute"
        assert view.pull("x") == 42
    assert alive(engine)


# --- finding 3: a malformed unsigned field is noted and skipped, never fatal ------------------
def test_malformed_redis_fields_do_not_take_daemons_down(cluster, client, tmp_path):
    scheduler = cluster.start_scheduler()
    engines = cluster.start_engines(2)
    names = cluster.names
    r = cluster.redis()
    # Given a pending load-balanced record with a non-numeric attempts count in the scheduler's events
    bad_task = new_id()
    body = seal(client.ring, {"task_id": bad_task, "kind": "map_task", "client_id": client.client_id, "lb": True},
                dumps({"call": (pow, (2, 2), {}), "depend": None, "recovery": None}))
    client.records.create([NewTask(bad_task, "map_task", client.client_id, body, None, {"lb": "1"})])
    r.hset(names.task(bad_task), "attempts", "many")
    r.lpush(names.scheduler_events, bad_task)
    # And a heartbeat member, a registry entry and the properties version that are not what they should be
    r.zadd(names.heartbeats, {"not-an-engine": time.time()})
    r.hset(names.engines, "7", "{not json")
    r.set(names.properties_version, "eleven")
    # And an engine property that is not JSON, read by a depend
    r.hset(names.engine_properties(engines[0].engine_id), "zone", "{broken")
    depend_task = client.submit(MapTask(pow, (3, 2), depend=ft.anywhere))
    # Then the malformed record is failed with a clear error (its task never runs)
    failed = client.get_task_result(bad_task, block=True, timeout=TIMEOUT_S)
    assert failed.failure is not None and failed.failure.ename == "DecodeError"
    assert "attempts" in failed.failure.evalue
    wait_for(lambda: errors_counted(client, "scheduler", "registry") > 0, TIMEOUT_S,
             "the scheduler to note the malformed registry fields")
    # And depend runs without the broken property; every daemon is alive and still works
    assert client.get_task_result(depend_task, block=True, timeout=TIMEOUT_S).result == 9
    assert alive(scheduler, *engines)
    assert client.load_balanced_view().map(abs, range(-4, 4), block=True) == [4, 3, 2, 1, 0, 1, 2, 3]
    assert client.direct_view().apply(pow, 2, 3) == [8, 8]
    # A restarted scheduler reads the same state and stays up too
    scheduler.signal(15)
    scheduler.wait(30)
    again = cluster.start_scheduler()
    assert client.load_balanced_view().apply(pow, 2, 4, block=True) == 16
    assert alive(again, *engines)


def test_cli_shows_malformed_fields_without_a_traceback(cluster, client, cli_run):
    engine = cluster.start_engine()
    names = cluster.names
    r = cluster.redis()
    ar = client[engine.engine_id].apply(pow, 2, 2, block=False)
    ar.get(timeout=TIMEOUT_S)
    # Given malformed fields in a record and in the registry
    r.hset(names.task(ar.task_ids[0]), mapping={"attempts": "x", "submitted": "yesterday", "error": "{"})
    r.zadd(names.heartbeats, {"bogus": time.time()})
    r.hset(names.engines, "9", "[1, 2")
    # When an operator looks at the cluster
    for command in ("status", "tasks", "queue-status"):
        proc = cli_run(command)
        # Then the commands answer, with no traceback
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
    listed = json.loads(cli_run("tasks", "--json").stdout)
    row = next(t for t in listed if t["task_id"] == ar.task_ids[0])
    assert "attempts" in row["invalid"] and "submitted" in row["invalid"]


# --- findings 6 and 7: poison from a key holder, and refused legitimate messages --------------
def signed_request(client: Client, canary: str, **header: object) -> tuple[str, bytes]:
    """A load-balanced request that would leave a canary if it ran, with a pending record."""
    task_id = new_id()
    head = {"task_id": task_id, "kind": "map_task", "client_id": client.client_id, "lb": True, **header}
    body = seal(client.ring, head, dumps({"call": (ft.record, (canary, "ran"), {}), "depend": None,
                                          "recovery": None}))
    client.records.create([NewTask(task_id, "map_task", client.client_id, body, None, {"lb": "1"})])
    return task_id, body


@pytest.mark.parametrize("queue", ["engine", "work", "tasks"])
def test_signed_poison_is_dead_lettered_and_its_record_failed(queue, cluster, client, amqp, tmp_path):
    # Given running daemons, and requests signed with the cluster key whose headers are poison
    scheduler = cluster.start_scheduler()
    engine = cluster.start_engine()
    canary = str(tmp_path / "canary")
    names = cluster.names
    poisons = {"timeout-text": {"timeout": "x"}, "priority-text": {"priority": "high"},
               "negative-retries": {"retries": -3}, "unknown-field": {"colour": "red"}}
    sent = {name: signed_request(client, canary, **fields) for name, fields in poisons.items()}
    # The deep one is made by hand: json.dumps itself refuses 3000 levels.
    deep_id = new_id()
    deep_json = (f'{{"task_id":"{deep_id}","kind":"map_task","client_id":"{client.client_id}","lb":true,'
                 f'"nested":' + "[" * 3000 + "]" * 3000 + "}").encode()
    deep_body = seal_raw(client.ring, deep_json, dumps({"call": (ft.record, (canary, "ran"), {})}))
    client.records.create([NewTask(deep_id, "map_task", client.client_id, deep_body, None, {"lb": "1"})])
    sent["deep-header"] = (deep_id, deep_body)
    # When they are published to the queue under test
    exchange, key = {"engine": (names.direct_exchange, str(engine.engine_id)),
                     "work": ("", names.work_queue), "tasks": ("", names.tasks_queue)}[queue]
    for _, body in sent.values():
        amqp.publish(exchange, key, body)
    # Then each is dead-lettered with its reason, its record is failed, and nothing ran
    for name, (task_id, _) in sent.items():
        result = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
        assert result.failure is not None and result.failure.ename == "MessageRefused", name
        reason = "malformed" if name == "deep-header" else "invalid"
        assert f"({reason})" in result.failure.evalue, (name, result.failure.evalue)
    assert client.records.counter("dead_lettered:invalid") == len(poisons)
    assert client.records.counter("dead_lettered:malformed") == 1
    assert not (tmp_path / "canary").exists()
    assert alive(scheduler, engine)
    assert client.load_balanced_view().apply(pow, 3, 3, block=True) == 27


def seal_raw(ring, head: bytes, payload: bytes) -> bytes:
    """Sign header bytes as they are (``seal`` takes a dict, which JSON cannot nest 3000 deep)."""
    import hashlib
    import hmac
    import struct

    from enginefarm.protocol import MAGIC

    kid = ring.signing_id.encode("ascii")
    body = struct.pack(">I", len(head)) + head + payload
    return MAGIC + kid + hmac.new(ring.signing_key, MAGIC + kid + body, hashlib.sha256).digest() + body


def test_a_stale_legitimate_message_fails_its_record(settings, tmp_path, amqp):
    # Given engines that refuse messages older than a minute, and a legitimate request from long ago
    strict = settings.replace(max_message_age_s=60.0)
    cluster = Cluster(strict, str(tmp_path))
    try:
        engine = cluster.start_engine()
        with Client(settings=strict) as client:
            canary = str(tmp_path / "canary")
            task_id, body = signed_request(client, canary, ts=time.time() - 3600)
            # When it reaches an engine
            amqp.publish("", cluster.names.work_queue, body)
            # Then it is dead-lettered as stale and its client learns so instead of waiting forever
            with pytest.raises(RemoteError) as refused:
                client.get_result(task_id, block=False).get(timeout=TIMEOUT_S)
            assert refused.value.ename == "MessageRefused" and "(stale)" in refused.value.evalue
            assert not (tmp_path / "canary").exists()
            assert alive(engine)
    finally:
        cluster.teardown()


def test_a_replay_to_the_tasks_queue_is_dead_lettered_and_counted(cluster, client, amqp, tmp_path):
    # Given a load-balanced task that finished through the scheduler
    scheduler = cluster.start_scheduler()
    engine = cluster.start_engine()
    trace = str(tmp_path / "runs")
    task_id = client.submit(MapTask(ft.record, (trace, "ran"), priority=2))
    client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    body = client.records.get(task_id).request
    # When someone who captured its message publishes it to the scheduler's queue again
    amqp.publish("", cluster.names.tasks_queue, body)
    # Then it is dead-lettered as a replay and counted, the record is untouched, nothing runs again
    wait_for(lambda: client.records.counter("dead_lettered:replayed") == 1, TIMEOUT_S,
             "the replay to be dead-lettered")
    assert client.records.get(task_id).status == "completed"
    assert ft.lines(trace) == [f"ran {engine.pid}"]
    assert alive(scheduler, engine)


@pytest.fixture
def cli_run(settings, cluster):
    import subprocess
    import sys

    from enginefarm.local import settings_env

    def run(command: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "enginefarm", command, "--cluster", settings.cluster, *args]
        return subprocess.run(argv, env=settings_env(settings), capture_output=True, text=True, timeout=TIMEOUT_S)

    return run


# --- daemon loops: what they survive is logged with its traceback and counted ---------------
def test_an_incident_is_logged_with_its_traceback_and_counted_twice(client, caplog):
    from enginefarm.incidents import Incidents
    from enginefarm.metrics import Metrics

    metrics = Metrics()
    incidents = Incidents("scheduler", metrics, client.records)
    # When a daemon meets something it cannot handle while handling one item
    try:
        raise ValueError("an item the loop did not expect")
    except ValueError:
        incidents.note("event", "scheduler failed handling an event of task %s", "t1", traceback=True)
    # Then it is logged with the traceback, and counted in Prometheus and in Redis
    logged = [r for r in caplog.records if "failed handling an event of task t1" in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "an item the loop did not expect" in caplog.text
    assert metrics.registry.get_sample_value(
        "enginefarm_errors_total", {"component": "scheduler", "kind": "event"}) == 1.0
    assert client.records.counter("errors:scheduler:event") == 1
