"""A scheduler left idle for many broker heartbeats still reaps the next engine that dies."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest

from enginefarm.broker import BrokerConnection
from enginefarm.errors import BrokerError
from enginefarm.store import Registry

from ..harness import Cluster, Daemon, queue_exists, wait_for

TIMEOUT_S = 60
AMQP_HEARTBEAT_S = 2


def broker_lists(connection_name: str) -> bool:
    """Whether RabbitMQ still has a connection of this name."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "client_properties"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return f'{{"connection_name","{connection_name}"}}' in out


def wait_unserviced_dropped(connection: BrokerConnection) -> None:
    """Return once the broker has dropped ``connection``, which nobody services."""
    if shutil.which("rabbitmqctl") is not None:
        wait_for(lambda: not broker_lists(connection.name), TIMEOUT_S,
                 f"the broker to drop the unserviced connection {connection.name}")
        return
    # Without rabbitmqctl nothing shows the drop: RabbitMQ closes a connection after two
    # missed heartbeats, so five intervals is past it with room for a loaded machine.
    time.sleep(5 * AMQP_HEARTBEAT_S)


def kill_and_wait_reaped(cluster: Cluster, engine: Daemon, scheduler: Daemon) -> None:
    registry = Registry(cluster.redis(), cluster.names, cluster.settings.engine_timeout_s)
    engine.signal(signal.SIGKILL)
    assert engine.wait(10) == -signal.SIGKILL

    def reaped() -> bool:
        if scheduler.proc.poll() is not None:
            raise AssertionError(f"scheduler exited with {scheduler.proc.returncode}:\n{scheduler.log()}")
        return engine.engine_id not in registry.info()

    wait_for(reaped, TIMEOUT_S, f"engine {engine.engine_id} to leave the registry")
    wait_for(lambda: not queue_exists(cluster.settings, cluster.names.engine_queue(engine.engine_id)),
             TIMEOUT_S, f"the queue of engine {engine.engine_id} to be deleted")


def test_idle_scheduler_still_reaps_a_killed_engine(cluster):
    # Given a scheduler on a short AMQP heartbeat that has reaped once (so its reaper's
    # broker connection is open), with nothing else in the cluster that could reap
    scheduler = cluster.start_scheduler(env_extra={"ENGINEFARM_AMQP_HEARTBEAT_S": str(AMQP_HEARTBEAT_S)})
    kill_and_wait_reaped(cluster, cluster.start_engine(), scheduler)
    engine = cluster.start_engine()
    # When it stays idle until the broker has dropped a connection opened after the reaper's
    # one and left unserviced alike
    probe = BrokerConnection(cluster.settings.amqp_url, AMQP_HEARTBEAT_S,
                             f"enginefarm-test-{cluster.settings.cluster}-probe", reconnect_window_s=10)
    probe.open()
    try:
        wait_unserviced_dropped(probe)
    finally:
        probe.close()
    # And then an engine dies without a word
    kill_and_wait_reaped(cluster, engine, scheduler)
    # Then the scheduler reaped it and is still running
    assert scheduler.proc.poll() is None, scheduler.log()


def test_a_dropped_reaper_connection_is_a_broker_error_then_reopens(settings):
    # Given a connection the broker dropped while nobody serviced it
    link = BrokerConnection(settings.amqp_url, AMQP_HEARTBEAT_S,
                            f"enginefarm-test-{settings.cluster}-dropped", reconnect_window_s=10)
    queue = f"{settings.cluster}.test.doomed"
    link.open().queue_declare(queue)
    try:
        wait_unserviced_dropped(link)
        # When a queue is deleted through it
        # Then the failure is one of ours, not pika's, and the next attempt succeeds
        with pytest.raises(BrokerError, match="cannot delete queue"):
            link.delete_queue(queue)
        link.delete_queue(queue)
        assert not queue_exists(settings, queue)
    finally:
        link.close()
