"""Dask distributed scenarios (run with the peers venv's python).

`LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`: a scheduler in this process
and two worker processes (each under its nanny) on loopback TCP, no dashboard, worker files in
a temporary directory named after the run. Dask keeps no state in RabbitMQ or Redis. At the end
the client and cluster are closed, whatever is still alive below this process is stopped by
PID, and the directory is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from common import (round_trips, alive, chunked_pairs, descendants, emit, exit_on_sigterm, log, mb_per_s, parse_args,
                    pids_running, stop_pids)

SYSTEM = "dask"
CHUNK = 10_000  # (c): items per task or bag partition


def main() -> None:
    args = parse_args("a1 b c d g")
    exit_on_sigterm()
    name, scenario = args.name, args.scenario
    work_dir = tempfile.mkdtemp(prefix=f"{name}-dask-")

    import dask.bag as db
    import numpy as np
    from dask.distributed import Client, LocalCluster

    from benchtasks import add, add_many

    def start() -> tuple[LocalCluster, Client]:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, local_directory=work_dir, silence_logs=40)
        return cluster, Client(cluster)

    cluster = client = None
    try:
        if scenario == "d":
            t0 = time.perf_counter()
            cluster, client = start()
            value = client.submit(add, 1, 2, pure=False).result(timeout=args.timeout)
            elapsed = time.perf_counter() - t0
            assert value == 3, value
            emit(SYSTEM, "d", "start_to_first_result", elapsed, "s")
            return

        cluster, client = start()
        client.wait_for_workers(args.workers, timeout=args.timeout)
        assert client.submit(add, 0, 0, pure=False).result(timeout=args.timeout) == 0

        if scenario == "a1":
            for n in (200, args.tasks):
                t0 = time.perf_counter()
                futures = [client.submit(add, i, i, pure=False) for i in range(n)]
                values = client.gather(futures)
                elapsed = time.perf_counter() - t0
                assert values == [2 * i for i in range(n)], "wrong results"
                del futures
            emit(SYSTEM, "a1", "throughput", args.tasks / elapsed, "tasks/s", seconds=elapsed, n=args.tasks)

        elif scenario == "b":
            def call() -> int:
                return client.submit(add, 1, 2, pure=False).result(timeout=args.timeout)

            round_trips(SYSTEM, call, args.roundtrips)

        elif scenario == "c":
            def bag(xs: list[int]) -> list[int]:
                return db.from_sequence(list(zip(xs, xs)), partition_size=CHUNK).starmap(add).compute()

            def chunks(xs: list[int]) -> list[int]:
                futures = client.map(add_many, chunked_pairs(xs, xs, CHUNK), pure=False)
                return [v for part in client.gather(futures) for v in part]

            for form, run in (("bag", bag), ("client", chunks)):
                run(list(range(1000)))  # warm-up
                xs = list(range(args.items))
                t0 = time.perf_counter()
                out = run(xs)
                elapsed = time.perf_counter() - t0
                assert out == [2 * x for x in xs], "wrong map result"
                emit(SYSTEM, "c", f"map_{form}", args.items / elapsed, "items/s", seconds=elapsed, n=args.items)

        elif scenario == "g":
            workers = sorted(client.scheduler_info()["workers"])[: args.workers]
            for part, worker in zip(np.array_split(np.ones(1 << 16), len(workers)), workers):  # warm-up
                client.gather(client.scatter(part, workers=[worker]))
            arr = np.arange(args.elements, dtype=np.float64)
            t0 = time.perf_counter()
            futures = [client.scatter(part, workers=[worker], hash=False)
                       for part, worker in zip(np.array_split(arr, len(workers)), workers)]
            scatter_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = np.concatenate(client.gather(futures))
            gather_s = time.perf_counter() - t0
            assert np.array_equal(back, arr), "gather returned other data"
            emit(SYSTEM, "g", "scatter", mb_per_s(arr.nbytes, scatter_s), "MB/s", seconds=scatter_s)
            emit(SYSTEM, "g", "gather", mb_per_s(arr.nbytes, gather_s), "MB/s", seconds=gather_s)
            emit(SYSTEM, "g", "round", mb_per_s(2 * arr.nbytes, scatter_s + gather_s), "MB/s",
                 seconds=scatter_s + gather_s)
    finally:
        started = descendants(os.getpid())  # nannies, workers, multiprocessing's helpers
        for closing in (client, cluster):
            if closing is not None:
                try:
                    closing.close()
                except Exception as exc:
                    log("close failed:", exc)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(alive(p) for p in started):
            time.sleep(0.1)
        rest = [p for p in set(started + descendants(os.getpid())) if alive(p)]
        # multiprocessing's resource tracker ignores SIGTERM by design (it would end with this
        # process); with the workers gone it tracks nothing, so it gets no grace period.
        tracker = pids_running("multiprocessing.resource_tracker")
        if rest:
            log("stopping leftover Dask processes:", rest)
            stop_pids([p for p in rest if p in tracker], 0.0)
            stop_pids([p for p in rest if p not in tracker], 5.0)
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
