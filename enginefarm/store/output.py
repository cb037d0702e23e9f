"""Live output: what running tasks print, kept in Redis while they run.

An engine appends a running task's output to one string per stream (``names.task_output``)
a few times a second, and removes the strings once the task's record is finished: from then
on the record's ``stdout``/``stderr`` hold all of it. Both come from one capture, bounded by
``output_cap_bytes``, so the live text is always a prefix of what the record gets. Past the
cap the live text stops growing; the record ends with the note that says how much was dropped
(the count is known only once the task ends). A reader that has shown the live text therefore
prints only the rest of the record's, and nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ..errors import DecodeError
from ..names import Names
from ..task import TERMINAL, decode_field
from .connection import translate_errors

STREAMS = ("stdout", "stderr")
# Tasks read per MULTI: each task's reads form one snapshot, and a read of thousands of tasks
# does not hold Redis in one long transaction.
READ_BATCH = 500
_RECORD_FIELDS = ("status", "engine_id", "attempts", "stdout", "stderr")


@dataclass(frozen=True)
class TaskOutput:
    """One task's output, read as one snapshot: a finished task's from its record (whole),
    a running one's from its live strings (what follows the offsets asked for)."""

    task_id: str
    status: str  # '' when there is no record
    engine_id: int | None
    attempts: int
    stdout: str
    stderr: str
    # Where the live bytes read end, per stream: the offsets of the next read.
    ends: tuple[int, int] = (0, 0)
    # The live strings' lengths in bytes now: shorter than an offset means they started over
    # (a new attempt of the task).
    sizes: tuple[int, int] = (0, 0)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def text(self, stream: str) -> str:
        return self.stdout if stream == "stdout" else self.stderr


class LiveOutput:
    """Writes and reads the live output of one cluster's tasks."""

    def __init__(self, redis_client: redis.Redis, names: Names, ttl_s: int) -> None:
        self.redis = redis_client
        self.names = names
        # A live string outlives a lost engine by no more than a finished record would.
        self.ttl_s = max(int(ttl_s), 1)

    def append(self, task_id: str, chunks: Mapping[str, str], fresh: bool = False) -> None:
        """Append ``chunks`` (stream -> text) to the task's live strings, in one round trip.
        ``fresh``: the first write of an attempt, which starts the strings over (a previous
        attempt's, from an engine that died, must not run on into this one's).

        Raises:
            StoreError: Redis failed.
        """
        with translate_errors():
            # One transaction: a reader never sees the strings half started over.
            pipe = self.redis.pipeline(transaction=True)
            if fresh:
                pipe.delete(*(self.names.task_output(task_id, s) for s in STREAMS))
            for stream, text in chunks.items():
                if text:
                    key = self.names.task_output(task_id, stream)
                    pipe.append(key, text.encode("utf-8", "replace"))
                    pipe.expire(key, self.ttl_s)
            pipe.execute()

    def discard(self, task_ids: Iterable[str]) -> None:
        """Remove the live strings of tasks (their record holds the output now, or the attempt
        that printed it is over).

        Raises:
            StoreError: Redis failed.
        """
        keys = [self.names.task_output(t, s) for t in task_ids for s in STREAMS]
        if keys:
            with translate_errors():
                self.redis.delete(*keys)

    def read(self, task_ids: Sequence[str],
             offsets: Sequence[tuple[int, int]] | None = None) -> list[TaskOutput]:
        """Each task's status and output, one snapshot per task, in one round trip per
        ``READ_BATCH`` tasks. ``offsets``: per task, the live bytes of each stream already
        read (only what follows is returned); a finished task's output is its record's, whole.

        Raises:
            StoreError: Redis failed.
        """
        ids = list(task_ids)
        starts = list(offsets) if offsets is not None else [(0, 0)] * len(ids)
        out: list[TaskOutput] = []
        for first in range(0, len(ids), READ_BATCH):
            batch = list(zip(ids[first : first + READ_BATCH], starts[first : first + READ_BATCH]))
            with translate_errors():
                pipe = self.redis.pipeline(transaction=True)
                for task_id, start in batch:
                    pipe.hmget(self.names.task(task_id), _RECORD_FIELDS)
                    for stream, offset in zip(STREAMS, start):
                        key = self.names.task_output(task_id, stream)
                        pipe.getrange(key, offset, -1)
                        pipe.strlen(key)
                replies = pipe.execute()
            for index, (task_id, start) in enumerate(batch):
                out.append(_snapshot(task_id, start, replies[5 * index : 5 * index + 5]))
        return out


def _field(name: str, raw: bytes | None) -> Any:
    """A record field, or None when it does not decode (a damaged record shows no output)."""
    try:
        return decode_field(name, raw)
    except DecodeError:
        return None


def _snapshot(task_id: str, start: tuple[int, int], replies: list[Any]) -> TaskOutput:
    status, engine_id, attempts, stdout, stderr = (_field(n, v) for n, v in zip(_RECORD_FIELDS, replies[0]))
    status = status or ""
    common = {"task_id": task_id, "status": status, "engine_id": engine_id, "attempts": attempts or 0}
    if status in TERMINAL:
        return TaskOutput(**common, stdout=stdout or "", stderr=stderr or "")
    live_out, size_out, live_err, size_err = replies[1:5]
    return TaskOutput(
        **common,
        stdout=bytes(live_out).decode("utf-8", "replace"),
        stderr=bytes(live_err).decode("utf-8", "replace"),
        ends=(start[0] + len(live_out), start[1] + len(live_err)),
        sizes=(int(size_out), int(size_err)),
    )
