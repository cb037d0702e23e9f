"""Scenarios 17 and 18: the fault suite across test hosts. One engine on each of hosts 1-3, the
scheduler on host 4, the client and the private RabbitMQ and Redis in the root namespace (on the
bridge's address); the hosts and servers are those of tests/integration/test_hosts.py.

14 cuts an engine's host off while it runs a long task under load, for longer than the engine
timeout, then plugs it back in. 15 puts 200 ms of delay and 5% loss on every engine host's link
and compares the throughput with the same load over a clean link.
"""

from __future__ import annotations

import time

import pytest

from ..harness import wait_for
from ..integration.test_hosts import net, settings, start_cluster  # noqa: F401 (fixtures)
from .conftest import ran_again, report, runs, tally
from .test_crashes import submit

pytestmark = [pytest.mark.faults, pytest.mark.hosts]


def completed(client, ids: list[str]) -> int:
    return client.records.statuses(ids).count("completed")


def test_14_engine_host_cut_off_mid_task_under_load(net, cluster, client, settings, tmp_path):
    hosts, _ = net
    placed = start_cluster(cluster, hosts)
    log = str(tmp_path / "exec.log")
    # Given 1,500 tasks over the three engine hosts: instant ones, and every 30th sleeps 1.5 s
    sleeps = iter([1.5 if i % 30 == 15 else 0.0 for i in range(1500)])
    started = time.monotonic()
    ids, keys = submit(client, log, 1500, sleep_s=lambda: next(sleeps))
    long_ids = {t for t, k in keys.items() if int(k[1:]) % 30 == 15}

    def running_long() -> tuple[int, list[str]] | None:
        ran = runs(log)
        for engine_id in placed:
            held = client.registry.running(engine_id)
            if any(t in long_ids and keys[t] in ran for t in held):
                return engine_id, held
        return None

    wait_for(lambda: completed(client, ids) >= 100, 120, "the load to get going")
    victim_id, _ = wait_for(running_long, 120, "an engine to run a long task")
    host, victim = placed[victim_id]
    # When its host is cut off: for longer than the engine timeout, until what it held has
    # finished elsewhere
    hosts.cut(host)
    cut_at = time.monotonic()
    try:
        held = client.registry.running(victim_id)  # what it had claimed (its last word to Redis)
        at_cut = completed(client, ids)
        wait_for(lambda: completed(client, ids) > at_cut, 90, "work to go on on the other hosts")
        resumed_s = time.monotonic() - cut_at
        wait_for(lambda: all(s == "completed" for s in client.records.statuses(held)), 90,
                 "the cut-off engine's tasks to finish elsewhere")
        recover_s = time.monotonic() - cut_at
        wait_for(lambda: time.monotonic() - cut_at > settings.engine_timeout_s + 1, 30, "the engine timeout")
        cut_s = time.monotonic() - cut_at
    finally:
        hosts.restore(host)
    # Then the restored engine learns it was declared dead and exits (systemd would restart it)
    assert victim.wait(120) == 1, victim.log()[-3000:]
    assert "declared dead" in victim.log()
    client.barrier(ids, timeout=300)
    t = tally(client, ids, log, keys)
    records = client.records.get_many(held)
    report("17 engine host cut off mid-task under load (3 engine hosts), then restored", t,
           time.monotonic() - started, len(held), recover_s,
           notes=f"cut {cut_s:.1f} s; recover = until its tasks ran elsewhere; the other hosts' next completion "
                 f"{resumed_s:.1f} s after the cut; restored engine exits 1 (declared dead)")
    assert t.lost == [] and t.duplicate_records == []
    assert t.statuses["completed"] == 1500
    # Only what the cut-off engine held ran again, each at most once more; none of it is
    # recorded as the cut-off engine's
    again = ran_again(log)
    assert t.reruns <= len(held) and set(again) <= {keys[t] for t in held}, (again, held)
    assert all(len(pids) == 2 for pids in again.values()), again
    assert all(r is not None and r.engine_id != victim_id for r in records), records
    assert cut_s > settings.engine_timeout_s
    # And the other two engines rode it out
    assert all(d.proc.poll() is None for e, (_, d) in placed.items() if e != victim_id)


def farm(client, log: str, count: int, prefix: str) -> tuple[float, list[str], dict[str, str]]:
    started = time.monotonic()
    ids, keys = submit(client, log, count, prefix=prefix)
    client.barrier(ids, timeout=300)
    return time.monotonic() - started, ids, keys


def test_15_slow_lossy_links_to_every_engine_host_under_load(net, cluster, client, tmp_path):
    hosts, _ = net
    placed = start_cluster(cluster, hosts)
    log = str(tmp_path / "exec.log")
    count = 300
    # Given the throughput of a load over clean links
    clean_s, clean_ids, clean_keys = farm(client, log, count, "c")
    # When every engine host's link delays packets by 200 ms and drops 5% of them
    for host, _ in placed.values():
        hosts.netem(host, delay_ms=200, loss_pct=5)
    try:
        slow_s, ids, keys = farm(client, log, count, "s")
    finally:
        for host, _ in placed.values():
            hosts.clear_netem(host)
    # Then every task completed exactly once, and no engine was judged dead for the slow link
    t = tally(client, clean_ids + ids, log, {**clean_keys, **keys})
    report("18 200 ms delay + 5% loss on every engine host's link", t, slow_s,
           notes=f"{count} tasks each way; {count / slow_s:.1f} tasks/s against {count / clean_s:.0f} over "
                 "clean links; seconds = the slow run")
    assert t.lost == [] and t.duplicate_records == [] and t.reruns == 0, ran_again(log)
    assert t.statuses["completed"] == 2 * count and len(t.executions) == 2 * count
    assert all(d.proc.poll() is None for _, d in placed.values())
    assert sorted(client.ids) == sorted(placed)
