"""Celery scenarios (run with the peers venv's python).

Worker: `celery -A celery_app worker -P prefork -c 2` on the AMQP broker with the Redis result
backend, queue NAME. Client: `add.delay(...)` and `.get()`.
"""

from __future__ import annotations

import os
import sys
import time

from common import round_trips, Workers, bench_env, emit, exit_on_sigterm, log, parse_args, rabbit_delete, redis_delete

SYSTEM = "celery"


def main() -> None:
    args = parse_args("a b c d")
    exit_on_sigterm()
    name, scenario = args.name, args.scenario
    os.environ["BENCH_NAME"] = name
    from celery_app import add, app

    workers = Workers()
    worker_argv = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "prefork",
                   "-c", str(args.workers), "-Q", name, "-n", f"{name}@%h", "--loglevel", "WARNING",
                   "--without-gossip", "--without-mingle", "--without-heartbeat"]
    try:
        # Connections and imports are made before any clock starts.
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3)
        app.backend.client.ping()

        if scenario == "d":
            t0 = time.perf_counter()
            workers.start(worker_argv, env=bench_env({"BENCH_NAME": name}))
            value = add.delay(1, 2).get(timeout=args.timeout)
            elapsed = time.perf_counter() - t0
            assert value == 3, value
            emit(SYSTEM, "d", "start_to_first_result", elapsed, "s")
            return

        workers.start(worker_argv, env=bench_env({"BENCH_NAME": name}))
        assert add.delay(0, 0).get(timeout=60) == 0

        if scenario == "a":
            for n, measured in ((200, False), (args.tasks, True)):
                t0 = time.perf_counter()
                results = [add.delay(i, i) for i in range(n)]
                values = [r.get(timeout=args.timeout) for r in results]
                elapsed = time.perf_counter() - t0
                assert values == [2 * i for i in range(n)], "wrong results"
            emit(SYSTEM, "a", "throughput", args.tasks / elapsed, "tasks/s", seconds=elapsed, n=args.tasks)

        elif scenario == "b":
            round_trips(SYSTEM, lambda: add.delay(1, 2).get(timeout=args.timeout), args.roundtrips)

        elif scenario == "c":
            chunk = 1000
            add.chunks(zip(range(1000), range(1000)), 100).apply_async().get(timeout=args.timeout)  # warm-up
            xs = list(range(args.items))
            t0 = time.perf_counter()
            parts = add.chunks(zip(xs, xs), chunk).apply_async().get(timeout=args.timeout)
            elapsed = time.perf_counter() - t0
            out = [v for part in parts for v in part]
            assert out == [2 * x for x in xs], "wrong map result"
            emit(SYSTEM, "c", "map_throughput", args.items / elapsed, "items/s", seconds=elapsed, n=args.items,
                 form=f"add.chunks(..., {chunk})")
    finally:
        workers.stop()
        try:
            rabbit_delete([name], [name])
        except Exception as exc:
            log("rabbit cleanup failed:", exc)
        try:
            log(f"removed {redis_delete(name + ':*')} Redis keys")
        except Exception as exc:
            log("redis cleanup failed:", exc)


if __name__ == "__main__":
    main()
