"""ipyparallel scenarios (run with the peers venv's python).

`ipp.Cluster(n=2)`: a controller and two engines on loopback ZMQ (ipyparallel has no RabbitMQ or
Redis path); the client uses a LoadBalancedView. IPYTHONDIR is a temporary directory, removed
after the run, so the profile, connection files and logs leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from common import alive, descendants, emit, exit_on_sigterm, log, parse_args, percentile, stop_pids

SYSTEM = "ipyparallel"


def main() -> None:
    args = parse_args("abcd")
    exit_on_sigterm()
    name, scenario = args.name, args.scenario
    ipython_dir = tempfile.mkdtemp(prefix=f"{name}-ipython-")
    os.environ["IPYTHONDIR"] = ipython_dir
    import ipyparallel as ipp

    from benchtasks import add

    cluster = ipp.Cluster(n=args.workers, cluster_id=name, log_level=40)
    rc = None
    try:
        if scenario == "d":
            t0 = time.perf_counter()
            cluster.start_controller_sync()
            cluster.start_engines_sync(n=args.workers)
            rc = cluster.connect_client_sync()
            rc.wait_for_engines(1, timeout=args.timeout)
            value = rc.load_balanced_view().apply_sync(add, 1, 2)
            elapsed = time.perf_counter() - t0
            assert value == 3, value
            emit(SYSTEM, "d", "start_to_first_result", elapsed, "s")
            return

        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(args.workers, timeout=args.timeout)
        lview = rc.load_balanced_view()
        assert lview.apply_sync(add, 0, 0) == 0

        if scenario == "a":
            for n in (200, args.tasks):
                xs = list(range(n))
                t0 = time.perf_counter()
                values = lview.map(add, xs, xs, chunksize=1, block=True)
                elapsed = time.perf_counter() - t0
                assert list(values) == [2 * i for i in xs], "wrong results"
            emit(SYSTEM, "a", "throughput", args.tasks / elapsed, "tasks/s", seconds=elapsed, n=args.tasks)

        elif scenario == "b":
            dview = rc[rc.ids[0]]
            for label, call in (("lb", lambda: lview.apply_sync(add, 1, 2)),
                                ("direct", lambda: dview.apply_sync(add, 1, 2))):
                for _ in range(20):
                    call()
                times = []
                for _ in range(args.roundtrips):
                    t0 = time.perf_counter()
                    value = call()
                    times.append(time.perf_counter() - t0)
                    assert value == 3, value
                emit(SYSTEM, "b", f"p50_{label}", percentile(times, 50) * 1000, "ms")
                emit(SYSTEM, "b", f"p99_{label}", percentile(times, 99) * 1000, "ms")

        elif scenario == "c":
            lview.map(add, range(1000), range(1000), chunksize=100, block=True)  # warm-up
            xs = list(range(args.items))
            t0 = time.perf_counter()
            out = lview.map(add, xs, xs, chunksize=1000, block=True)
            elapsed = time.perf_counter() - t0
            assert list(out) == [2 * x for x in xs], "wrong map result"
            emit(SYSTEM, "c", "map_throughput", args.items / elapsed, "items/s", seconds=elapsed, n=args.items,
                 form="lview.map(..., chunksize=1000)")
    finally:
        if rc is not None:
            try:
                rc.close()
            except Exception:
                pass
        started = descendants(os.getpid())  # controller, engines and the engines' nannies
        try:
            cluster.stop_cluster_sync()
        except Exception as exc:
            log("stop_cluster failed:", exc)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(alive(p) for p in started):
            time.sleep(0.1)
        rest = [p for p in set(started + descendants(os.getpid())) if alive(p)]
        if rest:
            log("stopping leftover ipyparallel processes:", rest)
            stop_pids(rest, 5.0)
        shutil.rmtree(ipython_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
