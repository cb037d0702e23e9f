"""The scheduler's cost per dispatch as the number of engines grows.

    ../../.venv/bin/python dispatch.py [--engines 10,50,100] [--tasks 3000] [--scheme lifo]

For each N: starts one scheduler (`enginefarm scheduler --scheme lifo`: clients then send every
load-balanced task through it, none by the engines' shared queue) and N engine daemons, waits
until all N are live, warms up, then submits --tasks `add` tasks at once and waits for every
result. Prints the scheduler process's CPU time per dispatched task (user + system, from
/proc/<pid>/stat, before and after) and the dispatches per second, one line per N. Before the
first N it prints the RSS of one idle engine (supervisor plus child) and the memory available,
and with each N the CPU its idle engines draw; it skips an N whose engines would not fit in the
memory available, or whose idle engines alone would draw more than --max-idle-cores (it says so:
a machine that the idle engines saturate measures its own starvation, not the scheduler).

Everything runs against the shared RabbitMQ and Redis under a unique cluster name; the
processes started are stopped by PID and the cluster's queues and keys removed, also on error.
With --private-broker it runs against a RabbitMQ node of its own instead (started with every
file descriptor the hard limit allows, removed afterwards): each engine holds 3 AMQP
connections, and 200 engines need more descriptors than a stock node's 1,024.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from common import (AMQP_URL, REDIS_URL, Workers, bench_env, cpu_seconds, descendants, exit_on_sigterm, log,
                    rss_kb)

import sys_enginefarm as ef

from benchtasks import add
from enginefarm import Client, MapTask

# What else must fit beside the engines (RabbitMQ, Redis, other people's work): kept free.
RESERVE_MB = 4096


def available_mb() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def daemon_env(name: str) -> dict[str, str]:
    return bench_env({"ENGINEFARM_KEY_FILE": ef.key_file(), "ENGINEFARM_CLUSTER": name,
                      "ENGINEFARM_AMQP_URL": AMQP_URL, "ENGINEFARM_REDIS_URL": REDIS_URL,
                      "ENGINEFARM_LOG_LEVEL": "WARNING"})


def exe() -> str:
    return os.path.join(os.path.dirname(sys.executable), "enginefarm")


def start_engines(workers: Workers, name: str, count: int, c: Client, timeout_s: float) -> list[int]:
    """``count`` more engine daemons, a few at a time (each import costs a core for a while)."""
    have = len(c.ids)
    for n in range(count):
        workers.start([exe(), "--log-level", "WARNING", "engine"], env=daemon_env(name), stdout=subprocess.DEVNULL)
        if n % 10 == 9:
            ef.wait_engines(c, have + n + 1 - 10, timeout_s)
    return ef.wait_engines(c, have + count, timeout_s)


def idle_engine_kb(c: Client) -> tuple[int, int]:
    """RSS of one idle engine's supervisor, and of its supervisor plus child, in KiB."""
    supervisor = c.registry.info()[c.ids[0]]["pid"]
    return rss_kb(supervisor), rss_kb(supervisor) + sum(rss_kb(p) for p in descendants(supervisor))


def engine_pids(c: Client) -> list[int]:
    supervisors = [int(info["pid"]) for info in c.registry.info().values()]
    return [*supervisors, *(p for s in supervisors for p in descendants(s))]


def idle_cores(c: Client, seconds: float = 5.0) -> float:
    """CPU the idle engines draw, in cores (supervisors and children, over ``seconds``)."""
    pids = engine_pids(c)
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(seconds)  # the quantity measured is a rate over this interval
    return (sum(cpu_seconds(p) for p in pids) - before) / seconds


