"""Client.send_signal against real engines: the signal reaches the running task at once, over
the engine's control queue, and only a signed one for that engine does anything."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from enginefarm import AsyncResult, Client, InvalidEngineID, RemoteError
from enginefarm.deadletter import REASON_HEADER, SOURCE_HEADER
from enginefarm.keys import KeyRing
from enginefarm.protocol import new_id, seal
from enginefarm.store import Records

from ..harness import Amqp, Cluster, Daemon, queue_exists, wait_for

TIMEOUT_S = 60
# "At once": the signal does not wait for the task; this leaves room for a loaded machine.
INTERRUPT_WITHIN_S = 5.0


def sleeper(marker: str, total_s: float) -> Callable[[], str]:
    """A task that leaves ``marker`` once it runs, then sleeps in small steps for ``total_s``
    (a closure, so it travels by value)."""

    def sleep_in_steps() -> str:
        open(marker, "w").close()
        deadline = time.monotonic() + total_s
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return "finished"

    return sleep_in_steps


@pytest.fixture
def engine(cluster: Cluster) -> Daemon:
    return cluster.start_engine()


def start_long_task(client: Client, cluster: Cluster, engine_id: int, marker: str,
                    total_s: float = 120.0) -> AsyncResult:
    """Start a long task on ``engine_id`` and return once it runs: its record says started,
    and (so that the signal cannot reach the child a moment before the task does) its marker
    file exists."""
    ar = client[engine_id].apply(sleeper(marker, total_s), block=False)
    r, key = cluster.redis(), cluster.names.task(ar.task_ids[0])
    wait_for(lambda: r.hget(key, "started") and os.path.exists(marker), TIMEOUT_S, "the long task to start")
    return ar


def remote_error_of(ar: AsyncResult, timeout_s: float) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        ar.get(timeout=timeout_s)
    return info.value


def control_depth(amqp: Amqp, cluster: Cluster, engine_id: int) -> int:
    declared = amqp.channel.queue_declare(cluster.names.control_queue(engine_id), passive=True)
    return int(declared.method.message_count)


# How a caller sends SIGINT to one engine: by name from the client, by number from a view.
SENDERS: dict[str, Callable[[Client, int], Any]] = {
    "client-by-name": lambda client, eid: client.send_signal("SIGINT", targets=eid),
    "view-by-number": lambda client, eid: client[eid].send_signal(signal.SIGINT),
}


@pytest.mark.parametrize("sender", list(SENDERS))
def test_sigint_interrupts_the_running_task_and_the_engine_goes_on(sender, cluster, client, engine, tmp_path):
    eid = engine.engine_id
    # Given a value in the engine's namespace and a long task running on it
    client[eid].push({"kept": 42})
    child_pid = client[eid].apply(os.getpid)
    running = start_long_task(client, cluster, eid, str(tmp_path / "started"))
    # When SIGINT is sent (blocking: it returns once the engine has sent it)
    sent_at = time.monotonic()
    assert SENDERS[sender](client, eid) is None
    # Then the task fails with KeyboardInterrupt at once, not after its two minutes
    error = remote_error_of(running, INTERRUPT_WITHIN_S)
    assert time.monotonic() - sent_at < INTERRUPT_WITHIN_S
    assert error.ename == "KeyboardInterrupt" and error.engine_id == eid
    assert "sleep_in_steps" in error.traceback
    # ...and the same child, namespace and engine go on serving
    assert client[eid].pull("kept") == 42
    assert client[eid].apply(os.getpid) == child_pid
    assert client[eid].apply(pow, 2, 10) == 1024
    assert engine.proc.poll() is None
    assert not running.metadata.namespace_lost


def test_signal_to_an_idle_engine_is_recorded_and_harms_nothing(cluster, client, engine):
    eid = engine.engine_id
    client[eid].push({"kept": "still here"})
    child_pid = client[eid].apply(os.getpid)
    # When SIGINT reaches an engine that runs nothing (non-blocking: an AsyncResult)
    ar = client.send_signal(signal.SIGINT, targets=[eid], block=False)
    assert isinstance(ar, AsyncResult)
    # Then its record is completed, with no value, by that engine
    assert ar.get(timeout=TIMEOUT_S) == [None]
    record = Records(cluster.redis(), cluster.names, KeyRing.from_files(cluster.settings.key_file)).get(ar.task_ids[0])
    assert record.status == "completed" and record.kind == "signal" and record.engine_id == eid
    assert record.started is not None and record.completed is not None
    # ...and the child between tasks ignored it: same process, same namespace
    assert client[eid].apply(os.getpid) == child_pid
    assert client[eid].pull("kept") == "still here"


def test_sigterm_ends_the_child_and_the_engine_starts_another(cluster, client, engine, tmp_path):
    eid = engine.engine_id
    child_pid = client[eid].apply(os.getpid)
    running = start_long_task(client, cluster, eid, str(tmp_path / "started"))
    # When SIGTERM is sent to the engine while its task runs
    client.send_signal("SIGTERM", targets=eid)
    # Then the child dies of it, the task fails saying so, and a new child serves the engine
    error = remote_error_of(running, INTERRUPT_WITHIN_S)
    assert error.ename == "EngineProcessDied" and "signal SIGTERM" in error.evalue
    assert running.metadata.namespace_lost
    assert client[eid].apply(os.getpid) != child_pid
    assert engine.proc.poll() is None


def other_key_sigint(ring: KeyRing, header: dict[str, Any]) -> bytes:
    return seal(KeyRing.from_key(os.urandom(32)), header, b"")


# name -> (the control message, the reason the engine must dead-letter it with)
FORGERIES: dict[str, tuple[Callable[[KeyRing, dict[str, Any]], bytes], str]] = {
    "unsigned": (lambda ring, header: repr(header).encode(), "unsigned"),
    "other-key": (other_key_sigint, "unknown-key"),
    # Signed with the cluster key, but for another engine: the target is part of the request.
    "for-another-engine": (lambda ring, header: seal(ring, {**header, "engine_id": header["engine_id"] + 1}, b""),
                           "context"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_control_message_is_dead_lettered_and_does_nothing(forgery, settings, cluster, client, engine,
                                                                  amqp, tmp_path):
    eid = engine.engine_id
    names = cluster.names
    ring = KeyRing.from_files(settings.key_file)
    make, reason = FORGERIES[forgery]
    # Given a task running for a few seconds
    running = start_long_task(client, cluster, eid, str(tmp_path / "started"), total_s=4.0)
    # When a SIGINT that is not a valid signal for this engine is published to its control queue
    header = {"task_id": new_id(), "kind": "signal", "client_id": new_id(), "engine_id": eid,
              "signum": int(signal.SIGINT)}
    body = make(ring, header)
    amqp.publish(names.direct_exchange, names.control_routing_key(eid), body)
    # Then it is dead-lettered, untouched, with its reason and the control queue as its source
    props, dead = wait_for(lambda: amqp.get(names.dead_queue), TIMEOUT_S, "a dead-lettered message")
    assert props.headers[REASON_HEADER] == reason
    assert props.headers[SOURCE_HEADER] == names.control_queue(eid)
    assert dead == body
    # ...and the running task was not interrupted: it finishes normally
    assert running.get(timeout=TIMEOUT_S) == "finished"
    assert client[eid].apply(pow, 2, 5) == 32
    assert f"dead-lettering a message from {names.control_queue(eid)}: {reason}" in engine.log()


def test_replayed_signal_is_dead_lettered_and_does_nothing(settings, cluster, client, engine, amqp, tmp_path):
    eid = engine.engine_id
    names = cluster.names
    records = Records(cluster.redis(), names, KeyRing.from_files(settings.key_file))
    # Given a signal that was sent and handled (its signed message is kept in its record)
    sent = client.send_signal("SIGINT", targets=eid, block=False)
    sent.get(timeout=TIMEOUT_S)
    captured = records.get(sent.task_ids[0]).request
    running = start_long_task(client, cluster, eid, str(tmp_path / "started"), total_s=4.0)
    # When someone with publish access sends that message again
    amqp.publish(names.direct_exchange, names.control_routing_key(eid), captured)
    # Then it is refused as a replay and the running task finishes normally
    props, _ = wait_for(lambda: amqp.get(names.dead_queue), TIMEOUT_S, "a dead-lettered message")
    assert props.headers[REASON_HEADER] == "replayed"
    assert running.get(timeout=TIMEOUT_S) == "finished"
    assert records.get(sent.task_ids[0]).status == "completed"


BAD_SIGNALS = ["SIGNOPE", "INT", "sigint", "", 0, -1, 9999, 2.0, None, True]


def test_bad_signal_raises_value_error_and_publishes_nothing(cluster, client, engine, amqp):
    for bad in BAD_SIGNALS:
        with pytest.raises(ValueError):
            client.send_signal(bad, targets=engine.engine_id)
        with pytest.raises(ValueError):
            client.direct_view().send_signal(bad)
    # Nothing was recorded or published.
    assert client.history == [] and client.hub_history() == []
    assert control_depth(amqp, cluster, engine.engine_id) == 0


def test_signal_to_a_nonexistent_engine_raises_invalid_engine_id(client, engine):
    for bad in (engine.engine_id + 5, [engine.engine_id, 9]):
        with pytest.raises(InvalidEngineID):
            client.send_signal("SIGINT", targets=bad)
    assert client.history == [] and client.hub_history() == []


def test_control_queue_comes_and_goes_with_its_engine(settings, cluster, client):
    # Given two engines, each with its control queue
    leaving, killed = cluster.start_engines(2)
    for daemon in (leaving, killed):
        assert queue_exists(settings, cluster.names.control_queue(daemon.engine_id))
    # When one leaves cleanly and the other is killed (and reaped by the waiting client)
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(TIMEOUT_S) == 0
    killed.signal(signal.SIGKILL)
    killed.wait(TIMEOUT_S)

    # The client's result thread judges heartbeats once a second and reaps the silent.
    client.collector.start()
    wait_for(lambda: killed.engine_id not in client.registry.info(), TIMEOUT_S, "the killed engine to be reaped")
    # Then both control queues are gone with their engines
    for daemon in (leaving, killed):
        assert not queue_exists(settings, cluster.names.control_queue(daemon.engine_id))
