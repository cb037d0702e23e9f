"""The Dramatiq broker and actors the worker and the client share; BENCH_NAME names the queue."""

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

import benchtasks

NAME = os.environ["BENCH_NAME"]

broker = RabbitmqBroker(url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
# Result keys are "<NAME>:<queue>:<actor>:<message id>", so cleanup can find them all.
backend = RedisBackend(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
                       namespace=NAME, use_namespace_prefix_keys=True)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)

add = dramatiq.actor(benchtasks.add, actor_name="add", queue_name=NAME, store_results=True, max_retries=0)
# Dramatiq has no built-in chunked map; (c) sends a group of messages to this batch actor.
add_many = dramatiq.actor(benchtasks.add_many, actor_name="add_many", queue_name=NAME, store_results=True,
                          max_retries=0)
