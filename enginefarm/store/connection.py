"""Connecting to Redis, and turning redis-py errors into StoreError."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
