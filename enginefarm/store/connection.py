"""Connecting to Redis, and turning redis-py errors into StoreError."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol, cast

import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..config import REDIS_CLUSTER_SCHEMES
from ..errors import StoreError
from .sharded import REDIRECTED, connect_sharded, pool_for

UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)


def connect(url: str, retry_window_s: float = 30.0) -> redis.Redis:
    """A client for ``url``: a single server (``redis://``, ``rediss://``, ``unix://``) or a
    Redis Cluster (``redis+cluster://host:port,host:port``, see ``sharded``).

    A command that meets a broken connection is retried with backoff for about
    ``retry_window_s`` (a Redis restart). Every enginefarm write is safe to repeat: state
    changes are guarded scripts, and a lost pop is made good by reading statuses.

    Raises:
        StoreError: a Redis Cluster did not answer (a single server is reached lazily).
    """
    if url.partition("://")[0] in REDIS_CLUSTER_SCHEMES:
        return connect_sharded(url, retry_window_s)
    return connect_server(url, retry_window_s)


def connect_server(url: str, retry_window_s: float) -> redis.Redis:
    """One Redis server; connections open lazily from a thread-safe pool."""
    retries = max(0, int(retry_window_s))
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )


class _HeldConnection(Protocol):
    """What ``HeldScript`` uses of a pooled redis-py connection (whose methods are untyped)."""

    def send_command(self, *args: Any) -> None: ...

    def read_response(self) -> Any: ...

    def disconnect(self) -> None: ...


class HeldScript:
    """A Lua script run over a connection each thread keeps for it, skipping the pool and
    retry machinery on every call (the hot path of engines). A missing script, a broken
    connection or a redirection (a Redis Cluster moving the slot) falls back to the client's
    own path, which loads the script, retries and follows redirections.

    The first key of every call says which server runs it: on a Redis Cluster, the primary
    serving that key's slot (every key of a call shares the cluster's hash tag).
    """

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.script = client.register_script(source)
        self._local = threading.local()

    def _conn(self, key: str) -> _HeldConnection:
        pool = pool_for(self.client, key)
        held = getattr(self._local, "held", None)
        if held is not None:
            if held[0] is pool:
                return cast(_HeldConnection, held[1])
            held[0].release(held[1])  # the slot moved to another node
        conn = pool.get_connection()
        self._local.held = (pool, conn)
        return cast(_HeldConnection, conn)

    def _drop(self) -> None:
        held = getattr(self._local, "held", None)
        if held is not None:
            held[1].disconnect()

    def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        self.collect()
        try:
            conn = self._conn(keys[0])
            conn.send_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            return conn.read_response()
        except (redis.exceptions.NoScriptError, *REDIRECTED):
            pass
        except UNAVAILABLE:
            self._drop()
        return self.script(keys=keys, args=args)

    def send(self, keys: list[Any], args: list[Any]) -> None:
        """Send a call and return at once; ``collect`` reads its reply.

        Until then this thread's connection has a reply owed. Once the bytes are sent, the
        call is Redis's even if this process is killed: nothing owed to us can be unread yet,
        so the kernel closes the connection gracefully, after the bytes.
        """
        self.collect()
        try:
            conn = self._conn(keys[0])
            conn.send_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            self._local.owed = (conn, keys, args)
            return
        except REDIRECTED:
            pass
        except UNAVAILABLE:
            self._drop()
        self.script(keys=keys, args=args)

    def collect(self) -> Any:
        """The reply of the call ``send`` sent (None if none is owed); a call that failed is
        made again the ordinary way (every enginefarm script is safe to repeat)."""
        owed = getattr(self._local, "owed", None)
        if owed is None:
            return None
        self._local.owed = None
        conn, keys, args = owed
        try:
            return conn.read_response()
        except (redis.exceptions.NoScriptError, *REDIRECTED):
            pass
        except UNAVAILABLE:
            conn.disconnect()
        return self.script(keys=keys, args=args)


def redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


@contextlib.contextmanager
def translate_errors(what: str = "Redis") -> Iterator[None]:
    """Re-raise redis-py errors as StoreError, keeping the cause."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreError(f"{what} unavailable: {exc}") from exc
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise StoreError(f"{what} error: {type(exc).__name__}: {exc}") from exc
