"""The admin CLI (status, queue-status, purge, tasks, abort, resubmit, shutdown) run as a real
subprocess against real daemons: JSON output parsed and checked, tables read, errors one line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest

from enginefarm import MapTask, RemoteError
from enginefarm.local import settings_env
from enginefarm.store.records import ABORTED, COMPLETED, FAILED, PENDING, RUNNING

from .farm_tasks import wait_file, fail, anywhere
from ..harness import remove_cluster, wait_for

LONG = 120.0  # generous: the box is small and loaded


# --- run on engines (this module is pickled by value, see the end) ---------------------------
def parked(client, n=0):
    """A load-balanced task that stays pending here: with a depend it goes through the
    scheduler's queue, and these tests run no scheduler."""
    return client.submit(MapTask(pow, (2, n), depend=anywhere))


# --- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture
def cli(settings, cluster):
    """Run ``enginefarm <command> --cluster <the test's cluster> ...``.

    ENGINEFARM_CLUSTER names a decoy cluster, so a command that ignored --cluster would show
    (the decoy is removed at teardown whatever happens).
    """
    decoy = settings.replace(cluster=f"decoy{uuid.uuid4().hex[:8]}")

    def run(command, *args, env=None, cluster=True):
        full = settings_env(settings)
        full["ENGINEFARM_CLUSTER"] = decoy.cluster
        full.update(env or {})
        argv = [sys.executable, "-m", "enginefarm", *command.split()]
        if cluster:
            argv += ["--cluster", settings.cluster]
        return subprocess.run([*argv, *args], env=full, capture_output=True, text=True, timeout=LONG)

    yield run
    remove_cluster(decoy)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


def ok_json(proc):
    return json.loads(ok(proc))


def one_error_line(proc):
    """The command failed with one clear line on stderr; returns that line."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def status_of(client, task_id):
    rows = client.db_query({"task_id": task_id}, keys=["status"])
    return rows[0]["status"] if rows else None


def wait_running(client, task_id):
    wait_for(lambda: status_of(client, task_id) == RUNNING, LONG, f"task {task_id} to start")


def table_rows(text):
    """A table's lines split on runs of blanks: header first."""
    return [line.split() for line in text.strip().splitlines()]


# --- status and queue-status ----------------------------------------------------------------------
def test_status_and_queue_status(cli, client, cluster, settings, gates):
    engines = sorted(cluster.start_engines(2), key=lambda d: d.engine_id)
    assert client[0].apply(pow, 2, 3) == 8
    done = client.history[-1]
    gate = gates()
    running = client[1].apply(wait_file, gate, "x", block=False).task_ids[0]
    wait_running(client, running)
    pending = parked(client)  # waits in the tasks queue
    c = settings.cluster

    status = ok_json(cli("status", "--json"))
    assert status["cluster"] == c
    assert status["tasks"] == {PENDING: 1, RUNNING: 1, COMPLETED: 1, FAILED: 0, ABORTED: 0}
    # The parked task is held by no engine yet: it counts as unassigned.
    assert status["unassigned"] == 1 and status["history"] == 3
    assert status["queues"] == {f"{c}.tasks": 1, f"{c}.work": 0, f"{c}.dead": 0, f"{c}.engine.0": 0,
                                f"{c}.engine.1": 0}
    ages = [e.pop("heartbeat_age_s") for e in status["engines"]]
    assert all(0 <= age < settings.engine_timeout_s for age in ages)
    host = socket.gethostname()
    assert status["engines"] == [
        {"engine_id": 0, "host": host, "pid": engines[0].pid, "alive": True, "properties": {},
         "running": [], "queued": 0},
        {"engine_id": 1, "host": host, "pid": engines[1].pid, "alive": True, "properties": {},
         "running": [running], "queued": 1},
    ]

    text = ok(cli("status"))
    lines = text.splitlines()
    assert lines[0] == f"cluster {c!r}"
    header = lines.index("engines:") + 1
    assert lines[header].split() == ["ENGINE_ID", "ALIVE", "HOST", "PID", "HEARTBEAT_AGE_S", "RUNNING", "QUEUED",
                                     "PROPERTIES"]
    row0, row1 = lines[header + 1].split(), lines[header + 2].split()
    assert row0[:4] == ["0", "True", host, str(engines[0].pid)] and row0[5:] == ["-", "0", "{}"]
    assert row1[:4] == ["1", "True", host, str(engines[1].pid)] and row1[5:] == [running, "1", "{}"]
    assert f"  {c}.tasks: 1" in lines and f"  {c}.dead: 0" in lines
    assert "tasks: pending 1, running 1, completed 1, failed 0, aborted 0" in lines
    assert "held by no engine yet: 1; records in history: 3" in lines

    queues = ok_json(cli("queue-status", "--json"))
    assert queues == {
        "0": {"engine_id": 0, "queue": 0, "pending": 0, "running": 0, "completed": 1, "failed": 0, "aborted": 0},
        "1": {"engine_id": 1, "queue": 0, "pending": 0, "running": 1, "completed": 0, "failed": 0, "aborted": 0},
        "unassigned": 1, PENDING: 1, RUNNING: 1, COMPLETED: 1, FAILED: 0, ABORTED: 0,
    }
    verbose = ok_json(cli("queue-status", "--targets", "1", "--verbose", "--json"))
    assert verbose == {
        "1": {"engine_id": 1, "queue": [], "pending": [], "running": [running], "completed": [], "failed": [],
              "aborted": []},
        "unassigned": [pending], PENDING: 1, RUNNING: 1, COMPLETED: 1, FAILED: 0, ABORTED: 0,
    }
    both = ok_json(cli("queue-status", "--targets", "0,1", "--json"))
    assert both == queues
    assert ok_json(cli("queue-status", "--targets", "0", "--json"))["0"]["completed"] == 1
    assert table_rows(ok(cli("queue-status"))) == [
        ["ENGINE_ID", "QUEUE", "RUNNING", "COMPLETED", "FAILED", "ABORTED"],
        ["0", "0", "0", "1", "0", "0"],
        ["1", "0", "1", "0", "0", "0"],
        ["unassigned", "1,", "pending", "1,", "running", "1,", "completed", "1,", "failed", "0,", "aborted", "0"],
    ]
    line = one_error_line(cli("queue-status", "--targets", "5"))
    assert line == f"Error: engine 5 is not registered in cluster {c!r} (ids: [0, 1])"
    assert pending in client.hub_history() and done in client.hub_history()


