"""Load-balanced tasks when things go wrong: retries, recovery tasks, dead engines, a dead
scheduler, and no task lost under load."""

from __future__ import annotations

import signal
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from enginefarm import MapTask, StringTask
from enginefarm.broker.topology import queue_depth

from ..harness import wait_for
from . import farm_tasks as ft

TIMEOUT_S = 60


def engine_by_pid(daemons, pid):
    matches = [d for d in daemons if d.pid == pid]
    assert len(matches) == 1, f"no engine with pid {pid} among {[d.pid for d in daemons]}"
    return matches[0]


def executions(cluster, key):
    """HINCRBY counts written by ft.count: field -> how many times it ran."""
    r = cluster.redis()
    try:
        return {k.decode(): int(v) for k, v in r.hgetall(key).items()}
    finally:
        r.close()


# --- retries and recovery tasks ----------------------------------------------------------------
def test_retry_prefers_an_engine_that_has_not_failed_it(cluster, client, tmp_path):
    # Engines first: the scheduler then knows both from the start (it looks for new ones
    # only every half second)
    engines = cluster.start_engines(2)
    cluster.start_scheduler()
    trace = str(tmp_path / "attempts.txt")
    r = client.get_task_result(client.submit(MapTask(ft.always_fail, (trace,), retries=1)), block=True,
                               timeout=TIMEOUT_S)
    assert r.failure is not None
    assert (r.failure.ename, r.failure.evalue) == ("RuntimeError", "this task always fails")
    assert r.attempts == 2
    first, second = (engine_by_pid(engines, pid) for pid in ft.pids(trace))
    # The retry ran on the other engine, which is also where the final failure came from
    assert first.engine_id != second.engine_id
    assert r.engineid == r.failure.engine_id == second.engine_id
    assert client.records.get(r.taskid).failed_on == (first.engine_id,)


def test_retries_rerun_a_failing_task_a_bounded_number_of_times(cluster, client, tmp_path):
    cluster.start_scheduler()
    cluster.start_engines(2)
    # Fails twice, two retries: the third attempt succeeds
    recovers = str(tmp_path / "recovers.txt")
    ok = client.submit(MapTask(ft.fail_until, (recovers, 2), retries=2))
    # Fails twice, one retry: the second failure is final
    gives_up = str(tmp_path / "gives_up.txt")
    short = client.submit(MapTask(ft.fail_until, (gives_up, 2), retries=1))
    # Always fails, no retries: one attempt
    never = str(tmp_path / "never.txt")
    once = client.submit(MapTask(ft.always_fail, (never,)))
    client.barrier([ok, short, once], timeout=TIMEOUT_S)
    r = client.get_task_result(ok)
    assert (r.failure, r.result, r.attempts) == (None, 3, 3)
    assert len(ft.lines(recovers)) == 3
    r = client.get_task_result(short)
    assert (r.failure.ename, r.failure.evalue, r.attempts) == ("RuntimeError", "attempt 2 fails on purpose", 2)
    assert len(ft.lines(gives_up)) == 2
    r = client.get_task_result(once)
    assert (r.failure.ename, r.attempts) == ("RuntimeError", 1)
    assert len(ft.lines(never)) == 1


def test_recovery_task_runs_before_each_retry(cluster, client, tmp_path):
    cluster.start_scheduler()
    engine = cluster.start_engine()
    # Fails unless the recovery task has defined `marker` in the engine's namespace
    r = client.get_task_result(client.submit(StringTask(
        "out = marker * 2", pull="out", retries=1, recovery_task=StringTask("marker = 21"))),
        block=True, timeout=TIMEOUT_S)
    assert r.failure is None and r.out == 42
    # The first attempt ran without it: recovery only runs before a retry
    assert r.attempts == 2
    assert client[engine.engine_id].pull("marker") == 21
    # Before each retry, and not before the first attempt
    log = str(tmp_path / "log.txt")
    counted = str(tmp_path / "attempts.txt")
    r = client.get_task_result(client.submit(MapTask(
        ft.fail_until, (counted, 2), {"also": log}, retries=2,
        recovery_task=MapTask(ft.record, (log, "recovery")))), block=True, timeout=TIMEOUT_S)
    assert (r.failure, r.result) == (None, 3)
    assert ft.labels(log) == ["attempt", "recovery", "attempt", "recovery", "attempt"]


def test_recovery_task_that_fails_ends_the_task(cluster, client):
    cluster.start_scheduler()
    cluster.start_engine()
    r = client.get_task_result(client.submit(StringTask(
        "raise ValueError('first')", retries=1, recovery_task=StringTask("raise OSError('no disk')"))),
        block=True, timeout=TIMEOUT_S)
    assert r.failure is not None
    assert (r.failure.ename, r.failure.evalue) == ("RecoveryTaskFailed", "recovery_task raised OSError: no disk")
    assert r.attempts == 2