def start_profile(pid: int, path: str) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` into ``path`` (collapsed stacks) until it is sent SIGINT."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen([spy, "record", "-p", str(pid), "-f", "raw", "-r", "200", "--nonblocking", "-o", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(c: Client, scheduler_pid: int, tasks: int, timeout_s: float, profile: str | None = None) -> dict[str, float]:
    ef.farm(c, 500, timeout_s)  # warm-up: the scheduler's and engines' code paths and connections
    spy = start_profile(scheduler_pid, profile) if profile else None
    cpu0, t0 = cpu_seconds(scheduler_pid), time.perf_counter()
    ids = c.submit_many([MapTask(add, (i, i)) for i in range(tasks)])
    c.barrier(ids, timeout=timeout_s)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(scheduler_pid) - cpu0
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        spy.wait(60)
    bad = [i for i, t in enumerate(ids) if c.results[t] != 2 * i]
    if bad:
        raise RuntimeError(f"{len(bad)} wrong results")
    return {"cpu_us_per_dispatch": cpu / tasks * 1e6, "dispatches_per_s": tasks / elapsed, "seconds": elapsed,
            "scheduler_cpu_s": cpu}


def profile_path(directory: str | None, engines: int) -> str | None:
    if directory is None:
        return None
    os.makedirs(directory, exist_ok=True)
    return os.path.join(os.path.abspath(directory), f"scheduler-{engines}.txt")


def with_private_broker(argv: list[str]) -> int:
    """This benchmark run again, against a RabbitMQ node of its own; its exit code."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    from tests.servers import PrivateRabbit  # the one place that knows how to run a private node

    base = tempfile.mkdtemp(prefix="enginefarm-bench-rabbit-")
    node = PrivateRabbit(base)
    try:
        node.start()
        log(f"private RabbitMQ node {node.node} on port {node.port}")
        rest = [a for a in argv if a != "--private-broker"]
        return subprocess.call([sys.executable, os.path.abspath(__file__), *rest],
                               env={**os.environ, "BENCH_AMQP_URL": node.url})
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Each engine holds 3 AMQP connections: a node left at 1,024 descriptors (as the shared one
    # here) runs out, and breaks, as 200 engines start. Ask for 200 only of a broker sized for it.
    p.add_argument("--engines", default="10,50,100", help="engine counts, comma-separated, ascending")
    p.add_argument("--tasks", type=int, default=3000, help="tasks per measurement, after a 500-task warm-up")
    p.add_argument("--scheme", default="lifo", help="a scheme that routes through the scheduler")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--max-idle-cores", type=float, default=1.0,
                   help="skip an N whose idle engines would draw more CPU than this (estimated)")
    p.add_argument("--profile", metavar="DIR",
                   help="sample the scheduler with py-spy while it dispatches: DIR/scheduler-<N>.txt, collapsed stacks")
    p.add_argument("--private-broker", action="store_true",
                   help="run against a RabbitMQ node of its own, with a descriptor limit fit for 200 engines")
    args = p.parse_args()
    if args.private_broker:
        sys.exit(with_private_broker(sys.argv[1:]))
    counts = sorted(int(n) for n in args.engines.split(","))
    exit_on_sigterm()
    name = f"bench_dispatch_{int(time.time())}"
    workers = Workers()
    rows = []
    try:
        scheduler = workers.start([exe(), "--log-level", "WARNING", "scheduler", "--scheme", args.scheme],
                                  env=daemon_env(name), stdout=subprocess.DEVNULL)
        c = Client(cluster=name, amqp_url=AMQP_URL, redis_url=REDIS_URL)
        running, per_engine_cores = 0, 0.0
        for n in counts:
            if running == 0:
                start_engines(workers, name, 1, c, args.timeout)
                running = 1
                time.sleep(2)  # idle for a moment, as (e) measures it
                supervisor_kb, engine_kb = idle_engine_kb(c)
                free = available_mb()
                log(f"idle engine: supervisor {supervisor_kb / 1024:.1f} MB, with its child {engine_kb / 1024:.1f} MB;"
                    f" available {free} MB")
                print(json.dumps({"idle_engine_rss_mb": engine_kb / 1024, "supervisor_rss_mb": supervisor_kb / 1024,
                                  "available_mb": free}), flush=True)
            need_mb = (n - running) * engine_kb / 1024
            if need_mb > available_mb() - RESERVE_MB:
                print(json.dumps({"engines": n, "skipped": f"{n - running} more engines need ~{need_mb:.0f} MB, "
                                  f"{available_mb()} MB available, {RESERVE_MB} MB kept free"}), flush=True)
                continue
            if running > 1 and n * per_engine_cores > args.max_idle_cores:
                print(json.dumps({"engines": n, "skipped": f"{n} idle engines would draw ~{n * per_engine_cores:.2f} "
                                  f"cores ({per_engine_cores * 100:.2f}% each, measured with {running}), "
                                  f"over --max-idle-cores {args.max_idle_cores:g}"}), flush=True)
                continue
            start_engines(workers, name, n - running, c, args.timeout)
            running = n
            time.sleep(2)  # let the engines' start-up CPU settle
            idle = idle_cores(c)
            per_engine_cores = idle / n
            row = {"engines": n, "idle_engines_cores": idle, **measure(c, scheduler.pid, args.tasks, args.timeout,
                                                                    profile_path(args.profile, n))}
            rows.append(row)
            print(json.dumps(row), flush=True)
        c.close()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second request to stop must not skip the cleanup
        workers.stop()
        ef.cleanup(name, max(counts))
    print(f"{'engines':>8} {'scheduler CPU per dispatch':>28} {'dispatches/s':>13} {'idle engines, cores':>20}")
    for row in rows:
        print(f"{row['engines']:>8} {row['cpu_us_per_dispatch']:>25.0f} µs {row['dispatches_per_s']:>13.0f}"
              f" {row['idle_engines_cores']:>20.2f}")


if __name__ == "__main__":
    main()
