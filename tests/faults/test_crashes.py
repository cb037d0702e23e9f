"""Scenarios 1, 2, 3, 6, 7, 11: load, killed engines, drains, killed clients, poison tasks, bad targets."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from enginefarm import Client, InvalidEngineID, MapTask, RemoteError
from enginefarm.local import settings_env

from ..harness import Cluster, wait_for
from . import work
from .conftest import children_of, executions, ran_again, report, tally


def submit(client: Client, log: str, count: int, sleep_s=0.0, prefix: str = "t", **options) -> tuple[list[str], dict[str, str]]:
    keys = [f"{prefix}{i}" for i in range(count)]
    sleeps = [sleep_s() if callable(sleep_s) else sleep_s for _ in keys]
    ids = client.submit_many([MapTask(work.run, (log, k, s), **options) for k, s in zip(keys, sleeps)])
    return ids, dict(zip(ids, keys))


def test_1_baseline_5000_tasks_exactly_once(cluster, client, tmp_path):
    log = str(tmp_path / "exec.log")
    cluster.start_scheduler()
    cluster.start_engines(2)
    started = time.monotonic()
    ids, keys = submit(client, log, 5000)
    client.barrier(ids, timeout=600)
    t = tally(client, ids, log, keys)
    report("1 baseline: 5,000 trivial tasks, 2 engines", t, time.monotonic() - started)
    assert t.lost == [] and t.duplicate_records == []
    assert t.statuses["completed"] == 5000
    assert len(t.executions) == 5000 and t.reruns == 0


def test_2_kill_engines_mid_task_under_load(settings, tmp_path):
    # A kill can land on a task whose engine died before: the poison guard (scenario 7) would
    # fail it after max_engine_losses, so here it allows more losses than there are kills.
    most_kills = 8
    local = settings.replace(max_engine_losses=most_kills + 1)
    cluster = Cluster(local, str(tmp_path))
    try:
        with Client(settings=local) as client:
            kill_engines_mid_task_under_load(cluster, client, str(tmp_path / "exec.log"), most_kills)
    finally:
        cluster.teardown()


def kill_engines_mid_task_under_load(cluster: Cluster, client: Client, log: str, most_kills: int) -> None:
    # Given 1,000 tasks of 50-500 ms over 8 engines (they sleep, so 2 cores suffice)
    rng = random.Random(2)
    cluster.start_scheduler()
    engines = cluster.start_engines(8)
    started = time.monotonic()
    ids, keys = submit(client, log, 1000, sleep_s=lambda: rng.uniform(0.05, 0.5))
    # When an engine busy with a task is killed every few seconds, and a new one started
    kills, killed = 0, []
    while kills < most_kills and client.records.statuses(ids).count("completed") < 900:
        time.sleep(2.5)
        busy = [d for d in engines if d.proc.poll() is None and client.registry.running(d.engine_id)]
        if not busy:
            continue
        victim = rng.choice(busy)
        killed.append((victim.proc.pid, children_of(victim.proc.pid)))
        victim.signal(signal.SIGKILL)
        victim.wait(30)
        engines.remove(victim)
        kills += 1
        engines.append(cluster.start_engine())
    client.barrier(ids, timeout=600)
    # Then nothing is lost and only tasks whose engine died ran twice
    t = tally(client, ids, log, keys)
    report(f"2 kill -9 an engine mid-task x{kills}, 1,000 tasks", t, time.monotonic() - started, kills)
    assert kills >= 3
    assert t.lost == [] and t.duplicate_records == []
    assert t.statuses["completed"] == 1000, f"not completed: {t.statuses}; ran again (key: pids): {ran_again(log)}"
    assert t.reruns <= kills, f"re-ran (key: pids): {ran_again(log)}; killed (supervisor, children): {killed}"


def test_3_sigterm_drain_during_load(cluster, client, tmp_path):
    log = str(tmp_path / "exec.log")
    cluster.start_scheduler()
    engines = cluster.start_engines(3)
    started = time.monotonic()
    ids, keys = submit(client, log, 300, sleep_s=0.02)
    wait_for(lambda: client.records.statuses(ids).count("completed") >= 50, 120, "the load to get going")
    victim = engines[0]
    victim.signal(signal.SIGTERM)
    assert victim.wait(60) == 0
    client.barrier(ids, timeout=300)
    t = tally(client, ids, log, keys)
    report("3 SIGTERM drain during load", t, time.monotonic() - started)
    assert t.lost == [] and t.duplicate_records == [] and t.reruns == 0
    assert t.statuses["completed"] == 300


CLIENT_SCRIPT = """
import os, signal, sys
from enginefarm import Client, MapTask
from tests.faults import work
client = Client()
ids = client.submit_many([MapTask(work.run, (sys.argv[1], f"c{i}", 0.01)) for i in range(200)])
with open(sys.argv[2], "w") as handle:
    handle.write("\\n".join(ids))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_6_client_killed_right_after_submitting(cluster, client, settings, tmp_path):
    log, ids_file = str(tmp_path / "exec.log"), str(tmp_path / "ids.txt")
    cluster.start_scheduler()
    cluster.start_engines(2)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, log, ids_file], env=settings_env(settings),
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    with open(ids_file) as handle:
        ids = handle.read().split()
    assert len(ids) == 200
    # A new client finds them all: they complete and are in the history.
    assert client.get_result(ids, block=False).wait(300)
    t = tally(client, ids, log, {i: f"c{n}" for n, i in enumerate(ids)})
    report("6 client killed right after submitting", t, time.monotonic() - started)
    assert t.lost == [] and t.reruns == 0 and t.statuses["completed"] == 200
    assert set(ids) <= set(client.hub_history())


