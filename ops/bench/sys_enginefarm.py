"""enginefarm scenarios (run with the repository's .venv python).

    python sys_enginefarm.py {a,a1,b,c,d,e,f,g} --name NAME [--tasks N --roundtrips N --items N ...]

Starts `enginefarm cluster -n 2 --cluster NAME` as a subprocess (key from ENGINEFARM_KEY_FILE,
made here if unset), measures one repetition, then stops the cluster by PID and deletes the
cluster's queues, exchanges and Redis keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import (round_trips, Workers, bench_env, descendants, emit, exit_on_sigterm, log, mb_per_s, parse_args,
                    pss_kb, rabbit_delete, redis_delete, refused, rss_kb, size_label, sizes_mib)

from benchtasks import add
from enginefarm import Client, MapTask, PayloadTooLarge
from enginefarm.names import Names

SYSTEM = "enginefarm"


def key_file() -> str:
    path = os.environ.get("ENGINEFARM_KEY_FILE")
    if path and os.path.exists(path):
        return path
    from enginefarm.keys import generate_key_file

    path = os.path.join(tempfile.mkdtemp(prefix="bench-key-"), "key")
    generate_key_file(path)
    os.environ["ENGINEFARM_KEY_FILE"] = path
    return path


def start_cluster(workers: Workers, name: str, engines: int) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "enginefarm")
    env = bench_env({"ENGINEFARM_KEY_FILE": key_file(), "ENGINEFARM_LOG_LEVEL": "WARNING"})
    workers.start([exe, "--log-level", "WARNING", "cluster", "-n", str(engines), "--cluster", name], env=env,
                  stdout=subprocess.DEVNULL)


def cleanup(name: str, engines: int = 8) -> None:
    """Remove every queue, exchange and Redis key of cluster ``name`` (engine ids up to
    ``engines`` + 8)."""
    names = Names(name)
    queues = [*names.fixed_queues(), *(q for i in range(engines + 8) for q in (names.engine_queue(i),
                                                                               names.control_queue(i)))]
    try:
        rabbit_delete(queues, list(names.exchanges()))
    except Exception as exc:
        log("rabbit cleanup failed:", exc)
    try:
        log(f"removed {redis_delete(Names(name).pattern)} Redis keys")
    except Exception as exc:
        log("redis cleanup failed:", exc)


def client(name: str) -> Client:
    key_file()
    return Client(cluster=name)


def wait_engines(c: Client, count: int, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ids = c.ids
        if len(ids) >= count:
            return ids
        time.sleep(0.05)
    raise RuntimeError(f"{count} engines did not register within {timeout_s:g}s")


def farm(c: Client, n: int, timeout: float) -> float:
    """Submit n add tasks at once, wait for all; returns seconds from first submit to last result."""
    t0 = time.perf_counter()
    ids = c.submit_many([MapTask(add, (i, i)) for i in range(n)])
    c.barrier(ids, timeout=timeout)
    elapsed = time.perf_counter() - t0
    bad = [i for i, t in enumerate(ids) if c.results[t] != 2 * i]
    if bad:
        raise RuntimeError(f"{len(bad)} wrong results, e.g. task {bad[0]}: {c.results[ids[bad[0]]]!r}")
    return elapsed


def cluster_bytes(redis: Any, name: str) -> int:
    """MEMORY USAGE (exact: SAMPLES 0) summed over every Redis key of the cluster.

    Unlike INFO's used_memory, other users of the same Redis do not disturb it.
    """
    keys = list(redis.scan_iter(match=Names(name).pattern, count=1000))
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(size or 0 for size in pipe.execute())


def one_call_loops(c: Client, n: int, timeout: float) -> dict[str, float]:
    """(a'): n tasks, one call each, then waited; seconds per form."""
    lview = c.load_balanced_view()
    out = {}
    t0 = time.perf_counter()
    ids = [c.submit(MapTask(add, (i, i))) for i in range(n)]
    c.barrier(ids, timeout=timeout)
    out["submit"] = time.perf_counter() - t0
    bad = [i for i, t in enumerate(ids) if c.results[t] != 2 * i]
    assert not bad, f"{len(bad)} wrong results"
    t0 = time.perf_counter()
    ars = [lview.apply_async(add, i, i) for i in range(n)]
    values = [ar.get(timeout=timeout) for ar in ars]
    out["apply_async"] = time.perf_counter() - t0
    assert values == [2 * i for i in range(n)], "wrong results"
    return out


def refusal(exc: BaseException) -> str | None:
    """Why a transfer was refused by design (over the message cap), or None for a real failure."""
    if isinstance(exc, PayloadTooLarge):
        return f"PayloadTooLarge: {exc}"
    text = f"{type(exc).__name__}: {exc}"
    return text if "ResultTooLarge" in text or "PayloadTooLarge" in text else None


def transfer(system: str, scenario: str, metric: str, nbytes: int, move: Any) -> tuple[Any, float] | None:
    """Time ``move()`` and emit MB/s of ``nbytes``; None (and 'refused') if the system refuses
    the size by design. Returns the value moved and the seconds it took."""
    t0 = time.perf_counter()
    try:
        value = move()
    except Exception as exc:
        reason = refusal(exc)
        if reason is None:
            raise
        refused(system, scenario, metric, "MB/s", reason)
        return None
    elapsed = time.perf_counter() - t0
    emit(system, scenario, metric, mb_per_s(nbytes, elapsed), "MB/s", seconds=elapsed, bytes=nbytes)
    return value, elapsed


def push_pull(c: Client, engine_ids: list[int], sizes: list[int]) -> None:
    """(f): push an array to both engines, then pull one made on each, per size."""
    import numpy as np

    dv = c[engine_ids]
    engines = len(engine_ids)
    dv.execute("import numpy as np")
    dv.push({"w": np.ones(1 << 17)})  # warm-up: 1 MiB each way
    dv.pull("w")
    for mib in sizes:
        n = mib * (1 << 20) // 8
        arr = np.arange(n, dtype=np.float64)
        if transfer(SYSTEM, "f", f"push_{size_label(mib)}", engines * arr.nbytes, lambda: dv.push({"a": arr})):
            dv.execute("a_n, a_last = int(a.size), float(a[-1])")
            assert dv.pull("a_n") == [n] * engines and dv.pull("a_last") == [n - 1.0] * engines, "bad push"
        del arr
        dv.execute(f"a = None; b = np.arange({n}, dtype=np.float64)")
        pulled = transfer(SYSTEM, "f", f"pull_{size_label(mib)}", engines * n * 8, lambda: dv.pull("b"))
        if pulled:
            assert [(p.size, p[-1]) for p in pulled[0]] == [(n, n - 1.0)] * engines, "bad pull"
        del pulled
        dv.execute("b = None")


def scatter_gather(c: Client, engine_ids: list[int], elements: int) -> None:
    """(g): scatter a float64 array over both engines, then gather it back."""
    import numpy as np

    dv = c[engine_ids]
    dv.execute("import numpy as np")
    dv.scatter("w", np.arange(1 << 16, dtype=np.float64))  # warm-up
    dv.gather("w")
    arr = np.arange(elements, dtype=np.float64)
    scattered = transfer(SYSTEM, "g", "scatter", arr.nbytes, lambda: dv.scatter("x", arr))
    if scattered is None:
        # Refused: make the same parts on the engines, so that gather is measured on its own.
        bounds = np.cumsum([0] + [len(p) for p in np.array_split(np.empty(elements), len(engine_ids))])
        for index, engine_id in enumerate(engine_ids):
            c[engine_id].execute(f"x = np.arange({bounds[index]}, {bounds[index + 1]}, dtype=np.float64)")
    gathered = transfer(SYSTEM, "g", "gather", arr.nbytes, lambda: dv.gather("x"))
    if gathered is not None:
        assert np.array_equal(gathered[0], arr), "gather returned other data"
    if scattered is None or gathered is None:
        refused(SYSTEM, "g", "round", "MB/s", "scatter or gather refused")
    else:
        seconds = scattered[1] + gathered[1]
        emit(SYSTEM, "g", "round", mb_per_s(2 * arr.nbytes, seconds), "MB/s", seconds=seconds)


def main() -> None:
    args = parse_args("a a1 b c d e f g")
    exit_on_sigterm()
    name, scenario = args.name, args.scenario
    workers = Workers()
    try:
        if scenario == "d":
            c = client(name)
            c._connect()  # connections and imports are ready before the clock starts, as for peers
            t0 = time.perf_counter()
            start_cluster(workers, name, args.workers)
            value = c.load_balanced_view().apply(add, 1, 2, block=True)
            elapsed = time.perf_counter() - t0
            assert value == 3, value
            emit(SYSTEM, "d", "start_to_first_result", elapsed, "s")
            return

        start_cluster(workers, name, args.workers)
        c = client(name)
        ids = wait_engines(c, args.workers)
        lview = c.load_balanced_view()

        if scenario == "a":
            farm(c, 200, args.timeout)  # warm-up
            elapsed = farm(c, args.tasks, args.timeout)
            emit(SYSTEM, "a", "throughput", args.tasks / elapsed, "tasks/s", seconds=elapsed, n=args.tasks)

        elif scenario == "b":
            target = ids[0]
            for label, call in (
                ("lb", lambda: lview.apply(add, 1, 2, block=True)),
                ("direct", lambda: c[target].apply(add, 1, 2)),
            ):
                round_trips(SYSTEM, call, args.roundtrips, label)

        elif scenario == "a1":
            one_call_loops(c, 200, args.timeout)  # warm-up
            for form, elapsed in one_call_loops(c, args.tasks, args.timeout).items():
                emit(SYSTEM, "a1", f"throughput_{form}", args.tasks / elapsed, "tasks/s", seconds=elapsed,
                     n=args.tasks)

        elif scenario == "c":
            dview = c[ids[: args.workers]]
            forms = (("lview", lambda xs, ys: lview.map(add, xs, ys, block=True)),  # automatic chunks
                     ("dv", lambda xs, ys: dview.map_sync(add, xs, ys)))  # one share per engine
            for form, run in forms:
                run(range(1000), range(1000))  # warm-up
                xs, ys = list(range(args.items)), list(range(args.items))
                t0 = time.perf_counter()
                out = run(xs, ys)
                elapsed = time.perf_counter() - t0
                assert out == [2 * x for x in xs], "wrong map result"
                emit(SYSTEM, "c", f"map_{form}", args.items / elapsed, "items/s", seconds=elapsed, n=args.items)

        elif scenario == "f":
            push_pull(c, ids[: args.workers], sizes_mib(args))

        elif scenario == "g":
            scatter_gather(c, ids[: args.workers], args.elements)

        elif scenario == "e":
            farm(c, 200, args.timeout)  # the engines have run tasks (child warmed up), then sit idle
            time.sleep(2.0)
            info = c.registry.info()
            for engine_id in ids:
                pid = info[engine_id]["pid"]
                below = descendants(pid)
                rss = (rss_kb(pid) + sum(rss_kb(p) for p in below)) / 1024
                pss = (pss_kb(pid) + sum(pss_kb(p) for p in below)) / 1024
                emit(SYSTEM, "e", "idle_engine_rss", rss, "MB", engine=engine_id, processes=1 + len(below),
                     supervisor_mb=rss_kb(pid) / 1024, pss_mb=pss)
            redis = c.registry.redis
            n = args.tasks
            keys_before = cluster_bytes(redis, name)
            before = int(redis.info("memory")["used_memory"])
            task_ids = c.submit_many([MapTask(add, (i, i)) for i in range(n)])
            c.barrier(task_ids, timeout=args.timeout)
            c.spin()
            time.sleep(0.5)
            after = int(redis.info("memory")["used_memory"])
            keys_after = cluster_bytes(redis, name)
            sample = task_ids[:: max(1, n // 200)]
            sizes = [redis.memory_usage(c.names.task(t), samples=0) or 0 for t in sample]
            fields = redis.hgetall(c.names.task(sample[0]))
            log("a finished record:", {k.decode(): len(v) for k, v in fields.items()})
            emit(SYSTEM, "e", "redis_bytes_per_record", sum(sizes) / len(sizes), "B", sampled=len(sizes))
            emit(SYSTEM, "e", "redis_bytes_per_task_keys", (keys_after - keys_before) / n, "B", n=n)
            emit(SYSTEM, "e", "redis_bytes_per_task_delta", (after - before) / n, "B", n=n)
    finally:
        workers.stop()
        cleanup(name)


if __name__ == "__main__":
    main()
