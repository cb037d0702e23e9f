"""Engines that die, stop or idle: heartbeats, reaping, queue removal, id reuse, cluster isolation
and broker heartbeats during long tasks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from enginefarm import Client, RemoteError
from enginefarm.store import Registry

from ..harness import Cluster, queue_exists, wait_for

TIMEOUT_S = 60
# How late after the engine timeout a dead engine may still be listed: our own polling and
# a Redis round trip on a loaded machine.
SCAN_MARGIN_S = 2.0


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def status_reader(cluster: Cluster):
    """A function task_id -> status, read straight from Redis (no client involved)."""
    r = cluster.redis()

    def status_of(task_id: str) -> str | None:
        value = r.hget(cluster.names.task(task_id), "status")
        return value.decode() if value is not None else None

    return status_of


def registry_of(cluster: Cluster) -> Registry:
    return Registry(cluster.redis(), cluster.names, cluster.settings.engine_timeout_s)


def broker_connections(connection_name: str) -> list[tuple[int, int]]:
    """(client port, negotiated heartbeat) of each RabbitMQ connection with this name."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "peer_port", "timeout", "client_properties"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    marker = f'{{"connection_name","{connection_name}"}}'
    return [(int(line.split("\t")[0]), int(line.split("\t")[1])) for line in out.splitlines() if marker in line]


def kill_and_time_the_drop(daemon, client) -> float:
    """SIGKILL ``daemon``; seconds until its id left ``client.ids``."""
    assert daemon.engine_id in client.ids
    killed = time.monotonic()
    daemon.signal(signal.SIGKILL)
    wait_for(lambda: daemon.engine_id not in client.ids, TIMEOUT_S, f"engine {daemon.engine_id} to leave ids")
    dropped = time.monotonic() - killed
    assert daemon.wait(10) == -signal.SIGKILL
    return dropped


def load_engine(client, engine_id: int, behind: int = 3):
    """A slow execute running on ``engine_id`` and ``behind`` applies queued after it."""
    slow = client[engine_id].execute("import time; time.sleep(300)", block=False)
    queued = [client[engine_id].apply(pow, 2, i, block=False) for i in range(behind)]
    return slow, queued


def assert_engine_lost(ar, engine_id: int, stage: str) -> None:
    with pytest.raises(RemoteError) as info:
        ar.get(timeout=TIMEOUT_S)
    err = info.value
    assert err.ename == "EngineLost"
    assert err.evalue == f"engine {engine_id} stopped heartbeating {stage} this task"
    assert err.engine_id == engine_id
    assert ar.metadata.status == "failed"


# --- a killed engine ----------------------------------------------------------------------
def test_killed_engine_leaves_ids_within_the_engine_timeout(settings, cluster, client):
    daemon = cluster.start_engine()
    dropped = kill_and_time_the_drop(daemon, client)
    assert dropped <= settings.engine_timeout_s + SCAN_MARGIN_S


def test_tasks_of_a_killed_engine_fail_with_engine_lost_reaped_by_a_peer(settings, cluster, client):
    victim, survivor = cluster.start_engines(2)
    vid = victim.engine_id
    status_of = status_reader(cluster)
    # This client leaves reaping to the engines (clients reap while they have tasks out).
    client._connect()
    client.collector.reaps = False
    child_pid = client[vid].apply(os.getpid)
    # Given a slow task running on the victim and several queued behind it
    slow, queued = load_engine(client, vid)
    wait_for(lambda: status_of(slow.task_ids[0]) == "running", TIMEOUT_S, "the slow task to start")
    # When the victim is killed (its child dies with it)
    kill_and_time_the_drop(victim, client)
    wait_for(lambda: not pid_alive(child_pid), TIMEOUT_S, "the victim's child process to die")
    # Then the surviving engine reaps it: every task fails, without any client waiting
    every = [slow.task_ids[0], *(ar.task_ids[0] for ar in queued)]
    wait_for(lambda: all(status_of(t) == "failed" for t in every), TIMEOUT_S, "the tasks to fail")
    assert f"engine {vid} stopped heartbeating; recovering its tasks" in survivor.log()
    assert_engine_lost(slow, vid, "while running")
    for ar in queued:
        assert_engine_lost(ar, vid, "before running")
    # Its queue and registration are gone...
    assert not queue_exists(settings, cluster.names.engine_queue(vid))
    assert vid not in registry_of(cluster).info()
    assert client.ids == [survivor.engine_id]
    # ...and the next engine to start takes its id and serves it.
    newcomer = cluster.start_engine()
    assert newcomer.engine_id == vid
    assert client[vid].apply(pow, 2, 3) == 8
    assert queue_exists(settings, cluster.names.engine_queue(vid))


def test_lone_killed_engine_is_reaped_by_the_waiting_client(settings, cluster, client):
    victim = cluster.start_engine()
    vid = victim.engine_id
    status_of = status_reader(cluster)
    slow, queued = load_engine(client, vid)
    wait_for(lambda: status_of(slow.task_ids[0]) == "running", TIMEOUT_S, "the slow task to start")
    kill_and_time_the_drop(victim, client)
    # No engine is left to reap: the client does it while it waits for the results.
    assert_engine_lost(slow, vid, "while running")
    for ar in queued:
        assert_engine_lost(ar, vid, "before running")
    assert not queue_exists(settings, cluster.names.engine_queue(vid))
    assert registry_of(cluster).info() == {}
    assert client.ids == []
    assert cluster.start_engine().engine_id == vid


