"""Scenario 19: 200 engines over the three engine hosts, 20,000 tasks. The scheduler (on host 4)
routes the load-balanced work (LIFO, so every task passes through it); a tenth of the tasks
go to chosen engines through their own queues. The heaviest scenario of the suite: about 12 GB
of memory for the engines, and one of the two cores is theirs while they idle.
"""

from __future__ import annotations

import random
import time

import pytest

from enginefarm import Client, MapTask

from ..harness import Cluster, wait_for
from ..integration.test_hosts import ENGINE_HOSTS, SCHEDULER_HOST, net, settings  # noqa: F401 (fixtures)
from . import work
from .conftest import ran_again, report, tally

pytestmark = [pytest.mark.faults, pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(1500)]

ENGINES = 200
TASKS = 20_000
TARGETED = TASKS // 10


def test_19_two_hundred_engines_over_three_hosts_with_20000_tasks(net, settings, tmp_path):  # noqa: F811
    hosts, _ = net
    # The default liveness timings: 200 engines beating twice a second would be most of what
    # Redis does here, and on 2 cores a 3 s timeout is within reach of plain scheduling delays.
    local = settings.replace(heartbeat_interval_s=1.0, engine_timeout_s=10.0)
    cluster = Cluster(local, str(tmp_path))
    log = str(tmp_path / "exec.log")
    rng = random.Random(19)
    try:
        cluster.start_scheduler("lifo", netns=hosts[SCHEDULER_HOST].netns)
        # Given 200 engines started together over hosts 1-3
        started = time.monotonic()
        daemons = [cluster.start_engine(wait=False, netns=hosts[ENGINE_HOSTS[n % len(ENGINE_HOSTS)]].netns)
                   for n in range(ENGINES)]
        for daemon in daemons:
            daemon.engine_id = cluster.wait_engine(daemon, timeout_s=600)
        up_s = time.monotonic() - started
        host_of = {d.engine_id: ENGINE_HOSTS[n % len(ENGINE_HOSTS)] for n, d in enumerate(daemons)}
        with Client(settings=local) as client:
            wait_for(lambda: len(client.ids) == ENGINES, 120, "the client to see every engine")
            # When 18,000 load-balanced tasks and 2,000 aimed at engines picked at random go out
            farm_started = time.monotonic()
            lb_ids = client.submit_many([MapTask(work.run, (log, f"lb{i}", 0.0)) for i in range(TASKS - TARGETED)])
            targeted: list[str] = []
            sent_to: dict[str, int] = {}
            for i in range(TARGETED):
                engine_id = rng.choice(daemons).engine_id
                ar = client[engine_id].apply(work.run, log, f"d{i}", 0.0, block=False)
                targeted += ar.task_ids
                sent_to.update((t_id, engine_id) for t_id in ar.task_ids)
            ids = lb_ids + targeted
            if not client.wait(ids, 900):
                stuck = [r if r is not None else t_id
                         for t_id, r in zip(ids, client.records.get_many(ids)) if r is None or not r.done]
                pytest.fail(f"{len(stuck)} tasks unfinished after 900 s: {stuck[:5]}; "
                            f"queue status {client.queue_status()}")
            farm_s = time.monotonic() - farm_started
            keys = {**{t_id: f"lb{i}" for i, t_id in enumerate(lb_ids)},
                    **{t_id: f"d{i}" for i, t_id in enumerate(targeted)}}
            t = tally(client, ids, log, keys)
            records = client.records.get_many(ids)
            assert all(r is not None for r in records)
            # Which engines, and so which hosts, did the work
            ran_on = {r.engine_id for r in records}
            live_at_end = sorted(client.ids)
        report(f"19 {ENGINES} engines over 3 hosts, {TASKS:,} tasks (10% targeted), lifo", t,
               time.monotonic() - started,
               notes=f"{ENGINES} engines up in {up_s:.0f} s; farming {farm_s:.0f} s ({TASKS / farm_s:.0f} tasks/s); "
                     f"{len(ran_on)} engines ran tasks")
        # Then every task completed once, none ran twice, and every engine rode it out
        assert t.lost == [] and t.duplicate_records == [] and t.reruns == 0, ran_again(log)
        assert t.statuses["completed"] == TASKS and len(t.executions) == TASKS
        assert live_at_end == sorted(d.engine_id for d in daemons)
        assert all(d.proc.poll() is None for d in daemons)
        assert {host_of[e] for e in ran_on} == set(ENGINE_HOSTS)
        # The targeted tasks ran where they were sent
        assert {r.task_id: r.engine_id for r in records[len(lb_ids):]} == sent_to
    finally:
        cluster.teardown()
