"""Recovering from engines that are gone: fail (or hand back) their tasks, remove their queues.

Any process with a broker connection and the store may reap: engines do it for their peers,
clients do it while they wait, the scheduler does it too. A Redis lock makes each reaping
happen once; every step is idempotent, so a reaper that dies midway is finished by the next.
"""

from __future__ import annotations

import json
import logging
import time

from .broker import BrokerConnection
from .errors import BrokerError
from .names import Names
from .schedulers import retry
from .store import LiveOutput, Records, Registry, TaskRecord
from .store.outages import last_broken
from .store.records import PENDING, RUNNING, error_fields

log = logging.getLogger(__name__)

class Reaper:
    """Finds engines whose heartbeat stopped and cleans up after them."""

    def __init__(
        self,
        registry: Registry,
        records: Records,
        broker: BrokerConnection,
        names: Names,
        engine_timeout_s: float,
        max_engine_losses: int = 3,
        output: LiveOutput | None = None,
    ) -> None:
        self.registry = registry
        self.output = output
        self.records = records
        self.broker = broker
        self.names = names
        self.engine_timeout_s = engine_timeout_s
        self.max_engine_losses = max_engine_losses
        self._healthy_since: float | None = None
        self._last_ok = 0.0
        self._failed = False  # a call failed since the last healthy one
        self._judge_after_s = engine_timeout_s
        # A call that blocked longer than this (a paused Redis) breaks continuity too.
        self.max_gap_s = max(engine_timeout_s / 3, 1.5)
        # How much later than this process a live peer may reach Redis after an outage: its
        # retries back off up to 1 s, a connection attempt may wait 5 s, sentinels answer in
        # turn. One more engine timeout covers that spread with room to spare.
        self.reconnect_window_s = max(engine_timeout_s, 6.0)

    def observe(self, store_ok: bool) -> None:
        """Track whether this process has seen Redis continuously.

        After an outage every engine's heartbeat looks old at once; judging others before we
        have seen a full timeout of healthy Redis would reap engines that are alive.
        """
        now = time.monotonic()
        if not store_ok:
            self._healthy_since = None
            self._failed = True
            return
        if self._healthy_since is None or now - self._last_ok > self.max_gap_s:
            self._healthy_since = now
            # At start, or after a pause that held every process alike, a full timeout of
            # healthy Redis shows which peers beat. After failed calls (a failover, a restart)
            # live peers reconnect at different times: one still backing off, or asking its
            # sentinels, is silent through no fault of its own, so its silence is counted only
            # after a further reconnect window.
            self._judge_after_s = self.engine_timeout_s + (self.reconnect_window_s if self._failed else 0.0)
        self._failed = False
        self._last_ok = now

    @property
    def may_judge(self) -> bool:
        # The last healthy call must be recent too: a thread that judges while the one that
        # observes is still blocked in an outage (an engine's upkeep beside its heartbeat, right
        # after a Redis failover) has not seen Redis continuously.
        now = time.monotonic()
        broken = last_broken()
        return (
            self._healthy_since is not None
            and now - self._last_ok <= self.max_gap_s
            and now - self._healthy_since >= self._judge_after_s
            # A failover its retries hid (no call failed) still had peers reconnect late.
            and (broken is None or now - broken >= self.engine_timeout_s + self.reconnect_window_s)
        )

    def reap_stale(self) -> list[int]:
        """Reap every engine whose heartbeat is older than the timeout; returns their ids."""
        if not self.may_judge:
            return []
        reaped = []
        for engine_id in set(self.registry.stale_ids()) | set(self.registry.orphan_ids()):
            try:
                if self.reap(engine_id, "stopped heartbeating"):
                    reaped.append(engine_id)
            except BrokerError as exc:
                # Its tasks are settled and it left the live set: it stays registered, so a
                # later pass finds it among the orphans and removes its queue then.
                log.warning("engine %d: cannot remove its queue yet (%s); trying again later", engine_id, exc)
        return reaped

    def reap(self, engine_id: int, why: str) -> bool:
        """Declare ``engine_id`` gone and settle everything it held. False if another reaper has it."""
        if not self.registry.lock_reaping(engine_id):
            return False
        try:
            self.registry.mark_dead(engine_id)
            # A clean shutdown is routine; a peer found dead is worth a warning.
            level = logging.INFO if why == "shut down" else logging.WARNING
            log.log(level, "engine %d %s; recovering its tasks", engine_id, why)
            self.settle_tasks(engine_id, why)
            self.broker.delete_queue(self.names.engine_queue(engine_id))
            self.broker.delete_queue(self.names.control_queue(engine_id))
            # Anything that slipped in between the settling and the queue's removal.
            self.settle_tasks(engine_id, why)
            self.registry.unregister(engine_id)
            return True
        finally:
            self.registry.unlock_reaping(engine_id)

    def settle_tasks(self, engine_id: int, why: str) -> int:
        """Fail or hand back every unfinished task routed to ``engine_id``."""
        task_ids = self.registry.pending(engine_id) | set(self.registry.running(engine_id))
        settled = 0
        for record in self.records.get_many(sorted(task_ids)):
            if record is None or record.done:
                continue
            # Claimed a few at a time: only a claimed task whose start was recorded ran.
            claimed = record.status == RUNNING
            was_running = claimed and record.started is not None
            stage = "while running" if was_running else "before running"
            error = error_fields("EngineLost", f"engine {engine_id} {why} {stage} this task")
            if was_running and self.output is not None:
                # That attempt is over: what it printed live must not run on into the next
                # attempt's (the record keeps no output of a lost attempt either).
                self.output.discard([record.task_id])
            if record.invalid:
                # Nothing in it can be trusted to run it again: record the loss.
                error["evalue"] += f" (its record does not decode: {record.invalid})"
            elif self._hand_back(record, engine_id, claimed, was_running, error):
                settled += 1
                continue
            if self.records.fail(record.task_id, error, allowed=(PENDING, RUNNING)):
                settled += 1
        return settled

    def _hand_back(self, record: TaskRecord, engine_id: int, claimed: bool, was_running: bool,
                   error: dict[str, str]) -> bool:
        """Hand a task back to the scheduler when the retry policy says so."""
        decision = retry.after_engine_loss(record.lb, claimed, was_running, len(record.lost_on), self.max_engine_losses)
        if not decision.requeue:
            error["evalue"] += decision.note
            return False
        fields = {}
        if decision.listed_as == "lost_on":
            fields = {"last_error": json.dumps({**error, "engine_id": engine_id}), "failed_at": repr(time.time())}
        return self.records.requeue(record.task_id, engine_id, decision.listed_as, decision.attempts_delta, fields)
