"""Bare floors: what RabbitMQ and Redis cost with nothing on top (peers venv's python).

(a) floor, `pika+redis`: 2 consumer processes take messages from one RabbitMQ queue, compute
    add, RPUSH each result to a Redis list; the client publishes N messages, then BLPOPs N.
(b) floor, `pika-rpc`: a server process consumes a queue and publishes add's result to the
    message's reply_to; the client publishes and waits on its own exclusive reply queue.

Messages are transient on non-durable queues, without publisher confirms: the least work the
broker can do for these exchanges. Consumers ack each message after handling it.
"""

from __future__ import annotations

import json
import os
import sys
import time

from common import (AMQP_URL, REDIS_URL, Workers, bench_env, emit, exit_on_sigterm, log, parse_args,
                    percentile, rabbit_delete, redis_delete)

SYSTEM = "floor"


def consumer(queue: str, results: str) -> None:
    """(a) consumer: add each message's pair and RPUSH the result to the Redis list."""
    import pika
    import redis

    from benchtasks import add

    store = redis.Redis.from_url(REDIS_URL)
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    channel.basic_qos(prefetch_count=100)

    def on_message(ch, method, props, body):
        x, y = json.loads(body)
        store.rpush(results, json.dumps([x, add(x, y)]))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    channel.start_consuming()


def rpc_server(queue: str) -> None:
    """(b) server: reply to reply_to with add's result, same correlation id."""
    import pika

    from benchtasks import add

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    channel.basic_qos(prefetch_count=1)

    def on_message(ch, method, props, body):
        x, y = json.loads(body)
        ch.basic_publish("", props.reply_to, json.dumps(add(x, y)).encode(),
                         pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    channel.start_consuming()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("consumer", "rpc-server"):
        exit_on_sigterm()
        try:
            consumer(*sys.argv[2:]) if sys.argv[1] == "consumer" else rpc_server(*sys.argv[2:])
        except (SystemExit, KeyboardInterrupt):
            pass
        return

    import pika
    import redis

    args = parse_args("a b")
    exit_on_sigterm()
    name, scenario = args.name, args.scenario
    queue, results = name, f"{name}:results"
    workers = Workers()
    me = os.path.abspath(__file__)
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    store = redis.Redis.from_url(REDIS_URL)
    try:
        channel.queue_declare(queue, durable=False)
        if scenario == "a":
            for _ in range(args.workers):
                workers.start([sys.executable, me, "consumer", queue, results], env=bench_env())

            def run(n: int) -> float:
                t0 = time.perf_counter()
                for i in range(n):
                    channel.basic_publish("", queue, json.dumps([i, i]).encode())
                got = {}
                for _ in range(n):
                    item = store.blpop([results], timeout=args.timeout)
                    if item is None:
                        raise RuntimeError(f"only {len(got)} of {n} results within {args.timeout}s")
                    x, value = json.loads(item[1])
                    got[x] = value
                elapsed = time.perf_counter() - t0
                assert got == {i: 2 * i for i in range(n)}, "wrong results"
                return elapsed

            run(200)  # warm-up (also waits for the consumers to be up)
            elapsed = run(args.tasks)
            emit("pika+redis", "a", "throughput", args.tasks / elapsed, "tasks/s", seconds=elapsed, n=args.tasks)

        elif scenario == "b":
            workers.start([sys.executable, me, "rpc-server", queue], env=bench_env())
            reply_queue = channel.queue_declare("", exclusive=True).method.queue
            replies: dict[str, bytes] = {}
            channel.basic_consume(reply_queue, lambda ch, m, p, body: replies.__setitem__(p.correlation_id, body),
                                  auto_ack=True)

            def call(i: int) -> int:
                cid = str(i)
                channel.basic_publish("", queue, b"[1, 2]",
                                      pika.BasicProperties(reply_to=reply_queue, correlation_id=cid))
                deadline = time.monotonic() + args.timeout
                while cid not in replies:
                    conn.process_data_events(time_limit=None)
                    if time.monotonic() > deadline:
                        raise RuntimeError("no reply")
                return json.loads(replies.pop(cid))

            for i in range(20):
                call(i)
            times = []
            for i in range(args.roundtrips):
                t0 = time.perf_counter()
                value = call(1000 + i)
                times.append(time.perf_counter() - t0)
                assert value == 3, value
            emit("pika-rpc", "b", "p50", percentile(times, 50) * 1000, "ms")
            emit("pika-rpc", "b", "p99", percentile(times, 99) * 1000, "ms")
    finally:
        workers.stop()
        try:
            conn.close()
        except Exception:
            pass
        try:
            rabbit_delete([queue])
        except Exception as exc:
            log("rabbit cleanup failed:", exc)
        try:
            store.close()
            log(f"removed {redis_delete(name + ':*')} Redis keys")
        except Exception as exc:
            log("redis cleanup failed:", exc)


if __name__ == "__main__":
    main()