# --- tasks ---------------------------------------------------------------------------------------------
def test_tasks_lists_and_queries_the_history(cli, client, cluster):
    cluster.start_engine()
    assert client[0].apply(pow, 2, 3) == 8
    mid = time.time()
    with pytest.raises(RemoteError):
        client[0].apply(fail, "bad input")
    lb = parked(client)
    done, failed = client.history[:2]

    rows = ok_json(cli("tasks", "--json"))
    assert [(r["task_id"], r["kind"], r["status"], r.get("engine_id"), r["attempts"]) for r in rows] == [
        (done, "apply", COMPLETED, 0, 1), (failed, "apply", FAILED, 0, 1), (lb, "map_task", PENDING, None, 0)]
    assert rows[0]["summary"] == "8" and rows[0]["client_id"] == client.client_id
    assert rows[1]["error"]["ename"] == "ValueError" and rows[1]["error"]["evalue"] == "bad input"
    assert rows[0]["submitted"] < mid < rows[1]["submitted"] <= rows[2]["submitted"]

    assert [r["task_id"] for r in ok_json(cli("tasks", "--status", "failed", "--json"))] == [failed]
    assert [r["task_id"] for r in ok_json(cli("tasks", "--limit", "1", "--json"))] == [done]
    assert [r["task_id"] for r in ok_json(cli("tasks", "--limit", "2", "--json"))] == [done, failed]
    query = json.dumps({"submitted": {"$gt": mid}})
    assert [r["task_id"] for r in ok_json(cli("tasks", "--query", query, "--json"))] == [failed, lb]
    query = json.dumps({"engine_id": 0, "status": {"$in": ["completed", "failed"]}})
    assert [r["task_id"] for r in ok_json(cli("tasks", "--query", query, "--json"))] == [done, failed]
    # --status narrows a --query
    query = json.dumps({"engine_id": {"$exists": True}})
    assert [r["task_id"] for r in ok_json(cli("tasks", "--query", query, "--status", "completed",
                                              "--json"))] == [done]
    assert ok_json(cli("tasks", "--status", "aborted", "--json")) == []

    table = table_rows(ok(cli("tasks")))
    assert table[0] == ["TASK_ID", "KIND", "STATUS", "ENGINE_ID", "ATTEMPTS", "SUBMITTED", "SUMMARY", "ERROR"]
    assert [(r[0], r[1], r[2], r[3], r[4], r[6], r[7]) for r in table[1:]] == [
        (done, "apply", COMPLETED, "0", "1", "8", "-"),
        (failed, "apply", FAILED, "0", "1", "-", "ValueError"),
        (lb, "map_task", PENDING, "-", "0", "-", "-"),
    ]
    assert [float(r[5]) for r in table[1:]] == [round(r["submitted"], 3) for r in rows]
    assert ok(cli("tasks", "--status", "aborted")).strip() == "(none)"


def test_tasks_limit_zero_lists_nothing(cli, client):
    client.submit(MapTask(pow, (2, 2)))
    assert ok_json(cli("tasks", "--limit", "0", "--json")) == []