def test_7_poison_tasks_end_after_bounded_attempts(cluster, client, settings, tmp_path):
    log = str(tmp_path / "exec.log")
    cluster.start_scheduler()
    cluster.start_engines(3)
    started = time.monotonic()
    raising = client.submit(MapTask(work.always_raises, (log, "raises"), retries=2))
    killing = client.submit(MapTask(work.kills_its_engine, (log, "kills")))
    ids, keys = submit(client, log, 200, sleep_s=0.01)
    client.barrier([raising, killing, *ids], timeout=300)

    raised = client.get_task_result(raising)
    assert raised.failure.ename == "RuntimeError" and "always fails" in raised.failure.evalue
    assert raised.attempts == 3
    killed = client.get_task_result(killing)
    assert killed.failure.ename == "EngineProcessDied" and "died while running" in killed.failure.evalue
    t = tally(client, ids, log, keys)
    log_counts = t.executions
    runs = executions(log)
    report("7 poison tasks (raises / kills its engine) + 200", t, time.monotonic() - started,
           notes=f"poison ran {runs['raises']}+{runs['kills']} times, then failed with the reason")
    assert runs["raises"] == 3
    assert runs["kills"] == settings.max_engine_losses
    assert t.lost == [] and t.reruns == 0 and t.statuses["completed"] == 200
    assert len(log_counts) == 200
    assert len(client.ids) == 3  # every engine survived its child's death


def test_11_nonexistent_and_dead_targets(cluster, client, tmp_path):
    log = str(tmp_path / "exec.log")
    engines = cluster.start_engines(2)
    started = time.monotonic()
    t0 = time.monotonic()
    with pytest.raises(InvalidEngineID):
        client[7].apply(int, 1)
    assert time.monotonic() - t0 < 1.0
    # Given tasks queued behind a slow one on engine 0, when engine 0 is killed
    slow = client[0].apply(work.run, log, "slow", 30.0, block=False)
    queued = [client[0].apply(work.run, log, f"q{i}", block=False) for i in range(20)]
    wait_for(lambda: executions(log)["slow"] == 1, 30, "engine 0 to start the slow task")
    killed_at = time.monotonic()
    next(d for d in engines if d.engine_id == 0).signal(signal.SIGKILL)
    # Then every one of them fails with a reason, and the dead target is refused at once
    with pytest.raises(RemoteError) as info:
        slow.get(timeout=60)
    recovered = time.monotonic() - killed_at
    assert info.value.ename == "EngineLost" and "while running" in info.value.evalue
    for ar in queued:
        with pytest.raises(RemoteError) as info:
            ar.get(timeout=60)
        assert info.value.ename == "EngineLost" and "before running" in info.value.evalue
    t1 = time.monotonic()
    with pytest.raises(InvalidEngineID):
        client[0].apply(int, 1)
    assert time.monotonic() - t1 < 1.0
    ids = [slow.task_ids[0], *(a.task_ids[0] for a in queued)]
    t = tally(client, ids, log, {slow.task_ids[0]: "slow", **{a.task_ids[0]: f"q{i}" for i, a in enumerate(queued)}})
    report("11 dead target: 21 tasks queued on a killed engine", t, time.monotonic() - started, 0, recovered,
           notes="bad target refused in <1 s")
    assert t.lost == [] and t.duplicate_records == [] and t.statuses["failed"] == 21
    assert executions(log)["slow"] == 1 and not any(executions(log)[f"q{i}"] for i in range(20))
