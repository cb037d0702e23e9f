"""Dramatiq scenarios (run with the peers venv's python).

Worker: `dramatiq dramatiq_app --processes 2 --threads 1 --queues NAME` with RabbitmqBroker and
the Results middleware on Redis. Client: `add.send(...)` then `message.get_result(block=True)`.
"""

from __future__ import annotations

import os
import sys
import time

from common import round_trips, Workers, bench_env, emit, exit_on_sigterm, log, parse_args, rabbit_delete, redis_delete

SYSTEM = "dramatiq"


def main() -> None:
    args = parse_args("a a1 b c d")
    exit_on_sigterm()
    name, scenario = args.name, args.scenario
    os.environ["BENCH_NAME"] = name
    from dramatiq import group

    from dramatiq_app import add, add_many, backend, broker

    timeout_ms = int(args.timeout * 1000)
    workers = Workers()
    worker_argv = [sys.executable, "-m", "dramatiq", "dramatiq_app", "--processes", str(args.workers),
                   "--threads", "1", "--queues", name, "--worker-shutdown-timeout", "5000"]
    try:
        # Connections are open and the queues declared before any clock starts.
        broker.declare_queue(name)
        broker.channel  # noqa: B018  (opens the connection)
        backend.client.ping()

        if scenario == "d":
            t0 = time.perf_counter()
            workers.start(worker_argv, env=bench_env({"BENCH_NAME": name}))
            value = add.send(1, 2).get_result(block=True, timeout=timeout_ms)
            elapsed = time.perf_counter() - t0
            assert value == 3, value
            emit(SYSTEM, "d", "start_to_first_result", elapsed, "s")
            return

        workers.start(worker_argv, env=bench_env({"BENCH_NAME": name}))
        assert add.send(0, 0).get_result(block=True, timeout=60_000) == 0

        if scenario in ("a", "a1"):  # Dramatiq's batch form is its send loop: (a) and (a') alike
            for n in (200, args.tasks):
                t0 = time.perf_counter()
                messages = [add.send(i, i) for i in range(n)]
                values = [m.get_result(block=True, timeout=timeout_ms) for m in messages]
                elapsed = time.perf_counter() - t0
                assert values == [2 * i for i in range(n)], "wrong results"
            emit(SYSTEM, scenario, "throughput", args.tasks / elapsed, "tasks/s", seconds=elapsed, n=args.tasks)

        elif scenario == "b":
            round_trips(SYSTEM, lambda: add.send(1, 2).get_result(block=True, timeout=timeout_ms), args.roundtrips)

        elif scenario == "c":
            chunk = 1000

            def run(xs: list[int]) -> list[int]:
                batches = [[(x, x) for x in xs[i : i + chunk]] for i in range(0, len(xs), chunk)]
                g = group([add_many.message(b) for b in batches]).run()
                return [v for part in g.get_results(block=True, timeout=timeout_ms) for v in part]

            run(list(range(1000)))  # warm-up
            xs = list(range(args.items))
            t0 = time.perf_counter()
            out = run(xs)
            elapsed = time.perf_counter() - t0
            assert out == [2 * x for x in xs], "wrong map result"
            emit(SYSTEM, "c", "map_throughput", args.items / elapsed, "items/s", seconds=elapsed, n=args.items,
                 form=f"group of add_many batches of {chunk}")
    finally:
        workers.stop()
        try:
            broker.close()
        except Exception:
            pass
        try:
            rabbit_delete([name, f"{name}.DQ", f"{name}.XQ"])
        except Exception as exc:
            log("rabbit cleanup failed:", exc)
        try:
            log(f"removed {redis_delete(name + ':*')} Redis keys")
        except Exception as exc:
            log("redis cleanup failed:", exc)


if __name__ == "__main__":
    main()
