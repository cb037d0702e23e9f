"""What waiting for a replica costs: the same farming load against a Redis Sentinel deployment
with ``redis_min_replicas=1`` (every record transition waits for a replica, WAIT) and ``=0``.

    ../../.venv/bin/python sentinel_wait.py [--tasks 3000 --roundtrips 300 --reps 2]
                                            [--redis-url redis+sentinel://h:p,h:p/service]

Without ``--redis-url`` it starts a private deployment (a primary, 2 replicas, 3 sentinels on
free loopback ports, tests/sentinel.py) and stops it by PID at the end. Each repetition starts
`enginefarm cluster -n 2` with one setting, warms up, then measures (a) ``--tasks`` add tasks
submitted at once, tasks/s from first submit to last result, and (b) ``--roundtrips`` sequential
submit-then-result calls, p50 and p99. Repetitions alternate between the settings. Prints JSON
lines (as the other modules) and then a table with the ratios; the RabbitMQ is the shared one.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

from common import (AMQP_URL, alive, bench_env, descendants, emit, exit_on_sigterm, log, percentile, rabbit_delete,
                    stop_pids)

from benchtasks import add
from enginefarm import Client, MapTask
from enginefarm.names import Names
from enginefarm.store import connect

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from tests.sentinel import SentinelRedis  # noqa: E402  (the repository's own test deployment)

from sys_enginefarm import key_file, wait_engines  # noqa: E402

SYSTEM = "enginefarm-sentinel"


def measure(url: str, replicas: int, rep: int, args: argparse.Namespace) -> dict[str, float]:
    name = f"bench_wait{replicas}_{rep}_{os.getpid()}"
    env = {"ENGINEFARM_REDIS_URL": url, "ENGINEFARM_REDIS_MIN_REPLICAS": str(replicas),
           "ENGINEFARM_AMQP_URL": AMQP_URL, "ENGINEFARM_KEY_FILE": key_file()}
    exe = os.path.join(os.path.dirname(sys.executable), "enginefarm")
    # Not common.Workers: its stop() ends every process below this one, the Redis servers too.
    cluster = subprocess.Popen([exe, "--log-level", "WARNING", "cluster", "-n", "2", "--cluster", name],
                               env=bench_env(env), stdin=subprocess.DEVNULL)
    try:
        with Client(cluster=name, redis_url=url, amqp_url=AMQP_URL, redis_min_replicas=replicas) as c:
            wait_engines(c, 2)
            c.barrier(c.submit_many([MapTask(add, (i, i)) for i in range(200)]), timeout=args.timeout)
            t0 = time.perf_counter()
            ids = c.submit_many([MapTask(add, (i, i)) for i in range(args.tasks)])
            try:
                c.barrier(ids, timeout=args.timeout)
            except Exception:
                log("statuses when it gave up:", collections.Counter(c.records.statuses(ids)))
                raise
            rate = args.tasks / (time.perf_counter() - t0)
            assert [c.results[t] for t in ids] == [2 * i for i in range(args.tasks)], "wrong results"
            for _ in range(20):
                c.get_task_result(c.submit(MapTask(add, (1, 2))), block=True, timeout=args.timeout)
            times = []
            for _ in range(args.roundtrips):
                t0 = time.perf_counter()
                value = c.get_task_result(c.submit(MapTask(add, (1, 2))), block=True, timeout=args.timeout).result
                times.append(time.perf_counter() - t0)
                assert value == 3, value
        out = {"tasks_per_s": rate, "p50_ms": percentile(times, 50) * 1000, "p99_ms": percentile(times, 99) * 1000}
        for metric, value in out.items():
            emit(SYSTEM, "wait", f"{metric}_min_replicas_{replicas}", value,
                 "tasks/s" if metric == "tasks_per_s" else "ms", rep=rep)
        return out
    finally:
        below = descendants(cluster.pid)
        stop_pids([cluster.pid], 15.0)
        cluster.wait()
        stop_pids([pid for pid in below if alive(pid)], 5.0)
        cleanup(name, url)


def cleanup(name: str, url: str) -> None:
    names = Names(name)
    queues = [*names.fixed_queues(), *(q for i in range(8) for q in (names.engine_queue(i), names.control_queue(i)))]
    try:
        rabbit_delete(queues, list(names.exchanges()))
    except Exception as exc:
        log("rabbit cleanup failed:", exc)
    redis = connect(url)
    keys = list(redis.scan_iter(match=names.pattern, count=1000))
    if keys:
        redis.unlink(*keys)
    redis.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=3000)
    p.add_argument("--roundtrips", type=int, default=300)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--redis-url", default="", help="a running Sentinel deployment (default: start one)")
    args = p.parse_args()
    exit_on_sigterm()
    deployment = None
    url = args.redis_url
    if not url:
        deployment = SentinelRedis(tempfile.mkdtemp(prefix="bench-sentinel-"))
        deployment.start()
        url = deployment.url
    results: dict[int, list[dict[str, float]]] = {1: [], 0: []}
    try:
        for rep in range(args.reps):
            for replicas in ((1, 0) if rep % 2 == 0 else (0, 1)):
                log(f"rep {rep + 1}: min_replicas={replicas}")
                results[replicas].append(measure(url, replicas, rep, args))
    finally:
        if deployment is not None:
            deployment.stop()
    best = {r: {m: (max if m == "tasks_per_s" else min)(x[m] for x in runs) for m in runs[0]}
            for r, runs in results.items()}
    print(f"{'best of ' + str(args.reps):<22} {'tasks/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for replicas in (0, 1):
        b = best[replicas]
        print(f"min_replicas={replicas:<9} {b['tasks_per_s']:9.0f} {b['p50_ms']:8.2f} {b['p99_ms']:8.2f}")
    print(f"{'ratio 1 / 0':<22} {best[1]['tasks_per_s'] / best[0]['tasks_per_s']:9.2f} "
          f"{best[1]['p50_ms'] / best[0]['p50_ms']:8.2f} {best[1]['p99_ms'] / best[0]['p99_ms']:8.2f}")


if __name__ == "__main__":
    main()
