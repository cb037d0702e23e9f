"""Declaring and removing a cluster's exchanges and queues. Every declaration is idempotent.

Every queue that holds work is a quorum queue, so it survives the loss of a RabbitMQ node of a
cluster (its followers on the other nodes elect a new leader) and behaves the same on one node.
Quorum queues in 3.10 have no global QoS and no message priorities; nothing here uses either
(the scheduler orders tasks itself, and prefetch is per consumer). The dead-letter queue is one
too, so that what was refused stays readable while a node is down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pika.exceptions

from ..errors import BrokerError
from ..names import Names

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel


# Deliveries of one message on an engine's own (or control) queue before the broker
# dead-letters it. Only that engine consumes the queue, so a message comes again only after the
# engine lost its broker connection holding it; the engine refuses the last allowed delivery
# itself (``over_delivery_limit``) so that the task's record is failed with the reason. Part of
# the queue's arguments: changing it makes every existing engine queue refuse the redeclare.
ENGINE_DELIVERY_LIMIT = 20

DELIVERY_COUNT_HEADER = "x-delivery-count"


def _declare_queue(channel: BlockingChannel, queue: str, arguments: dict[str, object]) -> None:
    """A durable queue; one that exists with other arguments is an error that says what to do."""
    try:
        channel.queue_declare(queue, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        kind = arguments.get("x-queue-type", "classic")
        raise BrokerError(
            f"queue {queue} exists with other arguments than this version declares ({kind}, {arguments}): "
            f"it is probably a classic queue from an earlier enginefarm. Stop the cluster's clients and "
            f"daemons, let the queue drain (enginefarm status shows its depth), delete it "
            f"(rabbitmqctl delete_queue {queue}) and start again. RabbitMQ said: {exc.reply_text}"
        ) from exc


def _quorum(names: Names, **extra: object) -> dict[str, object]:
    return {"x-queue-type": "quorum", "x-dead-letter-exchange": names.dead_exchange, **extra}


def declare_cluster(channel: BlockingChannel, names: Names) -> None:
    """The exchanges and fixed queues every part of a cluster relies on."""
    channel.exchange_declare(names.direct_exchange, exchange_type="direct", durable=True)
    channel.exchange_declare(names.dead_exchange, exchange_type="fanout", durable=True)
    _declare_queue(channel, names.dead_queue, {"x-queue-type": "quorum"})
    channel.queue_bind(names.dead_queue, names.dead_exchange)
    # No delivery limit on the two shared queues: their messages come back by design (an engine
    # busy with a long task gives back what it prefetched from the work queue; the scheduler
    # requeues a submission while Redis is away), as often as that happens. A task's record
    # bounds its runs (attempts, engine losses) and refuses a replay of a finished task.
    _declare_queue(channel, names.work_queue, _quorum(names))
    # Only one scheduler consumes at a time; a standby takes over when it dies.
    _declare_queue(channel, names.tasks_queue, _quorum(names, **{"x-single-active-consumer": True}))


def declare_engine_queue(channel: BlockingChannel, names: Names, engine_id: int) -> str:
    """The engine's own durable queue, bound to the direct exchange by its id."""
    queue = names.engine_queue(engine_id)
    _declare_queue(channel, queue, _quorum(names, **{"x-delivery-limit": ENGINE_DELIVERY_LIMIT}))
    channel.queue_bind(queue, names.direct_exchange, routing_key=names.engine_routing_key(engine_id))
    return queue


def declare_control_queue(channel: BlockingChannel, names: Names, engine_id: int) -> str:
    """The engine's control queue (signals), bound to the direct exchange beside its own queue.

    Declared and removed together with the engine queue; refused messages go to the same
    dead-letter exchange.
    """
    queue = names.control_queue(engine_id)
    _declare_queue(channel, queue, _quorum(names, **{"x-delivery-limit": ENGINE_DELIVERY_LIMIT}))
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


def over_delivery_limit(headers: dict[str, object]) -> bool:
    """True for the last delivery of an engine-queue message the broker allows: refuse it
    (with a reason, failing its record) rather than let the broker drop it into the dead
    queue with the record still pending."""
    count = headers.get(DELIVERY_COUNT_HEADER)
    return isinstance(count, int) and count >= ENGINE_DELIVERY_LIMIT
