"""Setting aside messages that fail verification: to the cluster's dead-letter queue, with a reason."""

from __future__ import annotations

import logging

from .broker import Publisher
from .errors import EnginefarmError, SignatureError
from .names import Names
from .store import Records

log = logging.getLogger(__name__)

REASON_HEADER = "x-enginefarm-reason"
SOURCE_HEADER = "x-enginefarm-queue"


def dead_letter(publisher: Publisher, names: Names, records: Records, body: bytes,
                error: SignatureError, source_queue: str) -> bool:
    """Publish ``body`` untouched to the dead-letter exchange and count it.

    Returns False if that failed; the caller then rejects the message so that the queue's
    own dead-letter exchange keeps it (without our reason).
    """
    log.warning("dead-lettering a message from %s: %s", source_queue, error)
    # Counted before it is published: whoever sees the letter then sees its count too. The
    # count holds either way, since a failed publish falls back to the queue's own DLX.
    try:
        records.count(f"dead_lettered:{error.reason}")
    except EnginefarmError:
        log.warning("could not count a dead-lettered message", exc_info=True)
    try:
        publisher.publish(names.dead_exchange, "", body,
                          headers={REASON_HEADER: error.reason, SOURCE_HEADER: source_queue}, mandatory=False)
    except EnginefarmError:
        log.exception("could not dead-letter with a reason")
        return False
    return True
