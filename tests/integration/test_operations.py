"""Operations: graceful drain, time limits, long tasks vs the consumer timeout, metrics, systemd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from enginefarm import Client, MapTask, RemoteError
from enginefarm.store.records import COMPLETED, FAILED, RUNNING

from ..harness import Cluster, wait_for
from ..servers import PrivateRabbit, free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def append_line(path: str, text: str, seconds: float = 0.0) -> str:
    import time

    with open(path, "a") as handle:
        handle.write(text + "\n")
    time.sleep(seconds)
    return text


def lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return handle.read().split()


def status_of(client: Client, task_id: str) -> str | None:
    record = client.records.get(task_id)
    return record.status if record else None


def test_sigterm_drains_running_task_under_load(cluster, client, tmp_path):
    # Given a scheduler, two engines, a slow targeted task on engine A and load-balanced load
    log = str(tmp_path / "runs.txt")
    cluster.start_scheduler()
    engine_a, _engine_b = cluster.start_engines(2)
    slow = client[engine_a.engine_id].apply(append_line, log, "slow", 3.0, block=False)
    behind = client[engine_a.engine_id].apply(append_line, log, "behind", block=False)
    load = client.submit_many([MapTask(append_line, (log, f"lb{i}", 0.05)) for i in range(40)])
    wait_for(lambda: status_of(client, slow.task_ids[0]) == RUNNING, 30, "the slow task to start")

    # When engine A gets SIGTERM
    engine_a.signal(signal.SIGTERM)

    # Then it finishes the running task, exits 0, and nothing is lost or run twice
    assert engine_a.wait(60) == 0
    assert slow.get(timeout=30) == "slow"
    with pytest.raises(RemoteError) as info:
        behind.get(timeout=30)
    assert info.value.ename == "EngineLost" and "shut down before running" in info.value.evalue
    client.barrier(load, timeout=120)
    assert [client.get_task_result(t).result for t in load] == [f"lb{i}" for i in range(40)]
    runs = lines(log)
    assert sorted(runs) == sorted(["slow"] + [f"lb{i}" for i in range(40)])
    assert engine_a.engine_id not in client.ids


def test_second_sigterm_interrupts_and_task_runs_elsewhere(cluster, client, tmp_path):
    log = str(tmp_path / "runs.txt")
    cluster.start_scheduler()
    engine_a = cluster.start_engine()
    tid = client.submit(MapTask(append_line, (log, "long", 6.0)))
    wait_for(lambda: lines(log) == ["long"], 30, "the task to start running on engine A")
    cluster.start_engine()

    engine_a.signal(signal.SIGTERM)
    wait_for(lambda: "draining" in engine_a.log(), 30, "engine A to drain")
    engine_a.signal(signal.SIGTERM)

    assert engine_a.wait(60) == 0
    result = client.get_task_result(tid, block=True, timeout=60)
    assert result.result == "long"
    assert result.engineid != engine_a.engine_id
    record = client.records.get(tid)
    assert record.lost_on == (engine_a.engine_id,)
    assert record.last_error is not None and record.last_error["ename"] == "TaskInterrupted"
    assert lines(log) == ["long", "long"]  # started on A, interrupted, run again on B


def spin_forever() -> None:
    while True:
        pass


def stuck_in_c() -> None:
    import ctypes

    ctypes.CDLL(None).sleep(3600)


@pytest.mark.parametrize("function", [spin_forever, stuck_in_c])
def test_stuck_task_is_stopped_at_its_limit(cluster, client, function):
    cluster.start_scheduler()
    cluster.start_engine()
    client[0].push({"kept": 1})
    tid = client.submit(MapTask(function, timeout=1.5))
    result = client.get_task_result(tid, block=True, timeout=60)
    assert result.failure is not None and result.failure.ename == "TaskTimeout"
    assert "1.5s" in result.failure.evalue and "namespace was lost" in result.failure.evalue
    assert result.duration is not None and result.duration < 30
    assert client.metadata_for(tid).namespace_lost is True
    # The engine survives with a fresh namespace.
    assert client[0].apply(pow, 3, 3) == 27
    assert client[0].keys() == []


def test_cluster_default_time_limit_applies_to_direct_calls(settings, tmp_path):
    limited = settings.replace(task_timeout_s=1.0)
    cluster = Cluster(limited, str(tmp_path))
    try:
        cluster.start_engine()
        with Client(settings=limited) as client:
            with pytest.raises(RemoteError) as info:
                client[0].apply(spin_forever)
            assert info.value.ename == "TaskTimeout"
            assert client[0].apply(int, "5") == 5
    finally:
        cluster.teardown()


@pytest.fixture
def private_rabbit(tmp_path):
    if not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server") and not shutil.which("rabbitmq-server"):
        pytest.skip("rabbitmq-server is not installed")
    rabbit = PrivateRabbit(str(tmp_path / "rabbit"), consumer_timeout_ms=3000)
    rabbit.start()
    try:
        yield rabbit
    finally:
        rabbit.stop()


@pytest.mark.parametrize("custody_after_s, cut", [(1.0, False), (600.0, True)])
def test_long_task_outlives_the_consumer_timeout(settings, tmp_path, private_rabbit, custody_after_s, cut):
    # Given a broker whose consumer timeout is 3 s, and a task that runs 10 s
    local = settings.replace(amqp_url=private_rabbit.url, custody_after_s=custody_after_s)
    cluster = Cluster(local, str(tmp_path))
    log = str(tmp_path / "runs.txt")
    try:
        cluster.start_scheduler()
        engine = cluster.start_engine()
        with Client(settings=local) as client:
            tid = client.submit(MapTask(append_line, (log, "long", 10.0)))
            result = client.get_task_result(tid, block=True, timeout=120)
            # Then it completes exactly once either way (a redelivery is refused by the claim) ...
            assert result.result == "long" and result.failure is None
            assert lines(log) == ["long"]
            assert client.records.get(tid).attempts == 1
            assert client[engine.engine_id].apply(int, "7") == 7
        # ... and only handing custody to Redis keeps the broker from cutting the channel.
        assert ("broker connection lost" in engine.log()) is cut
    finally:
        cluster.teardown()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_move_as_tasks_run(cluster, client):
    engine_port, scheduler_port = free_port(), free_port()
    cluster.start_scheduler(env_extra={"ENGINEFARM_METRICS_PORT": str(scheduler_port)})
    cluster.start_engine(env_extra={"ENGINEFARM_METRICS_PORT": str(engine_port)})
    wait_for(lambda: _reachable(engine_port) and _reachable(scheduler_port), 30, "metrics endpoints")

    before = scrape(engine_port)
    completed = ("enginefarm_tasks_total", (("outcome", "completed"),))
    assert before.get(completed, 0.0) == 0.0
    # depend sends the tasks through the scheduler (plain FIFO work bypasses it).
    ids = client.submit_many([MapTask(pow, (2, i), depend=lambda p: True) for i in range(5)])
    client.barrier(ids, timeout=60)
    with pytest.raises(RemoteError):
        client[0].apply(divmod, 1, 0)

    after = scrape(engine_port)
    assert after[completed] == 5.0
    assert after[("enginefarm_tasks_total", (("outcome", "failed"),))] == 1.0
    assert after[("enginefarm_task_run_seconds_count", ())] == 6.0
    assert after[("enginefarm_tasks_in_progress", ())] == 0.0
    wait_for(lambda: scrape(engine_port).get(("enginefarm_engines_registered", ()), 0) == 1.0, 30,
             "the engine gauge")
    wait_for(lambda: scrape(scheduler_port).get(("enginefarm_tasks_total", (("outcome", "completed"),))) == 5.0,
             30, "the scheduler's completed counter")
    sched = scrape(scheduler_port)
    assert sched[("enginefarm_tasks_total", (("outcome", "dispatched"),))] == 5.0
    wait_for(lambda: scrape(scheduler_port).get(("enginefarm_pending_tasks", (("scheme", "fifo"),))) == 0.0,
             30, "the scheduler's pending gauge to settle at 0")
    # Labels stay bounded: no task id appears anywhere.
    assert not any(ids[0] in value for _, labels in after for _, value in labels)


def _reachable(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on TCP ``port``, from /proc/net/tcp."""
    found = set()
    with open("/proc/net/tcp", encoding="ascii") as handle:
        next(handle)
        for line in handle:
            local, state = line.split()[1], line.split()[3]
            hex_ip, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1]))
    return found


