"""Opening (and re-opening) a blocking pika connection, with errors translated."""

from __future__ import annotations

import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from ..config import amqp_tls_options, split_urls
from ..errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

log = logging.getLogger(__name__)

# Errors after which the connection (or channel) is unusable and must be re-opened.
RECOVERABLE = (
    pika.exceptions.AMQPConnectionError,
    # A handshake that times out (a broker too busy to answer 200 engines starting at once,
    # or a port that accepts but never speaks AMQP) is raised as this, not as the above.
    AMQPConnectorException,
    pika.exceptions.ChannelClosed,
    pika.exceptions.ChannelWrongStateError,
    ConnectionError,
    OSError,
)


def tls_context(options: dict[str, str]) -> ssl.SSLContext:
    """Verifies the server against ``ssl_ca_certs`` (else the system's CAs) and its name;
    presents ``ssl_certfile``/``ssl_keyfile`` when the server asks for a client certificate.

    Raises:
        ConfigError: a file is missing or unusable.
    """
    try:
        context = ssl.create_default_context(cafile=options.get("ssl_ca_certs") or None)
        if options.get("ssl_certfile"):
            context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile") or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ENGINEFARM_AMQP_URL: TLS files unusable: {exc}") from exc
    return context


def connection_parameters(url: str, heartbeat_s: int, name: str) -> pika.URLParameters:
    url, options = amqp_tls_options(url)
    params = pika.URLParameters(url)
    if params.ssl_options is not None:
        # pika's own default context for amqps:// does not check the server's name.
        host = urllib.parse.urlsplit(url).hostname or "localhost"
        params.ssl_options = pika.SSLOptions(tls_context(options), server_hostname=host)
    params.heartbeat = heartbeat_s
    params.blocked_connection_timeout = max(60, heartbeat_s * 2)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.client_properties = {"connection_name": name, "product": "enginefarm"}
    return params


class BrokerConnection:
    """One pika connection and channel, re-opened on demand.

    ``url`` is one AMQP URL or several separated by commas (nodes of one RabbitMQ cluster).
    Opening tries them in turn; after a lost connection it starts with the URL after the one
    it had, so a surviving node is reached first, and the caller's ``on_open`` redeclares
    what the new connection needs.

    Not thread-safe: use it from one thread; other threads may only call
    ``call_threadsafe``.
    """

    def __init__(
        self,
        url: str,
        heartbeat_s: int = 30,
        name: str = "enginefarm",
        on_open: Callable[[BlockingChannel], None] | None = None,
        reconnect_window_s: float = 60.0,
    ) -> None:
        self.url = url
        self.urls = split_urls(url) or [url]
        self.heartbeat_s = heartbeat_s
        self.name = name
        self.on_open = on_open
        self.reconnect_window_s = reconnect_window_s
        self.connection: pika.BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        # Bumped on every re-open: delivery tags of an older generation are void.
        self.generation = 0
        # Which of ``urls`` the connection is (or was last) open to.
        self.current = 0

    def open(self) -> BlockingChannel:
        """Return an open channel, connecting (with retries, over every URL) if needed.

        Raises:
            BrokerError: no URL answered within the reconnect window, or the broker refused
                the credentials.
        """
        # A channel is only ever set together with its connection.
        if (self.channel is not None and self.channel.is_open
                and cast(pika.BlockingConnection, self.connection).is_open):
            return self.channel
        self.close()
        deadline = time.monotonic() + self.reconnect_window_s
        delay = 0.1
        while True:
            failure: BaseException | None = None
            for index in self._order():
                try:
                    return self._connect(index)
                except pika.exceptions.ProbableAuthenticationError as exc:
                    self.close()
                    # pika says "probable" of any connection lost while logging in: a node still
                    # booting resets it too. Only the broker's own refusal is final.
                    if "ACCESS_REFUSED" in str(exc):
                        raise BrokerError(f"RabbitMQ refused the credentials in the AMQP url: {exc}") from exc
                    failure = exc
                except RECOVERABLE as exc:
                    self.close()
                    failure = exc
                    if len(self.urls) > 1:
                        log.warning("RabbitMQ at %s not reachable (%s); trying the next URL",
                                    redact(self.urls[index]), type(exc).__name__)
            assert failure is not None  # every URL was tried and failed
            if time.monotonic() + delay > deadline:
                where = ", ".join(redact(u) for u in self.urls)
                raise BrokerError(
                    f"cannot reach RabbitMQ at {where}: {type(failure).__name__} {failure}"
                ) from failure
            log.warning("RabbitMQ not reachable (%s); retrying in %.1fs", type(failure).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _order(self) -> list[int]:
        """The URLs to try, by index: from the first at the start; after a lost connection
        from the one after the URL that was lost, ending with it."""
        count = len(self.urls)
        start = (self.current + 1) % count if self.generation else 0
        return [(start + n) % count for n in range(count)]

    def _connect(self, index: int) -> BlockingChannel:
        params = connection_parameters(self.urls[index], self.heartbeat_s, self.name)
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        if len(self.urls) > 1 and (index != self.current or not self.generation):
            log.info("connected to RabbitMQ at %s", redact(self.urls[index]))
        self.current = index
        self.generation += 1
        if self.on_open is not None:
            self.on_open(self.channel)
        return self.channel

    def close(self) -> None:
        conn, self.connection, self.channel = self.connection, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # closing a broken connection may raise anything
                log.debug("error closing connection", exc_info=True)

    def queue_depths(self, queues: list[str]) -> dict[str, int | None]:
        """Ready messages per queue (None for a queue that does not exist)."""
        self.open()
        depths: dict[str, int | None] = {}
        for queue in queues:
            channel = cast(pika.BlockingConnection, self.connection).channel()  # opened above
            try:
                depths[queue] = int(channel.queue_declare(queue, passive=True).method.message_count)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise BrokerError(f"cannot inspect queue {queue}: {exc}") from exc
                depths[queue] = None
            else:
                channel.close()
        return depths

    def purge_queue(self, queue: str) -> int:
        """Drop the ready messages of ``queue``; returns how many (0 if it does not exist)."""
        self.open()
        channel = cast(pika.BlockingConnection, self.connection).channel()  # opened above
        try:
            # PurgeOk's count is None only in one built locally; the broker's always has it.
            return int(cast(int, channel.queue_purge(queue).method.message_count))
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return 0
            raise BrokerError(f"cannot purge queue {queue}: {exc}") from exc
        finally:
            if channel.is_open:
                channel.close()

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue``; one that is already gone is no error.

        Raises:
            BrokerError: the broker could not be reached or refused. The connection is
                dropped, so the next call opens a fresh one.
        """
        channel = self.open()
        try:
            channel.queue_delete(queue)
        except RECOVERABLE as exc:
            self.close()
            raise BrokerError(f"cannot delete queue {queue}: {type(exc).__name__} {exc}") from exc

    def keepalive(self) -> None:
        """Service heartbeats of an otherwise idle connection (call from its own thread)."""
        conn = self.connection
        if conn is None:
            return
        try:
            conn.process_data_events(0)
        except RECOVERABLE:
            self.close()

    def call_threadsafe(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the connection's thread; False if the connection is gone."""
        conn = self.connection
        if conn is None or not conn.is_open:
            return False
        try:
            conn.add_callback_threadsafe(callback)
            return True
        except Exception:
            return False


def redact(url: str) -> str:
    """The url without its password, for logs and errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
