"""Requests a scheduler reads back from Redis (a backlog restored, a retry, a repair after a
failover) before it dispatches them: each must be a valid signed request of its own record,
load-balanced, and carry a fresh dispatch ticket (see ``Records.ticket``). Everything that
decides what runs comes from the signed request, never from the record's own fields."""

from __future__ import annotations

from ..errors import DecodeError, SignatureError
from ..incidents import Incidents
from ..keys import KeyRing
from ..store import Records
from ..store.records import PENDING, error_fields
from ..task import TaskHeader, TaskRecord, open_task


class StoredRequests:
    def __init__(self, ring: KeyRing, records: Records, incidents: Incidents) -> None:
        self.ring = ring
        self.records = records
        self.incidents = incidents

    def header(self, record: TaskRecord) -> TaskHeader | None:
        """The signed header of a load-balanced record's request; None (noted, and the record
        failed when its request itself is bad) for anything a scheduler must not dispatch."""
        try:
            header = open_task(self.ring, record.request or b"").header
            if header.task_id != record.task_id:
                raise SignatureError("context", f"request of task {header.task_id} stored in record {record.task_id}")
        except (SignatureError, DecodeError) as exc:
            self.incidents.note("invalid-request", "task %s has a request that fails verification (%s); failing it",
                                record.task_id, exc)
            self.records.fail(record.task_id, error_fields(type(exc).__name__, str(exc)))
            return None
        if not header.lb:
            # Everything that decides what runs comes from the signed request, never from the
            # record: a targeted command is never the scheduler's to dispatch.
            self.incidents.note("not-load-balanced", "task %s is a targeted %s; the scheduler leaves it alone",
                                record.task_id, header.kind)
            return None
        return header

    def dispatchable(self, record: TaskRecord, strict: bool) -> bool:
        """Whether a request read back from Redis may be dispatched: it needs a fresh ticket
        (see ``Records.ticket``). Without one, ``strict`` fails the record (a backlog entry
        nobody can dispatch any more), else it is left alone (it may be legitimately waiting
        elsewhere, e.g. in the shared queue)."""
        problem = self.records.ticket_problem(record)
        if not problem:
            return True
        self.incidents.note("no-ticket", "task %s is not dispatched again: %s", record.task_id, problem)
        if strict:
            self.records.fail(record.task_id, error_fields(
                "DispatchRefused", f"the scheduler cannot dispatch it again: {problem}; resubmit it"), allowed=(PENDING,))
        return False
