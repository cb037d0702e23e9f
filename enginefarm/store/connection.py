"""Connecting to Redis, and turning redis-py errors into StoreError."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis
import redis.exceptions

from ..errors import StoreError

UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)


def connect(url: str) -> redis.Redis:
    """A client for ``url``; connections open lazily from a thread-safe pool."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry_on_timeout=False,
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
