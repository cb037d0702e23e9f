"""When this process last met a broken Redis connection, even one its retries hid.

A Sentinel failover can pass within redis-py's retries: no call fails, yet every connection
broke and each process found the new primary at its own time. Judging peers dead must know
that happened (``recovery.Reaper``), so every retry notes the moment it saw a connection fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from redis.backoff import ExponentialBackoff
from redis.retry import Retry

T = TypeVar("T")

_lock = threading.Lock()
_last_broken: float | None = None


def note_broken() -> None:
    global _last_broken
    with _lock:
        _last_broken = time.monotonic()


def last_broken() -> float | None:
    """``time.monotonic()`` of the last connection failure this process saw, or None."""
    return _last_broken


class NotingRetry(Retry):
    """redis-py's Retry, noting each connection failure before it backs off and tries again."""

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> T:
        def failed(*failure: Any) -> Any:
            note_broken()
            return fail(*failure)
        return super().call_with_retry(do, failed, *args, **kwargs)


def retry_for(window_s: float) -> Retry:
    """Retries with backoff capped at 1 s, for about ``window_s`` seconds."""
    return NotingRetry(ExponentialBackoff(cap=1.0, base=0.05), max(0, int(window_s)))
