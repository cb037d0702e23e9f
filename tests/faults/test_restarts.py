"""Scenarios 4 and 5: a private RabbitMQ node and a private Redis restarted, killed and paused
under load. The shared servers are never touched."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pytest

from enginefarm import Client, MapTask

from ..harness import Cluster, wait_for
from ..servers import PrivateRabbit, PrivateRedis
from . import work
from .conftest import executions, report, tally


class Load:
    """Submits batches of short tasks from a thread; remembers every id whose submit returned."""

    def __init__(self, settings, log: str, batches: int, batch: int = 20, sleep_s: float = 0.02) -> None:
        self.settings, self.log = settings, log
        self.batches, self.batch, self.sleep_s = batches, batch, sleep_s
        self.ids: list[str] = []
        self.keys: dict[str, str] = {}
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with Client(settings=self.settings) as client:
                for b in range(self.batches):
                    keys = [f"b{b}-{i}" for i in range(self.batch)]
                    ids = client.submit_many([MapTask(work.run, (self.log, k, self.sleep_s)) for k in keys])
                    self.ids += ids
                    self.keys.update(zip(ids, keys))
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def start(self) -> Load:
        self.thread.start()
        return self

    def join(self, timeout_s: float = 300) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the submitting thread is stuck"
        assert self.errors == [], self.errors


def completed_count(client: Client, ids: list[str]) -> int:
    return client.records.statuses(list(ids)).count("completed")


@pytest.fixture
def rabbit(tmp_path):
    if not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server") and not shutil.which("rabbitmq-server"):
        pytest.skip("rabbitmq-server is not installed")
    node = PrivateRabbit(str(tmp_path / "rabbit"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_4_rabbitmq_restart_and_kill_under_load(settings, tmp_path, rabbit):
    local = settings.replace(amqp_url=rabbit.url)
    cluster = Cluster(local, str(tmp_path))
    log = str(tmp_path / "exec.log")
    try:
        cluster.start_scheduler()
        engines = cluster.start_engines(2)
        started = time.monotonic()
        with Client(settings=local) as client:
            client.ids  # connect now
            load = Load(local, log, batches=30).start()
            wait_for(lambda: completed_count(client, load.ids) >= 60, 120, "the load to get going")
            recoveries = []
            for how in (signal.SIGTERM, signal.SIGKILL):
                before = completed_count(client, load.ids)
                rabbit.stop(how)
                down_at = time.monotonic()
                rabbit.start()
                # Engines reconnect by themselves: completions resume.
                wait_for(lambda: completed_count(client, load.ids) > before + 20
                         or (not load.thread.is_alive() and completed_count(client, load.ids) == len(load.ids)),
                         120, "work to resume after the broker came back")
                recoveries.append(time.monotonic() - down_at)
            load.join()
            client.barrier(load.ids, timeout=300)
            t = tally(client, load.ids, log, load.keys)
        report("4 RabbitMQ restart + kill -9 under load (private node)", t, time.monotonic() - started, 0,
               max(recoveries), notes="recover = broker down until work resumed")
        assert t.lost == [] and t.duplicate_records == [] and t.reruns == 0
        assert t.statuses["completed"] == len(load.ids) == 600
        assert all(d.proc.poll() is None for d in cluster.daemons)  # scheduler and engines rode it out
        assert max(recoveries) < 60
    finally:
        cluster.teardown()


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(str(tmp_path / "redis"))
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.resume()
        server.stop()


def test_5_redis_restart_and_pause_under_load(settings, tmp_path, private_redis):
    local = settings.replace(redis_url=private_redis.url)
    cluster = Cluster(local, str(tmp_path))
    log = str(tmp_path / "exec.log")
    try:
        cluster.start_scheduler()
        engines = cluster.start_engines(2)
        ids_before = sorted(d.engine_id for d in engines)
        started = time.monotonic()
        with Client(settings=local) as client:
            client.ids  # connect now
            load = Load(local, log, batches=30).start()
            wait_for(lambda: completed_count(client, load.ids) >= 60, 120, "the load to get going")
            # Restart: the append-only file brings every record back.
            private_redis.restart()
            restarted_at = time.monotonic()
            before = completed_count(client, load.ids)
            wait_for(lambda: completed_count(client, load.ids) > before + 20, 120, "work to resume after a restart")
            restart_recovery = time.monotonic() - restarted_at
            # Pause for 10 s (longer than the engine timeout): nobody may be judged dead for it.
            private_redis.pause()
            time.sleep(10)  # the fault itself lasts 10 s; nothing is awaited here
            private_redis.resume()
            resumed_at = time.monotonic()
            before = completed_count(client, load.ids)
            wait_for(lambda: completed_count(client, load.ids) > before + 20
                     or completed_count(client, load.ids) == 600, 120, "work to resume after the pause")
            pause_recovery = time.monotonic() - resumed_at
            load.join()
            client.barrier(load.ids, timeout=300)
            t = tally(client, load.ids, log, load.keys)
            assert sorted(client.ids) == ids_before
        report("5 Redis restart + 10 s SIGSTOP under load (private server)", t, time.monotonic() - started, 0,
               max(restart_recovery, pause_recovery), notes="no engine judged dead; recover = until work resumed")
        assert t.lost == [] and t.duplicate_records == [] and t.reruns == 0
        assert t.statuses["completed"] == len(load.ids) == 600
        assert all(d.proc.poll() is None for d in cluster.daemons), [d.log()[-2000:] for d in cluster.daemons]
        assert len(executions(log)) == 600
    finally:
        cluster.teardown()
