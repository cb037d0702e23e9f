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

from common import (round_trips, alive, descendants, emit, exit_on_sigterm, log, mb_per_s, parse_args, size_label,
                    sizes_mib, stop_pids)

SYSTEM = "ipyparallel"


def timed(move) -> tuple[object, float]:
    t0 = time.perf_counter()
    value = move()
    return value, time.perf_counter() - t0


def push_pull(dview, sizes: list[int]) -> None:
    """(f): push an array to both engines, then pull one made on each, per size (as enginefarm)."""
    import numpy as np

    engines = len(dview.targets)
    dview.block = True
    dview.execute("import numpy as np")
    dview.push({"w": np.ones(1 << 17)})  # warm-up: 1 MiB each way
    dview.pull("w")
    for mib in sizes:
        n = mib * (1 << 20) // 8
        arr = np.arange(n, dtype=np.float64)
        _, seconds = timed(lambda: dview.push({"a": arr}))
        emit(SYSTEM, "f", f"push_{size_label(mib)}", mb_per_s(engines * arr.nbytes, seconds), "MB/s", seconds=seconds)
        dview.execute("a_n, a_last = int(a.size), float(a[-1])")
        assert dview.pull("a_n") == [n] * engines and dview.pull("a_last") == [n - 1.0] * engines, "bad push"
        del arr
        dview.execute(f"a = None; b = np.arange({n}, dtype=np.float64)")
        parts, seconds = timed(lambda: dview.pull("b"))
        emit(SYSTEM, "f", f"pull_{size_label(mib)}", mb_per_s(engines * n * 8, seconds), "MB/s", seconds=seconds)
        assert [(p.size, p[-1]) for p in parts] == [(n, n - 1.0)] * engines, "bad pull"
        del parts
        dview.execute("b = None")


def scatter_gather(dview, elements: int) -> None:
    """(g): scatter a float64 array over both engines, then gather it back (as enginefarm)."""
    import numpy as np

    dview.block = True
    dview.scatter("w", np.arange(1 << 16, dtype=np.float64))  # warm-up
    dview.gather("w")
    arr = np.arange(elements, dtype=np.float64)
    _, scatter_s = timed(lambda: dview.scatter("x", arr))
    back, gather_s = timed(lambda: dview.gather("x"))
    assert np.array_equal(back, arr), "gather returned other data"
    emit(SYSTEM, "g", "scatter", mb_per_s(arr.nbytes, scatter_s), "MB/s", seconds=scatter_s)
    emit(SYSTEM, "g", "gather", mb_per_s(arr.nbytes, gather_s), "MB/s", seconds=gather_s)
    emit(SYSTEM, "g", "round", mb_per_s(2 * arr.nbytes, scatter_s + gather_s), "MB/s", seconds=scatter_s + gather_s)


def main() -> None:
    args = parse_args("a a1 b c d f g")
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
                round_trips(SYSTEM, call, args.roundtrips, label)

        elif scenario == "a1":
            for n in (200, args.tasks):
                t0 = time.perf_counter()
                ars = [lview.apply_async(add, i, i) for i in range(n)]
                values = [ar.get(timeout=args.timeout) for ar in ars]
                elapsed = time.perf_counter() - t0
                assert values == [2 * i for i in range(n)], "wrong results"
            emit(SYSTEM, "a1", "throughput", args.tasks / elapsed, "tasks/s", seconds=elapsed, n=args.tasks)

        elif scenario == "c":
            dview = rc[rc.ids[: args.workers]]
            forms = (("lview", lambda xs: lview.map(add, xs, xs, chunksize=10_000, block=True)),
                     ("dv", lambda xs: dview.map_sync(add, xs, xs)))
            for form, run in forms:
                run(list(range(1000)))  # warm-up
                xs = list(range(args.items))
                t0 = time.perf_counter()
                out = run(xs)
                elapsed = time.perf_counter() - t0
                assert list(out) == [2 * x for x in xs], "wrong map result"
                emit(SYSTEM, "c", f"map_{form}", args.items / elapsed, "items/s", seconds=elapsed, n=args.items)

        elif scenario == "f":
            push_pull(rc[rc.ids[: args.workers]], sizes_mib(args))

        elif scenario == "g":
            scatter_gather(rc[rc.ids[: args.workers]], args.elements)
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
