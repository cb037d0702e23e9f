"""Task records: one Redis hash per task, moved between states by one atomic script.

A record's life: ``pending`` -> ``running`` -> ``completed`` | ``failed`` | ``aborted``
(``pending`` -> ``failed``/``aborted`` when it never ran; ``running`` -> ``pending`` when a
load-balanced task goes back for a retry). A terminal record never changes again, so a
redelivered message, a late engine or a replay cannot overwrite an outcome or produce a
second one.

Pickled values (the request, the result) are stored sealed with the cluster key and bound
to their task id: write access to Redis does not grant code execution in a client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from ..keys import KeyRing
from ..names import Names
from ..protocol import open_envelope, seal
from .connection import translate_errors

PENDING, RUNNING, COMPLETED, FAILED, ABORTED = "pending", "running", "completed", "failed", "aborted"
TERMINAL = frozenset({COMPLETED, FAILED, ABORTED})
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, ABORTED)

# KEYS[1] = task hash. ARGV: 1 task id, 2 allowed current states (comma list), 3 new state,
# 4 status-index key prefix, 5 engine running key (when starting), 6 engine index key,
# 7.. field/value pairs to set. Returns {'ok'|'refused'|'missing', previous state}.
_TRANSITION = """
local task, tid, new = KEYS[1], ARGV[1], ARGV[3]
local st = redis.call('HGET', task, 'status')
if not st then return {'missing', ''} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. st .. ',', 1, true) then return {'refused', st} end
for i = 7, #ARGV, 2 do redis.call('HSET', task, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', task, 'status', new)
redis.call('SREM', ARGV[4] .. st, tid)
redis.call('SADD', ARGV[4] .. new, tid)
if ARGV[6] ~= '' then redis.call('SADD', ARGV[6], tid) end
if st == 'running' then
  local rk = redis.call('HGET', task, '_running_key')
  if rk and redis.call('GET', rk) == tid then redis.call('DEL', rk) end
end
if new == 'running' then
  redis.call('HINCRBY', task, 'attempts', 1)
  redis.call('HSET', task, '_running_key', ARGV[5])
  redis.call('SET', ARGV[5], tid)
elseif new ~= 'pending' then
  local pk = redis.call('HGET', task, '_pending_key')
  if pk then redis.call('SREM', pk, tid) end
  local inbox = redis.call('HGET', task, '_inbox')
  if inbox then
    redis.call('LPUSH', inbox, tid)
    redis.call('EXPIRE', inbox, 86400)
  end