def test_default_engine_timeout_drops_a_dead_engine_after_ten_seconds(settings, tmp_path):
    slow_settings = settings.replace(heartbeat_interval_s=2.0, engine_timeout_s=10.0)
    handle = Cluster(slow_settings, str(tmp_path))
    try:
        with Client(settings=slow_settings) as client:
            daemon = handle.start_engine()
            dropped = kill_and_time_the_drop(daemon, client)
    finally:
        handle.teardown()
    # Dropped no later than the timeout allows, and not before a timeout's worth of silence
    # (the last heartbeat was at most one interval, plus a little lateness, before the kill).
    assert dropped <= slow_settings.engine_timeout_s + SCAN_MARGIN_S
    assert dropped >= slow_settings.engine_timeout_s - slow_settings.heartbeat_interval_s - 2.0


# --- isolation ----------------------------------------------------------------------------
def test_two_clusters_on_the_same_servers_do_not_see_each_other(settings, cluster, client, tmp_path):
    other_settings = settings.replace(cluster=f"t{uuid.uuid4().hex[:10]}")
    other = Cluster(other_settings, str(tmp_path / "other"))
    os.makedirs(other.tmp_dir)
    try:
        mine = cluster.start_engine()
        theirs = other.start_engine()
        with Client(settings=other_settings) as other_client:
            # Both engines are engine 0, each in its own cluster.
            assert (mine.engine_id, theirs.engine_id) == (0, 0)
            assert client.ids == [0] and other_client.ids == [0]
            # A call reaches the engine of the caller's cluster (the child's parent is its supervisor).
            assert client[0].apply(os.getppid) == mine.pid
            assert other_client[0].apply(os.getppid) == theirs.pid
            client[0].push({"where": "mine"})
            other_client[0].push({"where": "theirs"})
            assert client[0].pull("where") == "mine"
            assert other_client[0].pull("where") == "theirs"
            # Each history holds only its own tasks.
            assert client.hub_history() == client.history and len(client.history) == 3
            assert other_client.hub_history() == other_client.history and len(other_client.history) == 3
            assert not set(client.history) & set(other_client.history)
            assert client.db_query({"task_id": other_client.history[0]}) == []
            # Stopping the other cluster's engine leaves ours alone.
            theirs.signal(signal.SIGTERM)
            assert theirs.wait(TIMEOUT_S) == 0
            assert other_client.ids == []
            assert client.ids == [0]
            assert client[0].apply(pow, 2, 2) == 4
    finally:
        other.teardown()


# --- long tasks and broker heartbeats -----------------------------------------------------
@pytest.mark.slow
def test_long_task_survives_a_short_amqp_heartbeat(settings, tmp_path):
    quick_beat = settings.replace(amqp_heartbeat_s=2)
    handle = Cluster(quick_beat, str(tmp_path))
    # rabbitmqctl (where this machine has it) shows the negotiated heartbeat and the connection.
    inspect = shutil.which("rabbitmqctl") is not None
    try:
        daemon = handle.start_engine()
        connection_name = f"enginefarm-engine-{quick_beat.cluster}-{daemon.engine_id}"
        with Client(settings=quick_beat) as client:
            # Given a task that sleeps for 15 broker heartbeats
            status_of = status_reader(handle)
            ar = client[0].execute("import time; time.sleep(30)", block=False)
            started = time.monotonic()
            wait_for(lambda: status_of(ar.task_ids[0]) == "running", TIMEOUT_S, "the task to start")
            if inspect:
                during = broker_connections(connection_name)
                assert len(during) == 1 and during[0][1] == 2, during
            # Then it completes
            assert ar.get(timeout=120) is None
            assert time.monotonic() - started >= 29
            # ...and the same engine answers afterwards, over the same broker connection.
            assert client[0].apply(pow, 2, 3) == 8
            assert daemon.proc.poll() is None
            assert registry_of(handle).info()[0]["pid"] == daemon.pid
            if inspect:
                assert broker_connections(connection_name) == during
            log = daemon.log()
            assert "connection lost" not in log
            assert "reconnecting" not in log
    finally:
        handle.teardown()


# --- a clean stop -------------------------------------------------------------------------
def test_sigterm_on_an_idle_engine(settings, cluster, client):
    daemon = cluster.start_engine()
    eid = daemon.engine_id
    assert queue_exists(settings, cluster.names.engine_queue(eid))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(TIMEOUT_S) == 0
    assert eid not in client.ids
    assert registry_of(cluster).info() == {}
    assert not queue_exists(settings, cluster.names.engine_queue(eid))
    assert f"engine {eid} stopped (exit 0)" in daemon.log()


def test_a_starting_engine_renews_its_registration_until_its_activation_lands(cluster):
    registry = registry_of(cluster)
    engine_id = registry.register({"host": "h", "pid": 1}, 8)
    registered_at = lambda: registry.info()[engine_id]["registered"]  # noqa: E731
    first = registered_at()
    # While it starts, each beat renews the registration (the orphan window counts from it)
    wait_for(lambda: registry.still_starting(engine_id) and registered_at() > first, TIMEOUT_S,
             "the registration to be renewed")
    # A beat that meets its activation, landing from another thread, is no verdict of death
    assert registry.activate(engine_id)
    assert registry.still_starting(engine_id)
    # But one that finds it reaped is
    registry.unregister(engine_id)
    assert not registry.still_starting(engine_id)
