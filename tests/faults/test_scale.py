"""Scenarios 12 and 13: a 50,000-task soak, and 50 engines joining and leaving under load."""

from __future__ import annotations

import random
import signal
import time

from enginefarm import Client, MapTask

from ..harness import Cluster, queue_exists, wait_for
from . import work
from .conftest import Tally, executions, report, tally


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


def test_12_soak_50000_tasks_memory_levels_off(settings, tmp_path):
    # The history is capped at 5,000 records: Redis must level off while 50,000 tasks pass.
    local = settings.replace(max_records=5000)
    cluster = Cluster(local, str(tmp_path))
    log = str(tmp_path / "exec.log")
    total, batch = 50_000, 5_000
    try:
        cluster.start_scheduler()
        engines = cluster.start_engines(2)
        started = time.monotonic()
        samples = []
        with Client(settings=local) as client:
            all_ids: list[str] = []
            for b in range(total // batch):
                ids = client.submit_many([MapTask(work.run, (log, f"s{b}-{i}")) for i in range(batch)])
                all_ids += ids
                client.barrier(ids, timeout=600)
                client.clear()  # a long-running client forgets what it has collected
                records, history_bytes = client.history_store.memory_estimate()
                samples.append((len(all_ids), records, history_bytes, sum(rss_kb(d.pid) for d in engines)))
            wait_for(lambda: client.history_store.size() <= 5000, 60, "the history to be culled to its cap")
            depths = client.publisher.link.queue_depths([client.names.work_queue, client.names.tasks_queue,
                                                         *(client.names.engine_queue(d.engine_id) for d in engines)])
            runs = executions(log)
        seconds = time.monotonic() - started
        first, last = samples[1], samples[-1]
        t = Tally(total)
        report("12 soak: 50,000 tasks, history capped at 5,000", t, seconds,
               notes=f"Redis history {first[2] // 1024}->{last[2] // 1024} KB, engines RSS "
                     f"{first[3] // 1024}->{last[3] // 1024} MB, {total / seconds:.0f} tasks/s")
        assert len(runs) == total and max(runs.values()) == 1
        assert all(depth == 0 for depth in depths.values()), depths
        # Levelled off: from the second batch on, neither the history nor the engines grow.
        assert max(s[1] for s in samples[1:]) <= 5000 + batch
        assert last[2] <= first[2] * 1.5, samples
        assert last[3] - first[3] < 30_000, samples
    finally:
        cluster.teardown()


# 44 rounds of churn (6 engines at first, 50 in all) send 10 targeted tasks each: 10% of 5,000.
LB_TASKS = 5000 - 44 * 10


def test_13_fifty_engines_join_and_leave_under_load(settings, tmp_path):
    local = settings.replace(heartbeat_interval_s=1.0, engine_timeout_s=3.0, drain_timeout_s=10.0)
    cluster = Cluster(local, str(tmp_path))
    log = str(tmp_path / "exec.log")
    rng = random.Random(13)
    try:
        cluster.start_scheduler()
        live = cluster.start_engines(6)
        joined, kills, terms = len(live), 0, 0
        ever = {d.engine_id for d in live}
        started = time.monotonic()
        with Client(settings=local) as client:
            lb_ids = client.submit_many([MapTask(work.run, (log, f"lb{i}", 0.02)) for i in range(LB_TASKS)])
            targeted: list[str] = []
            while joined < 50:
                # Targeted work to engines that are up now (10% of the 5,000).
                for _ in range(10):
                    engine = rng.choice(live)
                    ar = client[engine.engine_id].apply(work.run, log, f"d{len(targeted)}", 0.02, block=False)
                    targeted += ar.task_ids
                newcomer = cluster.start_engine(wait=False)
                victim = live.pop(rng.randrange(len(live)))
                if joined % 2:
                    victim.signal(signal.SIGKILL)
                    kills += 1
                else:
                    victim.signal(signal.SIGTERM)
                    terms += 1
                victim.wait(60)
                newcomer.engine_id = cluster.wait_engine(newcomer)
                ever.add(newcomer.engine_id)
                live.append(newcomer)
                joined += 1
            churn_end = time.monotonic()
            # The registry is right within a few heartbeats of the last departure.
            expected = sorted(d.engine_id for d in live)
            wait_for(lambda: sorted(client.ids) == expected, local.engine_timeout_s + 3 * local.heartbeat_interval_s,
                     "the registry to match the engines alive")
            registry_s = time.monotonic() - churn_end
            client.barrier(lb_ids + targeted, timeout=600)
            keys = {**{t_id: f"lb{i}" for i, t_id in enumerate(lb_ids)},
                    **{t_id: f"d{i}" for i, t_id in enumerate(targeted)}}
            t = tally(client, lb_ids + targeted, log, keys)
            lb_statuses = client.records.statuses(lb_ids)
            failures = [r.error for r in client.records.get_many(targeted) if r.status != "completed"]
            gone = sorted(ever - set(expected))
            wait_for(lambda: not any(queue_exists(local, client.names.engine_queue(e)) for e in gone
                                     if e not in expected), 60, "dead engines' queues to be removed")
        report("13 50 engines join/leave (SIGTERM+SIGKILL), 5,000 tasks, 10% targeted", t,
               time.monotonic() - started, kills, registry_s,
               notes=f"{kills} kill -9, {terms} SIGTERM; {len(failures)} targeted tasks failed EngineLost")
        assert t.lost == [] and t.duplicate_records == []
        assert lb_statuses.count("completed") == LB_TASKS
        assert all(f is not None and f["ename"] == "EngineLost" for f in failures), failures
        runs = executions(log)
        lb_reruns = sum(runs[f"lb{i}"] - 1 for i in range(LB_TASKS) if runs[f"lb{i}"] > 1)
        assert lb_reruns <= kills
        assert all(runs[f"lb{i}"] >= 1 for i in range(LB_TASKS))
        assert len(targeted) + LB_TASKS == 5000
    finally:
        cluster.teardown()
