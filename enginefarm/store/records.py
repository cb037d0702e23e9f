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
# What a client reads to turn a finished record into a result.
RESULT_FIELDS = ("task_id", "kind", "status", "engine_id", "client_id", "submitted", "started", "completed",
                 "attempts", "stdout", "stderr", "error", "summary", "result", "namespace_lost")

# KEYS[1] = task hash, KEYS[2] = scheduler backlog. ARGV: 1 task id, 2 allowed current states (comma list), 3 new state,
# 4 status-index key prefix, 5 engine running key (when starting), 6 engine index key,
# 7.. field/value pairs to set. Returns {'ok'|'refused'|'missing', previous state}.
_TRANSITION = """
local task, tid, new = KEYS[1], ARGV[1], ARGV[3]
local st = redis.call('HGET', task, 'status')
if not st then return {'missing', ''} end
if new == 'running' and st == 'running' and redis.call('GET', ARGV[5]) == tid then
  -- Our own claim, repeated after a lost reply: still ours.
  return {'ok', st, redis.call('HGET', task, 'attempts')}
end
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
  local notify = redis.call('HGET', task, '_notify')
  if notify then redis.call('LPUSH', notify, tid) end
  redis.call('ZREM', KEYS[2], tid)
  -- Bookkeeping a finished record no longer needs (keeps finished records small).
  redis.call('HDEL', task, '_running_key', '_pending_key', '_inbox', '_notify', '_seq')
end
return {'ok', st, redis.call('HGET', task, 'attempts')}
"""

# Back to the scheduler: a load-balanced task that failed with retries left, whose depend
# did not hold on its engine, or whose engine was lost. KEYS: task, scheduler pending zset,
# scheduler events list (the task stays known to the scheduler from now on).
# ARGV: 1 task id, 2 status-index prefix, 3 attempts delta (-1 when the task never really
# ran), 4 engine id to add to the list named by 5 ('failed_on', 'unmet' or 'lost_on'),
# 6.. field/value pairs to set.
_REQUEUE = """
local task, tid = KEYS[1], ARGV[1]
local st = redis.call('HGET', task, 'status')
if st ~= 'pending' and st ~= 'running' then return 0 end
if st == 'running' then
  local rk = redis.call('HGET', task, '_running_key')
  if rk and redis.call('GET', rk) == tid then redis.call('DEL', rk) end
end
local pk = redis.call('HGET', task, '_pending_key')
if pk then redis.call('SREM', pk, tid) end
redis.call('HDEL', task, '_pending_key')
if tonumber(ARGV[3]) ~= 0 then redis.call('HINCRBY', task, 'attempts', ARGV[3]) end
if ARGV[5] ~= '' then
  local prev = redis.call('HGET', task, ARGV[5])
  redis.call('HSET', task, ARGV[5], (prev and prev ~= '') and (prev .. ',' .. ARGV[4]) or ARGV[4])
end
for i = 6, #ARGV, 2 do redis.call('HSET', task, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', task, 'status', 'pending')
redis.call('SREM', ARGV[2] .. st, tid)
redis.call('SADD', ARGV[2] .. 'pending', tid)
redis.call('HSETNX', task, '_seq', redis.call('HGET', task, 'submitted') or '0')
redis.call('ZADD', KEYS[2], tonumber(redis.call('HGET', task, '_seq')), tid)
redis.call('HSET', task, '_notify', KEYS[3])
redis.call('LPUSH', KEYS[3], tid)
return 1
"""

# The scheduler routes a task to an engine (before publishing it). KEYS: task, scheduler
# pending zset, engine pending set, registry hash, heartbeat zset. ARGV: task id, engine id.
# Returns 1 when assigned, 0 when the task is no longer pending, -1 when the engine is gone.
_ASSIGN = """
local task, tid = KEYS[1], ARGV[1]
local st = redis.call('HGET', task, 'status')
if st ~= 'pending' then
  redis.call('ZREM', KEYS[2], tid)
  return 0
end
if redis.call('HEXISTS', KEYS[4], ARGV[2]) == 0 or redis.call('ZSCORE', KEYS[5], ARGV[2]) == false then
  return -1
end
local old = redis.call('HGET', task, '_pending_key')
if old and old ~= KEYS[3] then redis.call('SREM', old, tid) end
redis.call('SADD', KEYS[3], tid)
redis.call('HSET', task, '_pending_key', KEYS[3])
redis.call('ZREM', KEYS[2], tid)
return 1
"""


# The scheduler took a submitted task. KEYS: task, scheduler pending zset. ARGV: id, order.
# A task aborted before the scheduler saw it, or already routed, is not queued again.
_ENQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' or redis.call('HEXISTS', KEYS[1], '_pending_key') == 1 then
  return 0
