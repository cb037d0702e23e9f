"""Ray scenarios (run with the peers venv's python).

`ray.init(num_cpus=2)`: a local Ray head (GCS, raylet, its worker processes) started by this
process with its own temporary directory (named after the run), no dashboard and no usage
statistics; `ray.shutdown()` at the end, then whatever is still alive below this process or
carries the temporary directory on its command line is stopped by PID, and the directory is
removed. Ray keeps no state in RabbitMQ or Redis. Ray needs a few seconds to start on 2 cores:
it is started once per measurement, before the clock, except in (d), which times the start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from common import (round_trips, alive, chunked_pairs, descendants, emit, exit_on_sigterm, log, mb_per_s, parse_args,
                    pids_running, size_label, sizes_mib, stop_pids)

SYSTEM = "ray"
CHUNK = 10_000  # (c): items per remote call


def start(temp_dir: str, workers: int) -> None:
    import ray

    ray.init(num_cpus=workers, _temp_dir=temp_dir, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False, configure_logging=True)


def main() -> None:
    args = parse_args("a1 b c d f g")
    exit_on_sigterm()
    name, scenario = args.name, args.scenario
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Unix socket paths must stay short: a short directory under /tmp, named after the run.
    temp_dir = tempfile.mkdtemp(prefix=f"ray-{name[-12:]}-", dir="/tmp")
    import numpy as np
    import ray

    import benchtasks

    add = ray.remote(benchtasks.add)
    add_many = ray.remote(benchtasks.add_many)

    @ray.remote(num_cpus=1)
    class Holder:
        """One per CPU: the Ray counterpart of an engine's namespace, for (f) and (g)."""

        def put(self, a: np.ndarray) -> tuple[int, float]:
            self.a = a
            return int(a.size), float(a[-1])

        def make(self, low: int, high: int) -> int:
            self.b = np.arange(low, high, dtype=np.float64)
            return high - low

        def get(self, which: str) -> np.ndarray:
            return getattr(self, which)

        def drop(self) -> None:
            self.a = self.b = None

    try:
        if scenario == "d":
            t0 = time.perf_counter()
            start(temp_dir, args.workers)
            value = ray.get(add.remote(1, 2), timeout=args.timeout)
            elapsed = time.perf_counter() - t0
            assert value == 3, value
            emit(SYSTEM, "d", "start_to_first_result", elapsed, "s")
            return

        start(temp_dir, args.workers)
        assert ray.get(add.remote(0, 0), timeout=args.timeout) == 0

        if scenario == "a1":
            for n in (200, args.tasks):
                t0 = time.perf_counter()
                refs = [add.remote(i, i) for i in range(n)]
                values = ray.get(refs, timeout=args.timeout)
                elapsed = time.perf_counter() - t0
                assert values == [2 * i for i in range(n)], "wrong results"
            emit(SYSTEM, "a1", "throughput", args.tasks / elapsed, "tasks/s", seconds=elapsed, n=args.tasks)

        elif scenario == "b":
            round_trips(SYSTEM, lambda: ray.get(add.remote(1, 2), timeout=args.timeout), args.roundtrips)

        elif scenario == "c":
            def run(xs: list[int]) -> list[int]:
                parts = ray.get([add_many.remote(b) for b in chunked_pairs(xs, xs, CHUNK)], timeout=args.timeout)
                return [v for part in parts for v in part]

            run(list(range(2 * CHUNK)))  # warm-up
            xs = list(range(args.items))
            t0 = time.perf_counter()
            out = run(xs)
            elapsed = time.perf_counter() - t0
            assert out == [2 * x for x in xs], "wrong map result"
            emit(SYSTEM, "c", "map_remote", args.items / elapsed, "items/s", seconds=elapsed, n=args.items,
                 form=f"add_many.remote over chunks of {CHUNK}")

        elif scenario in ("f", "g"):
            holders = [Holder.remote() for _ in range(args.workers)]
            ray.get([h.drop.remote() for h in holders])
            warm = ray.put(np.ones(1 << 17))  # warm-up: 1 MiB each way
            ray.get([h.put.remote(warm) for h in holders])
            ray.get([h.get.remote("a") for h in holders])
            del warm
            if scenario == "f":
                push_pull(ray, holders, sizes_mib(args))
            else:
                scatter_gather(ray, holders, args.elements)
    finally:
        started = descendants(os.getpid())  # GCS, raylet, its workers and agents
        try:
            ray.shutdown()
        except Exception as exc:
            log("ray.shutdown failed:", exc)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(alive(p) for p in started):
            time.sleep(0.1)
        rest = [p for p in set(started + descendants(os.getpid()) + pids_running(temp_dir)) if alive(p)]
        if rest:
            log("stopping leftover Ray processes:", rest)
            stop_pids(rest, 5.0)
        shutil.rmtree(temp_dir, ignore_errors=True)


def push_pull(ray, holders: list, sizes: list[int]) -> None:
    """(f): ray.put an array and hand it to each actor; then get one each actor made, per size."""
    import numpy as np

    engines = len(holders)
    for mib in sizes:
        n = mib * (1 << 20) // 8
        arr = np.arange(n, dtype=np.float64)
        t0 = time.perf_counter()
        ref = ray.put(arr)
        seen = ray.get([h.put.remote(ref) for h in holders])
        seconds = time.perf_counter() - t0
        emit(SYSTEM, "f", f"push_{size_label(mib)}", mb_per_s(engines * arr.nbytes, seconds), "MB/s", seconds=seconds)
        assert seen == [(n, n - 1.0)] * engines, "bad push"
        del arr, ref
        ray.get([h.drop.remote() for h in holders])
        ray.get([h.make.remote(0, n) for h in holders])
        t0 = time.perf_counter()
        parts = ray.get([h.get.remote("b") for h in holders])
        seconds = time.perf_counter() - t0
        emit(SYSTEM, "f", f"pull_{size_label(mib)}", mb_per_s(engines * n * 8, seconds), "MB/s", seconds=seconds)
        assert [(p.size, p[-1]) for p in parts] == [(n, n - 1.0)] * engines, "bad pull"
        del parts
        ray.get([h.drop.remote() for h in holders])


def scatter_gather(ray, holders: list, elements: int) -> None:
    """(g): one part of the array to each actor (ray.put, then the actor keeps it), then get and
    concatenate the parts: what DirectView.scatter / gather do, in Ray's terms."""
    import numpy as np

    arr = np.arange(elements, dtype=np.float64)
    t0 = time.perf_counter()
    refs = [ray.put(part) for part in np.array_split(arr, len(holders))]
    ray.get([h.put.remote(ref) for h, ref in zip(holders, refs)])
    scatter_s = time.perf_counter() - t0
    del refs
    t0 = time.perf_counter()
    back = np.concatenate(ray.get([h.get.remote("a") for h in holders]))
    gather_s = time.perf_counter() - t0
    assert np.array_equal(back, arr), "gather returned other data"
    emit(SYSTEM, "g", "scatter", mb_per_s(arr.nbytes, scatter_s), "MB/s", seconds=scatter_s)
    emit(SYSTEM, "g", "gather", mb_per_s(arr.nbytes, gather_s), "MB/s", seconds=gather_s)
    emit(SYSTEM, "g", "round", mb_per_s(2 * arr.nbytes, scatter_s + gather_s), "MB/s", seconds=scatter_s + gather_s)


if __name__ == "__main__":
    main()
