"""Test hosts on this machine: network namespaces on a private bridge (ops/testhosts.sh), the
private RabbitMQ and Redis that listen on the bridge's address, and processes run on the hosts.

The shared servers listen on loopback only, which a namespace cannot reach: tests across hosts
use private ones. Everything made here is removed by ``Hosts.down`` (and by
``ops/testhosts.sh down`` after a crash: the servers' PIDs are registered with the script).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .servers import PrivateRabbit, PrivateRedis, free_port

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ops", "testhosts.sh")
STATE = "/run/enginefarm-testhosts"


@dataclass(frozen=True)
class Host:
    number: int
    netns: str
    address: str
    veth: str  # its port on the bridge

    @property
    def name(self) -> str:
        return f"h{self.number}"

    def command(self, args: list[str]) -> list[str]:
        """``args`` run on this host."""
        return ["ip", "netns", "exec", self.netns, *args]


def script(*args: str, timeout_s: float = 120.0) -> str:
    """Run ops/testhosts.sh; its stdout.

    Raises:
        RuntimeError: it failed (its stderr says why).
    """
    done = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"testhosts.sh {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def cannot_make_hosts() -> str | None:
    """Why test hosts cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, veths, a bridge)"
    for tool in ("ip", "redis-server"):
        if shutil.which(tool) is None:
            return f"test hosts need {tool}"
    if not (os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server") or shutil.which("rabbitmq-server")):
        return "test hosts need rabbitmq-server"
    probe = f"eftp{secrets.token_hex(1)}"
    try:
        script("up", probe, "1")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces are not permitted here: {exc}"
    finally:
        try:
            script("down", probe)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            pass
    return None


@dataclass
class Hosts:
    """Hosts made by one run (its own prefix), with what runs on them."""

    prefix: str
    bridge: str = ""
    gateway: str = ""  # the bridge's address: where the private servers listen
    hosts: list[Host] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def up(cls, count: int) -> Hosts:
        """Make ``count`` hosts; on failure nothing is left behind."""
        made = cls(f"eft{secrets.token_hex(2)}")
        try:
            for line in script("up", made.prefix, str(count)).splitlines():
                kind, *rest = line.split()
                if kind == "bridge":
                    made.bridge, made.gateway = rest
                elif kind == "host":
                    made.hosts.append(Host(int(rest[0]), rest[1], rest[2], rest[3]))
        except BaseException:
            made.down()
            raise
        return made

    def __getitem__(self, number: int) -> Host:
        """Host ``number`` (1-based, as the script numbers them)."""
        return self.hosts[number - 1]

    def spawn(self, host: Host, args: list[str], log_path: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` on ``host`` (``ip netns exec`` execs it: the PID is the process's own)."""
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(host.command(args), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def cut(self, host: Host) -> None:
        script("cut", self.prefix, str(host.number))

    def restore(self, host: Host) -> None:
        script("restore", self.prefix, str(host.number))

    def netem(self, host: Host, delay_ms: int | None = None, loss_pct: float | None = None) -> None:
        args = ["netem", self.prefix, str(host.number)]
        if delay_ms is not None:
            args += ["delay", f"{delay_ms}ms"]
        if loss_pct is not None:
            args += ["loss", f"{loss_pct:g}%"]
        script(*args)

    def clear_netem(self, host: Host) -> None:
        script("netem", self.prefix, str(host.number), "clear")

    def register(self, name: str, pid: int) -> None:
        """Let ``ops/testhosts.sh down`` stop ``pid`` should this run die before it does."""
        with open(f"/proc/{pid}/stat") as handle:
            start = handle.read().rsplit(")", 1)[1].split()[19]
        os.makedirs(os.path.join(STATE, self.prefix), exist_ok=True)
        with open(os.path.join(STATE, self.prefix, f"{name}.pid"), "w") as handle:
            handle.write(f"{pid} {start}\n")

    def stop_processes(self, timeout_s: float = 30.0) -> None:
        """SIGTERM what was spawned, by PID; SIGKILL what is left after ``timeout_s``."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def down(self) -> None:
        """Stop what was spawned, then remove the hosts, the bridge, their qdiscs and rules."""
        try:
            self.stop_processes()
        finally:
            script("down", self.prefix)


@dataclass
class Servers:
    """A private Redis and RabbitMQ on the bridge's address, reachable from every host."""

    hosts: Hosts
    base_dir: str
    redis: PrivateRedis = field(init=False)
    rabbit: PrivateRabbit = field(init=False)

    def __post_init__(self) -> None:
        gateway = self.hosts.gateway
        self.redis = PrivateRedis(os.path.join(self.base_dir, "redis"), port=free_port(gateway), host=gateway,
                                  durable=False)
        self.rabbit = PrivateRabbit(os.path.join(self.base_dir, "rabbit"), port=free_port(gateway), host=gateway,
                                    nodename=f"ef{self.hosts.prefix}@localhost")

    def start(self) -> None:
        self.redis.start()
        assert self.redis.proc is not None
        self.hosts.register("redis", self.redis.proc.pid)
        self.rabbit.start()
        assert self.rabbit.pid is not None and self.rabbit.proc is not None
        self.hosts.register("rabbitmq", self.rabbit.pid)
        if self.rabbit.proc.pid != self.rabbit.pid:
            self.hosts.register("rabbitmq-server", self.rabbit.proc.pid)

    def stop(self) -> None:
        try:
            self.rabbit.shutdown()
        finally:
            self.redis.stop()


@contextmanager
def made_hosts(count: int, base_dir: str) -> Iterator[tuple[Hosts, Servers]]:
    """``count`` hosts and the private servers; all removed on the way out, also on failure."""
    hosts = Hosts.up(count)
    servers = Servers(hosts, base_dir)
    try:
        servers.start()
        yield hosts, servers
    finally:
        try:
            hosts.stop_processes()
            servers.stop()
        finally:
            hosts.down()
