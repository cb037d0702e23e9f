"""A private Redis Sentinel deployment: a primary, replicas and sentinels, each a PrivateRedis
on its own port and directory (tests/servers.py), stopped by PID.

Sentinels here judge a primary down after ``down_after_ms`` (1 s) so a failover completes in a
few seconds; production keeps Redis's defaults (30 s), see ops/README.md.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import redis

from .servers import PrivateRedis


@dataclass
class SentinelRedis:
    """``replicas`` replicas of one primary, watched by ``sentinels`` sentinels (quorum: a
    majority) under the name ``service``."""

    base_dir: str
    service: str = "efprimary"
    replicas: int = 2
    sentinels: int = 3
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    servers: list[PrivateRedis] = field(default_factory=list)
    watchers: list[PrivateRedis] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"{w.host}:{w.port}" for w in self.watchers)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self, timeout_s: float = 60.0) -> None:
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        primary = PrivateRedis(os.path.join(self.base_dir, "redis-0"), durable=False)
        primary.start()
        self.servers.append(primary)
        for n in range(1, self.replicas + 1):
            replica = PrivateRedis(os.path.join(self.base_dir, f"redis-{n}"), durable=False,
                                   extra_args=("--replicaof", primary.host, str(primary.port)))
            replica.start()
            self.servers.append(replica)
        self.wait(lambda: replicas_online(primary) == self.replicas, timeout_s, "the replicas to sync")
        quorum = self.sentinels // 2 + 1
        for n in range(self.sentinels):
            home = os.path.join(self.base_dir, f"sentinel-{n}")
            os.makedirs(home, exist_ok=True)
            conf = os.path.join(home, "sentinel.conf")
            with open(conf, "w") as handle:  # the sentinel rewrites it as it learns
                handle.write(
                    f"sentinel monitor {self.service} {primary.host} {primary.port} {quorum}\n"
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.service} {self.replicas}\n")
            watcher = PrivateRedis(home, durable=False, config_file=conf, extra_args=("--sentinel",))
            watcher.start()
            self.watchers.append(watcher)
        # Ready when every sentinel knows the replicas and the other sentinels.
        self.wait(lambda: all(self._sees_everyone(w) for w in self.watchers), timeout_s, "the sentinels to meet")

    def _sees_everyone(self, watcher: PrivateRedis) -> bool:
        state = self.ask(watcher).sentinel_master(self.service)
        return (int(state["num-slaves"]) == self.replicas and int(state["num-other-sentinels"]) == self.sentinels - 1
                and not state["is_sdown"] and not state["is_odown"])

    @staticmethod
    def ask(server: PrivateRedis) -> redis.Redis:
        return redis.Redis(server.host, server.port, socket_timeout=2, socket_connect_timeout=2)

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the sentinels that answer name it."""
        named: dict[int, int] = {}
        for watcher in self.watchers:
            try:
                address = self.ask(watcher).sentinel_get_master_addr_by_name(self.service)
            except redis.exceptions.ConnectionError:
                continue
            if address:
                named[int(address[1])] = named.get(int(address[1]), 0) + 1
        best = max(named.items(), key=lambda item: item[1], default=None)
        return best[0] if best is not None and best[1] > self.sentinels // 2 else None

    def primary(self) -> PrivateRedis:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def kill_primary(self) -> PrivateRedis:
        """kill -9 the primary (its process stays stopped until ``restart``)."""
        server = self.primary()
        server.stop(signal.SIGKILL)
        return server

    def wait_failover(self, old: PrivateRedis, timeout_s: float = 60.0) -> PrivateRedis:
        """The new primary, once the sentinels name one other than ``old`` and it says it is one."""
        def promoted() -> bool:
            port = self.primary_port()
            if port is None or port == old.port:
                return False
            return role(next(s for s in self.servers if s.port == port)) == "master"

        self.wait(promoted, timeout_s, "a replica to be promoted")
        return self.primary()

    def stop(self) -> None:
        for server in [*self.watchers, *self.servers]:
            server.stop(signal.SIGKILL)

    @staticmethod
    def wait(predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if predicate():
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(0.1)


def info_replication(server: PrivateRedis) -> dict[str, object]:
    return dict(SentinelRedis.ask(server).info("replication"))


def role(server: PrivateRedis) -> str:
    return str(info_replication(server)["role"])


def replicas_online(server: PrivateRedis) -> int:
    info = info_replication(server)
    return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
               and v.get("state") == "online")
