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
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from ..errors import DecodeError, EngineDeclaredDead, SignatureError, StoreError
from ..keys import KeyRing
from ..names import Names
from ..protocol import open_envelope, seal
from ..task import RESULT_FIELDS, STATUSES, TERMINAL, Status, TaskRecord
from .connection import HeldScript, ReplicaWait, translate_errors
from .record_scripts import ASSIGN, CREATE, ENQUEUE, RENEW, REQUEUE, TRANSITION, WATCH, INBOX_TTL_S, RENEW_BATCH

PENDING, RUNNING, COMPLETED, FAILED, ABORTED = (
    Status.PENDING, Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.ABORTED)
log = logging.getLogger(__name__)

# How long a fresh message may wait for its task record before it counts as a replay: a
# client writes the record while it publishes, and the write can reach Redis a moment after
# the message reaches an engine or the scheduler (a large record is read in several parts).
RECORD_GRACE_S = 1.0

# An inbox entry that only wakes its reader (no task id is empty).
WAKE = b""


@dataclass
class NewTask:
    """What a client writes when it submits a task."""

    task_id: str
    kind: str
    client_id: str
    request: bytes
    engine_id: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


class Records:
    """Reads and writes task records of one cluster."""

    def __init__(self, redis_client: redis.Redis, names: Names, ring: KeyRing,
                 redispatch_window_s: float = 6 * 3600.0, replicas: ReplicaWait | None = None) -> None:
        self.redis = redis_client
        self.names = names
        self.ring = ring
        self.redispatch_window_s = redispatch_window_s
        self._renew = redis_client.register_script(RENEW)
        self._watch = redis_client.register_script(WATCH)
        # Every state change is one of these scripts: with ``replicas``, each waits for them
        # before it returns, so what a caller acks or confirms after it survives a failover.
        self.replicated = replicas is not None and replicas.replicas > 0
        self._transition = HeldScript(redis_client, TRANSITION, replicas)
        self._create = HeldScript(redis_client, CREATE, replicas)
        self._requeue = HeldScript(redis_client, REQUEUE, replicas)
        self._assign = HeldScript(redis_client, ASSIGN, replicas)
        self._enqueue = HeldScript(redis_client, ENQUEUE, replicas)
        self._next_stamp = 0.0

    # --- sealed values --------------------------------------------------------------
    def seal_value(self, task_id: str, what: str, data: bytes) -> bytes:
        # Bound to its task and purpose; no send time or message id: it is not a message.
        return seal(self.ring, {"task_id": task_id, "what": what}, data, stamp=False)

    def open_value(self, task_id: str, what: str, blob: bytes) -> bytes:
        """Raises: SignatureError when the stored value was not sealed for this task."""
        return open_envelope(self.ring, blob, expect={"task_id": task_id, "what": what}).payload

    # --- dispatch tickets -------------------------------------------------------------
    # A scheduler dispatches a request it reads back from Redis only when the record holds a
    # ticket sealed by a key holder within the redispatch window: when the scheduler took the
    # task, when a key holder handed it back for another run, or when the active scheduler
    # renewed it while the task waited. A Redis writer who rewinds a finished record can
    # therefore get it run again only with a ticket captured less than a window ago.
    def ticket(self, task_id: str) -> bytes:
        return seal(self.ring, {"task_id": task_id, "what": "dispatch"})

    def ticket_problem(self, record: TaskRecord) -> str:
        """Why ``record`` may not be dispatched from Redis ('' when it may)."""
        if not record.ticket:
            return "it holds no dispatch ticket"
        try:
            open_envelope(self.ring, record.ticket, self.redispatch_window_s,
                          expect={"task_id": record.task_id, "what": "dispatch"})
        except SignatureError as exc:
            return f"its dispatch ticket is refused ({exc})"
        return ""

    def watch(self, task_ids: Iterable[str]) -> dict[str, tuple[str, int | None]]:
        """(status, engine id) of each task ('' for an unknown one); those not finished will
        push their id to the scheduler's events when they finish."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        with translate_errors():
            replies = self._watch(keys=[self.names.task(t) for t in ids], args=[self.names.scheduler_events])
        states = {}
        for task_id, (status, engine) in zip(ids, replies):
            text = engine.decode("utf-8", "replace")
            states[task_id] = (status.decode("utf-8", "replace"), int(text) if text.isdigit() else None)
        return states

    def renew_tickets(self, task_ids: Iterable[str]) -> None:
        """New tickets for tasks still pending (the active scheduler knows them)."""
        ids = list(task_ids)
        with translate_errors():
            for start in range(0, len(ids), RENEW_BATCH):
                batch = ids[start : start + RENEW_BATCH]
                self._renew(keys=[self.names.task(t) for t in batch], args=[self.ticket(t) for t in batch])

    # --- writing --------------------------------------------------------------------
    def create(self, tasks: Iterable[NewTask], wait: bool = True) -> None:
        """Write new pending records (atomically, in one round trip).

        ``wait=False`` sends them and returns at once; ``created`` takes the reply. A client
        uses it to publish while the records are being written: Redis has the write before
        the message leaves, so the record is there when an engine claims the task (and an
        engine that is ever faster waits for it). When writes wait for replicas, the records
        are confirmed before this returns either way: a message must never be out whose record
        a failover could still lose (the scheduler would refuse it as a replay).
        """
        names = self.names
        # Distinct, increasing times keep submissions (and a batch sent in runs) in order in
        # the history, however close together they come.
        now = max(time.time(), self._next_stamp)
        args: list[Any] = [names.history, names.status_index(PENDING)]
        position = -1
        for position, task in enumerate(tasks):
            submitted = repr(now + position * 1e-6)
            mapping: dict[str, Any] = {
                "task_id": task.task_id,
                "kind": task.kind,
                "status": PENDING,
                "client_id": task.client_id,
                "submitted": submitted,
                "attempts": 0,
                "request": task.request,
                "_inbox": names.client_inbox(task.client_id),
                **task.extra,
            }
            targeted = task.engine_id is not None
            # Where ``targeted``, task.engine_id is an int.
            if targeted:
                mapping["engine_id"] = task.engine_id
                mapping["_pending_key"] = names.engine_pending(cast(int, task.engine_id))
            args += [names.task(task.task_id), task.task_id, submitted,
                     names.engine_pending(cast(int, task.engine_id)) if targeted else "",
                     names.engine_index(cast(int, task.engine_id)) if targeted else "", len(mapping)]
            for key, value in mapping.items():
                args += [key, value]
        self._next_stamp = now + (position + 1) * 1e-6
        with translate_errors():
            # The history key routes the call (to the shard of the cluster's keys); ARGV names it too.
            if wait or self.replicated:
                self._create(keys=[names.history], args=args)
            else:
                self._create.send(keys=[names.history], args=args)

    def created(self) -> None:
        """Take the reply of ``create(..., wait=False)``.

        Raises:
            StoreError: Redis failed (the write is made again the ordinary way first).
        """
        with translate_errors():
            self._create.collect()

    def _change(self, task_id: str, allowed: Iterable[str], new: str, fields: Mapping[str, Any] | None,
                holder: int | None = None, index_of: int | None = None) -> list[Any]:
        """One change's arguments for ``TRANSITION``. ``holder``: the engine that claims the
        task, or that must hold its claim to finish or release it."""
        names = self.names
        pairs: list[Any] = []
        for key, value in (fields or {}).items():
            pairs.extend([key, value])
        return [
            names.task(task_id), task_id, ",".join(allowed), new,
            names.engine_claimed(holder) if holder is not None else "",
            names.engine_index(index_of) if index_of is not None else "",
            len(pairs) // 2, *pairs,
        ]

    def _apply(self, changes: list[list[Any]], live_claimant: int | None = None) -> list[tuple[bool, str, int]]:
        """Apply changes in order, atomically, in one round trip; with ``live_claimant``, its
        claims only while it is in the heartbeat set.

        Raises:
            EngineDeclaredDead: ``live_claimant`` was declared dead (its claims were refused;
                the other changes were applied).
        """
        if not changes:
            return []
        keys, args = [self.names.scheduler_pending], self._args(changes)
        if live_claimant is not None:
            keys.append(self.names.heartbeats)
            args.insert(1, live_claimant)
        with translate_errors():
            replies = self._transition(keys=keys, args=args)
        if any(r[0] == b"dead" for r in replies):
            raise EngineDeclaredDead(f"engine {live_claimant} was declared dead: its claims are refused")
        return [self._reply(r) for r in replies]

    def _args(self, changes: list[list[Any]]) -> list[Any]:
        args: list[Any] = [self.names.status_index("")]
        for change in changes:
            args.extend(change)
        return args

    def finish_soon(self, engine_id: int, task_id: str, status: str, fields: Mapping[str, Any],
                    start: str | None = None) -> None:
        """Send ``settle(engine_id, finished=[...], start=start)`` for one task without
        waiting for the reply; ``finished_soon`` takes it. Once this returns, the outcome
        reaches Redis even if the process is killed (see ``HeldScript.send``)."""
        now = repr(time.time())
        changes = [self._change(task_id, [RUNNING], status, {"completed": now, **fields}, engine_id)]
        if start is not None:
            changes.append(self._start_change(start, engine_id, now))
        with translate_errors():
            self._transition.send(keys=[self.names.scheduler_pending], args=self._args(changes))

    def finished_soon(self) -> bool | None:
        """Whether the outcome ``finish_soon`` sent was recorded (None: nothing was sent).

        Raises:
            StoreError: Redis is unreachable (the call is safe to make again).
        """
        with translate_errors():
            replies = self._transition.collect()
        return None if replies is None else self._reply(replies[0])[0]

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
        """Move a record to ``new`` if its state is one of ``allowed`` (to ``running``: claimed
        by ``engine_id``).

        Returns:
            (changed, previous state, attempts); previous is '' for a missing record.
        """
        claim = new == RUNNING and engine_id is not None
        return self._apply([self._change(task_id, allowed, new, fields, engine_id if claim else None,
                                         engine_id if claim else None)])[0]

    def settle(
        self,
        engine_id: int,
        finished: Iterable[tuple[str, str, Mapping[str, Any]]] = (),
        released: Iterable[tuple[str, int, bool]] = (),
        claims: Iterable[str] = (),
        start: str | None = None,
        only_if_live: bool = False,
    ) -> list[tuple[bool, str, int]]:
        """An engine's round trip: record outcomes, release claims, then claim more.

        Starting, finishing and releasing need the claim to be ``engine_id``'s (a reaped
        engine's late word is refused). ``finished``: (task id, final status, fields),
        running -> status. ``released``: (task id, attempts before the claim, load-balanced?),
        claimed but never started, running -> pending. ``claims``: task ids, pending ->
        running on ``engine_id``; the first of them starts now, unless ``start`` names a
        claimed task that starts now instead. Returns the claims' replies: (claimed, previous
        state, attempts). ``only_if_live``: claim only while ``engine_id`` is in the heartbeat
        set (an engine daemon's own round trips: once declared dead, it takes nothing more).

        Raises:
            EngineDeclaredDead: with ``only_if_live``, the engine was declared dead.
        """
        now = repr(time.time())
        changes = [self._change(t, [RUNNING], status, {"completed": now, **fields}, engine_id)
                   for t, status, fields in finished]
        changes += [self._change(t, [RUNNING], PENDING, {"attempts": attempts, "started": ""}, engine_id,
                                 engine_id if lb else None) for t, attempts, lb in released]
        if start is not None:
            changes.append(self._start_change(start, engine_id, now))
        claim_ids = list(claims)
        changes += [self._change(t, [PENDING], RUNNING,
                                 {"engine_id": engine_id, "started": now if n == 0 and start is None else ""},
                                 engine_id, engine_id)
                    for n, t in enumerate(claim_ids)]
        replies = self._apply(changes, engine_id if only_if_live and claim_ids else None)
        return replies[len(replies) - len(claim_ids):] if claim_ids else []

    def _start_change(self, task_id: str, engine_id: int, now: str) -> list[Any]:
        return self._change(task_id, [RUNNING], "started", {"started": now}, engine_id)

    def requeue(
        self,
        task_id: str,
        engine_id: int,
        listed_as: str,
        attempts_delta: int = 0,
        fields: Mapping[str, Any] | None = None,
    ) -> bool:
        """Hand a load-balanced task back to the scheduler (see ``REQUEUE``)."""
        args: list[Any] = [task_id, self.names.status_index(""), attempts_delta, engine_id, listed_as]
        for key, value in {**(fields or {}), "_ticket": self.ticket(task_id)}.items():
            args.extend([key, value])
        with translate_errors():
            keys = [self.names.task(task_id), self.names.scheduler_pending, self.names.scheduler_events]
            return bool(self._requeue(keys=keys, args=args))

    def enqueue(self, task_id: str, seq: float) -> tuple[int, int]:
        """The scheduler accepts a task: (1 queued, 2 already queued or 0 not pending: drop it;
        the engines' version, read in the same step, so a scheduler routing this task knows
        of every engine that was live before it was submitted)."""
        with translate_errors():
            code, version = self._enqueue(
                keys=[self.names.task(task_id), self.names.scheduler_pending, self.names.properties_version],
                args=[task_id, repr(seq), self.ticket(task_id)])
        return int(code), int(version)

    def status_counts(self) -> dict[str, int]:
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for status in STATUSES:
                pipe.scard(self.names.status_index(status))
            return dict(zip((s.value for s in STATUSES), (int(v) for v in pipe.execute())))

    def unassigned(self, engine_ids: Iterable[int]) -> list[str]:
        """Pending tasks no engine holds yet: in the scheduler's backlog, or plain FIFO work
        waiting in (or just taken from) the shared queue."""
        keys = [self.names.status_index(PENDING), *(self.names.engine_pending(e) for e in engine_ids)]
        with translate_errors():
            ids = [t.decode() for t in cast("set[bytes]", self.redis.sdiff(keys))]
            scores = self.redis.zmscore(self.names.history, ids) if ids else []
        # In submission order, like the history.
        return [t for _, t in sorted(zip((s or 0.0 for s in scores), ids))]

    def backlog_size(self) -> int:
        with translate_errors():
            return int(self.redis.zcard(self.names.scheduler_pending))

    def scheduler_backlog(self) -> list[tuple[str, float]]:
        """Every task waiting for the scheduler, with its arrival order."""
        with translate_errors():
            backlog = cast("list[tuple[bytes, float]]",
                           self.redis.zrange(self.names.scheduler_pending, 0, -1, withscores=True))
            return [(t.decode(), s) for t, s in backlog]

    def set_fields(self, task_id: str, fields: Mapping[str, Any], only_if: str = PENDING) -> None:
        """Annotate a record (e.g. why it waits) while it is still in state ``only_if``."""
        key = self.names.task(task_id)
        with translate_errors():
            if self.redis.hget(key, "status") == only_if.encode():
                self.redis.hset(key, mapping=cast("dict[FieldT, EncodableT]", dict(fields)))

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
        return [v.decode() for v in self._pop_raw(key, timeout_s)]

    def _pop_raw(self, key: str, timeout_s: float, most: int = 1000) -> list[bytes]:
        """Up to ``most`` entries of the list ``key``, oldest first, waiting up to ``timeout_s``
        for the first (one round trip either way)."""
        with translate_errors():
            if timeout_s <= 0:
                popped = self.redis.lmpop(1, key, direction="RIGHT", count=most)
            else:
                popped = self.redis.blmpop(timeout_s, 1, key, direction="RIGHT", count=most)
        # [key, [entries]]: the key popped from and its entries, or None when the list was empty.
        return list(cast("list[bytes]", popped[1])) if popped else []

    def assign(self, task_id: str, engine_id: int) -> int:
        """Record that the scheduler routed a task to an engine (see ``ASSIGN``)."""
        n = self.names
        keys = [n.task(task_id), n.scheduler_pending, n.engine_pending(engine_id), n.engines, n.heartbeats]
        with translate_errors():
            return int(self._assign(keys=keys, args=[task_id, engine_id]))

    def claim(self, task_id: str, engine_id: int) -> tuple[bool, str, int]:
        """pending -> running on ``engine_id``; refused if aborted, finished or unknown."""
        return self.settle(engine_id, claims=[task_id])[0]

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
        return [decode_record(t, raw) if raw else None for t, raw in zip(task_ids, raws)]

    def statuses(self, task_ids: list[str]) -> list[str | None]:
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hget(self.names.task(task_id), "status")
            return [v.decode() if v is not None else None for v in pipe.execute()]

    def pop_inbox(self, client_id: str, timeout_s: float) -> list[tuple[str, TaskRecord | None]]:
        """Tasks whose outcome was recorded for this client, with the finished record when it
        came along (else None: read it with ``get_many``); waits up to ``timeout_s``."""
        entries = []
        for raw in self._pop_raw(self.names.client_inbox(client_id), timeout_s):
            if raw == WAKE:
                continue
            try:
                entries.append(inbox_entry(raw))
            except StoreError as exc:
                # One bad entry must not take the others with it; its task's outcome is
                # found by the client's sweep of statuses.
                log.warning("skipping an inbox entry: %s", exc)
        return entries

    def wake_inbox(self, client_id: str) -> None:
        """End a wait on the inbox at once: an empty entry, which ``pop_inbox`` skips."""
        key = self.names.client_inbox(client_id)
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpush(key, WAKE)
            pipe.expire(key, INBOX_TTL_S)
            pipe.execute()

    def set_scheme(self, scheme: str) -> None:
        with translate_errors():
            self.redis.set(self.names.scheduler_scheme, scheme)

    def scheme(self) -> str | None:
        """The active scheduler's scheme, or None if no scheduler has run."""
        with translate_errors():
            value = cast("bytes | None", self.redis.get(self.names.scheduler_scheme))
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


def inbox_entry(raw: bytes) -> tuple[str, TaskRecord | None]:
    """A task id, or a finished record packed by ``TRANSITION``, as (task id, record or None).

    Raises:
        StoreError: a packed entry that does not parse.
    """
    if not raw.startswith(b"\0"):
        return raw.decode(), None
    fields: dict[bytes, bytes] = {}
    pos = 1
    try:
        for name in RESULT_FIELDS:
            if raw[pos : pos + 1] == b"-":
                pos += 1
                continue
            colon = raw.index(b":", pos)
            end = colon + 1 + int(raw[pos:colon])
            fields[name.encode()] = raw[colon + 1 : end]
            pos = end
        task_id = fields[b"task_id"].decode()
    except (ValueError, KeyError) as exc:
        raise StoreError(f"malformed inbox entry: {exc}") from exc
    return task_id, decode_record(task_id, fields)


def decode_record(task_id: str, raw: Mapping[bytes, bytes]) -> TaskRecord:
    """A record, or, when a field does not decode, a damaged one: its ``invalid`` says why
    and only its status is kept (when that is readable), for the caller to fail or skip."""
    try:
        return TaskRecord.decode(task_id, raw)
    except DecodeError as exc:
        status = raw.get(b"status", b"").decode("utf-8", "replace")
        return TaskRecord(task_id, status=status if status in {s.value for s in Status} else "",
                          invalid=str(exc), routed=b"_pending_key" in raw)


def error_fields(ename: str, evalue: str, traceback: str = "") -> dict[str, str]:
    return {"ename": ename, "evalue": evalue, "traceback": traceback}


__all__ = [
    "ABORTED", "COMPLETED", "FAILED", "PENDING", "RUNNING", "STATUSES", "TERMINAL",
    "NewTask", "Records", "TaskRecord", "error_fields",
]