# --- dead engines ------------------------------------------------------------------------------------
def test_task_on_a_killed_engine_runs_again_elsewhere(cluster, client, tmp_path):
    cluster.start_scheduler()
    engines = cluster.start_engines(2)
    trace = str(tmp_path / "attempts.txt")
    task_id = client.submit(MapTask(ft.slow_first, (trace,)))
    wait_for(lambda: len(ft.lines(trace)) == 1, TIMEOUT_S, "the first attempt to start")
    victim = engine_by_pid(engines, ft.pids(trace)[0])
    survivor = next(d for d in engines if d is not victim)
    # When the engine running it is killed outright
    victim.signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    # Then the task runs again on the other engine and completes
    r = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert r.failure is None
    assert r.result == survivor.pid
    assert r.engineid == survivor.engine_id
    assert r.attempts == 2
    assert ft.pids(trace) == [victim.pid, survivor.pid]
    assert client.records.get(task_id).lost_on == (victim.engine_id,)
    wait_for(lambda: client.ids == [survivor.engine_id], TIMEOUT_S, "the dead engine to leave")


def test_task_that_kills_its_engine_process_fails_after_bounded_attempts(cluster, client, settings, tmp_path):
    cluster.start_scheduler()
    engines = cluster.start_engines(2)
    trace = str(tmp_path / "attempts.txt")
    r = client.get_task_result(client.submit(MapTask(ft.exit_engine_process, (trace,))), block=True,
                               timeout=TIMEOUT_S)
    assert settings.max_engine_losses == 3
    assert r.failure is not None
    assert r.failure.ename == "EngineProcessDied"
    assert r.failure.evalue == ("the engine's process died while running the task (exit code 1); "
                                "its namespace was lost (it lost 3 engines; giving up)")
    assert r.attempts == settings.max_engine_losses
    assert len(ft.lines(trace)) == settings.max_engine_losses
    record = client.records.get(r.taskid)
    assert record.status == "failed"
    assert len(record.lost_on) == settings.max_engine_losses - 1
    # The engines themselves survive: only their child processes died
    assert client.ids == sorted(d.engine_id for d in engines)
    assert all(d.proc.poll() is None for d in engines)


