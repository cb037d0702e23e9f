"""Where a round trip's time goes: the legs of scenario (b), and this machine's wake-up cost.

    ../../.venv/bin/python legs.py [--name NAME] [--roundtrips 300]

Starts `enginefarm cluster -n 2`, makes sequential load-balanced and direct round trips, and
prints the median of each leg from the task records' timestamps (all taken on this machine's
clock): client -> record written, record -> engine claims it, claim -> outcome sent, outcome ->
client has the result. Then it times a Redis PING back to back and after 3 ms of idleness:
the difference is what waking a sleeping process costs here, paid once per hop of a lone
round trip.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis
from common import REDIS_URL, Workers, log

import sys_enginefarm as ef
from benchtasks import add


def legs(c: Any, call: Callable[[], Any], count: int) -> dict[str, float]:
    """The same blocking calls as scenario (b); the records are read after the last one."""
    for _ in range(20):
        call()
    calls = []
    for _ in range(count):
        t0 = time.time()
        assert call() == 3
        calls.append((c.history[-1], t0, time.time()))
    records = c.records.get_many([task_id for task_id, _, _ in calls], with_request=False)
    rows = [(t0, rec.submitted, rec.started, rec.completed, t1) for (_, t0, t1), rec in zip(calls, records)]

    def median(a: int, b: int) -> float:
        return statistics.median(r[b] - r[a] for r in rows) * 1000

    return {"total": median(0, 4), "client -> record": median(0, 1), "record -> claimed": median(1, 2),
            "claimed -> outcome sent": median(2, 3), "outcome -> client": median(3, 4)}


def ping_ms(gap_s: float, count: int = 300) -> float:
    r = redis.Redis.from_url(REDIS_URL)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        r.ping()
        times.append(time.perf_counter() - t0)
        time.sleep(gap_s)
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=f"bench_legs_{int(time.time())}", help="cluster name")
    p.add_argument("--roundtrips", type=int, default=300, help="round trips of each kind")
    args = p.parse_args()
    name, count = args.name, args.roundtrips
    workers = Workers()
    try:
        ef.start_cluster(workers, name, 2)
        c = ef.client(name)
        ids = ef.wait_engines(c, 2)
        lview = c.load_balanced_view()
        results = {
            "load-balanced": legs(c, lambda: lview.apply(add, 1, 2, block=True), count),
            "direct": legs(c, lambda: c[ids[0]].apply(add, 1, 2), count),
        }
    finally:
        workers.stop()
        ef.cleanup(name)
    columns = list(results["direct"])
    print(f"medians of {count} round trips (ms; the calls of scenario (b))")
    print(f"{'':15}" + "".join(f"{col:>25}" for col in columns))
    for label, row in results.items():
        print(f"{label:15}" + "".join(f"{row[col]:25.2f}" for col in columns))
    busy, idle = ping_ms(0.0), ping_ms(0.003)
    print(f"Redis PING p50: {busy:.3f} ms back to back, {idle:.3f} ms after 3 ms idle "
          f"(a sleeping process costs {idle - busy:.3f} ms more to reach)")
    log("done")


if __name__ == "__main__":
    main()
