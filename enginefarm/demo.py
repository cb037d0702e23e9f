"""A short demonstration farm: a local cluster, real work on it, results printed."""

from __future__ import annotations

import random
import time

from .client import Client
from .client.tasks import MapTask, StringTask
from .config import Settings
from .local import LocalCluster


def estimate_pi(samples: int, seed: int) -> float:
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def run_demo(settings: Settings, engines: int = 2) -> None:
    local = LocalCluster(settings, engines)
    started = time.monotonic()
    try:
        ids = local.start()
        print(f"cluster {settings.cluster!r}: engines {ids} up in {time.monotonic() - started:.2f}s")
        with Client(settings=settings) as client:
            dv = client.direct_view()
            dv.execute("import os, socket; pid = os.getpid(); host = socket.gethostname()")
            print("engine pids:          ", dv.pull("pid"))
            dv.push({"a": 21})
            dv.execute("b = a * 2")
            print("b = a * 2 on each:    ", dv.pull("b"))
            print("pow(2, 10) on each:   ", dv.apply(pow, 2, 10))
            pending = [client[e].apply(estimate_pi, 200_000, seed, block=False) for seed, e in enumerate(ids)]
            estimates = [r.get(timeout=120) for r in pending]
            print("pi estimates:         ", [round(x, 4) for x in estimates])
            print(f"pi (mean of {len(estimates)}):       {sum(estimates) / len(estimates):.4f}")
            lview = client.load_balanced_view()
            squares = lview.map(pow, range(10), [2] * 10)
            print("load-balanced map:    ", squares)
            task_id = client.submit(StringTask("b = a * 2", push={"a": 21}, pull=["b"]))
            print("StringTask b = a * 2: ", client.get_task_result(task_id, block=True, timeout=60).ns)
            task_id = client.submit(MapTask(estimate_pi, (100_000, 99), retries=1))
            result = client.get_task_result(task_id, block=True, timeout=120)
            print(f"MapTask on engine {result.engineid}: pi ~ {result.result:.4f} in {result.duration:.3f}s")
            t0 = time.perf_counter()
            for _ in range(50):
                client[ids[0]].apply(int, 1)
            print(f"round trip c[0].apply: {(time.perf_counter() - t0) / 50 * 1000:.2f} ms (mean of 50)")
    finally:
        local.stop()
    print("cluster stopped")
