"""A private Redis Cluster for tests: a few primaries (no replicas) on their own ports and in
their own directories, each started and stopped by PID; the shared Redis is never touched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import redis

from .servers import free_port, wait_port


@dataclass
class Shard:
    """One primary of the cluster: its client port and its cluster bus port."""

    base_dir: str
    port: int = field(default_factory=free_port)
    bus_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        """A plain connection to this node alone (no redirections followed)."""
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self, timeout_s: float = 30.0) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        with open(os.path.join(self.base_dir, "redis.log"), "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.base_dir,
                 "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                 "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        wait_port(self.port, True, timeout_s, "private Redis Cluster node")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@dataclass
class PrivateRedisCluster:
    """``shards`` primaries that share the 16384 slots, as ``redis-cli --cluster create`` deals them."""

    shards_count: int = 3
    base_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ef-rediscluster-"))
    shards: list[Shard] = field(default_factory=list)

    @property
    def url(self) -> str:
        """enginefarm's form: every node in one URL (any one would do)."""
        return "redis+cluster://" + ",".join(s.address for s in self.shards)

    def start(self, timeout_s: float = 60.0) -> None:
        self.shards = [Shard(os.path.join(self.base_dir, f"shard-{n}")) for n in range(self.shards_count)]
        for shard in self.shards:
            shard.start()
        subprocess.run(["redis-cli", "--cluster", "create", *(s.address for s in self.shards),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if time.monotonic() > deadline:
                raise AssertionError(f"the private Redis Cluster did not become healthy in {timeout_s}s")
            time.sleep(0.2)

    def healthy(self) -> bool:
        """Every node says the cluster is ok and knows every other node."""
        for shard in self.shards:
            client = shard.client()
            try:
                info = client.cluster("info")
            finally:
                client.close()
            if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.shards):
                return False
        return True

    def shard_of(self, key: str) -> Shard:
        """The primary serving ``key``'s slot, as the servers say (CLUSTER KEYSLOT, CLUSTER SHARDS)."""
        client = self.shards[0].client()
        try:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            # redis-py reads each shard as {b"slots": [low, high, ...], b"nodes": [{b"port": ...}]}.
            for shard in client.execute_command("CLUSTER SHARDS"):
                ranges = shard[b"slots"]
                if any(low <= slot <= high for low, high in zip(ranges[::2], ranges[1::2])):
                    port = int(shard[b"nodes"][0][b"port"])
                    return next(s for s in self.shards if s.port == port)
        finally:
            client.close()
        raise AssertionError(f"no shard serves slot {slot}")

    def stop(self) -> None:
        """Stop every node by its PID and remove their directories."""
        try:
            for shard in self.shards:
                shard.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

