"""The scheduler's housekeeping: what it does between submissions and events, at most every
half second (or heartbeat interval) on the broker loop's tick.

It keeps the lease, reaps dead engines, culls history, looks at the engines (which are live,
what each claimed that the scheduler did not route), reconciles lost events, renews the
dispatch tickets of what it holds, and publishes its gauges. Mixed into Scheduler, whose state
it reads and changes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from ..broker import Delivery
from ..config import Settings
from ..errors import EnginefarmError
from ..incidents import Incidents
from ..metrics import Metrics
from ..recovery import Reaper
from ..store.history import History
from ..store.leases import Lease
from ..store.records import TERMINAL, Records
from ..store.registry import Registry
from .loads import EngineLoads
from .policy import PendingTask, Scheme
from .waiting import DependencyBook

log = logging.getLogger(__name__)


class Housekeeping:
    settings: Settings
    scheme: Scheme
    identity: str
    registry: Registry
    records: Records
    history: History
    reaper: Reaper
    lease: Lease
    metrics: Metrics
    incidents: Incidents
    pending: dict[str, PendingTask]
    bodies: dict[str, bytes]
    assigned: dict[int, set[str]]
    engine_of: dict[str, int]
    live: list[int]
    foreign: dict[int, int]
    loads: EngineLoads
    props_version: int
    waiting_noted: set[str]
    waiting: DependencyBook
    exit_code: int
    _events: queue.Queue[list[str]]
    _trailing: dict[str, tuple[Delivery, float]]
    _stop: threading.Event
    _next_housekeeping: float
    _next_census: float
    _next_reconcile: float
    _next_renewal: float

    # Scheduler's, called from here.
    def _on_events(self) -> None:
        raise NotImplementedError

    def _retry_trailing(self) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError

    def _dispatch(self) -> None:
        raise NotImplementedError

    def _judge(self, task_ids: list[str]) -> None:
        raise NotImplementedError

    def _fail_held(self, task_id: str, ename: str, why: str) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        try:
            self._on_events()
            if self._trailing:
                self._retry_trailing()
            now = time.monotonic()
            if now < self._next_housekeeping:
                return
            self._next_housekeeping = now + min(0.5, self.settings.heartbeat_interval_s)
            if not self.lease.renew():
                if not self.lease.acquire():
                    log.error("scheduler %s lost its lease to another scheduler; stopping", self.identity)
                    self.exit_code = 1
                    self._stop.set()
                    return
                # Our lease expired during an outage and nobody took it: carry on from what
                # Redis says, in case another scheduler ran in between.
                log.warning("scheduler %s renewed its lease after an outage; resyncing", self.identity)
                for held in (self.pending, self.bodies, self.assigned, self.engine_of, self.waiting):
                    held.clear()
                self._restore()
            if self.records.shutdown_requested():
                log.info("scheduler %s: cluster shutdown requested", self.identity)
                self._stop.set()
                return
            self.reaper.observe(True)
            # Nothing else reads the reaper's connection: unanswered heartbeats would let the
            # broker drop it, and the next reaping would find it dead.
            self.reaper.broker.keepalive()
            self.metrics.engine_deaths.inc(len(self.reaper.reap_stale()))
            self.history.cull(self.settings.result_ttl_s, self.settings.max_records)
            self._refresh_engines()
            self._count_foreign()
            self._reconcile(now)
            self._renew_tickets(now)
            self._census(now)
            self._dispatch()
        except EnginefarmError as exc:
            self.reaper.observe(False)
            log.warning("scheduler housekeeping failed: %s", exc)
        except Exception:
            self.incidents.note("housekeeping", "scheduler housekeeping failed", traceback=True)

    def _renew_tickets(self, now: float) -> None:
        """Fresh dispatch tickets, well inside the window, for the tasks this scheduler holds
        for dispatching (so a standby taking over later may dispatch them too)."""
        if now < self._next_renewal:
            return
        self._next_renewal = now + self.settings.redispatch_window_s / 3
        held = [*self.pending, *self.engine_of]
        if held:
            self.records.renew_tickets(held)

    def _reconcile(self, now: float) -> None:
        """Safety net for a lost event: look at the routed tasks' records now and then."""
        if now < self._next_reconcile or not (self.engine_of or self.waiting.blocked()):
            return
        self._next_reconcile = now + 5.0
        tracked = list(self.engine_of)
        finished = [t for t, s in zip(tracked, self.records.statuses(tracked)) if s is None or s in TERMINAL]
        if finished:
            self._events.put(finished)
        self._judge(self.waiting.blocked())

    def _census(self, now: float) -> None:
        self.metrics.pending.labels(self.scheme.name).set(len(self.pending))
        self.metrics.engines.set(len(self.live))
        if now >= self._next_census:
            self._next_census = now + 15.0
            records, size = self.history.memory_estimate()
            self.metrics.history_records.set(records)
            self.metrics.history_bytes.set(size)

    def _refresh_engines(self) -> None:
        live = self.registry.live_ids()
        version = self.registry.properties_version()
        if live != self.live or version != self.props_version:
            # New engines or new properties: a depend that failed everywhere may hold now.
            changed = [t for t, task in self.pending.items() if task.unmet]
            for task_id in changed:
                self.pending[task_id].unmet = frozenset()
            if changed:
                self.records.clear_fields(changed, "unmet", "waiting")
                self.waiting_noted.difference_update(changed)
            for engine_id in set(self.assigned) - set(live):
                self.assigned.pop(engine_id, None)
            self.live, self.props_version = live, version
            self._fail_stranded_followers()

    def _fail_stranded_followers(self) -> None:
        """A task that must run where the tasks it follows ran cannot once those engines are gone
        (called right after ``self.live`` was read afresh)."""
        for task_id, engines in self.waiting.stranded(self.live):
            if task_id in self.pending:
                self._fail_held(task_id, "ImpossibleDependency",
                                f"the engines {sorted(engines)} its follow dependency ran on are gone")

    def _look_at_engines(self) -> None:
        try:
            self._refresh_engines()
            self._count_foreign()
        except EnginefarmError as exc:
            log.warning("scheduler could not read the engines: %s", exc)

    def _count_foreign(self) -> None:
        """Read what each live engine claimed, and count what each holds afresh: the tasks we
        routed plus those we did not."""
        claimed = self.registry.running_many(self.live)
        self.foreign = {e: len(held - self.assigned.get(e, set())) for e, held in zip(self.live, claimed)}
        self.loads.reset({e: len(self.assigned.get(e, ())) + self.foreign.get(e, 0) for e in self.live})
