"""A cluster over several hosts: engines on three test hosts, the scheduler on a fourth, the
client (and the private RabbitMQ and Redis, on the bridge's address) in the root namespace.

The hosts are network namespaces on a private bridge (tests/hosts.py, ops/testhosts.sh); every
test gets its own cluster on the module's hosts and servers. Skipped where namespaces cannot
be made (not root, no ip, no servers installed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from enginefarm import MapTask
from enginefarm.config import Settings

from ..faults import work
from ..faults.conftest import ran_again, runs, tally
from ..harness import Cluster, Daemon, wait_for
from ..hosts import Host, Hosts, Servers, cannot_make_hosts, made_hosts
from ..redismonitor import RedisMonitor

pytestmark = pytest.mark.hosts

ENGINE_HOSTS = (1, 2, 3)
SCHEDULER_HOST = 4


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hosts, Servers]]:
    reason = cannot_make_hosts()
    if reason is not None:
        pytest.skip(reason)
    with made_hosts(4, str(tmp_path_factory.mktemp("hosts"))) as made:
        yield made


@pytest.fixture
def settings(settings: Settings, net: tuple[Hosts, Servers]) -> Settings:
    """The test's cluster on the private servers, which every host reaches over the bridge."""
    _, servers = net
    return settings.replace(amqp_url=servers.rabbit.url, redis_url=servers.redis.url)


class Heard(RedisMonitor):
    """Every command Redis gets from one address, with its time."""

    def __init__(self, redis_url: str, address: str) -> None:
        self.address = address
        self.commands: list[tuple[float, str]] = []
        super().__init__(redis_url, self._note)

    def _note(self, command: dict[str, Any]) -> None:
        if command.get("client_address") == self.address:
            self.commands.append((float(command["time"]), str(command["command"])))

    def __enter__(self) -> Heard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_cluster(cluster: Cluster, hosts: Hosts) -> dict[int, tuple[Host, Daemon]]:
    """The scheduler on host 4, one engine on each of hosts 1-3; by engine id."""
    cluster.start_scheduler(netns=hosts[SCHEDULER_HOST].netns)
    daemons = [(hosts[n], cluster.start_engine(wait=False, netns=hosts[n].netns)) for n in ENGINE_HOSTS]
    placed = {}
    for host, daemon in daemons:
        daemon.engine_id = cluster.wait_engine(daemon)
        placed[daemon.engine_id] = (host, daemon)
    return placed


def test_load_balanced_map_runs_on_engines_on_three_hosts(net, cluster, client):
    hosts, _ = net
    placed = start_cluster(cluster, hosts)
    gateway = hosts.gateway
    # When a load-balanced map of 30 short tasks goes out
    lview = client.load_balanced_view()
    addresses = lview.map(work.host_address, [gateway] * 30, [0.1] * 30, block=True)
    # Then every item came back, and each host's engine ran some of them
    assert len(addresses) == 30
    assert set(addresses) == {host.address for host, _ in placed.values()}


def test_direct_view_push_pull_execute_on_each_hosts_engine(net, cluster, client):
    hosts, _ = net
    placed = start_cluster(cluster, hosts)
    for engine_id, (host, _) in sorted(placed.items()):
        view = client[engine_id]
        # When a value is pushed to the engine on this host, code executed there and the result pulled
        view.push({"token": host.name})
        view.execute("import socket\n"
                     "with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
                     f"    s.connect(({hosts.gateway!r}, 9)); address = s.getsockname()[0]\n"
                     "echo = token * 2\n")
        # Then it ran on that host, with what was pushed
        assert view.pull("address") == host.address
        assert view.pull("echo") == host.name * 2
    # And the three together scatter and gather
    everyone = client.direct_view(sorted(placed))
    everyone.scatter("x", list(range(9)))
    assert everyone.gather("x") == list(range(9))


def test_a_host_cut_off_mid_task_has_it_run_once_elsewhere_and_its_late_outcome_is_refused(
        net, cluster, client, settings, tmp_path):
    hosts, _ = net
    placed = start_cluster(cluster, hosts)
    log = str(tmp_path / "exec.log")
    # Given a 5 s task running on one of the hosts
    task_id = client.submit(MapTask(work.run, (log, "long", 5.0)))

    def running_on() -> int | None:
        if len(runs(log).get("long", [])) != 1:
            return None
        busy = [e for e in placed if task_id in client.registry.running(e)]
        return busy[0] + 1 if busy else None  # truthy even for engine 0

    first = wait_for(running_on, 60, "the task to start") - 1
    host, victim = placed[first]
    # When that host is cut off, longer than the engine timeout: until the task ran elsewhere
    # (Redis's MONITOR shows what reaches it from that host)
    with Heard(settings.redis_url, host.address) as heard:
        hosts.cut(host)
        cut_at = time.monotonic()
        try:
            wait_for(lambda: len(runs(log).get("long", [])) == 2, 90, "the task to start again elsewhere")
            client.barrier([task_id], timeout=90)
            record = client.records.get(task_id)
            cut_s = time.monotonic() - cut_at
        finally:
            restored_at = time.time()  # nothing from the host reaches Redis before the restore
            hosts.restore(host)
        assert cut_s > settings.engine_timeout_s
        assert record is not None and record.status == "completed" and record.engine_id != first
        assert client.get_task_result(task_id).result == "long"

        # Then, reconnected, the cut-off engine learns it was declared dead and stops; its task
        # had finished meanwhile, and that late outcome makes no second record
        assert victim.wait(120) == 1, victim.log()
    assert "declared dead" in victim.log()
    # (its outcome, sent while it was cut off, did reach Redis once the link was back)
    late = [c for at, c in heard.commands if at >= restored_at and cluster.names.task(task_id) in c]
    assert any(c.startswith("EVALSHA") for c in late), heard.commands
    t = tally(client, [task_id], log, {task_id: "long"})
    assert t.lost == [] and t.duplicate_records == [] and t.statuses == {"completed": 1}
    assert t.executions["long"] == 2 and t.reruns == 1, ran_again(log)
    again = client.records.get(task_id)
    assert again is not None and again.engine_id == record.engine_id and again.completed == record.completed

    # And the restored host serves again, with an engine started there as systemd would
    fresh = cluster.start_engine(netns=host.netns)
    assert client[fresh.engine_id].apply(work.host_address, hosts.gateway) == host.address


def test_an_engine_behind_a_slow_lossy_link_still_serves(net, cluster, client):
    hosts, _ = net
    placed = start_cluster(cluster, hosts)
    engine_id, (host, _) = min(placed.items())
    view = client[engine_id]
    assert view.apply(work.host_address, hosts.gateway) == host.address
    # When the link to its host delays packets by 150 ms and drops 2% of them
    hosts.netem(host, delay_ms=150, loss_pct=2)
    try:
        started = time.monotonic()
        # Then a round trip to it takes at least the delay, and still works
        assert view.apply(work.host_address, hosts.gateway) == host.address
        assert time.monotonic() - started >= 0.15
        assert client.load_balanced_view().map(abs, range(-10, 0), block=True) == list(range(10, 0, -1))
    finally:
        hosts.clear_netem(host)
    assert view.apply(work.host_address, hosts.gateway) == host.address