@pytest.mark.parametrize("how", ["default", "env", "option"])
def test_metrics_listen_on_loopback_unless_told_otherwise(cluster, how):
    # Given daemons told a metrics port, and an address by the environment, an option or not at all
    engine_port, scheduler_port = free_port(), free_port()
    env = {"ENGINEFARM_METRICS_ADDR": "0.0.0.0"} if how == "env" else {}
    option = ["--metrics-addr", "0.0.0.0"] if how == "option" else []
    cluster.spawn(["scheduler", "--cluster", cluster.settings.cluster, "--metrics-port", str(scheduler_port),
                   *option], env)
    engine = cluster.spawn(["engine", "--cluster", cluster.settings.cluster, "--metrics-port", str(engine_port),
                            *option], env)
    cluster.wait_engine(engine)
    # When they serve /metrics
    wait_for(lambda: _reachable(engine_port) and _reachable(scheduler_port), 30, "metrics endpoints")
    # Then they listen on loopback only, unless an address was given
    expected = {"127.0.0.1"} if how == "default" else {"0.0.0.0"}
    assert listening_addresses(engine_port) == expected
    assert listening_addresses(scheduler_port) == expected
    assert ("enginefarm_engines_registered", ()) in scrape(engine_port)


def test_engine_speaks_sd_notify(cluster, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(60)
    try:
        engine = cluster.start_engine(env_extra={"NOTIFY_SOCKET": path})
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready and f"engine {engine.engine_id}" in ready
        engine.signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert engine.wait(60) == 0
    finally:
        sock.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not available")
def test_systemd_units_verify(tmp_path):
    units = os.path.join(REPO, "ops", "systemd")
    env_file = tmp_path / "enginefarm.env"
    env_file.write_text("ENGINEFARM_CLUSTER=verify\n")
    executable = os.path.join(os.path.dirname(sys.executable), "enginefarm")
    assert os.access(executable, os.X_OK)
    for name in ("enginefarm-engine@.service", "enginefarm-scheduler.service"):
        with open(os.path.join(units, name)) as handle:
            text = handle.read()
        assert "Type=notify" in text and "Restart=on-failure" in text and "NoNewPrivileges=yes" in text
        text = text.replace("/opt/enginefarm/.venv/bin/enginefarm", executable)
        text = text.replace("/etc/enginefarm/enginefarm.env", str(env_file))
        (tmp_path / name).write_text(text)
    os.symlink(tmp_path / "enginefarm-engine@.service", tmp_path / "enginefarm-engine@01.service")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "enginefarm-engine@01.service"),
         str(tmp_path / "enginefarm-scheduler.service")],
        capture_output=True, text=True, timeout=120,
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "enginefarm" in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert ours == []


def test_task_records_completed_and_failed_statuses(cluster, client):
    cluster.start_engine()
    ok = client[0].apply(int, "1", block=False)
    bad = client[0].apply(int, "x", block=False)
    client.wait([ok, bad], timeout=30)
    assert status_of(client, ok.task_ids[0]) == COMPLETED
    assert status_of(client, bad.task_ids[0]) == FAILED
