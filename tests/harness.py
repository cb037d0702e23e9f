"""Real clusters for tests: engine (and scheduler) daemons as subprocesses, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import redis

from enginefarm.broker.connection import connection_parameters
from enginefarm.config import Settings, split_urls
from enginefarm.local import settings_env
from enginefarm.names import Names
from enginefarm.store import connect


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log_path: str
    engine_id: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout_s: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()


@dataclass
class Cluster:
    settings: Settings
    tmp_dir: str
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def names(self) -> Names:
        return Names(self.settings.cluster)

    def redis(self) -> redis.Redis:
        """A client of the cluster's Redis (a single server or a Redis Cluster, by its URL)."""
        return connect(self.settings.redis_url)

    def spawn(self, args: list[str], env_extra: dict[str, str] | None = None, netns: str | None = None) -> Daemon:
        """``enginefarm ARGS`` as a subprocess; in network namespace ``netns`` (a test host,
        tests/hosts.py) if given. ``ip netns exec`` execs the command: the PID is the daemon's."""
        log_path = os.path.join(self.tmp_dir, f"daemon-{len(self.daemons)}.log")
        env = settings_env(self.settings)
        env.update(env_extra or {})
        command = [sys.executable, "-m", "enginefarm", "--log-level", "DEBUG", *args]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        daemon = Daemon(proc, log_path)
        self.daemons.append(daemon)
        return daemon

    def start_engine(self, properties: dict[str, str] | None = None, wait: bool = True,
                     env_extra: dict[str, str] | None = None, netns: str | None = None) -> Daemon:
        args = ["engine", "--cluster", self.settings.cluster]
        for key, value in (properties or {}).items():
            args += ["--property", f"{key}={value}"]
        daemon = self.spawn(args, env_extra, netns)
        if wait:
            daemon.engine_id = self.wait_engine(daemon)
        return daemon

    def start_engines(self, count: int, **kwargs: Any) -> list[Daemon]:
        daemons = [self.start_engine(wait=False, **kwargs) for _ in range(count)]
        for daemon in daemons:
            daemon.engine_id = self.wait_engine(daemon)
        # Registration order is a race: hand them back by engine id, so daemons[i] is engine i.
        return sorted(daemons, key=lambda d: d.engine_id)

    def start_scheduler(self, scheme: str | None = None, wait: bool = True,
                        env_extra: dict[str, str] | None = None, netns: str | None = None) -> Daemon:
        """A scheduler daemon; with ``wait``, returns once it holds the cluster's lease."""
        args = ["scheduler", "--cluster", self.settings.cluster]
        if scheme:
            args += ["--scheme", scheme]
        daemon = self.spawn(args, env_extra, netns)
        if wait:
            self.wait_scheduler_active(daemon)
        return daemon

    def wait_scheduler_active(self, daemon: Daemon, timeout_s: float = 60.0) -> None:
        client = self.redis()

        def active() -> bool:
            if daemon.proc.poll() is not None:
                raise AssertionError(f"scheduler exited with {daemon.proc.returncode}:\n{daemon.log()}")
            holder = client.get(self.names.scheduler_leader)
            # Active means it also published its scheme, which clients route by.
            return (holder is not None and f":{daemon.pid}:" in holder.decode()
                    and client.exists(self.names.scheduler_scheme) == 1)

        wait_for(active, timeout_s, f"scheduler pid {daemon.pid} to become active")

    def wait_engine(self, daemon: Daemon, timeout_s: float = 60.0) -> int:
        """The id of ``daemon`` once it is registered and live."""
        from enginefarm.store import Registry

        registry = Registry(self.redis(), self.names, self.settings.engine_timeout_s)

        def registered() -> int | None:
            if daemon.proc.poll() is not None:
                raise AssertionError(f"engine exited with {daemon.proc.returncode}:\n{daemon.log()}")
            live = set(registry.live_ids())
            for eid, info in registry.info().items():
                if info.get("pid") == daemon.pid and eid in live:
                    return eid + 1  # truthy even for id 0
            return None

        return wait_for(registered, timeout_s, f"engine pid {daemon.pid} to register") - 1

    def stop_all(self) -> None:
        for daemon in self.daemons:
            daemon.signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for daemon in self.daemons:
            try:
                daemon.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait()

    def teardown(self) -> None:
        """Stop every daemon by PID, then remove every queue, exchange and key of the cluster."""
        self.stop_all()
        remove_cluster(self.settings)


def amqp_connection(settings: Settings) -> pika.BlockingConnection:
    """A plain pika connection to the first of the settings' AMQP URLs that answers (with
    the TLS options enginefarm reads from an amqps:// URL)."""
    return pika.BlockingConnection([connection_parameters(url, 60, "enginefarm-tests")
                                    for url in split_urls(settings.amqp_url)])


def remove_cluster(settings: Settings, max_engine_id: int = 64) -> None:
    names = Names(settings.cluster)
    conn = amqp_connection(settings)
    try:
        channel = conn.channel()
        engine_queues = [q for i in range(max_engine_id) for q in (names.engine_queue(i), names.control_queue(i))]
        for queue in [*names.fixed_queues(), *engine_queues]:
            channel.queue_delete(queue)
        for exchange in names.exchanges():
            channel.exchange_delete(exchange)
    finally:
        conn.close()
    # On a Redis Cluster, SCAN visits every primary and DEL goes to the slot's node.
    client = connect(settings.redis_url)
    keys = list(client.scan_iter(match=names.pattern, count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def queue_exists(settings: Settings, queue: str) -> bool:
    return queue_consumers(settings, queue) is not None


def queue_consumers(settings: Settings, queue: str) -> int | None:
    """How many consumers ``queue`` has, or None if it does not exist."""
    conn = amqp_connection(settings)
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if conn.is_open:
            conn.close()


class Amqp:
    """A plain pika connection, as an attacker with broker access would have."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        self.channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(delivery_mode=2),
                                   mandatory=True)

    def get(self, queue: str):
        method, props, body = self.channel.basic_get(queue, auto_ack=True)
        return None if method is None else (props, body)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()
