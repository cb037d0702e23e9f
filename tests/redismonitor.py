"""Redis's MONITOR on a thread: every command the server gets, handed to a callback."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis


class RedisMonitor:
    """On from construction (no command after it is missed) until ``close``."""

    def __init__(self, redis_url: str, on_command: Callable[[dict[str, Any]], None]) -> None:
        self.on_command = on_command
        self.monitor = redis.Redis.from_url(redis_url).monitor()
        self.monitor.__enter__()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        try:
            for command in self.monitor.listen():
                self.on_command(command)
        except (redis.RedisError, OSError, ValueError):
            pass  # closed

    def close(self) -> None:
        # The socket first, so the reader ends on a closed connection; only then is the monitor
        # released (redis-py sets its connection to None then, under a reader still parsing).
        self.monitor.connection.disconnect()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the MONITOR reader did not end"
        self.monitor.__exit__(None, None, None)
