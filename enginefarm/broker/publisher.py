"""Publishing with publisher confirms, persistent messages and bounded retries."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import pika
import pika.exceptions
import pika.spec

from ..errors import BrokerError, UnroutableError
from .connection import RECOVERABLE, BrokerConnection

if TYPE_CHECKING:
    import pika.channel
    import pika.frame
    from pika.adapters.blocking_connection import BlockingChannel

log = logging.getLogger(__name__)

PERSISTENT: Final = 2
# How long ``publish`` keeps sending a message the broker nacks: a quorum queue whose leader's
# node was lost nacks until its other members have elected a new leader (a few seconds).
NACK_WINDOW_S: Final = 15.0


class _ImplChannel(Protocol):
    """A BlockingChannel with pika's private ``_impl``: the asynchronous channel under it, which
    ``send`` publishes on without waiting and takes confirms and returns from by callback."""

    _impl: pika.channel.Channel

    @property
    def is_open(self) -> bool: ...


class _FlushingConnection(Protocol):
    """A BlockingConnection with pika's private ``_flush_output`` (see ``Publisher._await``)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...

    def remove_timeout(self, timeout_id: object) -> None: ...

    def _flush_output(self, *waiters: Callable[[], object]) -> None: ...


@dataclass
class Outgoing:
    """A message sent ahead of its confirm; ``on_return`` runs if the broker could not route it."""

    exchange: str
    routing_key: str
    body: bytes
    on_return: Callable[[], None] | None = None


