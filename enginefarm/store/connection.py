"""Connecting to Redis, and turning redis-py errors into StoreError."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import StoreError

UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)


def connect(url: str, retry_window_s: float = 30.0) -> redis.Redis:
    """A client for ``url``; connections open lazily from a thread-safe pool.

    A command that meets a broken connection is retried with backoff for about
    ``retry_window_s`` (a Redis restart). Every enginefarm write is safe to repeat: state
    changes are guarded scripts, and a lost pop is made good by reading statuses.
    """
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
    retry machinery on every call (the hot path of engines). A missing script or a broken
    connection falls back to the client's own path, which loads the script and retries."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.script = client.register_script(source)
        self._local = threading.local()

    def _conn(self) -> _HeldConnection:
        conn: _HeldConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.client.connection_pool.get_connection()
        return conn

    def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        self.collect()
        conn = self._conn()
        try:
            conn.send_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            pass
        except UNAVAILABLE:
            conn.disconnect()
        return self.script(keys=keys, args=args)

    def send(self, keys: list[Any], args: list[Any]) -> None:
        """Send a call and return at once; ``collect`` reads its reply.

        Until then this thread's connection has a reply owed. Once the bytes are sent, the
        call is Redis's even if this process is killed: nothing owed to us can be unread yet,
        so the kernel closes the connection gracefully, after the bytes.
        """
        self.collect()
        conn = self._conn()
        try:
            conn.send_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            self._local.owed = (keys, args)
        except UNAVAILABLE:
            conn.disconnect()
            self.script(keys=keys, args=args)

    def collect(self) -> Any:
        """The reply of the call ``send`` sent (None if none is owed); a call that failed is
        made again the ordinary way (every enginefarm script is safe to repeat)."""
        owed = getattr(self._local, "owed", None)
        if owed is None:
            return None
        self._local.owed = None
        conn = self._conn()
        try:
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            pass
        except UNAVAILABLE:
            conn.disconnect()
        return self.script(keys=owed[0], args=owed[1])


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
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"{what} error: {type(exc).__name__}: {exc}") from exc
