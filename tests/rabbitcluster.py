"""A private three-node RabbitMQ cluster on this machine, for tests of replicated queues.

The nodes are ``PrivateRabbit`` nodes (tests/servers.py) that share one private HOME (so one
Erlang cookie, which 3.10 reads from $HOME in the server and the CLI alike) and an epmd of
their own on a free port (``ERL_EPMD_PORT``), so neither the shared node on 5672 nor the
system's epmd is ever touched. Each node has its own name, AMQP port, dist port and data dir.

Startup is what a test module pays once: the three servers boot at the same time, then the
second and third join the first in parallel (``stop_app; join_cluster; start_app``).
Everything is stopped by PID and its directory removed at the end, also on failure.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from .servers import PrivateRabbit, _pid_alive, _read, free_port, wait_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def _tool(path: str, name: str) -> str:
    return path if os.path.exists(path) else shutil.which(name) or name


@dataclass
class ClusterNode(PrivateRabbit):
    """A node of a ``RabbitCluster``: the cluster's HOME and epmd instead of its own."""

    home: str = ""
    epmd_port: int = 0

    def _env(self) -> dict[str, str]:
        env = super()._env()
        # Three VMs share two cores: schedulers that spin while idle would starve each other.
        env.update(HOME=self.home, ERL_EPMD_PORT=str(self.epmd_port),
                   RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none")
        return env

    def ctl(self, *args: str, timeout_s: float = 120.0) -> str:
        """``rabbitmqctl -n NODE ARGS``; raises with its output if it fails."""
        done = subprocess.run([_tool(CTL, "rabbitmqctl"), "-n", self.node, *args], env=self._env(),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl -n {self.node} {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout.decode()}{done.stderr.decode()}")
        return done.stdout.decode()

    def boot(self) -> None:
        """Launch the server process without waiting for it (``start`` waits)."""
        os.makedirs(self.base_dir, exist_ok=True)
        with open(os.path.join(self.base_dir, "server.log"), "ab") as log:
            self.proc = subprocess.Popen([_tool(SERVER, "rabbitmq-server")], env=self._env(), stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)


@dataclass
class RabbitCluster:
    """Three (``size``) clustered nodes under ``base_dir``; ``nodes[0]`` is the one the others join."""

    base_dir: str
    size: int = 3
    epmd_port: int = field(default_factory=free_port)
    nodes: list[ClusterNode] = field(default_factory=list)
    epmd: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's AMQP URL, comma separated, as clients and daemons take them."""
        return ",".join(self.urls)

    def start(self, timeout_s: float = 120.0) -> None:
        home = os.path.join(self.base_dir, "home")
        os.makedirs(home, exist_ok=True)
        cookie = os.path.join(home, ".erlang.cookie")
        with open(cookie, "w") as handle:
            handle.write(os.urandom(16).hex().upper())
        os.chmod(cookie, 0o400)
        env = dict(os.environ, HOME=home, ERL_EPMD_ADDRESS="127.0.0.1")
        self.epmd = subprocess.Popen([_tool("/usr/bin/epmd", "epmd"), "-port", str(self.epmd_port)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.epmd_port, True, 30, "private epmd")
        for n in range(self.size):
            node = ClusterNode(os.path.join(self.base_dir, f"node{n}"), home=home, epmd_port=self.epmd_port)
            node.nodename = f"efclu{n}x{node.port}@localhost"
            self.nodes.append(node)
        for node in self.nodes:
            node.boot()
        for node in self.nodes:
            self._await(node, timeout_s)
        first = self.nodes[0].node
        self._parallel([functools.partial(self._join, node, first) for node in self.nodes[1:]])
        self.nodes[0].ctl("await_online_nodes", str(self.size), "--timeout", str(int(timeout_s)))

    @staticmethod
    def _join(node: ClusterNode, first: str) -> None:
        node.ctl("stop_app")
        node.ctl("join_cluster", first)
        node.ctl("start_app")

    @staticmethod
    def _parallel(jobs: list[Callable[[], None]]) -> None:
        errors: list[BaseException] = []

        def run(job: Callable[[], None]) -> None:
            try:
                job()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    @staticmethod
    def _await(node: ClusterNode, timeout_s: float) -> None:
        """Until the node's AMQP port answers and its pid file names the server."""
        deadline = time.monotonic() + timeout_s
        pid_file = os.path.join(node.base_dir, "pid")
        while not _read(pid_file):
            if node.proc is not None and node.proc.poll() is not None:
                raise AssertionError(f"RabbitMQ node {node.node} exited; see {node.base_dir}/server.log")
            if time.monotonic() > deadline:
                raise AssertionError(f"RabbitMQ node {node.node} wrote no pid file in {timeout_s}s")
            time.sleep(0.1)
        node.pid = int(_read(pid_file))
        wait_port(node.port, True, max(deadline - time.monotonic(), 1.0), f"RabbitMQ node {node.node}")

    def kill(self, index: int) -> None:
        """kill -9 of one node, by its PID."""
        self.nodes[index].stop(signal.SIGKILL)

    def restart(self, index: int, timeout_s: float = 120.0) -> None:
        """Start a stopped node again on its data dir: it rejoins the cluster by itself."""
        node = self.nodes[index]
        pid_file = os.path.join(node.base_dir, "pid")
        if os.path.exists(pid_file):
            os.remove(pid_file)
        node.boot()
        self._await(node, timeout_s)
        self.nodes[0 if index else 1].ctl("await_online_nodes", str(self.size), "--timeout", str(int(timeout_s)))

    def leader_of(self, queue: str, via: int = 0) -> str:
        """The name of the node that leads quorum queue ``queue`` (asked of node ``via``)."""
        for line in self.nodes[via].ctl("list_queues", "name", "leader", "--quiet", "--no-table-headers").splitlines():
            name, _, leader = line.strip().partition("\t")
            if name == queue:
                return leader.strip()
        raise AssertionError(f"no queue {queue} on the cluster")

    def connections_on(self, index: int) -> list[str]:
        """Names of the client connections node ``index`` holds (those on its AMQP port)."""
        node = self.nodes[index]
        out = node.ctl("--quiet", "list_connections", "--no-table-headers", "port", "name")
        rows = [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
        return [name for port, name in rows if port.strip() == str(node.port)]

    def index_of(self, nodename: str) -> int:
        return [node.node for node in self.nodes].index(nodename)

    def running_nodes(self, via: int = 0) -> list[str]:
        """Names of the nodes node ``via`` sees running."""
        out = self.nodes[via].ctl("eval", "rabbit_nodes:all_running().")
        return sorted(part.strip(" []'\n") for part in out.strip().strip("[]\n").split(",") if part.strip(" []\n"))

    def stop(self) -> None:
        """Every node and the epmd, by PID (data dirs go with them: no graceful shutdown)."""
        for node in self.nodes:
            if node.pid is not None:
                try:
                    os.kill(node.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for node in self.nodes:
            node.stop(signal.SIGKILL, timeout_s=30)
            if node.proc is not None and node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()
        if self.epmd is not None:
            self.epmd.kill()
            self.epmd.wait()
            self.epmd = None
        shutil.rmtree(self.base_dir, ignore_errors=True)


@contextmanager
def rabbit_cluster(base_dir: str, size: int = 3) -> Iterator[RabbitCluster]:
    """A started cluster, stopped and removed afterwards whatever happened (skips without RabbitMQ)."""
    if not os.path.exists(SERVER) and not shutil.which("rabbitmq-server"):
        pytest.skip("rabbitmq-server is not installed")
    cluster = RabbitCluster(base_dir, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
