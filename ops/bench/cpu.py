"""Where the CPU of scenario (a) goes: CPU time per task of every process involved.

    ../../.venv/bin/python cpu.py [--tasks 20000]

Starts `enginefarm cluster -n 2`, farms batches of 5,000 `add` tasks as scenario (a) does
until --tasks have run, and prints the user + system CPU time each process spent per task
(from /proc/<pid>/stat): this client, the engine supervisors, their child processes, the
scheduler, RabbitMQ and Redis. With two cores, 2 s of CPU per second is the ceiling: the total
says how many tasks/s the machine can give at most with this split.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

from common import Workers, cpu_seconds, descendants

import sys_enginefarm as ef


def pids_of(command: str) -> list[int]:
    found = subprocess.run(["pgrep", "-x", command], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=20000, help="tasks to farm after the warm-up")
    total = p.parse_args().tasks
    name = f"bench_cpu_{int(time.time())}"
    workers = Workers()
    try:
        ef.start_cluster(workers, name, 2)
        c = ef.client(name)
        ids = ef.wait_engines(c, 2)
        ef.farm(c, 1000, 120)  # warm-up
        info = c.registry.info()
        supervisors = [info[i]["pid"] for i in ids]
        children = [p for s in supervisors for p in descendants(s)]
        cluster_cmd = workers.procs[0].pid
        scheduler = [p for p in descendants(cluster_cmd) if p not in supervisors and p not in children]
        groups = {
            "client (submit, collect results)": [os.getpid()],
            "2 engine supervisors": supervisors,
            "2 engine child processes": children,
            "scheduler and cluster command": [cluster_cmd, *scheduler],
            "RabbitMQ": pids_of("beam.smp"),
            "Redis": pids_of("redis-server"),
        }
        before = {label: sum(cpu_seconds(p) for p in pids) for label, pids in groups.items()}
        t0 = time.perf_counter()
        done = 0
        while done < total:
            ef.farm(c, 5000, 300)
            done += 5000
        elapsed = time.perf_counter() - t0
        after = {label: sum(cpu_seconds(p) for p in pids) for label, pids in groups.items()}
    finally:
        workers.stop()
        ef.cleanup(name)
    print(f"{done:,} tasks in {elapsed:.2f} s: {done / elapsed:,.0f} tasks/s")
    print(f"{'process':36} {'CPU per task':>14}")
    spent = 0.0
    for label in groups:
        per_task = (after[label] - before[label]) / done * 1e6
        spent += per_task
        print(f"{label:36} {per_task:11.0f} µs")
    print(f"{'total':36} {spent:11.0f} µs: two cores are full at about {2e6 / spent:,.0f} tasks/s")


if __name__ == "__main__":
    main()
