"""The Celery app the worker and the client share: BENCH_NAME names its queue, exchange and keys."""

import os

from celery import Celery

import benchtasks

NAME = os.environ["BENCH_NAME"]

app = Celery(
    "bench",
    broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_default_queue=NAME,
    task_default_exchange=NAME,
    task_default_routing_key=NAME,
    # Every result key carries the unique prefix, so cleanup can find them all.
    result_backend_transport_options={"global_keyprefix": NAME + ":"},
    worker_enable_remote_control=False,  # no pidbox queue per worker
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

add = app.task(name="benchtasks.add")(benchtasks.add)
