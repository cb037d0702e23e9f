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
from typing import TYPE_CHECKING

from ..broker import BrokerConnection, Consumer, Delivery, Publisher
from ..broker.topology import declare_cluster
from ..config import Settings
from ..deadletter import dead_letter
from ..errors import BrokerError, DecodeError, EnginefarmError, SignatureError, StoreError, UnroutableError
from ..incidents import Incidents
from ..metrics import Metrics
from ..systemd import notify
from ..names import Names
from ..recovery import Reaper
from ..store import Stores, TaskRecord
from ..store.leases import Lease
from ..store.records import PENDING, RECORD_GRACE_S, TERMINAL, error_fields
from ..task import TaskHeader, open_task
from .dependencies import DepState, Verdict
from .housekeeping import Housekeeping
from .loads import EngineLoads
from .policy import PendingTask, plan, scheme_named
from .stored import StoredRequests
from .waiting import DependencyBook

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

log = logging.getLogger(__name__)


class Scheduler(Housekeeping):
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
        # Per engine, how many of its claims this scheduler did not route (targeted calls,
        # plain FIFO work from the shared queue): read from Redis at each housekeeping, not
        # at each dispatch, so that routing a task costs the same however many engines run.
        self.foreign: dict[int, int] = {}
        # The two above summed per live engine, changed as tasks are routed and end.
        self.loads = EngineLoads(settings.scheduler_slots)
        self.props_version = -1
        self.waiting_noted: set[str] = set()
        self.waiting = DependencyBook()
        self._events: queue.Queue[list[str]] = queue.Queue()
        # Submissions whose record had not reached Redis yet: unacked, looked at again each
        # tick until their record is there or RECORD_GRACE_S has passed (task id -> delivery, deadline).
        self._trailing: dict[str, tuple[Delivery, float]] = {}
        self._stop = threading.Event()
        self._next_housekeeping = 0.0
        self._next_census = 0.0
        self._next_reconcile = 0.0
        self._next_renewal = 0.0
        self.exit_code = 0
        self.metrics = Metrics()
        self.incidents = Incidents("scheduler", self.metrics)

    # --- lifecycle -----------------------------------------------------------------
    def setup(self) -> None:
        s = self.settings
        stores = Stores.open(s)
        self.ring, self.registry, self.records, self.history = stores.ring, stores.registry, stores.records, stores.history
        self.incidents.counts = self.records
        self.stored = StoredRequests(self.ring, self.records, self.incidents)
        self.registry.on_invalid = lambda kind, message: self.incidents.note(kind, "%s", message)
        self.lease = Lease(stores.redis, self.names.scheduler_leader, self.identity, ttl_s=max(3.0, s.engine_timeout_s / 2))
        self.publisher = Publisher(s.amqp_url, s.amqp_heartbeat_s, f"enginefarm-scheduler-{s.cluster}-pub")
        self.reaper = Reaper(
            self.registry, self.records,
            BrokerConnection(s.amqp_url, s.amqp_heartbeat_s, f"enginefarm-scheduler-{s.cluster}-reaper"),
            self.names, s.engine_timeout_s, s.max_engine_losses, stores.output,
        )
        self.consumer = Consumer(
            s.amqp_url, setup=self._declare, on_message=self._on_submit, prefetch=256,
            heartbeat_s=s.amqp_heartbeat_s, name=f"enginefarm-scheduler-{s.cluster}",
        )

    def _declare(self, channel: BlockingChannel) -> list[str]:
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
                if record is None or record.done or record.invalid or self.stored.header(record) is None:
                    continue
                self._track(record.task_id, engine_id)
                if record.status == PENDING and self.stored.dispatchable(record, strict=False):
                    # The last scheduler may have died between routing and publishing;
                    # a second copy is refused by the engine's claim.
                    self.publisher.publish(self.names.direct_exchange,
                                           self.names.engine_routing_key(engine_id), record.request or b"")
        backlog = self.records.scheduler_backlog()
        for record in self.records.get_many([t for t, _ in backlog]):
            if record is not None:
                self._remember(record, strict=True)
        log.info("scheduler restored %d waiting and %d routed tasks", len(self.pending), len(self.engine_of))
        # Every ticket it just accepted is fresh enough for a third of the window.
        self._next_renewal = time.monotonic() + self.settings.redispatch_window_s / 3
        self._count_foreign()
        self._dispatch()

    def _track(self, task_id: str, engine_id: int) -> None:
        held = self.assigned.setdefault(engine_id, set())
        if task_id not in held:
            held.add(task_id)
            self.loads.change(engine_id, 1)
        self.engine_of[task_id] = engine_id

    def _untrack(self, task_id: str) -> None:
        engine_id = self.engine_of.pop(task_id, None)
        if engine_id is None:
            return
        held = self.assigned.get(engine_id, set())
        if task_id in held:
            held.discard(task_id)
            self.loads.change(engine_id, -1)

    def _lose(self, engine_id: int) -> None:
        """An engine found gone while routing: nothing more goes to it until it is live again."""
        self.live = [e for e in self.live if e != engine_id]
        self.loads.drop(engine_id)

    def _remember(self, record: TaskRecord, strict: bool = False) -> None:
        """Add a pending record to the backlog in memory."""
        if record.status != PENDING:
            return
        if record.invalid:
            self.incidents.note("invalid-record", "task %s has a record that does not decode (%s); failing it",
                                record.task_id, record.invalid)
            self.records.fail(record.task_id, error_fields("DecodeError", f"its record does not decode: {record.invalid}"),
                              allowed=(PENDING,))
            return
        header = self.stored.header(record)
        if header is None or not self.stored.dispatchable(record, strict):
            return
        self.bodies[record.task_id] = record.request or b""
        self._hold(PendingTask(
            task_id=record.task_id,
            seq=record.seq,
            priority=header.priority,
            needs_depend=header.depend,
            unmet=frozenset(record.unmet),
            failed_on=frozenset(record.failed_on),
            failed_at=record.failed_at,
        ), header)

    def _hold(self, task: PendingTask, header: TaskHeader) -> None:
        """Keep a task waiting for dispatch, restricted to its targets and blocked while the
        tasks it depends on have not finished."""
        if header.targets is not None:
            task.only_on = frozenset(header.targets)
        self.pending[task.task_id] = task
        if header.after is not None or header.follow is not None:
            task.blocked = True
            self.waiting.add(task.task_id, header.after, header.follow)
            self._judge([task.task_id])

    def _judge(self, task_ids: list[str]) -> None:
        """Look at the dependencies of held tasks: unblock, restrict to where they ran, or
        fail a task whose dependencies can never be met."""
        names = self.waiting.named_by(task_ids)
        states = {t: DepState(status, engine) for t, (status, engine) in self.records.watch(names).items()}
        # A fresh read beside our view: the followed task may have run, as plain FIFO work, on
        # an engine that started after our last look at the live engines.
        live = {*self.live, *self.registry.live_ids()}
        for task_id, outcome in self.waiting.decide(task_ids, states, live):
            task = self.pending.get(task_id)
            if task is None:
                continue
            if outcome.verdict is Verdict.MET:
                task.blocked = False
                if outcome.engines is not None:
                    task.only_on = outcome.engines if task.only_on is None else task.only_on & outcome.engines
                continue
            ename = "InvalidDependency" if outcome.verdict is Verdict.INVALID else "ImpossibleDependency"
            self._fail_held(task_id, ename, f"its dependencies cannot be met: {outcome.reason}")

    def _fail_held(self, task_id: str, ename: str, why: str) -> None:
        log.info("task %s fails: %s (%s)", task_id, ename, why)
        self.records.fail(task_id, error_fields(ename, why), allowed=(PENDING,))
        self.pending.pop(task_id, None)
        self.bodies.pop(task_id, None)

    # --- submissions ---------------------------------------------------------------
    def _refuse(self, delivery: Delivery, exc: SignatureError | DecodeError) -> None:
        self.metrics.dead_lettered.labels(exc.reason).inc()
        if dead_letter(self.publisher, self.names, self.records, delivery.body, exc, self.names.tasks_queue):
            self.consumer.ack(delivery)
        else:
            self.consumer.reject(delivery, requeue=False)

    def _on_submit(self, delivery: Delivery) -> None:
        """One submission; an unexpected failure is noted and the message dead-lettered
        (its record failed with the reason), never raised out of the broker loop."""
        try:
            self._submit(delivery)
        except Exception:
            self.incidents.note("submission", "scheduler could not handle a submission", traceback=True)
            try:
                self._refuse(delivery, DecodeError("message", "could not be handled by the scheduler"))
            except Exception:
                self.incidents.note("submission", "scheduler could not refuse a submission", traceback=True)

    def _submit(self, delivery: Delivery) -> None:
        try:
            header = open_task(self.ring, delivery.body, self.settings.max_message_age_s).header
            if not header.lb:
                raise DecodeError("lb", "is false: a targeted command sent to the scheduler's queue")
        except (SignatureError, DecodeError) as exc:
            self._refuse(delivery, exc)
            return
        task_id = header.task_id
        seq = time.time()
        try:
            queued, engines_version = self.records.enqueue(task_id, seq)
        except StoreError as exc:
            # Not acked: the broker gives it to us (or a standby) again.
            log.warning("cannot queue task %s: %s", task_id, exc)
            self.consumer.reject(delivery, requeue=True)
            return
        if queued == 0 and not delivery.redelivered:
            status = self.records.statuses([task_id])[0]
            if status == PENDING:
                queued, engines_version = self.records.enqueue(task_id, seq)  # its record arrived just now
            elif status is None and self._record_may_trail(task_id, delivery):
                return
            if queued == 0 and (status is None or status in TERMINAL):
                # A fresh publish of a task that already ended: a captured message sent again.
                self._trailing.pop(task_id, None)
                self._refuse(delivery, SignatureError("replayed", f"task {task_id} already finished or gone"))
                return
        self._trailing.pop(task_id, None)
        if queued == 1 or (queued == 2 and task_id not in self.pending and task_id not in self.engine_of):
            self.bodies[task_id] = delivery.body
            self._hold(PendingTask(task_id, seq, header.priority, header.depend), header)
        self.consumer.ack(delivery)
        if engines_version != self.props_version:
            # An engine went live (or properties changed) since housekeeping last looked: route
            # with what the submitter saw, not with a view up to one housekeeping old.
            self._look_at_engines()
        self._dispatch()

    def _record_may_trail(self, task_id: str, delivery: Delivery) -> bool:
        """A fresh message whose record is missing: the client writes the record while it
        publishes, so it can trail the message by a moment. Keep the message (unacked) to
        look again at the next tick, for RECORD_GRACE_S; True while it is kept."""
        _, deadline = self._trailing.get(task_id, (delivery, time.monotonic() + RECORD_GRACE_S))
        if time.monotonic() >= deadline:
            return False
        self._trailing[task_id] = (delivery, deadline)
        return True

    def _retry_trailing(self) -> None:
        for delivery, _ in list(self._trailing.values()):
            self._on_submit(delivery)

    # --- routing -------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Route what can be routed now. Never raises: it runs inside broker callbacks, and
        whatever it could not do is still in Redis for the next attempt."""
        try:
            self._dispatch_now()
        except EnginefarmError as exc:
            log.warning("scheduler could not dispatch: %s", exc)
        except Exception:
            self.incidents.note("dispatch", "scheduler failed dispatching", traceback=True)

    def _dispatch_now(self) -> None:
        if not self.pending or not self.loads.any_free():
            return
        decided = plan(self.scheme, self.pending.values(), self.loads, self.settings.scheduler_slots,
                       time.time(), self.settings.failure_penalty_s)
        for task_id, engine_id in decided.assignments:
            self._route(task_id, engine_id)
        for task_id in decided.unsatisfiable:
            if task_id not in self.waiting_noted:
                self.waiting_noted.add(task_id)
                self.records.set_fields(task_id, {"waiting": self._why_waiting(self.pending[task_id])})

    def _why_waiting(self, task: PendingTask) -> str:
        live = sorted(self.live)
        if task.only_on is not None and not task.only_on & set(live):
            return f"none of its engines {sorted(task.only_on)} is live (live: {live})"
        return f"no live engine satisfies its depend (engines {live} said no)"

    def _route(self, task_id: str, engine_id: int) -> None:
        # Record the route first, then publish: an engine that hands the task straight back
        # finds it routed, and a crash in between is repaired on takeover (see _restore).
        outcome = self.records.assign(task_id, engine_id)
        if outcome == -1:
            self._lose(engine_id)
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
            self._untrack(task_id)
            self._lose(engine_id)
            self.records.requeue(task_id, engine_id, "")
            return
        except BrokerError:
            # Not sent (the broker nacked it or stayed away): back to the backlog, so that it
            # is routed again instead of counted against an engine that never got it.
            self._untrack(task_id)
            self.records.requeue(task_id, engine_id, "")
            raise
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
            except Exception:
                self.incidents.note("events", "scheduler failed reading events", traceback=True)
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
        except Exception:
            self.incidents.note("events", "scheduler failed handling task events", traceback=True)

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
            try:
                self._take_event(task_id, record)
            except EnginefarmError as exc:
                log.warning("scheduler could not handle task %s: %s", task_id, exc)
            except Exception:
                self.incidents.note("event", "scheduler failed handling an event of task %s", task_id, traceback=True)
        self._dispatch()

    def _take_event(self, task_id: str, record: TaskRecord | None) -> None:
        dependants = self.waiting.dependants_of(task_id)
        if dependants:
            self._judge(dependants)
        self._untrack(task_id)
        if record is None or record.done:  # purged, or finished
            if record is not None:
                self.metrics.tasks.labels(record.status).inc()
            self.pending.pop(task_id, None)
            self.bodies.pop(task_id, None)
            self.waiting_noted.discard(task_id)
            self.waiting.forget(task_id)
        elif record.status == PENDING and not record.routed:
            self._remember(record)
