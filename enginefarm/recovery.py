"""Recovering from engines that are gone: fail (or hand back) their tasks, remove their queue.

Any process with a broker connection and the store may reap: engines do it for their peers,
clients do it while they wait, the scheduler does it too. A Redis lock makes each reaping
happen once; every step is idempotent, so a reaper that dies midway is finished by the next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .broker import BrokerConnection
from .broker.topology import delete_queue
from .names import Names
from .store import Records, Registry
from .store.records import PENDING, RUNNING, error_fields

log = logging.getLogger(__name__)

# Called for a load-balanced task whose engine is gone; returns True if it took it back.
Requeue = Callable[[str, int, bool], bool]


class Reaper:
    """Finds engines whose heartbeat stopped and cleans up after them."""

    def __init__(
        self,
        registry: Registry,
        records: Records,
        broker: BrokerConnection,
        names: Names,
        engine_timeout_s: float,
        requeue: Requeue | None = None,
    ) -> None:
        self.registry = registry
        self.records = records
        self.broker = broker
        self.names = names
        self.engine_timeout_s = engine_timeout_s
        self.requeue = requeue
        self._healthy_since: float | None = None

    def observe(self, store_ok: bool) -> None:
        """Track whether this process has seen Redis continuously.

        After an outage every engine's heartbeat looks old at once; judging others before we
        have seen a full timeout of healthy Redis would reap engines that are alive.
        """
        if not store_ok:
            self._healthy_since = None
        elif self._healthy_since is None:
            self._healthy_since = time.monotonic()

    @property
    def may_judge(self) -> bool:
        return (
            self._healthy_since is not None
            and time.monotonic() - self._healthy_since >= self.engine_timeout_s
        )

    def reap_stale(self) -> list[int]:
        """Reap every engine whose heartbeat is older than the timeout; returns their ids."""
        if not self.may_judge:
            return []
        reaped = []
        for engine_id in set(self.registry.stale_ids()) | set(self.registry.orphan_ids()):
            if self.reap(engine_id, "stopped heartbeating"):
                reaped.append(engine_id)
        return reaped

    def reap(self, engine_id: int, why: str) -> bool:
        """Declare ``engine_id`` gone and settle everything it held. False if another reaper has it."""
        if not self.registry.lock_reaping(engine_id):
            return False
        try:
            self.registry.mark_dead(engine_id)
            log.warning("engine %d %s; recovering its tasks", engine_id, why)
            self.settle_tasks(engine_id, why)
            delete_queue(self.broker.open(), self.names.engine_queue(engine_id))
            # Anything that slipped in between the settling and the queue's removal.
            self.settle_tasks(engine_id, why)
            self.registry.unregister(engine_id)
            return True
        finally:
            self.registry.unlock_reaping(engine_id)

    def settle_tasks(self, engine_id: int, why: str) -> int:
        """Fail or hand back every unfinished task routed to ``engine_id``."""
        task_ids = self.registry.pending(engine_id)
        running = self.registry.running(engine_id)
        if running:
            task_ids.add(running)
        settled = 0
        for record in self.records.get_many(sorted(task_ids)):
            if record is None or record.done:
                continue
            was_running = record.status == RUNNING
            if record.extra.get("lb") == "1" and self.requeue is not None:
                if self.requeue(record.task_id, engine_id, was_running):
                    settled += 1
                    continue
            stage = "while running" if was_running else "before running"
            error = error_fields("EngineLost", f"engine {engine_id} {why} {stage} this task")
            if self.records.fail(record.task_id, error, allowed=(PENDING, RUNNING)):
                settled += 1
        return settled
