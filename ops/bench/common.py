"""Helpers shared by the per-system benchmark modules (standard library, pika and redis only).

Each system module measures ONE scenario for ONE repetition per invocation: it starts its
workers, warms up, measures, and always stops what it started and removes its queues and keys.
Results go to stdout as JSON lines; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def emit(system: str, scenario: str, metric: str, value: float, unit: str, **extra: Any) -> None:
    """One result line for the driver."""
    line = {"system": system, "scenario": scenario, "metric": metric, "value": value, "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


SCENARIOS = ("a", "a1", "b", "c", "d", "e", "f", "g")  # "a1" is (a'): one call per task


def round_trips(system: str, call: Callable[[], Any], count: int, suffix: str = "") -> None:
    """Scenario (b): ``call`` (one submit, then its result, which must be 3) 20 times to warm
    up, then ``count`` times timed; emits the p50 and p99 in ms (``p50_<suffix>``...)."""
    for _ in range(20):
        call()
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - t0)
        assert value == 3, value
    tail = f"_{suffix}" if suffix else ""
    emit(system, "b", f"p50{tail}", percentile(times, 50) * 1000, "ms")
    emit(system, "b", f"p99{tail}", percentile(times, 99) * 1000, "ms")


def parse_args(scenarios: str) -> argparse.Namespace:
    """``scenarios``: the ids this module takes part in, separated by spaces ("a a1 b")."""
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=scenarios.split())
    p.add_argument("--name", required=True, help="unique queue / cluster / key prefix")
    p.add_argument("--tasks", type=int, default=5000, help="(a), (a') tasks; (e) tasks for the Redis figure")
    p.add_argument("--roundtrips", type=int, default=300, help="(b) sequential round trips")
    p.add_argument("--items", type=int, default=100_000, help="(c) map items")
    p.add_argument("--sizes", default="16,256,1024", help="(f) array sizes in MiB, comma-separated")
    p.add_argument("--elements", type=int, default=10**7, help="(g) float64 elements scattered and gathered")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=120.0, help="give up waiting for results after this")
    return p.parse_args()


def sizes_mib(args: argparse.Namespace) -> list[int]:
    return [int(s) for s in args.sizes.split(",") if s.strip()]


def size_label(mib: int) -> str:
    """The (f) metric suffix of a size: 16MiB, 256MiB, 1GiB."""
    return f"{mib // 1024}GiB" if mib % 1024 == 0 else f"{mib}MiB"


def mb_per_s(nbytes: int, seconds: float) -> float:
    """Payload throughput in MB/s (10**6 bytes)."""
    return nbytes / 1e6 / seconds


def refused(system: str, scenario: str, metric: str, unit: str, reason: str) -> None:
    """A size the system refuses by design (e.g. over a message cap): a result, not a failure."""
    log(f"{metric}: refused: {reason}")
    print(json.dumps({"system": system, "scenario": scenario, "metric": metric, "value": None, "unit": unit,
                      "refused": reason[:300]}), flush=True)


def chunked_pairs(xs: list[int], ys: list[int], chunk: int) -> list[list[tuple[int, int]]]:
    """(c) batches for systems whose batch form is a task over a list of pairs."""
    return [list(zip(xs[i : i + chunk], ys[i : i + chunk])) for i in range(0, len(xs), chunk)]


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every worker: ops/bench on PYTHONPATH (benchtasks must import)."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    if HERE not in path.split(os.pathsep):
        env["PYTHONPATH"] = HERE + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


# --- processes --------------------------------------------------------------------------
def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # Fields after the ")" that closes the command name: state, ppid, ...
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first-level first)."""
    tree, out, todo = _children_of(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pids_running(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (a run's unique temp dir, say)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if text.encode() in handle.read() and alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except OSError:
        return False


def stop_pids(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM the given processes, then SIGKILL whichever is still alive after ``grace_s``."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            log(f"process {pid} did not stop in {grace_s:g}s; killing it")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Workers:
    """Processes this scenario started; stop() ends them and everything below them, by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        log("starting:", " ".join(argv))
        proc = subprocess.Popen(argv, env=env or bench_env(), stdin=subprocess.DEVNULL, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, grace_s: float = 15.0) -> None:
        # The main processes first (they stop their own children cleanly), then any leftover.
        below = {p.pid: descendants(p.pid) for p in self.procs}
        stop_pids([p.pid for p in self.procs if p.poll() is None], grace_s)
        for proc in self.procs:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        leftover = [pid for pids in below.values() for pid in pids if alive(pid)]
        if leftover:
            log("stopping leftover worker processes:", leftover)
            stop_pids(leftover, 5.0)
        # Anything else we started (e.g. a pool that re-forked) is still below us.
        rest = [pid for pid in descendants(os.getpid()) if alive(pid)]
        if rest:
            log("stopping leftover descendants:", rest)
            stop_pids(rest, 5.0)


def exit_on_sigterm() -> None:
    """The driver stops a scenario that runs too long with SIGTERM: unwind so cleanup runs."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# --- broker and store cleanup -----------------------------------------------------------------
def rabbit_delete(queues: list[str] = (), exchanges: list[str] = ()) -> None:
    """Delete queues and exchanges (missing ones are fine)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        for queue in queues:
            channel = conn.channel()
            try:
                channel.queue_delete(queue)
            except Exception as exc:  # a 404 closes only this channel
                log(f"queue_delete {queue}: {exc}")
            finally:
                if channel.is_open:
                    channel.close()
        for exchange in exchanges:
            channel = conn.channel()
            try:
                channel.exchange_delete(exchange)
            except Exception as exc:
                log(f"exchange_delete {exchange}: {exc}")
            finally:
                if channel.is_open:
                    channel.close()
    finally:
        conn.close()


def redis_delete(pattern: str) -> int:
    """Delete every Redis key matching ``pattern``; returns how many."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            removed += client.unlink(*batch)
            batch = []
    if batch:
        removed += client.unlink(*batch)
    client.close()
    return removed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