# --- abort -----------------------------------------------------------------------------------------------
def test_abort(cli, client, settings):
    first, second = (client.submit(MapTask(pow, (2, n))) for n in range(2))  # no scheduler: pending
    assert ok_json(cli("abort", "--json", first, second)) == {first: True, second: True}
    rows = client.db_query({}, keys=["status", "error", "attempts"])
    assert [(r["status"], r["error"]["ename"], r["attempts"]) for r in rows] == [(ABORTED, "TaskAborted", 0)] * 2
    assert ok(cli("abort", first)) == f"{first}: not aborted (already running or finished)\n"
    third = client.submit(MapTask(pow, (2, 3)))
    assert ok(cli("abort", third)) == f"{third}: aborted\n"
    line = one_error_line(cli("abort", "ghost"))
    assert line == f"Error: no task 'ghost' in cluster {settings.cluster!r}"


def test_abort_with_an_unknown_id_aborts_nothing(cli, client):
    known = client.submit(MapTask(pow, (2, 2)))
    one_error_line(cli("abort", known, "ghost"))
    assert status_of(client, known) == PENDING


# --- resubmit --------------------------------------------------------------------------------------------
def test_resubmit(cli, client, cluster, settings, gates):
    cluster.start_engine()
    assert client[0].apply(pow, 3, 4) == 81
    old = client.history[-1]
    mapping = ok_json(cli("resubmit", "--json", old))
    assert list(mapping) == [old]
    new = mapping[old]
    assert new != old and client.hub_history() == [old, new]
    assert client.get_result(new).get(timeout=LONG) == 81
    rec = client.db_query({"task_id": new})[0]
    assert (rec["kind"], rec["engine_id"], rec["status"]) == ("apply", 0, COMPLETED)

    text = ok(cli("resubmit", old))
    newer = client.hub_history()[-1]
    assert text == f"{old} -> {newer}\n" and newer not in (old, new)
    assert client.get_result(newer).get(timeout=LONG) == 81

    gate = gates()
    busy = client[0].apply(wait_file, gate, block=False).task_ids[0]
    twin = ok_json(cli("resubmit", "--json", busy))[busy]
    assert twin not in (old, new, newer, busy)
    line = one_error_line(cli("resubmit", old, "ghost"))
    assert line == f"Error: no task 'ghost' in cluster {settings.cluster!r}"
    assert client.hub_history() == [old, new, newer, busy, twin]


def test_resubmit_refused_for_one_task_submits_none(cli, client, cluster, gates):
    cluster.start_engine()
    assert client[0].apply(pow, 3, 4) == 81
    done = client.history[-1]
    one_error_line(cli("resubmit", done, "ghost"))
    assert client.hub_history() == [done]


# --- purge -----------------------------------------------------------------------------------------------
def test_purge(cli, client, cluster, settings, gates):
    cluster.start_engines(2)
    c = settings.cluster
    assert [client[0].apply(pow, 2, 1), client[0].apply(pow, 2, 2), client[1].apply(pow, 2, 3)] == [2, 4, 8]
    a, b, on1 = client.history
    gate = gates()
    busy = client[0].apply(wait_file, gate, block=False).task_ids[0]
    wait_running(client, busy)
    waiting = [parked(client, n) for n in range(2)]

    # One record by id
    assert ok(cli("purge", a)) == "removed 1 task record(s)\n"
    assert client.db_query({"task_id": a}) == []
    # In flight: refused, nothing removed
    line = one_error_line(cli("purge", b, busy))
    assert line == f"Error: cannot purge task {busy} while it is in flight"
    line = one_error_line(cli("purge", "ghost"))
    assert line == f"Error: no task 'ghost' in cluster {c!r}"
    assert client.hub_history() == [b, on1, busy, *waiting]
    # By engine
    assert ok_json(cli("purge", "--engine", "1", "--json")) == {"records": 1, "aborted": 0, "messages": {}}
    assert client.hub_history() == [b, busy, *waiting]
    # Queues: the waiting tasks are aborted and their messages dropped; none stays pending
    report = ok_json(cli("purge", "--queues", "--json"))
    assert report == {"records": 0, "aborted": 2,
                      "messages": {f"{c}.tasks": 2, f"{c}.work": 0, f"{c}.engine.0": 0, f"{c}.engine.1": 0}}
    assert client.db_query({"status": PENDING}) == []
    rows = client.db_query({"task_id": {"$in": waiting}}, keys=["status", "error"])
    assert [(r["status"], r["error"]["evalue"]) for r in rows] == [
        (ABORTED, "purged by an administrator before it ran")] * 2
    # Everything finished, with the queues once more (nothing left in them)
    lines = ok(cli("purge", "--all", "--queues")).splitlines()
    assert lines[:2] == ["removed 3 task record(s)", "aborted 0 pending task(s)"]
    assert sorted(lines[2:]) == sorted(
        f"purged 0 message(s) from {q}" for q in (f"{c}.tasks", f"{c}.work", f"{c}.engine.0", f"{c}.engine.1"))
    assert client.hub_history() == [busy]
    assert status_of(client, busy) == RUNNING
    Path(gate).touch()
    assert client.wait([busy], LONG)
    assert ok_json(cli("purge", "--all", "--json")) == {"records": 1, "aborted": 0, "messages": {}}
    assert client.hub_history() == []
    usage = cli("purge")
    assert usage.returncode == 2 and "Error: say what to purge" in usage.stderr
    assert "Traceback" not in usage.stderr


