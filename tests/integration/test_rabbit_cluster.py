"""A farm on a private three-node RabbitMQ cluster: daemons given every node's URL with
``--amqp-url`` farm load-balanced and direct tasks, and every queue that holds work is a quorum
queue with a member on each node."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from enginefarm import Client
from enginefarm.config import Settings

from ..harness import Cluster, Daemon
from ..rabbitcluster import RabbitCluster, rabbit_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rabbits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    with rabbit_cluster(str(tmp_path_factory.mktemp("rabbits"))) as nodes:
        yield nodes


@pytest.fixture
def settings(settings: Settings, rabbits: RabbitCluster) -> Settings:
    return settings.replace(amqp_url=rabbits.url)


def spawn(cluster: Cluster, role: str, urls: str, *extra: str) -> Daemon:
    """A daemon told every node's URL on its command line."""
    return cluster.spawn([role, "--cluster", cluster.settings.cluster, "--amqp-url", urls, *extra])


def start_farm(cluster: Cluster, urls: str, engines: int, scheme: str | None = None) -> list[Daemon]:
    scheduler = spawn(cluster, "scheduler", urls, *(["--scheme", scheme] if scheme else []))
    cluster.wait_scheduler_active(scheduler)
    daemons = [spawn(cluster, "engine", urls) for _ in range(engines)]
    for daemon in daemons:
        daemon.engine_id = cluster.wait_engine(daemon)
    return sorted(daemons, key=lambda d: d.engine_id or 0)


def queue_kinds(rabbits: RabbitCluster, prefix: str) -> dict[str, tuple[str, int]]:
    """The cluster's queues named ``prefix``...: (type, how many nodes hold a member)."""
    out = rabbits.nodes[1].ctl("list_queues", "name", "type", "members", "--quiet", "--no-table-headers")
    kinds = {}
    for line in out.splitlines():
        name, kind, members = (line.split("\t") + ["", ""])[:3]
        if name.startswith(prefix):
            kinds[name] = (kind, members.count("@"))
    return kinds


def test_fifo_and_direct_tasks_farm_on_three_nodes(cluster, client, settings, rabbits):
    # Given a scheduler and two engines told all three nodes' URLs on their command line
    engines = start_farm(cluster, rabbits.url, 2)
    # When the client (all three URLs) farms load-balanced and direct tasks
    squares = client.load_balanced_view().map(lambda x: x * x, range(200), block=True)
    pids = client.direct_view([d.engine_id for d in engines]).apply(lambda: __import__("os").getpid(), block=True)
    # Then everything ran, on both engines
    assert squares == [x * x for x in range(200)]
    assert len(set(pids)) == 2  # one child process per engine
    # And every queue that holds work is a quorum queue with a member on each node
    names = cluster.names
    kinds = queue_kinds(rabbits, f"{settings.cluster}.")
    expected = [names.tasks_queue, names.work_queue, names.dead_queue,
                *(q for d in engines for q in (names.engine_queue(d.engine_id), names.control_queue(d.engine_id)))]
    assert {q: kinds.get(q) for q in expected} == {q: ("quorum", 3) for q in expected}


def test_lifo_through_the_scheduler_on_three_nodes(cluster, client, settings, rabbits):
    # Given a LIFO scheduler (tasks go through <cluster>.tasks and the engine queues)
    start_farm(cluster, rabbits.url, 2, scheme="lifo")
    # When a client that knows only the third node submits a batch
    only_third = settings.replace(amqp_url=rabbits.urls[2])
    with Client(settings=only_third) as third:
        view = third.load_balanced_view()
        results = [view.apply(pow, n, 2, block=False) for n in range(100)]
        # Then every task completes, through a scheduler connected to another node
        assert [r.get(timeout=120) for r in results] == [n * n for n in range(100)]
