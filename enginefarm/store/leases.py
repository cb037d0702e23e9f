"""A lease in Redis: held by one process at a time, lost if not renewed in time."""

from __future__ import annotations

from typing import cast

import redis

from .connection import translate_errors

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, redis_client: redis.Redis, key: str, holder: str, ttl_s: float) -> None:
        self.redis = redis_client
        self.key = key
        self.holder = holder
        self.ttl_ms = int(ttl_s * 1000)
        self._renew = redis_client.register_script(_RENEW)
        self._release = redis_client.register_script(_RELEASE)

    def acquire(self) -> bool:
        with translate_errors():
            return bool(self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """False when someone else holds the lease now (ours expired)."""
        with translate_errors():
            return bool(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))

    def release(self) -> None:
        with translate_errors():
            self._release(keys=[self.key], args=[self.holder])

    def holder_now(self) -> str | None:
        with translate_errors():
            value = self.redis.get(self.key)
        # Replies are bytes: the client does not decode them (see ``connect``).
        return cast(bytes, value).decode() if value is not None else None
