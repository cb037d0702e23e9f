"""The engine registry: id allocation, heartbeats, liveness and engine properties.

Liveness is judged on Redis server time (``TIME`` inside scripts), so engines on machines
with skewed clocks agree on who is alive.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from ..errors import DecodeError
from ..names import Names
from .connection import translate_errors

log = logging.getLogger(__name__)

# Lowest free id wins, so a restarted cluster gets ids 0..n-1 again. An id stays taken until
# its engine is unregistered (cleanly or by a reaper), so a dead engine's queue is never
# inherited by a newcomer. The engine is not live (not in the heartbeat set) until it
# activates, which it does once its queue exists.
_REGISTER = """
local t = redis.call('TIME')
local info = cjson.decode(ARGV[2])
info['registered'] = tonumber(t[1]) + tonumber(t[2]) / 1e6
local encoded = cjson.encode(info)
for id = 0, tonumber(ARGV[1]) - 1 do
  if redis.call('HSETNX', KEYS[1], id, encoded) == 1 then
    return id
  end
end
return -1
"""

_ACTIVATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1e6, ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"""

# A registered engine that is not live yet (still connecting to the broker, declaring its
# queues) renews its registration time, so that it is not taken for one that died starting.
# 1: renewed; 2: live already (its activation has just landed); 0: it was reaped meanwhile.
_STARTING = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) ~= false then return 2 end
local ok, info = pcall(cjson.decode, raw)
if not ok or type(info) ~= 'table' then return 1 end
local t = redis.call('TIME')
info['registered'] = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(info))
return 1
"""

# An engine removed from the heartbeat set has been declared dead: it must not come back.
_HEARTBEAT = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) == false or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1e6, ARGV[1])
return 1
"""

# Redis's clock, read where the heartbeats are (on a Redis Cluster, the shard of the cluster's
# keys, whose clock the scripts above use). KEYS[1]: the heartbeat set, which routes the call.
_NOW = "return redis.call('TIME')"

# ARGV[1] = timeout; ARGV[2] = 'live' or 'stale'
_BY_AGE = """
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) + tonumber(t[2]) / 1e6 - tonumber(ARGV[1])
if ARGV[2] == 'live' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cutoff, '+inf')
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
"""


def _log_invalid(kind: str, message: str) -> None:
    log.error("%s", message)


def _engine_ids(raw: Iterable[bytes | str | int], note: Callable[[str, str], None], where: str) -> list[int]:
    """Engine ids read from Redis; a member that is not one is reported and skipped."""
    ids = []
    for item in raw:
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        if text.isdigit() and len(text) < 10:
            ids.append(int(text))
        else:
            note("registry", f"{where} holds {text[:40]!r}, which is not an engine id; skipped")
    return sorted(ids)


