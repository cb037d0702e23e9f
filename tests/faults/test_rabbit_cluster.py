"""Scenario 16 on a private three-node RabbitMQ cluster (the shared servers are never touched):
kill -9 under load of the node that leads every queue and holds every connection, then of a
node that leads nothing but holds the engines' connections; each restarts and rejoins."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pytest

from enginefarm import Client
from enginefarm.broker.topology import declare_cluster
from enginefarm.names import Names

from ..harness import Cluster, wait_for
from ..rabbitcluster import RabbitCluster, rabbit_cluster
from .conftest import report, tally
from .test_restarts import Load, completed_count

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rabbits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    with rabbit_cluster(str(tmp_path_factory.mktemp("rabbits"))) as nodes:
        yield nodes


@dataclass
class Outage:
    recover_s: float  # from the kill until work resumed
    rejoin_s: float  # from the kill until the node was back in the cluster
    seen: Any  # what ``while_down`` returned


def kill_under_load(rabbits: RabbitCluster, index: int, client: Client, load: Load,
                    while_down: Callable[[], Any] = lambda: None) -> Outage:
    """Once the load is going, kill -9 node ``index``; wait until work resumes on the others,
    look around (``while_down``), restart the node and wait until it rejoined."""
    wait_for(lambda: completed_count(client, load.ids) >= 300, 120, "the load to get going")
    before = completed_count(client, load.ids)
    rabbits.kill(index)
    down_at = time.monotonic()
    wait_for(lambda: completed_count(client, load.ids) > before + 200
             or (not load.thread.is_alive() and completed_count(client, load.ids) == len(load.ids)),
             120, "work to resume on the surviving nodes")
    recover_s = time.monotonic() - down_at
    seen = while_down()
    rabbits.restart(index)
    outage = Outage(recover_s, time.monotonic() - down_at, seen)
    via = 1 if index == 0 else 0
    assert rabbits.running_nodes(via=via) == sorted(n.node for n in rabbits.nodes)
    return outage


def settle(client: Client, cluster: Cluster, load: Load, log: str, title: str, started: float,
           outage: Outage) -> None:
    """Let the load finish; every accepted task ended in exactly one terminal record and none
    ran twice (no engine died or lost its work, only a broker node under it)."""
    load.join()
    client.barrier(load.ids, timeout=300)
    t = tally(client, load.ids, log, load.keys)
    report(title, t, time.monotonic() - started, 0, outage.recover_s,
           notes=f"recover = node down until work resumed; rejoined after {outage.rejoin_s:.1f} s")
    assert t.lost == [] and t.duplicate_records == [] and t.reruns == 0
    assert t.statuses["completed"] == len(load.ids) == 2500
    assert all(d.proc.poll() is None for d in cluster.daemons)  # every daemon rode it out
    assert outage.recover_s < 60


def test_16_rabbitmq_node_killed_under_load_on_a_three_node_cluster(settings, tmp_path, rabbits):
    # Every process is told the three URLs, first node first: it connects there, and the
    # queues it declares are led from there (RabbitMQ places a new leader on the client's node).
    local = settings.replace(amqp_url=rabbits.url)
    cluster = Cluster(local, str(tmp_path))
    log = str(tmp_path / "exec.log")
    names = cluster.names
    try:
        # Given a LIFO scheduler (tasks go through <cluster>.tasks and the engine queues) and
        # two engines (which also consume <cluster>.work), all connected to node 0
        cluster.start_scheduler("lifo")
        cluster.start_engines(2)
        started = time.monotonic()
        with Client(settings=local) as client:
            client.ids  # connect now
            leaders = {q: rabbits.leader_of(q) for q in (names.tasks_queue, names.engine_queue(0))}
            assert set(leaders.values()) == {rabbits.nodes[0].node}, leaders
            load = Load(local, log, batches=100, batch=25, sleep_s=0.0).start()
            # When node 0, leader of the queues and peer of every connection, is killed, then
            # everyone reconnects to a surviving node, redeclares, and work resumes; and the
            # killed node comes back and rejoins while the load goes on
            outage = kill_under_load(rabbits, 0, client, load,
                                     while_down=lambda: {q: rabbits.leader_of(q, via=1) for q in leaders})
            assert rabbits.nodes[0].node not in outage.seen.values(), outage.seen
            settle(client, cluster, load, log,
                   "16 RabbitMQ cluster: kill -9 of the leading node under load (3 private nodes)", started, outage)
    finally:
        cluster.teardown()


def declare_from(url: str, names: Names) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        declare_cluster(connection.channel(), names)
    finally:
        connection.close()


def test_16_rabbitmq_follower_node_killed_under_fifo_load(settings, tmp_path, rabbits):
    # The cluster's shared queues are declared from node 0, so node 0 leads them; the engines
    # connect to node 1, which holds a member of the work queue but does not lead it (it leads
    # only the engines' own queues, which the engines declare). Plain FIFO: no scheduler, every
    # task goes through the shared work queue.
    local = settings.replace(amqp_url=rabbits.url)
    follower_first = ",".join([rabbits.urls[1], rabbits.urls[0], rabbits.urls[2]])
    cluster = Cluster(local, str(tmp_path))
    log = str(tmp_path / "exec.log")
    names = cluster.names
    try:
        started = time.monotonic()
        with Client(settings=local) as client:
            declare_from(rabbits.urls[0], names)
            cluster.start_engines(2, env_extra={"ENGINEFARM_AMQP_URL": follower_first})
            assert rabbits.leader_of(names.work_queue) == rabbits.nodes[0].node
            on_follower = rabbits.connections_on(1)
            assert len(on_follower) >= 2, on_follower  # each engine's consumer (the others connect when first used)
            load = Load(local, log, batches=100, batch=25, sleep_s=0.0).start()
            # When node 1, under every engine's connections, is killed, then the engines
            # reconnect to another node, consume again and work resumes. What they held unacked
            # went back to the queue unstarted or was finished already (its record is terminal,
            # so a second delivery is skipped): nothing runs twice
            outage = kill_under_load(rabbits, 1, client, load,
                                     while_down=lambda: rabbits.leader_of(names.work_queue))
            assert outage.seen == rabbits.nodes[0].node  # a follower's loss moves no leader
            settle(client, cluster, load, log,
                   "16 RabbitMQ cluster: kill -9 of a node following the work queue, under every engine, fifo",
                   started, outage)
    finally:
        cluster.teardown()