end
return {'ok', st}
"""


@dataclass
class NewTask:
    """What a client writes when it submits a task."""

    task_id: str
    kind: str
    client_id: str
    request: bytes
    engine_id: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskRecord:
    """A decoded task record. ``result`` and ``request`` stay sealed bytes."""

    task_id: str
    kind: str = ""
    status: str = ""
    engine_id: int | None = None
    client_id: str = ""
    submitted: float | None = None
    started: float | None = None
    completed: float | None = None
    attempts: int = 0
    stdout: str = ""
    stderr: str = ""
    error: dict[str, Any] | None = None
    summary: str = ""
    result: bytes | None = None
    request: bytes | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def decode(cls, task_id: str, raw: Mapping[bytes, bytes]) -> TaskRecord:
        text = {k.decode(): v for k, v in raw.items()}

        def s(name: str) -> str:
            value = text.get(name)
            return value.decode("utf-8", "replace") if value is not None else ""

        def f(name: str) -> float | None:
            value = s(name)
            return float(value) if value else None

        engine = s("engine_id")
        error = s("error")
        known = {"task_id", "kind", "status", "engine_id", "client_id", "submitted", "started",
                 "completed", "attempts", "stdout", "stderr", "error", "summary", "result", "request"}
        return cls(
            task_id=task_id,
            kind=s("kind"),
            status=s("status"),
            engine_id=int(engine) if engine else None,
            client_id=s("client_id"),
            submitted=f("submitted"),
            started=f("started"),
            completed=f("completed"),
            attempts=int(s("attempts") or 0),
            stdout=s("stdout"),
            stderr=s("stderr"),
            error=json.loads(error) if error else None,
            summary=s("summary"),
            result=text.get("result"),
            request=text.get("request"),
            extra={k: s(k) for k in text if k not in known and not k.startswith("_")},
        )


class Records:
    """Reads and writes task records of one cluster."""

    def __init__(self, redis_client: redis.Redis, names: Names, ring: KeyRing) -> None:
        self.redis = redis_client
        self.names = names
        self.ring = ring
        self._transition = redis_client.register_script(_TRANSITION)

    # --- sealed values --------------------------------------------------------------
    def seal_value(self, task_id: str, what: str, data: bytes) -> bytes:
        return seal(self.ring, {"task_id": task_id, "what": what}, data)

    def open_value(self, task_id: str, what: str, blob: bytes) -> bytes:
        """Raises: SignatureError when the stored value was not sealed for this task."""
        return open_envelope(self.ring, blob, expect={"task_id": task_id, "what": what}).payload

    # --- writing --------------------------------------------------------------------
    def create(self, tasks: Iterable[NewTask], pipe: Any = None) -> None:
        """Write new pending records (one transaction for all of them)."""
        names = self.names
        own = pipe is None
        with translate_errors():
            pipe = pipe if pipe is not None else self.redis.pipeline(transaction=True)
            now = time.time()
            for task in tasks:
                mapping: dict[str, Any] = {
                    "task_id": task.task_id,
                    "kind": task.kind,
                    "status": PENDING,
                    "client_id": task.client_id,
                    "submitted": repr(now),
                    "attempts": 0,
                    "request": task.request,
                    "_inbox": names.client_inbox(task.client_id),
                    **task.extra,
                }
                if task.engine_id is not None:
                    mapping["engine_id"] = task.engine_id
                    mapping["_pending_key"] = names.engine_pending(task.engine_id)
                    pipe.sadd(names.engine_pending(task.engine_id), task.task_id)
                    pipe.sadd(names.engine_index(task.engine_id), task.task_id)
                pipe.hset(names.task(task.task_id), mapping=mapping)
                pipe.zadd(names.history, {task.task_id: now})
                pipe.sadd(names.status_index(PENDING), task.task_id)
            if own:
                pipe.execute()

    def transition(
        self,
        task_id: str,
        allowed: Iterable[str],
        new: str,
        fields: Mapping[str, Any] | None = None,
        engine_id: int | None = None,
    ) -> tuple[bool, str]:
        """Move a record to ``new`` if its state is one of ``allowed``.

        Returns:
            (changed, previous state); previous is '' for a missing record.
        """
        names = self.names
        args: list[Any] = [
            task_id,
            ",".join(allowed),
            new,
            names.status_index(""),
            names.engine_running(engine_id) if engine_id is not None else "",
            names.engine_index(engine_id) if engine_id is not None else "",
        ]
        for key, value in (fields or {}).items():
            args.extend([key, value])
        with translate_errors():
            outcome, previous = self._transition(keys=[names.task(task_id)], args=args)
        return outcome == b"ok", previous.decode()

    def claim(self, task_id: str, engine_id: int) -> tuple[bool, str]:
        """pending -> running on ``engine_id``; refused if aborted, finished or unknown."""
        return self.transition(
            task_id, [PENDING], RUNNING, {"engine_id": engine_id, "started": repr(time.time())}, engine_id
        )

    def finish(self, task_id: str, status: str, fields: Mapping[str, Any]) -> bool:
        """running -> a terminal state, with the outcome's fields."""
        fields = {**fields, "completed": repr(time.time())}
        return self.transition(task_id, [RUNNING], status, fields)[0]

    def fail(
        self,
        task_id: str,
        error: Mapping[str, Any],
        allowed: Iterable[str] = (PENDING, RUNNING),
        status: str = FAILED,
    ) -> bool:
        """Record a failure (or abort) that did not come from running the task."""
        fields = {"error": json.dumps(dict(error)), "completed": repr(time.time())}
        return self.transition(task_id, allowed, status, fields)[0]

    # --- reading --------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        return self.get_many([task_id])[0]

    def get_many(self, task_ids: list[str]) -> list[TaskRecord | None]:
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hgetall(self.names.task(task_id))
            raws = pipe.execute()
        return [TaskRecord.decode(t, raw) if raw else None for t, raw in zip(task_ids, raws)]

    def statuses(self, task_ids: list[str]) -> list[str | None]:
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hget(self.names.task(task_id), "status")
            return [v.decode() if v is not None else None for v in pipe.execute()]

    def pop_inbox(self, client_id: str, timeout_s: float) -> list[str]:
        """Task ids whose outcome was recorded for this client; waits up to ``timeout_s``."""
        key = self.names.client_inbox(client_id)
        with translate_errors():
            first = self.redis.brpop([key], timeout=max(timeout_s, 0.01))
            if first is None:
                return []
            rest = self.redis.rpop(key, 1000) or []
        return [first[1].decode(), *(v.decode() for v in rest)]

    def count(self, name: str, amount: int = 1) -> None:
        with translate_errors():
            self.redis.incrby(self.names.counter(name), amount)

    def counter(self, name: str) -> int:
        with translate_errors():
            return int(self.redis.get(self.names.counter(name)) or 0)


def error_fields(ename: str, evalue: str, traceback: str = "") -> dict[str, str]:
    return {"ename": ename, "evalue": evalue, "traceback": traceback}


__all__ = [
    "ABORTED", "COMPLETED", "FAILED", "PENDING", "RUNNING", "STATUSES", "TERMINAL",
    "NewTask", "Records", "TaskRecord", "error_fields",
]
