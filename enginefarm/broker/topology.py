"""Declaring and removing a cluster's exchanges and queues. Every declaration is idempotent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pika.exceptions

from ..names import Names

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel


def declare_cluster(channel: BlockingChannel, names: Names) -> None:
    """The exchanges and fixed queues every part of a cluster relies on."""
    channel.exchange_declare(names.direct_exchange, exchange_type="direct", durable=True)
    channel.exchange_declare(names.dead_exchange, exchange_type="fanout", durable=True)
    channel.queue_declare(names.dead_queue, durable=True)
    channel.queue_bind(names.dead_queue, names.dead_exchange)
    channel.queue_declare(
        names.work_queue, durable=True, arguments={"x-dead-letter-exchange": names.dead_exchange}
    )
    channel.queue_declare(
        names.tasks_queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            # Only one scheduler consumes at a time; a standby takes over when it dies.
            "x-single-active-consumer": True,
            "x-dead-letter-exchange": names.dead_exchange,
        },
    )


def declare_engine_queue(channel: BlockingChannel, names: Names, engine_id: int) -> str:
    """The engine's own durable queue, bound to the direct exchange by its id."""
    queue = names.engine_queue(engine_id)
    channel.queue_declare(
        queue, durable=True, arguments={"x-dead-letter-exchange": names.dead_exchange}
    )
    channel.queue_bind(queue, names.direct_exchange, routing_key=names.engine_routing_key(engine_id))
    return queue


def declare_control_queue(channel: BlockingChannel, names: Names, engine_id: int) -> str:
    """The engine's control queue (signals), bound to the direct exchange beside its own queue.

    Declared and removed together with the engine queue; refused messages go to the same
    dead-letter exchange.
    """
    queue = names.control_queue(engine_id)
    channel.queue_declare(
        queue, durable=True, arguments={"x-dead-letter-exchange": names.dead_exchange}
    )
    channel.queue_bind(queue, names.direct_exchange, routing_key=names.control_routing_key(engine_id))
    return queue


def queue_depth(channel: BlockingChannel, queue: str) -> int | None:
    """Messages ready in ``queue`` (not counting unacked ones), or None if it does not exist.

    A missing queue closes the channel (404), so callers should pass a throwaway channel.
    """
    try:
        result = channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    return int(result.method.message_count)