class SlowBroker:
    """A TCP relay to RabbitMQ standing for a slow network: it holds every new connection for
    ``connect_delay_s`` before relaying it, and delays everything the broker sends by
    ``latency_s``."""

    def __init__(self, amqp_url: str, connect_delay_s: float = 0.0, latency_s: float = 0.0) -> None:
        parts = urlsplit(amqp_url)
        self.upstream = (parts.hostname, parts.port or 5672)
        self.connect_delay_s = connect_delay_s
        self.latency_s = latency_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        port = self.server.getsockname()[1]
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        self.url = urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{port}"))
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> socket.socket:
        with self.lock:
            self.sockets.append(sock)
        return sock

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self._spawn(self._relay, self._keep(conn))

    def _relay(self, conn: socket.socket) -> None:
        if self.stopping.wait(self.connect_delay_s):
            return
        try:
            upstream = self._keep(socket.create_connection(self.upstream))
        except OSError:
            return
        self._spawn(self._pump, upstream, conn, self.latency_s)
        self._pump(conn, upstream, 0.0)

    def _pump(self, source: socket.socket, target: socket.socket, latency_s: float) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data or (latency_s and self.stopping.wait(latency_s)):
                    break
                target.sendall(data)
        except OSError:
            pass
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.stopping.set()
        self.server.close()
        with self.lock:
            sockets, threads = list(self.sockets), list(self.threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in threads:
            thread.join(timeout=10)


@pytest.fixture
def slow_broker(settings):
    # Three heartbeat intervals: the engine's first heartbeats come before its consumer is up.
    relay = SlowBroker(settings.amqp_url, connect_delay_s=3 * settings.heartbeat_interval_s)
    yield relay
    relay.close()


def test_engine_with_a_slow_broker_connection_serves_tasks(slow_broker, cluster, client):
    cluster.start_scheduler()
    engine = cluster.start_engine(wait=False, env_extra={"ENGINEFARM_AMQP_URL": slow_broker.url})
    cluster.wait_engine(engine)
    r = client.get_task_result(client.submit(MapTask(int, ("5",))), block=True, timeout=TIMEOUT_S)
    assert r.result == 5
    assert engine.proc.poll() is None


# --- a dead scheduler --------------------------------------------------------------------------------
# LIFO sends every task through the scheduler (FIFO would send plain tasks past it).
def submit_counted(client, key, labels, sleep_s=0.02):
    redis_url = client.settings.redis_url
    return [client.submit(MapTask(ft.count, (redis_url, key, str(i), sleep_s))) for i in labels]


def test_standby_scheduler_takes_over_under_load(cluster, client, settings):
    active = cluster.start_scheduler(scheme="lifo")
    standby = cluster.start_scheduler(scheme="lifo", wait=False)
    wait_for(lambda: "waiting for the lease" in standby.log(), TIMEOUT_S, "the standby to wait for the lease")
    cluster.start_engines(2)
    key = cluster.names.key("test", "executions")
    total = 300
    ids = submit_counted(client, key, range(total))
    wait_for(lambda: client.records.status_counts()["completed"] >= 40, TIMEOUT_S, "some tasks to complete")
    # When the active scheduler is killed outright in the middle of the work
    active.signal(signal.SIGKILL)
    assert active.wait(30) == -signal.SIGKILL
    completed_at_kill = client.records.status_counts()["completed"]
    assert completed_at_kill < total, "the kill came too late to prove anything"
    # Then the standby takes over and every task completes exactly once
    cluster.wait_scheduler_active(standby)
    client.barrier(ids, timeout=120)
    assert client.records.statuses(ids) == ["completed"] * total
    assert executions(cluster, key) == {str(i): 1 for i in range(total)}
    assert "scheduler restored" in standby.log()


def engine_queue_depth(cluster, engine_id: int) -> int | None:
    conn = pika.BlockingConnection(pika.URLParameters(cluster.settings.amqp_url))
    try:
        return queue_depth(conn.channel(), cluster.names.engine_queue(engine_id))
    finally:
        if conn.is_open:
            conn.close()


def test_restarted_scheduler_resumes(cluster, client, settings):
    first = cluster.start_scheduler(scheme="lifo")
    key = cluster.names.key("test", "executions")
    engines = cluster.start_engines(2)
    before = submit_counted(client, key, range(100))
    wait_for(lambda: client.records.status_counts()["completed"] >= 20, TIMEOUT_S, "some tasks to complete")
    first.signal(signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL
    # Work submitted while no scheduler runs waits for one: once the engines have finished
    # what had been routed to them, everything else is still pending
    during = submit_counted(client, key, range(100, 150))
    # (Not the engines' pending counts: a route the scheduler recorded but died before
    # publishing stays counted until the next scheduler repairs it, as it must.)
    wait_for(lambda: client.records.status_counts()["running"] == 0
             and all(engine_queue_depth(cluster, d.engine_id) == 0 for d in engines),
             TIMEOUT_S, "the engines to finish what was routed to them")
    assert client.records.statuses(during) == ["pending"] * 50
    assert "pending" in client.records.statuses(before)
    # A new scheduler takes the lease once the dead one's expires, and finishes everything
    cluster.start_scheduler(scheme="lifo")
    client.barrier(before + during, timeout=120)
    assert client.records.statuses(before + during) == ["completed"] * 150
    assert executions(cluster, key) == {str(i): 1 for i in range(150)}


# --- volume ------------------------------------------------------------------------------------------
def test_no_task_lost_in_a_thousand(cluster, client, settings):
    cluster.start_scheduler()
    cluster.start_engines(2)
    key = cluster.names.key("test", "executions")
    total = 1000
    ids = submit_counted(client, key, range(total), sleep_s=0.0)
    assert len(set(ids)) == total
    client.barrier(ids, timeout=180)
    assert client.records.statuses(ids) == ["completed"] * total
    counts = executions(cluster, key)
    assert sum(counts.values()) == total
    assert counts == {str(i): 1 for i in range(total)}
    status = client.queue_status()
    assert {k: status[k] for k in ("pending", "running", "completed", "failed", "aborted")} == {
        "pending": 0, "running": 0, "completed": total, "failed": 0, "aborted": 0}


# --- hand-backs racing the scheduler -------------------------------------------------------------
@pytest.fixture
def slow_confirms(settings):
    # Everything RabbitMQ sends the scheduler (publisher confirms included) arrives 100 ms late.
    relay = SlowBroker(settings.amqp_url, latency_s=0.1)
    yield relay
    relay.close()


def test_a_quick_hand_back_is_not_lost(slow_confirms, cluster, client):
    # A scheduler on a slow link: the engine's hand-back lands before its publish is confirmed
    cluster.start_scheduler(env_extra={"ENGINEFARM_AMQP_URL": slow_confirms.url})
    cluster.start_engine(properties={"zone": "north"})
    south = cluster.start_engine(properties={"zone": "south"})
    # Depends that say no at once: the first goes to engine 0 (least loaded, lowest id) and back
    ids = [client.submit(MapTask(int, ("1",), depend=ft.zone_is("south"))) for _ in range(4)]
    client.barrier(ids, timeout=TIMEOUT_S)
    assert {client.get_task_result(t).engineid for t in ids} == {south.engine_id}