# --- shutdown --------------------------------------------------------------------------------------------
def test_shutdown(cli, client, cluster, settings):
    engines = sorted(cluster.start_engines(2), key=lambda d: d.engine_id)
    scheduler = cluster.start_scheduler()
    line = one_error_line(cli("shutdown", "--targets", "7"))
    assert line == f"Error: engine 7 is not registered in cluster {settings.cluster!r} (ids: [0, 1])"
    assert ok_json(cli("shutdown", "--targets", "1", "--json")) == {"engines": [1], "hub": False}
    assert engines[1].wait(LONG) == 0
    wait_for(lambda: client.ids == [0], LONG, "engine 1 to leave")
    assert engines[0].proc.poll() is None and scheduler.proc.poll() is None
    assert ok(cli("shutdown", "--hub")) == "asked engines [0] to stop and the schedulers\n"
    assert engines[0].wait(LONG) == 0
    assert scheduler.wait(LONG) == 0
    assert client.ids == []


# --- errors: one clear line -------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["abort", "ghost"], "Error: no task 'ghost' in cluster {cluster!r}"),
    (["resubmit", "ghost"], "Error: no task 'ghost' in cluster {cluster!r}"),
    (["purge", "ghost"], "Error: no task 'ghost' in cluster {cluster!r}"),
    (["tasks", "--query", '{"status": '], "Error: --query is not valid JSON: Expecting value: line 1 column 12 "
                                          "(char 11)"),
    (["tasks", "--query", "[1, 2]"], "Error: --query must be a JSON object"),
    (["tasks", "--query", '{"status": {"$regex": "p"}}'],
     "Error: unknown operator '$regex' on 'status'; use one of ['$exists', '$gt', '$gte', '$in', '$lt', "
     "'$lte', '$ne', '$nin']"),
    (["tasks", "--query", '{"status": {"$in": "pending"}}'], "Error: $in on 'status' takes a list"),
    (["tasks", "--json", "--query", '{"$or": []}'],
     "Error: bad field name '$or' (top-level operators are not supported)"),
    (["tasks", "--query", '{"status": ' + "[" * 3000 + "]" * 3000 + "}"],
     "Error: a query may nest at most 32 levels of objects and lists"),
    (["tasks", "--query", '{"a": ' * 3000 + "1" + "}" * 3000],
     "Error: a query may nest at most 32 levels of objects and lists"),
    (["tasks", "--query", '{"status": {"$in": ' + "[" * 40 + "]" * 40 + "}}"],
     "Error: a query may nest at most 32 levels of objects and lists"),
], ids=["abort", "resubmit", "purge", "json", "not-object", "operator", "in-not-list", "top-level-op",
        "deep-json-lists", "deep-json-objects", "deep-query"])
def test_bad_input_is_one_error_line(cli, settings, args, message):
    proc = cli(*args)
    assert one_error_line(proc) == message.format(cluster=settings.cluster)
    assert proc.returncode == 1 and proc.stdout == ""


UNREACHABLE = {"ENGINEFARM_REDIS_URL": "redis://127.0.0.1:1/0"}


@pytest.mark.parametrize("args", [
    ["status"], ["status", "--json"], ["queue-status"], ["tasks"], ["tasks", "--json"], ["abort", "t1"],
    ["resubmit", "t1"], ["purge", "--all"], ["purge", "--queues"], ["shutdown"], ["shutdown", "--hub"],
], ids=lambda a: "-".join(x.strip("-") for x in a))
def test_unreachable_redis_is_one_error_line(cli, args):
    proc = cli(*args, env=UNREACHABLE)
    line = one_error_line(proc)
    assert line == "Error: Redis unavailable: Error 111 connecting to 127.0.0.1:1. Connection refused."
    assert proc.returncode == 1 and proc.stdout == ""


def test_unreachable_rabbitmq_is_one_error_line(cli):
    proc = cli("status", env={"ENGINEFARM_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"})
    assert one_error_line(proc).startswith("Error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/%2F")


cloudpickle.register_pickle_by_value(sys.modules[__name__])
