"""Private RabbitMQ and Redis servers for tests that stop, restart or reconfigure a server.

Each runs on its own port with its own data directory, so the shared servers on the standard
ports are never disturbed. Stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_port(port: int, is_open: bool, timeout_s: float, what: str, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while port_open(port, host) != is_open:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not {'open' if is_open else 'close'} port {host}:{port} in {timeout_s}s")
        time.sleep(0.2)


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of its own, listening on ``host`` (loopback unless told), with its own
    HOME (so its own Erlang cookie). ``consumer_timeout_ms`` is checked every second.
    ``loopback_users = none`` lets guest log in from other addresses (the test hosts)."""

    base_dir: str
    consumer_timeout_ms: int | None = None
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    nodename: str = ""  # default eftest<port>@localhost
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    @property
    def node(self) -> str:
        return self.nodename or f"eftest{self.port}@localhost"

    def _env(self) -> dict[str, str]:
        conf = os.path.join(self.base_dir, "rabbitmq")
        with open(conf + ".conf", "w") as handle:
            handle.write(f"listeners.tcp.default = {self.host}:{self.port}\nloopback_users = none\n")
            if self.consumer_timeout_ms is not None:
                handle.write(f"consumer_timeout = {self.consumer_timeout_ms}\n")
        advanced = os.path.join(self.base_dir, "advanced.config")
        with open(advanced, "w") as handle:
            handle.write("[{rabbit, [{channel_tick_interval, 1000}]}].\n")
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=conf,
            RABBITMQ_ADVANCED_CONFIG_FILE=advanced,
            RABBITMQ_MNESIA_BASE=os.path.join(self.base_dir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.base_dir, "log"),
            RABBITMQ_PID_FILE=os.path.join(self.base_dir, "pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.base_dir, "plugins"),
            # The server and rabbitmqctl read the Erlang cookie from $HOME: ours, not root's.
            HOME=os.path.join(self.base_dir, "home"),
        )
        return env

    def start(self, timeout_s: float = 90.0) -> None:
        os.makedirs(os.path.join(self.base_dir, "home"), exist_ok=True)
        # The packaged wrapper in /usr/sbin insists on the system node's user and paths.
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.path.exists(server):
            server = shutil.which("rabbitmq-server") or "rabbitmq-server"
        with open(os.path.join(self.base_dir, "server.log"), "ab") as log:
            # Every descriptor the hard limit allows: each engine holds three connections, and
            # a node at 1,024 runs out (and breaks) as 200 engines start. Set by the shell that
            # execs the server, not by a preexec_fn (unsafe with the threads a test runs).
            self.proc = subprocess.Popen(["sh", "-c", 'ulimit -n "$(ulimit -Hn)"; exec "$0"', server],
                                         env=self._env(), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port, True, timeout_s, "private RabbitMQ", self.host)
        pid_file = os.path.join(self.base_dir, "pid")
        deadline = time.monotonic() + timeout_s
        while not _read(pid_file):
            if time.monotonic() > deadline:
                raise AssertionError("private RabbitMQ wrote no pid file")
            time.sleep(0.1)
        self.pid = int(_read(pid_file))

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> None:
        """Stop the node by its PID (SIGKILL for a crash)."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while _pid_alive(self.pid):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.1)
        self.pid = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        wait_port(self.port, False, timeout_s, "private RabbitMQ", self.host)

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stop the node as an operator does, ``rabbitmqctl -n NODE stop``; by its PID if that
        does not work."""
        if self.pid is not None:
            ctl = "/usr/lib/rabbitmq/bin/rabbitmqctl"
            if not os.path.exists(ctl):
                ctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
            try:
                subprocess.run([ctl, "-n", self.node, "stop"], env=self._env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.stop(timeout_s=timeout_s)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


@dataclass
class PrivateRedis:
    """A Redis server of its own on ``host``; ``durable``: with an append-only file so a restart
    keeps the data (else nothing on disk). ``config_file`` is read first and ``extra_args``
    come last (``--replicaof HOST PORT``; ``--sentinel`` with a sentinel's file, tests/sentinel.py)."""

    base_dir: str
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    durable: bool = True
    config_file: str = ""
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        if self.host != "127.0.0.1":
            # Protected mode refuses every client not on loopback while no password is set; the
            # test hosts reach this server over their private bridge.
            persistence += ["--protected-mode", "no"]
        with open(os.path.join(self.base_dir, "redis.log"), "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", *([self.config_file] if self.config_file else []), "--bind", self.host,
                 "--port", str(self.port), "--dir", self.base_dir, *persistence, "--save", "", "--daemonize", "no",
                 *self.extra_args],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        wait_port(self.port, True, timeout_s, "private Redis", self.host)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        wait_port(self.port, False, 30, "private Redis", self.host)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()
