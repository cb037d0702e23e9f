"""Publishing with publisher confirms, persistent messages and bounded retries."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from ..errors import BrokerError, UnroutableError
from .connection import RECOVERABLE, BrokerConnection

log = logging.getLogger(__name__)

PERSISTENT = 2


class Publisher:
    """Publishes bytes and returns only once the broker has confirmed them.

    A lost connection is re-opened and the publish retried; the receiving side must
    therefore tolerate a duplicate (enginefarm claims each task id once in Redis).
    """

    def __init__(
        self,
        url: str,
        heartbeat_s: int = 30,
        name: str = "enginefarm-publisher",
        on_open: Callable[[Any], None] | None = None,
        attempts: int = 5,
        reconnect_window_s: float = 30.0,
    ) -> None:
        self._on_open = on_open
        self.attempts = attempts
        self.link = BrokerConnection(url, heartbeat_s, name, on_open=self._setup,
                                     reconnect_window_s=reconnect_window_s)
        # A second channel in transaction mode, for batches (confirm and tx cannot share one).
        self._tx: Any = None
        self._tx_generation = -1

    def _setup(self, channel: Any) -> None:
        channel.confirm_delivery()
        if self._on_open is not None:
            self._on_open(channel)

    @property
    def channel(self) -> Any:
        return self.link.open()

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any] | None = None,
        mandatory: bool = True,
        priority: int | None = None,
    ) -> None:
        """Publish one persistent message and wait for its confirm.

        Raises:
            UnroutableError: ``mandatory`` and no queue is bound for ``routing_key``.
            BrokerError: the broker refused it or stayed unreachable.
        """
        props = pika.BasicProperties(delivery_mode=PERSISTENT, headers=headers, priority=priority)
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                self.channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
                return
            except pika.exceptions.UnroutableError as exc:
                raise UnroutableError(f"no queue for routing key {routing_key!r} on {exchange!r}") from exc
            except pika.exceptions.NackError as exc:
                last = exc
                log.warning("broker nacked a publish to %s (attempt %d)", exchange, attempt + 1)
            except RECOVERABLE as exc:
                last = exc
                log.warning("publish to %s failed: %s; reconnecting", exchange, type(exc).__name__)
                self.link.close()
        raise BrokerError(f"could not publish to {exchange!r}: {type(last).__name__}: {last}") from last

    def publish_batch(self, messages: list[tuple[str, str, bytes]], batch: int = 500) -> None:
        """Publish (exchange, routing key, body) triples persistently, ``batch`` per transaction.

        One round trip per transaction instead of one per message. Not mandatory: use it
        where an unroutable message cannot happen or is caught another way.

        Raises:
            BrokerError: the broker stayed unreachable (the unfinished batch may be partly
                delivered; receivers deduplicate).
        """
        props = pika.BasicProperties(delivery_mode=PERSISTENT)
        for start in range(0, len(messages), batch):
            chunk = messages[start : start + batch]
            last: Exception | None = None
            for attempt in range(self.attempts):
                try:
                    channel = self._tx_channel()
                    for exchange, routing_key, body in chunk:
                        channel.basic_publish(exchange, routing_key, body, props)
                    channel.tx_commit()
                    break
                except RECOVERABLE as exc:
                    last = exc
                    log.warning("batch publish failed: %s; reconnecting", type(exc).__name__)
                    self.link.close()
            else:
                raise BrokerError(f"could not publish a batch: {type(last).__name__}: {last}") from last

    def _tx_channel(self) -> Any:
        self.link.open()
        if self._tx is None or self._tx_generation != self.link.generation or not self._tx.is_open:
            self._tx = self.link.connection.channel()
            self._tx.tx_select()
            self._tx_generation = self.link.generation
        return self._tx

    def process_events(self) -> None:
        """Answer heartbeats on an idle connection (call now and then)."""
        conn = self.link.connection
        if conn is not None and conn.is_open:
            try:
                conn.process_data_events(0)
            except RECOVERABLE:
                self.link.close()

    def close(self) -> None:
        self.link.close()
