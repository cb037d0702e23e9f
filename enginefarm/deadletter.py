"""Setting aside messages that are refused: to the cluster's dead-letter queue, with a reason.

A refused message whose task has a record is usually a legitimate request that can no longer
run (stale, signed with a retired key, a header the task model refuses): its record is failed
with the reason, so nobody waits for it forever. The record is only touched when its own
signed request is byte for byte the refused message, so a forged message cannot fail
someone else's task.
"""

from __future__ import annotations

import logging

from .broker import Publisher
from .errors import DecodeError, EnginefarmError, SignatureError
from .names import Names
from .protocol import peek_task_id
from .store import Records
from .store.records import PENDING, error_fields

log = logging.getLogger(__name__)

REASON_HEADER = "x-enginefarm-reason"
SOURCE_HEADER = "x-enginefarm-queue"
# Refusals of a message that says nothing about its record's life (a replay of a finished
# task, or a request delivered to the wrong engine while the right one still has it).
_RECORD_UNTOUCHED = frozenset({"replayed", "context"})


def dead_letter(publisher: Publisher, names: Names, records: Records, body: bytes,
                error: SignatureError | DecodeError, source_queue: str) -> bool:
    """Publish ``body`` untouched to the dead-letter exchange, count it, and fail the record
    it was the request of.

    Returns False if publishing failed; the caller then rejects the message so that the
    queue's own dead-letter exchange keeps it (without our reason).
    """
    log.warning("dead-lettering a message from %s: %s", source_queue, error)
    # Counted before it is published: whoever sees the letter then sees its count too. The
    # count holds either way, since a failed publish falls back to the queue's own DLX.
    try:
        records.count(f"dead_lettered:{error.reason}")
    except EnginefarmError:
        log.warning("could not count a dead-lettered message", exc_info=True)
    if error.reason not in _RECORD_UNTOUCHED:
        fail_record_of(records, body, error)
    try:
        publisher.publish(names.dead_exchange, "", body,
                          headers={REASON_HEADER: error.reason, SOURCE_HEADER: source_queue}, mandatory=False)
    except EnginefarmError:
        log.exception("could not dead-letter with a reason")
        return False
    return True


def fail_record_of(records: Records, body: bytes, error: SignatureError | DecodeError) -> bool:
    """Fail the pending record whose request ``body`` is; True if one was failed."""
    task_id = peek_task_id(body)
    if task_id is None:
        return False
    try:
        record = records.get(task_id)
        if record is None or record.status != PENDING or record.request != body:
            return False
        reason = error_fields("MessageRefused", f"its message was dead-lettered ({error.reason}): {error}")
        return records.fail(task_id, reason, allowed=(PENDING,))
    except EnginefarmError:
        log.warning("could not fail the record of a dead-lettered message", exc_info=True)
        return False
