"""The capacity model: CPU each component spends per task, and the task rate at which each
would saturate one core, measured on a real local cluster.

Usage: ../../.venv/bin/python capacity.py [--tasks 5000] [--engines 2]

Trivial tasks are farmed twice: on the engines' shared queue (plain FIFO, the scheduler is not
in the path) and through the scheduler (LIFO). For each component (this client, the
scheduler, the engines' supervisors and children, Redis, RabbitMQ) it prints the CPU
milliseconds per task and 1000 / that: the tasks per second one core of that component can
carry. The component with the lowest figure is where a bigger deployment saturates first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

import redis

from common import Workers, bench_env, cpu_seconds, descendants, log
from sys_enginefarm import add, cleanup, client, key_file, wait_engines

from enginefarm import MapTask


def rabbit_pid() -> int:
    """The shared RabbitMQ node's Erlang VM (the one whose home is the system node's)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"beam.smp") and b"/var/lib/rabbitmq" in argv:
            return int(name)
    raise RuntimeError("the shared RabbitMQ node's process was not found")


def measure(scheme: str, tasks: int, engines: int) -> dict[str, float]:
    name = f"cap{uuid.uuid4().hex[:8]}"
    exe = os.path.join(os.path.dirname(sys.executable), "enginefarm")
    env = bench_env({"ENGINEFARM_KEY_FILE": key_file(), "ENGINEFARM_LOG_LEVEL": "WARNING"})
    workers = Workers()
    try:
        scheduler = workers.start([exe, "--log-level", "WARNING", "scheduler", "--cluster", name, "--scheme", scheme],
                                  env=env)
        supervisors = [workers.start([exe, "--log-level", "WARNING", "engine", "--cluster", name], env=env)
                       for _ in range(engines)]
        c = client(name)
        wait_engines(c, engines)
        c.barrier(c.submit_many([MapTask(add, (i, i)) for i in range(200)]), timeout=120)  # warm-up
        children = [pid for s in supervisors for pid in descendants(s.pid)]
        pids = {
            "scheduler": [scheduler.pid],
            "engine supervisors": [s.pid for s in supervisors],
            "engine children": children,
            "Redis": [int(redis.Redis().info("server")["process_id"])],
            "RabbitMQ": [rabbit_pid()],
        }
        before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        mine, t0 = time.process_time(), time.perf_counter()
        ids = c.submit_many([MapTask(add, (i, i)) for i in range(tasks)])
        c.barrier(ids, timeout=600)
        wall = time.perf_counter() - t0
        used = {k: sum(cpu_seconds(p) for p in v) - before[k] for k, v in pids.items()}
        used["client"] = time.process_time() - mine
        assert all(c.results[t] == 2 * i for i, t in enumerate(ids)), "wrong results"
        c.close()
        return {"tasks/s": tasks / wall, **{k: v / tasks * 1000 for k, v in used.items()}}
    finally:
        workers.stop()
        cleanup(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--engines", type=int, default=2)
    args = parser.parse_args()
    rows = {}
    for label, scheme in (("shared queue (fifo)", "fifo"), ("through the scheduler (lifo)", "lifo")):
        log(f"measuring {label}: {args.tasks} tasks on {args.engines} engines")
        rows[label] = measure(scheme, args.tasks, args.engines)
    components = ["client", "scheduler", "engine supervisors", "engine children", "Redis", "RabbitMQ"]
    print(f"\n{args.tasks} trivial tasks on {args.engines} engines, one run; "
          "CPU ms per task (tasks/s one core of it carries)")
    print(f"| component | {' | '.join(rows)} |")
    print("| --- |" + " --- |" * len(rows))
    for comp in components:
        cells = []
        for row in rows.values():
            ms = row[comp]
            cells.append(f"{ms:.3f} ms ({1000 / ms:,.0f}/s)" if ms > 0.0005 else "0 (not in the path)")
        print(f"| {comp} | {' | '.join(cells)} |")
    rates = " | ".join(f"{row['tasks/s']:,.0f} tasks/s" for row in rows.values())
    print(f"| measured rate | {rates} |")


if __name__ == "__main__":
    main()
