"""Functions the task-farming tests run on engines, and small test-side helpers around them.

This module is pickled by value (see the end), so an engine's child process never has to
import the test suite. Task functions import what they need inside their bodies.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle

# --- run on engines ---------------------------------------------------------------------
def record(path: str, label: object) -> object:
    """Append ``label`` and the pid of the engine (the child's supervisor) to ``path``."""
    import os

    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{label} {os.getppid()}\n")
    return label


def square(x: float, nap_s: float = 0.0) -> float:
    """``x * x``, after sleeping ``nap_s`` seconds."""
    import time

    time.sleep(nap_s)
    return x * x


def gate(path: str, timeout_s: float = 90.0) -> str:
    """Block until the file ``path`` exists (the test creates it), then return 'released'."""
    import os
    import time

    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {path} was never opened")
        time.sleep(0.02)
    return "released"


def gate_or_echo(item: object) -> object:
    """A path waits as ``gate`` does; anything else comes straight back."""
    if isinstance(item, str) and item.startswith("/"):
        return gate(item)
    return item


def gated_record(gate_path: str, path: str, label: object) -> object:
    """Wait for the gate, then record ``label``."""
    gate(gate_path)
    return record(path, label)


def count(redis_url: str, key: str, field: str, sleep_s: float = 0.0) -> str:
    """One execution: HINCRBY ``key`` ``field`` in Redis (optionally after a short nap)."""
    import time

    import redis

    if sleep_s:
        time.sleep(sleep_s)
    client = redis.Redis.from_url(redis_url)
    try:
        client.hincrby(key, field, 1)
    finally:
        client.close()
    return field


def wait_file(path: str, value: object = None, timeout_s: float = 120.0) -> object:
    """Block until ``path`` exists (the test creates it), then return ``value``."""
    import os
    import time

    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.02)
    return value


def fail(message: str) -> None:
    raise ValueError(message)


def fail_now(message: str = "expected") -> None:
    raise RuntimeError(message)


def always_fail(path: str) -> None:
    """Record the attempt, then fail."""
    record(path, "attempt")
    raise RuntimeError("this task always fails")


def fail_until(path: str, failures: int, also: str | None = None) -> int:
    """Fail the first ``failures`` attempts (counted in ``path``, and noted in ``also``);
    then return the attempt number."""
    record(path, "attempt")
    if also is not None:
        record(also, "attempt")
    with open(path, encoding="utf-8") as handle:
        attempt = len(handle.readlines())
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return attempt


def anywhere(properties: dict) -> bool:
    """A depend that holds on every engine."""
    return True


def zone_is(zone: str):
    """A depend: the engine's 'zone' property is ``zone``."""

    def depend(properties: dict) -> bool:
        return properties.get("zone") == zone

    return depend


def slow_first(path: str) -> int:
    """The first attempt hangs (so its engine can be killed mid-run); a later one returns
    the pid of the engine that ran it."""
    import os
    import time

    record(path, "attempt")
    with open(path, encoding="utf-8") as handle:
        attempt = len(handle.readlines())
    if attempt == 1:
        time.sleep(300)
    return os.getppid()


def exit_engine_process(path: str) -> None:
    """Record the attempt, then end the engine's child process outright."""
    import os

    record(path, "attempt")
    os._exit(1)


# --- test side ----------------------------------------------------------------------------
def lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines ``record`` wrote to ``path`` (empty when nothing was written)."""
    p = Path(path)
    if not p.exists():
        return []
    return p.read_text(encoding="utf-8").splitlines()


def labels(path: str | os.PathLike[str]) -> list[str]:
    return [line.split()[0] for line in lines(path)]


def pids(path: str | os.PathLike[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines(path)]


def work_queue_consumers(settings) -> int:
    """How many engines consume the cluster's shared FIFO queue."""
    import pika

    from enginefarm.names import Names

    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return conn.channel().queue_declare(Names(settings.cluster).work_queue, passive=True).method.consumer_count
    finally:
        conn.close()


class Gates:
    """Gate files of one test; every gate still closed is opened at teardown, so a failing
    test never leaves an engine blocked while the daemons are being stopped."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.paths: list[Path] = []

    def new(self, name: str = "gate") -> str:
        path = self.directory / f"{name}-{len(self.paths)}.open"
        self.paths.append(path)
        return str(path)

    @staticmethod
    def open(path: str) -> None:
        Path(path).touch()

    def open_all(self) -> None:
        for path in self.paths:
            path.touch()


cloudpickle.register_pickle_by_value(sys.modules[__name__])