end
if redis.call('HSETNX', KEYS[1], '_seq', ARGV[2]) == 0 and redis.call('ZSCORE', KEYS[2], ARGV[1]) ~= false then
  return 2
end
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], '_seq'), ARGV[1])
return 1
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
    # Scheduler bookkeeping: arrival order, and whether the task is routed to an engine now.
    seq: float = 0.0
    routed: bool = False

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
            seq=f("_seq") or 0.0,
            routed="_pending_key" in text,
        )


class Records:
    """Reads and writes task records of one cluster."""

    def __init__(self, redis_client: redis.Redis, names: Names, ring: KeyRing) -> None:
        self.redis = redis_client
        self.names = names
        self.ring = ring
        self._transition = redis_client.register_script(_TRANSITION)
        self._requeue = redis_client.register_script(_REQUEUE)
        self._assign = redis_client.register_script(_ASSIGN)
        self._enqueue = redis_client.register_script(_ENQUEUE)

    # --- sealed values --------------------------------------------------------------
    def seal_value(self, task_id: str, what: str, data: bytes) -> bytes:
        # Bound to its task and purpose; no send time or message id: it is not a message.
        return seal(self.ring, {"task_id": task_id, "what": what}, data, stamp=False)

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
            for position, task in enumerate(tasks):
                # Distinct, increasing times keep a batch in submission order in the history.
                submitted = now + position * 1e-6
                mapping: dict[str, Any] = {
                    "task_id": task.task_id,
                    "kind": task.kind,
                    "status": PENDING,
                    "client_id": task.client_id,
                    "submitted": repr(submitted),
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
                pipe.zadd(names.history, {task.task_id: submitted})
                pipe.sadd(names.status_index(PENDING), task.task_id)
            if own:
                pipe.execute()

    def _transition_args(self, task_id: str, allowed: Iterable[str], new: str,
                         fields: Mapping[str, Any] | None, engine_id: int | None) -> list[Any]:
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
        return args

    @staticmethod
    def _reply(reply: list[Any]) -> tuple[bool, str, int]:
        attempts = int(reply[2]) if len(reply) > 2 and reply[2] is not None else 0
        return reply[0] == b"ok", reply[1].decode(), attempts

    def transition(
        self,
        task_id: str,
        allowed: Iterable[str],
        new: str,
        fields: Mapping[str, Any] | None = None,
        engine_id: int | None = None,
    ) -> tuple[bool, str, int]:
        """Move a record to ``new`` if its state is one of ``allowed``.

        Returns:
            (changed, previous state, attempts); previous is '' for a missing record.
        """
        args = self._transition_args(task_id, allowed, new, fields, engine_id)
        with translate_errors():
            return self._reply(self._transition(keys=[self.names.task(task_id), self.names.scheduler_pending],
                                                args=args))

    def finish_and_claim(self, task_id: str, status: str, fields: Mapping[str, Any],
                         next_task_id: str, engine_id: int) -> tuple[bool, str, int]:
        """``finish`` one task and ``claim`` the next in a single round trip; returns the claim."""
        now = repr(time.time())
        pipe = self.redis.pipeline(transaction=False)
        finish_args = self._transition_args(task_id, [RUNNING], status, {**fields, "completed": now}, None)
        claim_args = self._transition_args(next_task_id, [PENDING], RUNNING,
                                           {"engine_id": engine_id, "started": now}, engine_id)
        backlog = self.names.scheduler_pending
        self._transition(keys=[self.names.task(task_id), backlog], args=finish_args, client=pipe)
        self._transition(keys=[self.names.task(next_task_id), backlog], args=claim_args, client=pipe)
        with translate_errors():
            _, claimed = pipe.execute()
        return self._reply(claimed)

    def requeue(
        self,
        task_id: str,
        engine_id: int,
        listed_as: str,
        attempts_delta: int = 0,
        fields: Mapping[str, Any] | None = None,
    ) -> bool:
        """Hand a load-balanced task back to the scheduler (see ``_REQUEUE``)."""
        args: list[Any] = [task_id, self.names.status_index(""), attempts_delta, engine_id, listed_as]
        for key, value in (fields or {}).items():
            args.extend([key, value])
        with translate_errors():
            keys = [self.names.task(task_id), self.names.scheduler_pending, self.names.scheduler_events]
            return bool(self._requeue(keys=keys, args=args))

    def enqueue(self, task_id: str, seq: float) -> int:
        """The scheduler accepts a task: 1 queued, 2 already queued, 0 not pending (drop it)."""
        with translate_errors():
            return int(self._enqueue(keys=[self.names.task(task_id), self.names.scheduler_pending],
                                     args=[task_id, repr(seq)]))

    def status_counts(self) -> dict[str, int]:
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for status in STATUSES:
                pipe.scard(self.names.status_index(status))
            return dict(zip(STATUSES, (int(v) for v in pipe.execute())))

    def unassigned(self, engine_ids: Iterable[int]) -> list[str]:
        """Pending tasks no engine holds yet: in the scheduler's backlog, or plain FIFO work
        waiting in (or just taken from) the shared queue."""
        keys = [self.names.status_index(PENDING), *(self.names.engine_pending(e) for e in engine_ids)]
        with translate_errors():
            ids = [t.decode() for t in self.redis.sdiff(keys)]
            scores = self.redis.zmscore(self.names.history, ids) if ids else []
        # In submission order, like the history.
        return [t for _, t in sorted(zip((s or 0.0 for s in scores), ids))]

    def backlog_size(self) -> int:
        with translate_errors():
            return int(self.redis.zcard(self.names.scheduler_pending))

    def scheduler_backlog(self) -> list[tuple[str, float]]:
        """Every task waiting for the scheduler, with its arrival order."""
        with translate_errors():
            return [(t.decode(), s) for t, s in self.redis.zrange(self.names.scheduler_pending, 0, -1, withscores=True)]

    def set_fields(self, task_id: str, fields: Mapping[str, Any], only_if: str = PENDING) -> None:
        """Annotate a record (e.g. why it waits) while it is still in state ``only_if``."""
        key = self.names.task(task_id)
        with translate_errors():
            if self.redis.hget(key, "status") == only_if.encode():
                self.redis.hset(key, mapping=dict(fields))

    def clear_fields(self, task_ids: Iterable[str], *fields: str) -> None:
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hdel(self.names.task(task_id), *fields)
            pipe.execute()

    def pop_events(self, timeout_s: float) -> list[str]:
        """Task ids the scheduler must look at again; waits up to ``timeout_s``."""
        return self._pop(self.names.scheduler_events, timeout_s)

    def _pop(self, key: str, timeout_s: float) -> list[str]:
        """Everything in the list ``key``, oldest first, waiting up to ``timeout_s`` for the first."""
        with translate_errors():
            if timeout_s <= 0:
                return [v.decode() for v in self.redis.rpop(key, 1000) or []]
            first = self.redis.brpop([key], timeout=timeout_s)
            if first is None:
                return []
            rest = self.redis.rpop(key, 1000) or []
        return [first[1].decode(), *(v.decode() for v in rest)]

    def assign(self, task_id: str, engine_id: int) -> int:
        """Record that the scheduler routed a task to an engine (see ``_ASSIGN``)."""
        n = self.names
        keys = [n.task(task_id), n.scheduler_pending, n.engine_pending(engine_id), n.engines, n.heartbeats]
        with translate_errors():
            return int(self._assign(keys=keys, args=[task_id, engine_id]))

    def claim(self, task_id: str, engine_id: int) -> tuple[bool, str, int]:
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

    def get_many(self, task_ids: list[str], with_request: bool = True) -> list[TaskRecord | None]:
        """Records by id (None where missing). Without the request, less crosses the wire."""
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                if with_request:
                    pipe.hgetall(self.names.task(task_id))
                else:
                    pipe.hmget(self.names.task(task_id), RESULT_FIELDS)
            raws = pipe.execute()
        if not with_request:
            raws = [{k.encode(): v for k, v in zip(RESULT_FIELDS, values) if v is not None} for values in raws]
        return [TaskRecord.decode(t, raw) if raw else None for t, raw in zip(task_ids, raws)]

    def statuses(self, task_ids: list[str]) -> list[str | None]:
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hget(self.names.task(task_id), "status")
            return [v.decode() if v is not None else None for v in pipe.execute()]

    def pop_inbox(self, client_id: str, timeout_s: float) -> list[str]:
        """Task ids whose outcome was recorded for this client; waits up to ``timeout_s``."""
        return self._pop(self.names.client_inbox(client_id), timeout_s)

    def set_scheme(self, scheme: str) -> None:
        with translate_errors():
            self.redis.set(self.names.scheduler_scheme, scheme)

    def scheme(self) -> str | None:
        """The active scheduler's scheme, or None if no scheduler has run."""
        with translate_errors():
            value = self.redis.get(self.names.scheduler_scheme)
        return value.decode() if value is not None else None

    def request_shutdown(self, ttl_s: int = 60) -> None:
        """Ask every scheduler of the cluster to exit."""
        with translate_errors():
            self.redis.set(self.names.shutdown_flag, "1", ex=ttl_s)

    def shutdown_requested(self) -> bool:
        with translate_errors():
            return bool(self.redis.exists(self.names.shutdown_flag))

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
