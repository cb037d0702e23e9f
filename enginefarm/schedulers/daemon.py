"""The scheduler daemon: takes load-balanced tasks from ``<cluster>.tasks`` and routes each to
one engine's queue, as its scheme decides.

Durable state lives in Redis, so a standby (or a restarted scheduler) resumes where the last
one stopped: the backlog (``sched:pending``), what each engine holds (the engines' pending
sets) and the records. Only the holder of a lease in Redis is active; the others wait.

Threads: main runs the broker loop (submissions, dispatching, periodic housekeeping);
``events`` waits on Redis for task ids whose state changed and wakes the main thread.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from typing import Any

from ..broker import BrokerConnection, Consumer, Delivery, Publisher
from ..broker.topology import declare_cluster
from ..config import Settings
from ..deadletter import dead_letter
from ..errors import EnginefarmError, SignatureError, StoreError, UnroutableError
from ..metrics import Metrics
from ..systemd import notify
from ..names import Names
from ..protocol import open_envelope
from ..recovery import Reaper
from ..store import Stores, TaskRecord
from ..store.leases import Lease
from ..store.records import PENDING, TERMINAL
from .policy import EngineLoad, PendingTask, plan, scheme_named

log = logging.getLogger(__name__)


def _ids(text: str) -> frozenset[int]:
    return frozenset(int(p) for p in text.split(",") if p.strip())


class Scheduler:
    def __init__(self, settings: Settings, scheme: str | None = None) -> None:
        self.settings = settings
        self.scheme = scheme_named(scheme or settings.scheme)
        self.names = Names(settings.cluster)
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.pending: dict[str, PendingTask] = {}
        self.bodies: dict[str, bytes] = {}
        self.assigned: dict[int, set[str]] = {}
        self.engine_of: dict[str, int] = {}
        self.live: list[int] = []
        self.props_version = -1
        self.waiting_noted: set[str] = set()
        self._events: queue.Queue[list[str]] = queue.Queue()
        self._stop = threading.Event()
        self._next_housekeeping = 0.0
        self._next_census = 0.0
        self._next_reconcile = 0.0
        self.exit_code = 0
        self.metrics = Metrics()

    # --- lifecycle -----------------------------------------------------------------
    def setup(self) -> None:
        s = self.settings
        stores = Stores.open(s)
        self.ring, self.registry, self.records, self.history = stores.ring, stores.registry, stores.records, stores.history
        self.lease = Lease(stores.redis, self.names.scheduler_leader, self.identity, ttl_s=max(3.0, s.engine_timeout_s / 2))
        self.publisher = Publisher(s.amqp_url, s.amqp_heartbeat_s, f"enginefarm-scheduler-{s.cluster}-pub")
        self.reaper = Reaper(
            self.registry, self.records,
            BrokerConnection(s.amqp_url, s.amqp_heartbeat_s, f"enginefarm-scheduler-{s.cluster}-reaper"),
            self.names, s.engine_timeout_s, s.max_engine_losses,
        )
        self.consumer = Consumer(
            s.amqp_url, setup=self._declare, on_message=self._on_submit, prefetch=256,
            heartbeat_s=s.amqp_heartbeat_s, name=f"enginefarm-scheduler-{s.cluster}",
        )

    def _declare(self, channel: Any) -> list[str]:
        declare_cluster(channel, self.names)
        return [self.names.tasks_queue]

    def stop(self) -> None:
        notify("STOPPING=1")
        self._stop.set()

    def run(self) -> int:
        self.setup()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_addr)
        # Ready means serving: a standby waiting for the lease is a healthy scheduler too.
        notify(f"READY=1\nSTATUS=scheduler of cluster {self.settings.cluster}")
        log.info("scheduler %s (%s) waiting for the lease of cluster %r",
                 self.identity, self.scheme.name, self.settings.cluster)
        while not self._stop.is_set():
            try:
                if self.records.shutdown_requested():
                    log.info("scheduler %s: cluster shutdown requested", self.identity)
                    return 0
                if self.lease.acquire():
                    break
            except StoreError as exc:
                log.warning("scheduler cannot reach Redis: %s", exc)
            self._stop.wait(0.5)
        if self._stop.is_set():
            return 0
        log.info("scheduler %s is active for cluster %r", self.identity, self.settings.cluster)
        self.records.set_scheme(self.scheme.name)
        self._restore()
        threading.Thread(target=self._listen, name="events", daemon=True).start()
        try:
            self.consumer.run(self._stop, poll_s=0.1, tick=self._tick)
        finally:
            self._stop.set()
            self.consumer.close()
            self.publisher.close()
            self.reaper.broker.close()
            try:
                self.lease.release()
            except StoreError:
                pass
        return self.exit_code

    # --- state ---------------------------------------------------------------------
    def _restore(self) -> None:
        """Rebuild what the previous scheduler knew, from Redis."""
        self.live = self.registry.live_ids()
        for engine_id in self.live:
            for record in self.records.get_many(sorted(self.registry.pending(engine_id))):
                if record is not None and record.extra.get("lb") == "1" and not record.done:
                    self._track(record.task_id, engine_id)
                    if record.status == PENDING and record.request:
                        # The last scheduler may have died between routing and publishing;
                        # a second copy is refused by the engine's claim.
                        self.publisher.publish(self.names.direct_exchange,
                                               self.names.engine_routing_key(engine_id), record.request)
        backlog = self.records.scheduler_backlog()
        for record in self.records.get_many([t for t, _ in backlog]):
            if record is not None:
                self._remember(record)
        log.info("scheduler restored %d waiting and %d routed tasks", len(self.pending), len(self.engine_of))
        self._dispatch()

    def _track(self, task_id: str, engine_id: int) -> None:
        self.assigned.setdefault(engine_id, set()).add(task_id)
        self.engine_of[task_id] = engine_id

    def _untrack(self, task_id: str) -> None:
        engine_id = self.engine_of.pop(task_id, None)
        if engine_id is not None:
            self.assigned.get(engine_id, set()).discard(task_id)

    def _remember(self, record: TaskRecord) -> None:
        """Add a pending record to the backlog in memory."""
        if record.status != PENDING or not record.request:
            return
        try:
            header = open_envelope(self.ring, record.request, expect={"task_id": record.task_id}).header
        except SignatureError as exc:
            log.error("task %s has a request that fails verification (%s); failing it", record.task_id, exc)
            self.records.fail(record.task_id, {"ename": "SignatureError", "evalue": str(exc), "traceback": ""})
            return
        extra = record.extra
        self.bodies[record.task_id] = record.request
        self.pending[record.task_id] = PendingTask(
            task_id=record.task_id,
            seq=record.seq,
            priority=int(header.get("priority", 0)),
            needs_depend=bool(header.get("depend")),
            unmet=_ids(extra.get("unmet", "")),
            failed_on=_ids(extra.get("failed_on", "")),
            failed_at=float(extra["failed_at"]) if extra.get("failed_at") else None,
        )

    # --- submissions ---------------------------------------------------------------
    def _on_submit(self, delivery: Delivery) -> None:
        try:
            envelope = open_envelope(self.ring, delivery.body, self.settings.max_message_age_s)
        except SignatureError as exc:
            self.metrics.dead_lettered.labels(exc.reason).inc()
            if dead_letter(self.publisher, self.names, self.records, delivery.body, exc, self.names.tasks_queue):
                self.consumer.ack(delivery)
            else:
                self.consumer.reject(delivery, requeue=False)
            return
        header = envelope.header
        task_id = str(header.get("task_id", ""))
        seq = time.time()
        try:
            queued = self.records.enqueue(task_id, seq)
        except StoreError as exc:
            # Not acked: the broker gives it to us (or a standby) again.
            log.warning("cannot queue task %s: %s", task_id, exc)
            self.consumer.reject(delivery, requeue=True)
            return
        if queued == 1 or (queued == 2 and task_id not in self.pending and task_id not in self.engine_of):
            self.bodies[task_id] = delivery.body
            self.pending[task_id] = PendingTask(
                task_id, seq, int(header.get("priority", 0)), bool(header.get("depend")),
            )
        self.consumer.ack(delivery)
        self._dispatch()

    # --- routing -------------------------------------------------------------------
    def _loads(self) -> list[EngineLoad]:
        """What each engine holds: tasks we routed, plus what it claimed that we did not route
        (targeted calls, or plain FIFO work taken from the shared queue)."""
        claimed = self.registry.running_many(self.live)
        loads = []
        for engine_id, held in zip(self.live, claimed):
            ours = self.assigned.get(engine_id, set())
            loads.append(EngineLoad(engine_id, len(ours) + len(held - ours)))
        return loads

    def _dispatch(self) -> None:
        """Route what can be routed now. Never raises: it runs inside broker callbacks, and
        whatever it could not do is still in Redis for the next attempt."""
        try:
            self._dispatch_now()
        except EnginefarmError as exc:
            log.warning("scheduler could not dispatch: %s", exc)

    def _dispatch_now(self) -> None:
        if not self.pending or not self.live:
            return
        decided = plan(self.scheme, self.pending.values(), self._loads(), self.settings.scheduler_slots,
                       time.time(), self.settings.failure_penalty_s)
        for task_id, engine_id in decided.assignments:
            self._route(task_id, engine_id)
        for task_id in decided.unsatisfiable:
            if task_id not in self.waiting_noted:
                self.waiting_noted.add(task_id)
                self.records.set_fields(task_id, {
                    "waiting": f"no live engine satisfies its depend (engines {sorted(self.live)} said no)"})

    def _route(self, task_id: str, engine_id: int) -> None:
        # Record the route first, then publish: an engine that hands the task straight back
        # finds it routed, and a crash in between is repaired on takeover (see _restore).
        outcome = self.records.assign(task_id, engine_id)
        if outcome == -1:
            self.live = [e for e in self.live if e != engine_id]
            return
        body = self.bodies.pop(task_id, None)
        self.pending.pop(task_id, None)
        self.waiting_noted.discard(task_id)
        if outcome != 1 or body is None:
            return
        self._track(task_id, engine_id)
        try:
            self.publisher.publish(self.names.direct_exchange, self.names.engine_routing_key(engine_id), body)
        except UnroutableError:
            log.info("engine %d has no queue any more; task %s goes back to the backlog", engine_id, task_id)
            self.live = [e for e in self.live if e != engine_id]
            self._untrack(task_id)
            self.records.requeue(task_id, engine_id, "")
            return
        self.metrics.tasks.labels("dispatched").inc()

    # --- events --------------------------------------------------------------------
    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                task_ids = self.records.pop_events(1.0)
            except StoreError as exc:
                log.warning("scheduler cannot read events: %s", exc)
                self._stop.wait(1.0)
                continue
            if task_ids:
                self._events.put(task_ids)
                self.consumer.link.call_threadsafe(self._on_events)

    def _on_events(self) -> None:
        try:
            self._take_events()
        except EnginefarmError as exc:
            log.warning("scheduler could not read task states: %s", exc)

    def _take_events(self) -> None:
        task_ids: list[str] = []
        while True:
            try:
                task_ids.extend(self._events.get_nowait())
            except queue.Empty:
                break
        if not task_ids:
            return
        unique = list(dict.fromkeys(task_ids))
        try:
            records = self.records.get_many(unique)
        except EnginefarmError:
            self._events.put(unique)  # looked at again on the next tick
            raise
        for task_id, record in zip(unique, records):
            if record is None:  # purged
                self._untrack(task_id)
                self.pending.pop(task_id, None)
                self.bodies.pop(task_id, None)
                continue
            self._untrack(record.task_id)
            if record.done:
                self.metrics.tasks.labels(record.status).inc()
                self.pending.pop(record.task_id, None)
                self.bodies.pop(record.task_id, None)
                self.waiting_noted.discard(record.task_id)
            elif record.status == PENDING and not record.routed:
                self._remember(record)
        self._dispatch()

    # --- housekeeping --------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self._on_events()
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
                self.pending.clear()
                self.bodies.clear()
                self.assigned.clear()
                self.engine_of.clear()
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
            self._reconcile(now)
            self._census(now)
            self._dispatch()
        except EnginefarmError as exc:
            self.reaper.observe(False)
            log.warning("scheduler housekeeping failed: %s", exc)

    def _reconcile(self, now: float) -> None:
        """Safety net for a lost event: look at the routed tasks' records now and then."""
        if now < self._next_reconcile or not self.engine_of:
            return
        self._next_reconcile = now + 5.0
        tracked = list(self.engine_of)
        finished = [t for t, s in zip(tracked, self.records.statuses(tracked)) if s is None or s in TERMINAL]
        if finished:
            self._events.put(finished)

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
