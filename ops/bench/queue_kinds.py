"""What the kind of queue costs one message: a bare pika round trip (publish, a consumer in
another process replies to ``reply_to``) through a queue of each kind, and the publisher
confirm alone.

- transient: non-durable classic queue, transient messages, no confirms (the bench's floor);
- classic: durable classic queue, persistent messages, publisher confirms;
- quorum: quorum queue (what enginefarm declares for every queue that holds work), persistent
  messages, publisher confirms.

Run from ops/bench: ``../../.venv/bin/python queue_kinds.py [--roundtrips 300]``. Uses the
bench's RabbitMQ (BENCH_AMQP_URL) under unique queue names, deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid

import pika

from common import AMQP_URL, log, percentile, stop_pids

KINDS = {
    "transient": ({"durable": False, "auto_delete": True}, None, False),
    "classic": ({"durable": True}, {"x-queue-type": "classic"}, True),
    "quorum": ({"durable": True}, {"x-queue-type": "quorum"}, True),
}


def serve(queue: str) -> None:
    """The echo side: reply to each message's reply_to with its body, ack after replying."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)

    def on(ch_: pika.adapters.blocking_connection.BlockingChannel, method: pika.spec.Basic.Deliver,
           props: pika.BasicProperties, body: bytes) -> None:
        ch_.basic_publish("", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id))
        ch_.basic_ack(method.delivery_tag)

    ch.basic_consume(queue, on)
    ch.start_consuming()


def declare(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str, kind: str) -> None:
    flags, arguments, _ = KINDS[kind]
    ch.queue_declare(queue, arguments=arguments, **flags)


def measure(kind: str, count: int) -> dict[str, float]:
    queue = f"bench_qk_{kind}_{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    declare(ch, queue, kind)
    confirms = KINDS[kind][2]
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", queue])
    try:
        reply = ch.queue_declare("", exclusive=True).method.queue
        got: list[bytes] = []
        ch.basic_consume(reply, lambda c, m, p, b: got.append(b), auto_ack=True)
        if confirms:
            ch.confirm_delivery()
        props = pika.BasicProperties(reply_to=reply, delivery_mode=2 if confirms else 1)

        def once() -> tuple[float, float]:
            got.clear()
            t0 = time.perf_counter()
            ch.basic_publish("", queue, b"x", props)  # returns once confirmed, with confirms on
            t1 = time.perf_counter()
            while not got:
                conn.process_data_events(time_limit=None)
            return t1 - t0, time.perf_counter() - t0

        for _ in range(30):
            once()
        runs = [once() for _ in range(count)]
        return {"confirm_p50_ms": percentile([c for c, _ in runs], 50) * 1000 if confirms else 0.0,
                "roundtrip_p50_ms": percentile([r for _, r in runs], 50) * 1000,
                "roundtrip_p99_ms": percentile([r for _, r in runs], 99) * 1000}
    finally:
        stop_pids([server.pid], 5.0)
        ch.queue_delete(queue)
        conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--roundtrips", type=int, default=300)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions per kind; medians are shown")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    for rep in range(args.reps):
        for kind in KINDS:
            rows[kind].append(measure(kind, args.roundtrips))
            log(f"rep {rep + 1} {kind}: {rows[kind][-1]}")
    print(f"{'queue':>10} {'confirm p50':>12} {'round trip p50':>15} {'p99':>8}   (ms, medians of {args.reps})")
    for kind, runs in rows.items():
        med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
        confirm = f"{med['confirm_p50_ms']:.2f}" if KINDS[kind][2] else "-"
        print(f"{kind:>10} {confirm:>12} {med['roundtrip_p50_ms']:>15.2f} {med['roundtrip_p99_ms']:>8.2f}")


if __name__ == "__main__":
    main()