def _registered_at(info: dict[str, Any]) -> float:
    value = info.get("registered", 0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _json_value(key: str, value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"property {key!r} must be JSON-serializable: {exc}") from exc


class Registry:
    """Engines of one cluster, as seen in Redis."""

    def __init__(self, redis_client: redis.Redis, names: Names, engine_timeout_s: float) -> None:
        self.redis = redis_client
        self.names = names
        self.engine_timeout_s = engine_timeout_s
        # Told of every malformed entry met (kind, message); daemons count them.
        self.on_invalid: Callable[[str, str], None] = _log_invalid
        self._register = redis_client.register_script(_REGISTER)
        self._heartbeat = redis_client.register_script(_HEARTBEAT)
        self._starting = redis_client.register_script(_STARTING)
        self._activate = redis_client.register_script(_ACTIVATE)
        self._by_age = redis_client.register_script(_BY_AGE)
        self._now = redis_client.register_script(_NOW)

    # --- membership ----------------------------------------------------------------
    def register(self, info: dict[str, Any], max_engines: int) -> int:
        """Take the lowest free engine id; -1 when ``max_engines`` are registered.

        Raises:
            StoreError: Redis is unavailable.
        """
        with translate_errors():
            return int(
                self._register(
                    keys=[self.names.engines, self.names.heartbeats],
                    args=[max_engines, json.dumps(info)],
                )
            )

    def activate(self, engine_id: int) -> bool:
        """Make a registered engine live (targetable); call once its queue exists."""
        with translate_errors():
            return bool(self._activate(keys=[self.names.engines, self.names.heartbeats, self.names.properties_version],
                                       args=[engine_id]))

    def still_starting(self, engine_id: int) -> bool:
        """Renew a starting engine's registration (or find it live already, its activation
        racing this call); False means it was reaped meanwhile."""
        with translate_errors():
            return bool(self._starting(keys=[self.names.engines, self.names.heartbeats], args=[engine_id]))

    def heartbeat(self, engine_id: int) -> bool:
        """Refresh liveness; False means this engine was declared dead and must stop."""
        with translate_errors():
            return bool(
                self._heartbeat(keys=[self.names.engines, self.names.heartbeats], args=[engine_id])
            )

    def mark_dead(self, engine_id: int) -> bool:
        """Take an engine out of the live set (its id stays reserved). True if it was in it."""
        with translate_errors():
            return bool(self.redis.zrem(self.names.heartbeats, engine_id))

    def unregister(self, engine_id: int) -> None:
        """Forget an engine entirely and free its id."""
        names = self.names
        with translate_errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(names.heartbeats, engine_id)
            pipe.hdel(names.engines, engine_id)
            pipe.delete(
                names.engine_properties(engine_id),
                names.engine_claimed(engine_id),
                names.engine_pending(engine_id),
            )
            pipe.execute()

    def live_ids(self) -> list[int]:
        """Engines whose heartbeat is fresher than the timeout, sorted."""
        with translate_errors():
            ids = self._by_age(keys=[self.names.heartbeats], args=[self.engine_timeout_s, "live"])
        return _engine_ids(ids, self.on_invalid, "the heartbeat set")

    def stale_ids(self) -> list[int]:
        """Registered engines whose heartbeat is older than the timeout."""
        with translate_errors():
            ids = self._by_age(keys=[self.names.heartbeats], args=[self.engine_timeout_s, "stale"])
        return _engine_ids(ids, self.on_invalid, "the heartbeat set")

    def orphan_ids(self) -> list[int]:
        """Ids held in the registry, never live or no longer live, for longer than twice the timeout.

        These are left by an engine that died while starting, or a reaper that died midway.
        """
        with translate_errors():
            held = self.redis.hgetall(self.names.engines)
            beating = set(_engine_ids(cast("list[bytes]", self.redis.zrange(self.names.heartbeats, 0, -1)),
                                      self.on_invalid, "the heartbeat set"))
        cutoff = self.server_time() - 2 * self.engine_timeout_s
        entries = self._entries(held)
        # An entry that does not decode counts as registered long ago: if its engine is not
        # beating, it is reaped and its id freed.
        return sorted(eid for eid, info in entries.items()
                      if eid not in beating and _registered_at(info) < cutoff)

    def server_time(self) -> float:
        """Redis's clock, the one heartbeats are judged by."""
        with translate_errors():
            seconds, micros = self._now(keys=[self.names.heartbeats])
        return int(seconds) + int(micros) / 1e6

    def info(self, engine_id: int | None = None) -> dict[int, dict[str, Any]]:
        """Registration info (host, pid, started, heartbeat) of one or all engines."""
        with translate_errors():
            if engine_id is None:
                raw = cast("dict[Any, bytes]", self.redis.hgetall(self.names.engines))
            else:
                value = cast("bytes | None", self.redis.hget(self.names.engines, engine_id))
                raw = {engine_id: value} if value is not None else {}
            beats = dict(cast("list[tuple[bytes, float]]",
                              self.redis.zrange(self.names.heartbeats, 0, -1, withscores=True)))
        result = self._entries(raw)
        for eid, entry in result.items():
            entry["last_heartbeat"] = beats.get(str(eid).encode())
        return result

    def _entries(self, raw: dict[Any, Any]) -> dict[int, dict[str, Any]]:
        """Registry entries by engine id; a field or value that does not decode is reported,
        and its value replaced by ``{"invalid": true}``."""
        entries: dict[int, dict[str, Any]] = {}
        for eid in _engine_ids(raw, self.on_invalid, "the engine registry"):
            # None for a field that names its id otherwise (b"07"): json.loads raises TypeError.
            value: Any = raw.get(str(eid).encode(), raw.get(eid))
            try:
                entry = json.loads(value)
                if not isinstance(entry, dict):
                    raise ValueError("not an object")
            except (ValueError, TypeError, RecursionError) as exc:
                self.on_invalid("registry", f"registry entry of engine {eid} is not a JSON object ({exc}); "
                                            "treated as registered long ago")
                entry = {"invalid": True}
            entries[eid] = entry
        return entries

    def lock_reaping(self, engine_id: int, ttl_s: int = 60) -> bool:
        """Only one reaper settles a dead engine; the lock expires if that reaper dies."""
        with translate_errors():
            return bool(self.redis.set(self.names.reap_lock(engine_id), "1", nx=True, ex=ttl_s))

    def unlock_reaping(self, engine_id: int) -> None:
        with translate_errors():
            self.redis.delete(self.names.reap_lock(engine_id))

    # --- what an engine is doing ----------------------------------------------------
    def running(self, engine_id: int) -> list[str]:
        """The tasks an engine has claimed and not finished (running, or next in its batch)."""
        with translate_errors():
            claimed = cast("set[bytes]", self.redis.smembers(self.names.engine_claimed(engine_id)))
            return sorted(t.decode() for t in claimed)

    def running_many(self, engine_ids: list[int]) -> list[set[str]]:
        """What each engine has claimed, in one round trip."""
        if not engine_ids:
            return []
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for engine_id in engine_ids:
                pipe.smembers(self.names.engine_claimed(engine_id))
            return [{t.decode() for t in members} for members in pipe.execute()]

    def pending(self, engine_id: int) -> set[str]:
        with translate_errors():
            return {v.decode() for v in cast("set[bytes]", self.redis.smembers(self.names.engine_pending(engine_id)))}

    def pending_count(self, engine_id: int) -> int:
        with translate_errors():
            return int(self.redis.scard(self.names.engine_pending(engine_id)))

    # --- properties (JSON values) ----------------------------------------------------
    def set_properties(self, engine_id: int, properties: dict[str, Any]) -> None:
        """Raises: ValueError for a value that is not JSON-serializable."""
        if not properties:
            return
        encoded: dict[FieldT, EncodableT] = {str(k): _json_value(k, v) for k, v in properties.items()}
        with translate_errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.names.engine_properties(engine_id), mapping=encoded)
            pipe.incr(self.names.properties_version)
            pipe.execute()

    def get_properties(self, engine_id: int, keys: list[str] | None = None) -> dict[str, Any]:
        """Raises: DecodeError naming a property whose stored value is not JSON."""
        properties, bad = self.readable_properties(engine_id, keys)
        if bad:
            raise DecodeError(f"property {bad[0][:64]!r}", f"of engine {engine_id} is not JSON")
        return properties

    def readable_properties(self, engine_id: int, keys: list[str] | None = None) -> tuple[dict[str, Any], list[str]]:
        """(the properties that decode, the names of those that do not)."""
        key = self.names.engine_properties(engine_id)
        with translate_errors():
            if keys is None:
                raw = {k.decode("utf-8", "replace"): v
                       for k, v in cast("dict[bytes, bytes]", self.redis.hgetall(key)).items()}
            else:
                values = cast("list[bytes | None]", self.redis.hmget(key, keys)) if keys else []
                raw = {k: v for k, v in zip(keys, values) if v is not None}
        properties, bad = {}, []
        for name, value in raw.items():
            try:
                properties[name] = json.loads(value)
            except (ValueError, RecursionError):
                bad.append(name)
        return properties, bad

    def has_properties(self, engine_id: int, keys: list[str]) -> list[bool]:
        key = self.names.engine_properties(engine_id)
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for name in keys:
                pipe.hexists(key, name)
            return [bool(v) for v in pipe.execute()]

    def del_properties(self, engine_id: int, keys: list[str]) -> None:
        if keys:
            with translate_errors():
                self.redis.hdel(self.names.engine_properties(engine_id), *keys)
                self.redis.incr(self.names.properties_version)

    def clear_properties(self, engine_id: int) -> None:
        with translate_errors():
            self.redis.delete(self.names.engine_properties(engine_id))
            self.redis.incr(self.names.properties_version)

    def properties_version(self) -> int:
        with translate_errors():
            raw = self.redis.get(self.names.properties_version) or b"0"
        try:
            return int(raw)
        except ValueError:
            self.on_invalid("registry", f"the properties version {raw[:40]!r} is not a number")
            # Changes from one bad value to another go unseen; the next good write is seen.
            return -2
