"""The engine daemon: a supervisor around one child process that runs user code.

Threads of the supervisor:
- main: the broker I/O loop (deliveries, acks, AMQP heartbeats); never blocks on user code;
- worker: takes deliveries one at a time, claims the task in Redis, runs it in the child,
  records the outcome, then acks;
- control: signals from the engine's control queue, sent to the child at once (see control.py);
- heartbeat: refreshes liveness in Redis (liveness.py);
- upkeep: reaps peers that stopped heartbeating and culls old history (liveness.py).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..broker import BrokerConnection, Consumer, Delivery, Publisher
from ..broker.topology import declare_cluster, declare_control_queue, declare_engine_queue, over_delivery_limit
from ..buffers import is_packed, unpack
from ..config import Settings
from ..deadletter import dead_letter
from ..errors import DataExpired, DecodeError, DeliveryLimitError, EngineDeclaredDead, EnginefarmError, SignatureError, StoreError
from ..incidents import Incidents
from ..metrics import Metrics
from ..names import Names
from ..recovery import Reaper
from ..store import Stores
from ..store.records import COMPLETED, FAILED, RECORD_GRACE_S, error_fields
from ..systemd import notify
from ..task import Kind, open_task
from .control import IDLE_WAIT_S, Control
from .executor import Executor, Outcome
from .jobs import AckOnce, Batch, Claim, Entry, Job
from .liveness import Liveness
from .outcomes import Outcomes
from .output import OutputRelay

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine(Liveness):
    def __init__(self, settings: Settings, properties: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.properties = dict(properties or {})
        self.names = Names(settings.cluster)
        self.engine_id: int = -1
        self.exit_code = 0
        # None in here only wakes the worker to look at its flags: idle threads block rather
        # than poll (with 200 engines on a host, polling was a core's worth of wakeups).
        self._deliveries: queue.Queue[Delivery | None] = queue.Queue()
        self._draining = threading.Event()
        self._stop_io = threading.Event()
        self._dead = threading.Event()
        self._stop_requests = 0
        self._activated = False
        self._batch = 1
        self._aside = False  # not taking from the shared queue while a long task runs
        self._owed: Entry | None = None  # an outcome sent, reply not read
        self._reaping = threading.Lock()  # the reaper's broker connection serves one thread at a time
        self._publishing = threading.Lock()  # so does the publisher's (worker and control threads)
        self.metrics = Metrics()
        self.incidents = Incidents("engine", self.metrics)

    # --- lifecycle -----------------------------------------------------------------
    def setup(self) -> None:
        """Connect, register and start the child. Raises EnginefarmError with a clear message."""
        s = self.settings
        stores = Stores.open(s)
        self.ring, self.registry, self.records, self.history = stores.ring, stores.registry, stores.records, stores.history
        self.incidents.counts = self.records
        self.registry.on_invalid = lambda kind, message: self.incidents.note(kind, "%s", message)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self.engine_id = self.registry.register(info, s.max_engines)
        if self.engine_id < 0:
            raise EnginefarmError(f"cluster {s.cluster!r} already has {s.max_engines} engines")
        self.registry.set_properties(self.engine_id, self.properties)
        self.blobs = stores.blobs
        self.executor = Executor(s.output_cap_bytes, s.engine_shell, s.display_cap_bytes, s.max_value_bytes)
        self.executor.start()
        self.live = OutputRelay(stores.output)
        self.outcomes = Outcomes(self.engine_id, s, self.records, self.registry, self.blobs, self.live, self.metrics,
                                 self._retry_store)
        self.consumer = Consumer(
            s.amqp_url,
            setup=self._declare,
            on_message=self._route,
            prefetch=s.prefetch,
            heartbeat_s=s.amqp_heartbeat_s,
            name=f"enginefarm-engine-{s.cluster}-{self.engine_id}",
        )
        self.publisher = Publisher(s.amqp_url, s.amqp_heartbeat_s, f"enginefarm-engine-{self.engine_id}-pub")
        self.control = Control(
            self.engine_id, self.ring, self.records, self.executor, self.consumer.ack,
            lambda delivery, exc: self._refuse(delivery, AckOnce(self.consumer, delivery), exc),
            self._retry_store, self.incidents, s.max_message_age_s,
        )
        self.reaper = Reaper(
            self.registry,
            self.records,
            BrokerConnection(s.amqp_url, s.amqp_heartbeat_s, f"enginefarm-engine-{self.engine_id}-reaper"),
            self.names,
            s.engine_timeout_s,
            s.max_engine_losses,
            stores.output,
        )

    def _declare(self, channel: BlockingChannel) -> list[str]:
        declare_cluster(channel, self.names)
        queue_name = declare_engine_queue(channel, self.names, self.engine_id)
        control_queue = declare_control_queue(channel, self.names, self.engine_id)
        if not self._activated:
            # Only now can clients route to us: the queue exists and consuming starts next.
            self._retry_store(lambda: self.registry.activate(self.engine_id))
            self._activated = True
        return [queue_name, control_queue, self.names.work_queue]

    def _route(self, delivery: Delivery) -> None:
        """On the broker I/O thread: control messages to the control thread, tasks to the worker."""
        if delivery.queue == self.names.control_queue(self.engine_id):
            self.control.put(delivery)
        else:
            self._deliveries.put(delivery)

    def run(self, on_ready: Callable[[int], None] | None = None) -> int:
        """Serve until stopped; returns the process exit code."""
        self.setup()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_addr)
        log.info("engine %d of cluster %r registered (pid %d)", self.engine_id, self.settings.cluster, os.getpid())
        threads = [
            threading.Thread(target=self._work, name="worker", daemon=True),
            threading.Thread(target=self.control.serve, args=(self._stop_io,), name="control", daemon=True),
            threading.Thread(target=self._beat, name="heartbeat", daemon=True),
            threading.Thread(target=self._upkeep, name="upkeep", daemon=True),
        ]
        for thread in threads:
            thread.start()
        threading.Thread(target=self._announce, args=(on_ready,), daemon=True).start()
        try:
            self.consumer.run(self._stop_io, poll_s=IDLE_WAIT_S)
        finally:
            self._draining.set()
            self._wake_worker()
            self._stop_serving()
            for thread in threads:
                thread.join(timeout=10)
            self.consumer.close()
            self.publisher.close()
            self.reaper.broker.close()
            self.executor.stop()
        log.info("engine %d stopped (exit %d)", self.engine_id, self.exit_code)
        return self.exit_code

    def _announce(self, on_ready: Callable[[int], None] | None) -> None:
        if self.consumer.ready.wait(timeout=120):
            notify(f"READY=1\nSTATUS=engine {self.engine_id} of cluster {self.settings.cluster} consuming")
            if on_ready is not None:
                on_ready(self.engine_id)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.request_stop("SIGINT"))

    def request_stop(self, why: str) -> None:
        """First call: drain (finish the running task). Second: interrupt it."""
        self._stop_requests += 1
        if self._stop_requests == 1:
            log.info("engine %d draining (%s)", self.engine_id, why)
            notify("STOPPING=1")
            self._draining.set()
            # A signal handler must not take the queue's lock: the thread it interrupted may hold it.
            threading.Thread(target=self._wake_worker, daemon=True).start()
            self.consumer.pause()
            budget = self.settings.drain_timeout_s
            timer = threading.Timer(budget, self.executor.interrupt, [f"drain budget of {budget:g}s ran out"])
            timer.daemon = True
            timer.start()
        else:
            self.executor.interrupt(f"engine stopped ({why} while draining)")

    # --- worker thread -------------------------------------------------------------
    # Tasks are claimed in batches of the deliveries already waiting here: one Redis round
    # trip records a batch's last outcome and claims the next batch, and one broker frame
    # acks the batch (each outcome is recorded before the next task starts).
    # The batch grows while tasks are quick and falls back to one when they are not; a
    # claimed task that has not started when the batch window closes goes back to its queue.
    def _work(self) -> None:
        try:
            carried: tuple[list[Job], list[Claim]] | None = None
            while not self._dead.is_set():
                if carried is not None:
                    carried = self._run_batch(*carried)
                    continue
                try:
                    delivery = self._deliveries.get(timeout=IDLE_WAIT_S)
                except queue.Empty:
                    delivery = None
                if delivery is None:
                    if self._draining.is_set():
                        break
                    continue
                if self._draining.is_set():
                    break  # not started: settled below with the rest of our queue
                job = self._open(delivery)
                if job is None:
                    continue
                jobs = self._take([job])
                ids = [j.task_id for j in jobs]
                carried = (jobs, self._retry_store(lambda: self.records.settle(self.engine_id, claims=ids, only_if_live=True)))
            if not self._dead.is_set():
                self._leave()
        except EngineDeclaredDead:
            pass  # said by _declared_dead; what we hold unacked goes back to its queues
        except Exception:
            log.exception("engine %d worker failed", self.engine_id)
            self.exit_code = 1
        finally:
            self._stop_serving()

    def _wake_worker(self) -> None:
        self._deliveries.put(None)

    def _stop_serving(self) -> None:
        """End the I/O loop and the control thread now, not at their next idle timeout."""
        self._stop_io.set()
        self.control.wake()
        self.consumer.wake()

    def _open(self, delivery: Delivery) -> Job | None:
        """Verify and decode a delivery; one that fails is dead-lettered and None returned."""
        ack = AckOnce(self.consumer, delivery)
        if delivery.queue != self.names.work_queue and over_delivery_limit(delivery.headers):
            self._refuse(delivery, ack, DeliveryLimitError(delivery.queue, "gave it back as often as its x-delivery-limit allows"))
            return None
        try:
            message = open_task(self.ring, delivery.body, self.settings.max_message_age_s)
        except (SignatureError, DecodeError) as exc:
            self._refuse(delivery, ack, exc)
            return None
        except Exception:
            self.incidents.note("message", "engine %d could not open a delivery", self.engine_id, traceback=True)
            self._refuse(delivery, ack, DecodeError("message", "could not be opened"))
            return None
        header = message.header
        if header.kind is Kind.SIGNAL:
            # Signals are sent on the control queue; one re-published to a task queue would
            # wait behind the running task and mean something else by then.
            self._refuse(delivery, ack, SignatureError("context", "a signal on a task queue"))
            return None
        if not header.lb and header.engine_id != self.engine_id:
            # Signed for another engine and re-published here: the target is part of the request.
            self._refuse(delivery, ack, SignatureError(
                "context", f"request for engine {header.engine_id!r} delivered to engine {self.engine_id}"))
            return None
        return Job(delivery, header, message.payload, ack)

    def _take(self, jobs: list[Job]) -> list[Job]:
        """Add verified deliveries already waiting here (never blocks) until the batch is full.

        A stop request ends a batch; a second copy of a task in the same batch is acked unrun.
        """
        ids = {j.task_id for j in jobs}
        while len(jobs) < self._batch and not self._draining.is_set():
            if jobs and jobs[-1].header.kind is Kind.KILL:
                break
            try:
                delivery = self._deliveries.get_nowait()
            except queue.Empty:
                break
            if delivery is None:
                continue  # a wakeup; the loop's condition reads the flags
            job = self._open(delivery)
            if job is None:
                continue
            if job.task_id in ids:
                self.metrics.tasks.labels("skipped").inc()
                job.ack()
                continue
            ids.add(job.task_id)
            jobs.append(job)
        return jobs

    def _run_batch(self, jobs: list[Job], claims: list[Claim]) -> tuple[list[Job], list[Claim]] | None:
        """Run claimed jobs in order; record them, release what did not start, claim the next
        batch (one round trip); then ack. Returns the next batch when there is one."""
        batch = Batch(jobs, claims, time.monotonic() + self.settings.batch_window_s)
        killed = False
        for index, (job, claim) in enumerate(zip(jobs, claims)):
            if index >= batch.cut:
                break  # released while the task before it ran
            if index > 0 and (self._draining.is_set() or time.monotonic() > batch.window_end):
                batch.cut = index
                break
            entry = self._run_guarded(job, claim, batch, index)
            if entry is not None:
                batch.acks.append(job)
                if index + 1 < batch.cut:
                    # Sent to Redis before the next task starts, with the word that it starts
                    # (the reply is read while it runs): an engine killed at any point re-runs at
                    # most the task it was running. The batch's last outcome rides with its
                    # closing round trip.
                    following = jobs[index + 1].task_id if claims[index + 1][0] else None
                    self._retry_store(lambda: self.records.finish_soon(self.engine_id, *entry, start=following))
                    self._owed = entry
                    if following is not None:
                        batch.started.add(index + 1)
                else:
                    batch.finished.append(entry)
            killed = killed or (job.header.kind is Kind.KILL and entry is not None and entry[1] == COMPLETED)
        end = batch.released_from
        self._settle_owed()
        unstarted = [(j, c) for j, c in zip(jobs[batch.cut:end], claims[batch.cut:end]) if c[0]]
        following = [] if killed or self._dead.is_set() else self._take([])
        ids = [j.task_id for j in following]
        released = [(j.task_id, c[2] - 1, j.header.lb) for j, c in unstarted]
        next_claims = self._retry_store(lambda: self.records.settle(
            self.engine_id, finished=batch.finished, released=released, claims=ids, only_if_live=True))
        self.live.clear_finished()  # every outcome of the batch is recorded now
        self.consumer.settle([j.delivery for j in batch.acks if j.ack.take()],
                             [j.delivery for j, _ in unstarted if j.ack.take()], requeue=True)
        self._adapt(batch, len(jobs))
        if killed:
            self.request_stop("killed by a client")
        return (following, next_claims) if following else None

    def _adapt(self, batch: Batch, size: int) -> None:
        """Double the batch while a whole one fits well inside the window, else start over at one."""
        if batch.cut >= size and time.monotonic() < batch.window_end - self.settings.batch_window_s / 2:
            self._batch = min(self._batch * 2, self.settings.batch_max)
        elif batch.cut < size or time.monotonic() > batch.window_end:
            self._batch = 1

    def _step_aside(self) -> None:
        """A task outlasts the batch window: the shared queue's other tasks should not wait
        behind it here. Stop taking from that queue until it ends, and give back what the
        queue already delivered here (tasks routed to this engine stay)."""
        self._aside = True
        self.consumer.shed(self.names.work_queue, self._deliveries)

    def _settle_owed(self) -> None:
        """Take the reply of the outcome sent ahead (``finish_soon``), sending it again if
        Redis failed meanwhile."""
        entry, self._owed = self._owed, None
        if entry is None:
            return
        try:
            self.records.finished_soon()
        except StoreError as exc:
            log.warning("engine %d records task %s again: %s", self.engine_id, entry[0], exc)
            self._retry_store(lambda: self.records.settle(self.engine_id, finished=[entry]))

    def _release_rest(self, batch: Batch, index: int) -> None:
        """The batch window closed while job ``index`` runs: put the jobs after it back."""
        self._settle_owed()
        rest = [(j, c) for j, c in zip(batch.jobs[index + 1 :], batch.claims[index + 1 :]) if c[0]]
        batch.cut = batch.released_from = index + 1
        if not rest:
            return
        released = [(j.task_id, c[2] - 1, j.header.lb) for j, c in rest]
        self._retry_store(lambda: self.records.settle(self.engine_id, released=released))
        self.consumer.settle([], [j.delivery for j, _ in rest if j.ack.take()], requeue=True)

    def _run_guarded(self, job: Job, claim: Claim, batch: Batch, index: int) -> Entry | None:
        """``_run_one``; an unexpected failure while handling the task fails that task with
        EngineError (logged with its traceback and counted), and the engine goes on."""
        try:
            return self._run_one(job, claim, batch, index)
        except StoreError:
            raise  # Redis is gone for good (we were declared dead): the worker stops
        except Exception as exc:
            self.incidents.note("task", "engine %d failed handling task %s", self.engine_id, job.task_id,
                                traceback=True)
            error = {"ename": "EngineError", "evalue": f"the engine failed handling the task: "
                     f"{type(exc).__name__}: {exc}", "traceback": "", "engine_id": self.engine_id}
            return job.task_id, FAILED, {"error": json.dumps(error)}

    def _run_one(self, job: Job, claim: Claim, batch: Batch, index: int) -> Entry | None:
        """Run one claimed job; returns what to record, or None when it is settled already."""
        header, task_id = job.header, job.task_id
        claimed, previous, attempt = claim
        if not claimed and previous == "" and not job.delivery.redelivered:
            claimed, previous, attempt = self._await_record(task_id)
        if not claimed:
            self._settle_owed()
            if not job.delivery.redelivered and previous in (COMPLETED, FAILED, ""):
                # A fresh publish of a finished (or forgotten) task: someone replays a
                # captured message. Legitimate duplicates are broker redeliveries.
                self._refuse(job.delivery, job.ack,
                             SignatureError("replayed", f"task {task_id} already {previous or 'gone'}"))
                return None
            log.info("engine %d skips task %s (%s)", self.engine_id, task_id, previous)
            self.metrics.tasks.labels("skipped").inc()
            job.ack()
            return None
        if index not in batch.started:
            # Claimed ahead, and no outcome went out before it to say it starts.
            self._settle_owed()
            self._retry_store(lambda: self.records.settle(self.engine_id, start=task_id))
        if header.ts is not None:
            self.metrics.wait_seconds.observe(max(time.time() - header.ts, 0.0))
        if header.depend and batch.properties is None:
            batch.properties = self._retry_store(self._properties)
        request = header.for_child(attempt, batch.properties if header.depend else None)
        timeout_s = header.timeout or self.settings.task_timeout_s or 0.0
        started = time.monotonic()
        # Long tasks hand custody to the record in Redis, so the broker's consumer timeout
        # never closes our channel; a reaper settles the record if this engine dies.
        after: list[tuple[float, Callable[[], None]]] = [(self.settings.custody_after_s, job.ack),
                                                         (self.settings.batch_window_s, self._step_aside)]
        if index + 1 < batch.cut:
            after.append((max(batch.window_end - started, 0.0), lambda: self._release_rest(batch, index)))
        try:
            buffers = self._request_buffers(job.payload)
        except (DataExpired, SignatureError) as exc:
            outcome = Outcome(ok=False, error=error_fields(type(exc).__name__, f"the request cannot be read: {exc}"))
        else:
            self.metrics.in_progress.inc()
            try:
                outcome = self.executor.run(request, job.payload, timeout_s, after=after, meanwhile=self._settle_owed,
                                            on_output=self.live.begin(task_id), buffers=buffers)
            finally:
                self.live.end()
                self.metrics.in_progress.dec()
                self.metrics.run_seconds.observe(time.monotonic() - started)
                if self._aside and not self._draining.is_set():
                    self._aside = False
                    self.consumer.resume(self.names.work_queue)
        if header.lb and self._retry_store(lambda: self.outcomes.hand_back(task_id, header, attempt, outcome)):
            self.metrics.tasks.labels("requeued").inc()
            batch.acks.append(job)
            return None
        self.metrics.tasks.labels("completed" if outcome.ok else "failed").inc()
        status, fields = self.outcomes.fields(task_id, outcome)
        return task_id, status, fields

    def _request_buffers(self, payload: bytes) -> list[list[bytes]] | None:
        """The out-of-band buffers a packed request names, read and checked (None if it
        names none). Raises: DataExpired, SignatureError."""
        if not is_packed(payload):
            return None
        refs = unpack(payload)[0]
        return self._retry_store(lambda: self.blobs.fetch_parts(refs, "the request"))

    def _await_record(self, task_id: str) -> Claim:
        """A fresh message whose record is missing. Clients write the record while they
        publish, so it can trail the message by a moment: wait for it a little before calling
        the message a replay of a forgotten task."""
        deadline: float | None = None
        delay = 0.002
        while True:
            self._settle_owed()
            claim = self._retry_store(lambda: self.records.settle(self.engine_id, claims=[task_id], only_if_live=True))[0]
            # The grace counts from Redis's first answer: a client whose write met a failover
            # makes it again once Redis is back, as we do.
            deadline = time.monotonic() + RECORD_GRACE_S if deadline is None else deadline
            if claim[0] or claim[1] != "" or time.monotonic() > deadline:
                return claim
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _refuse(self, delivery: Delivery, ack: AckOnce, exc: SignatureError | DecodeError) -> None:
        self.metrics.dead_lettered.labels(exc.reason).inc()
        source = delivery.queue or self.names.engine_queue(self.engine_id)
        with self._publishing:
            sent = dead_letter(self.publisher, self.names, self.records, delivery.body, exc, source)
        if sent:
            ack()
        else:
            self.consumer.reject(delivery, requeue=False)

    def _properties(self) -> dict[str, Any]:
        """This engine's properties for depend; a value that does not decode is left out."""
        properties, bad = self.registry.readable_properties(self.engine_id)
        for name in bad:
            self.incidents.note("property", "engine %d property %r is not JSON; depend does not see it",
                                self.engine_id, name[:64])
        return properties

    def _retry_store(self, action: Callable[[], T]) -> T:
        """Retry a Redis write until it lands: nothing is acked while Redis is away."""
        delay = 0.1
        while True:
            try:
                return action()
            except EngineDeclaredDead:
                # A claim found us out of the live set before the heartbeat thread did: the
                # reaper may have handed our work to others, so take nothing more, and stop.
                if not self._dead.is_set() and not self._draining.is_set():
                    self._declared_dead()
                self._dead.set()
                raise
            except StoreError as exc:
                if self._dead.is_set():
                    raise
                log.warning("engine %d waits for Redis: %s", self.engine_id, exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _leave(self) -> None:
        """Clean exit: settle what was routed here, remove the queue, free the id."""
        with self._reaping:
            self._retry_store(lambda: self.reaper.reap(self.engine_id, "shut down"))

    def _declared_dead(self) -> None:
        """Another process judged us dead and settled our tasks: stop at once."""
        log.error("engine %d was declared dead by the cluster; exiting", self.engine_id)
        self.exit_code = 1
        self._dead.set()
        self._draining.set()
        self._wake_worker()
        self.executor.interrupt("engine declared dead")
        self._stop_serving()