def output_buffers(connection: object) -> collections.deque[bytes] | None:
    """The frames a pika connection has waiting to go out, or None where its transport is not
    the one this knows (pika keeps them in a private deque)."""
    transport = getattr(getattr(connection, "_impl", None), "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    return buffers if isinstance(buffers, collections.deque) else None


def coalesce_output(connection: object) -> None:
    """Join the frames waiting to go out into one buffer.

    pika's transport sends each frame with its own ``send()``: three system calls per message,
    and as many segments for the broker to read. Joined, a run of publishes leaves in a few.
    Where the transport is not the one this knows, frames go out as pika sends them.
    """
    buffers = output_buffers(connection)
    if buffers is not None and len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)


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
        on_open: Callable[[BlockingChannel], None] | None = None,
        attempts: int = 5,
        reconnect_window_s: float = 30.0,
    ) -> None:
        self._on_open = on_open
        self.attempts = attempts
        self.link = BrokerConnection(url, heartbeat_s, name, on_open=self._setup,
                                     reconnect_window_s=reconnect_window_s)
        # A second channel, whose confirms are collected after publishing (``send``/``pump``).
        self._async: _ImplChannel | None = None
        self._async_generation = -1
        self._unsent: list[Outgoing] = []
        self._unconfirmed: dict[int, Outgoing] = {}
        self._seq = 0
        self._returned: set[int] = set()
        self._nacked = False

    def _setup(self, channel: BlockingChannel) -> None:
        channel.confirm_delivery()
        if self._on_open is not None:
            self._on_open(channel)

    @property
    def channel(self) -> BlockingChannel:
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
        attempt, nacks_until, delay = 0, time.monotonic() + NACK_WINDOW_S, 0.05
        while attempt < self.attempts:
            attempt += 1
            try:
                self.channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
                return
            except pika.exceptions.UnroutableError as exc:
                raise UnroutableError(f"no queue for routing key {routing_key!r} on {exchange!r}") from exc
            except pika.exceptions.NackError as exc:
                last = exc
                log.warning("broker nacked a publish to %s (attempt %d)", exchange, attempt)
                # A quorum queue nacks while it has no leader (its node was lost and the
                # others are electing one): wait for that rather than give up at once. The
                # channel that saw it is dropped: in RabbitMQ 3.10 it keeps sending to the
                # lost leader and nacks every later publish, while a new channel reaches
                # the new one.
                self.link.close()
                if time.monotonic() + delay < nacks_until:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    attempt = min(attempt, self.attempts - 1)
            except RECOVERABLE as exc:
                last = exc
                log.warning("publish to %s failed: %s; reconnecting", exchange, type(exc).__name__)
                self.link.close()
        raise BrokerError(f"could not publish to {exchange!r}: {type(last).__name__}: {last}") from last

    # --- confirms collected later --------------------------------------------------------
    # The caller gets control back once the broker has the message; the confirm is taken
    # by a later ``send`` or ``pump``. Until then the message is kept: a nack, or a connection
    # lost before the confirm, publishes it again (receivers deduplicate by task id).
    def send(self, messages: list[Outgoing], confirm: bool = True) -> None:
        """Publish persistent messages (mandatory where they have an ``on_return``).

        With ``confirm``, return once the broker has confirmed every message sent so far:
        they are then safe from this process dying and from a broker restart. Without, return
        once they are written to the broker.

        Raises:
            BrokerError: the broker stayed unreachable or did not confirm within the reconnect
                window (the messages stay queued here and go out with the next ``send`` or
                ``pump``).
        """
        self._unsent.extend(messages)
        self._drive()
        if confirm:
            left = self.pump(wait_s=self.link.reconnect_window_s)
            if left:
                raise BrokerError(f"the broker did not confirm {left} messages within "
                                  f"{self.link.reconnect_window_s:g}s")

    def pump(self, wait_s: float = 0.0) -> int:
        """Take in confirms (waiting up to ``wait_s`` for all of them); returns how many
        messages are still unconfirmed."""
        if not self._unsent and not self._unconfirmed:
            return 0
        deadline = time.monotonic() + wait_s
        while True:
            self._drive()
            if not self._unconfirmed and not self._unsent:
                return 0
            left = deadline - time.monotonic()
            if left <= 0:
                return len(self._unconfirmed) + len(self._unsent)
            try:
                self._await(lambda: not self._unconfirmed or self._unsent, left)
            except RECOVERABLE as exc:
                log.warning("waiting for confirms failed: %s; reconnecting", type(exc).__name__)
                self.link.close()

    def _await(self, done: Callable[[], object], limit_s: float) -> None:
        """Run the connection's I/O until ``done()`` or ``limit_s`` passes.

        process_data_events cannot stop at a confirm taken by a channel callback (it waits out
        its time limit), so this runs pika's own flush loop with our condition.
        """
        conn = cast(_FlushingConnection, self.link.connection)  # open: ``_drive`` ran just before
        deadline = time.monotonic() + limit_s
        # The timer only wakes the loop at the deadline; it is removed unfired or fired.
        timer = conn.call_later(limit_s, lambda: None)
        try:
            conn._flush_output(lambda: time.monotonic() >= deadline or done())
        finally:
            conn.remove_timeout(timer)

    def _drive(self) -> None:
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                channel = self._async_channel()
                props = pika.BasicProperties(delivery_mode=PERSISTENT)
                while self._unsent:
                    message = self._unsent[0]
                    channel._impl.basic_publish(message.exchange, message.routing_key, message.body, props,
                                                mandatory=message.on_return is not None)
                    self._seq += 1
                    self._unconfirmed[self._seq] = self._unsent.pop(0)
                coalesce_output(self.link.connection)
                cast(pika.BlockingConnection, self.link.connection).process_data_events(0)  # opened above
                return
            except RECOVERABLE as exc:
                last = exc
                log.warning("publish failed: %s; reconnecting", type(exc).__name__)
                self.link.close()
        raise BrokerError(f"could not publish: {type(last).__name__}: {last}") from last

    def _async_channel(self) -> _ImplChannel:
        if self._nacked:
            # As in ``publish``: a channel that was nacked by a quorum queue without a leader
            # keeps being nacked; a new one (after a pause for the election) is not.
            self._nacked = False
            if self._async is not None and self._async.is_open:
                try:
                    cast(Any, self._async).close()
                except RECOVERABLE:
                    self.link.close()
            time.sleep(0.2)
        self.link.open()
        if self._async is None or self._async_generation != self.link.generation or not self._async.is_open:
            # A new channel numbers its publishes from 1: what the old one never confirmed goes again.
            self._unsent[:0] = [self._unconfirmed[n] for n in sorted(self._unconfirmed)]
            self._unconfirmed, self._seq, self._returned = {}, 0, set()
            self._async = cast(_ImplChannel, cast(pika.BlockingConnection, self.link.connection).channel())
            self._async._impl.confirm_delivery(self._on_confirm)
            self._async._impl.add_on_return_callback(self._on_return)
            self._async_generation = self.link.generation
        return self._async

    def _on_return(self, channel: pika.channel.Channel, method: pika.spec.Basic.Return,
                   properties: pika.spec.BasicProperties, body: bytes) -> None:
        # A return comes just before the confirm of the same message, which is the oldest
        # unconfirmed one with this body.
        for seq in sorted(self._unconfirmed):
            if seq not in self._returned and self._unconfirmed[seq].body == body:
                self._returned.add(seq)
                return

    def _on_confirm(self, frame: pika.frame.Method[pika.spec.Basic.Ack | pika.spec.Basic.Nack]) -> None:
        method = frame.method
        tag = method.delivery_tag
        done = [n for n in self._unconfirmed if n <= tag] if method.multiple else [tag]
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for seq in sorted(done):
            message = self._unconfirmed.pop(seq, None)
            if message is None:
                continue
            if nacked:
                log.warning("broker nacked a publish to %s; sending it again", message.exchange)
                self._unsent.append(message)
                self._nacked = True
            elif seq in self._returned and message.on_return is not None:
                message.on_return()
            self._returned.discard(seq)

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
