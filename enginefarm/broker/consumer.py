"""Consuming one queue with manual acks, from a loop that also keeps heartbeats going."""

from __future__ import annotations

import logging
import threading
from queue import Empty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ..errors import BrokerError
from .connection import RECOVERABLE, BrokerConnection

if TYPE_CHECKING:
    import queue as queue_module

    from pika.adapters.blocking_connection import BlockingChannel
    from pika.spec import Basic, BasicProperties

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    body: bytes
    tag: int
    generation: int
    redelivered: bool
    routing_key: str
    headers: dict[str, Any] = field(default_factory=dict)
    queue: str = ""


class Consumer:
    """Runs the broker I/O loop of a daemon on the thread that calls ``run``.

    ``on_message`` is called on that thread and must not block: it should hand the
    delivery to a worker. ``ack`` and ``reject`` may be called from any thread.
    After a reconnect the broker has requeued every unacked message, so acks for an
    older connection are dropped (the message comes again and is deduplicated upstream).
    """

    def __init__(
        self,
        url: str,
        setup: Callable[[BlockingChannel], list[str]],
        on_message: Callable[[Delivery], None],
        prefetch: int = 4,
        heartbeat_s: int = 30,
        name: str = "enginefarm-consumer",
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.link = BrokerConnection(url, heartbeat_s, name)
        self.setup = setup
        self.on_message = on_message
        self.prefetch = prefetch
        self.on_reconnect = on_reconnect
        self._tags: dict[str, str] = {}  # queue -> consumer tag, on this connection
        self._queue_of: dict[str, str] = {}  # consumer tag -> queue
        self._shed: set[str] = set()  # queues not consumed for now (see ``shed``)
        self._generation = -1
        # Delivery tags of this connection not acked or rejected yet (touched on the I/O thread only).
        self._unsettled: set[int] = set()
        self._paused = threading.Event()
        self._cancelled_by_broker = False
        self.ready = threading.Event()

    def _start(self) -> None:
        channel = self.link.open()
        if self._generation == self.link.generation:
            return
        if self._generation != -1:
            # The broker closed our channel (e.g. its consumer timeout) or the connection:
            # every unacked delivery was requeued and will come again.
            log.warning("broker connection lost (channel %s); consuming again", self._generation)
            if self.on_reconnect is not None:
                self.on_reconnect()
        self._unsettled = set()
        self._cancelled_by_broker = False
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.basic_qos(prefetch_count=self.prefetch)
        self._tags, self._queue_of = {}, {}
        for queue in self.setup(channel):
            if queue not in self._shed:
                self._consume(channel, queue)
        self._generation = self.link.generation
        self.ready.set()

    def _on_cancelled(self, frame: Any) -> None:
        """The broker stopped a consumer of ours: its queue was deleted (by a reaper that
        judged this process dead while Redis failed over, an operator, a node that lost it).
        Start again on a fresh connection, so that setup declares the queues once more; a
        process that really is dead learns it from Redis and stops."""
        tag = getattr(getattr(frame, "method", None), "consumer_tag", "")
        log.warning("the broker cancelled consuming from %s; declaring and consuming again",
                    self._queue_of.get(tag, "a queue"))
        self._cancelled_by_broker = True

    def _consume(self, channel: BlockingChannel, queue: str) -> None:
        tag = channel.basic_consume(queue, self._on_delivery, auto_ack=False)
        self._tags[queue], self._queue_of[tag] = tag, queue

    def _on_delivery(self, channel: BlockingChannel, method: Basic.Deliver, props: BasicProperties,
                     body: bytes) -> None:
        # A Deliver the broker sent has every field (pika's types allow None for an empty one).
        delivery = Delivery(
            body=body,
            tag=cast(int, method.delivery_tag),
            generation=self.link.generation,
            redelivered=bool(method.redelivered),
            routing_key=cast(str, method.routing_key),
            headers=dict(props.headers or {}),
            queue=self._queue_of.get(cast(str, method.consumer_tag), ""),
        )
        self._unsettled.add(delivery.tag)
        self.on_message(delivery)

    def run(self, stop: threading.Event, poll_s: float = 0.25, tick: Callable[[], None] | None = None) -> None:
        """Consume until ``stop`` is set, reconnecting whenever the broker goes away.

        ``tick`` is called on this thread at least every ``poll_s`` seconds.
        """
        while not stop.is_set():
            if tick is not None:
                tick()
            try:
                if not self._paused.is_set():
                    self._start()
                conn = self.link.connection
                if conn is None:
                    self.link.open()
                    continue
                conn.process_data_events(time_limit=poll_s)
                if self._cancelled_by_broker:
                    self.ready.clear()
                    self.link.close()
            except BrokerError as exc:
                self.ready.clear()
                log.error("%s; still trying", exc)
                # A refused declaration (a queue of an older kind) would otherwise be retried
                # in a tight loop of connections.
                stop.wait(1.0)
            except RECOVERABLE as exc:
                self.ready.clear()
                log.warning("broker connection lost (%s: %s); reconnecting", type(exc).__name__, exc)
                self.link.close()

    def wake(self) -> None:
        """Make ``run`` look at its stop flag now rather than at the end of its poll."""
        self.link.call_threadsafe(lambda: None)

    def _call(self, fn: Callable[[], None]) -> None:
        if not self.link.call_threadsafe(fn):
            log.debug("connection gone; action dropped (the broker requeues unacked messages)")

    def ack(self, delivery: Delivery) -> None:
        self.settle([delivery])

    def reject(self, delivery: Delivery, requeue: bool) -> None:
        self.settle([], [delivery], requeue=requeue)

    def settle(self, acks: list[Delivery], rejects: list[Delivery] | None = None, requeue: bool = True) -> None:
        """Ack ``acks`` and reject ``rejects`` (back to the queue when ``requeue``), in one
        hop to the I/O thread; a run of acks covering every older delivery is one frame."""

        def do() -> None:
            channel = self.link.channel
            if channel is None:
                return
            current = self.link.generation
            for delivery in rejects or []:
                if delivery.generation == current and delivery.tag in self._unsettled:
                    self._unsettled.discard(delivery.tag)
                    channel.basic_reject(delivery.tag, requeue=requeue)
            tags = {d.tag for d in acks if d.generation == current} & self._unsettled
            if not tags:
                return
            self._unsettled -= tags
            top = max(tags)
            if len(tags) > 1 and not any(t < top for t in self._unsettled):
                channel.basic_ack(top, multiple=True)
            else:
                for tag in sorted(tags):
                    channel.basic_ack(tag)

        self._call(do)

    def pause(self) -> None:
        """Stop taking new deliveries (what was delivered stays ours until acked)."""
        self._paused.set()

        def do() -> None:
            if self.link.channel is not None:
                for tag in self._tags.values():
                    self.link.channel.basic_cancel(tag)
            self._tags = {}

        self._call(do)

    def shed(self, queue: str, buffer: queue_module.Queue[Delivery | None]) -> None:
        """Stop consuming ``queue`` for now and give back what it delivered that still waits
        in ``buffer`` (the queue.Queue ``on_message`` feeds; other deliveries, and the None
        its reader takes as a wakeup, keep their order), so that other consumers take it:
        for a worker busy with a long task."""

        def do() -> None:
            self._shed.add(queue)
            channel = self.link.channel
            tag = self._tags.pop(queue, None)
            if channel is None:
                return
            if tag is not None:
                # pika gives back, one by one, what arrives for the tag until the cancel is done.
                channel.basic_cancel(tag)
            kept: list[Delivery | None] = []
            while True:
                try:
                    delivery = buffer.get_nowait()
                except Empty:
                    break
                if delivery is None or delivery.queue != queue:
                    kept.append(delivery)
                elif delivery.generation == self.link.generation and delivery.tag in self._unsettled:
                    self._unsettled.discard(delivery.tag)
                    channel.basic_reject(delivery.tag, requeue=True)
            for delivery in kept:
                buffer.put(delivery)

        self._call(do)

    def resume(self, queue: str) -> None:
        """Consume ``queue`` again after ``shed`` (not while paused)."""

        def do() -> None:
            self._shed.discard(queue)
            channel = self.link.channel
            if channel is not None and not self._paused.is_set() and queue not in self._tags:
                self._consume(channel, queue)

        self._call(do)

    def close(self) -> None:
        self.link.close()
