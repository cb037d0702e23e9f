"""The engine daemon: a supervisor around one child process that runs user code.

Threads of the supervisor:
- main: the broker I/O loop (deliveries, acks, AMQP heartbeats); never blocks on user code;
- worker: takes deliveries one at a time, claims the task in Redis, runs it in the child,
  records the outcome, then acks;
- heartbeat: refreshes liveness in Redis and reaps peers that stopped heartbeating.
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
from dataclasses import dataclass
from typing import Any, TypeVar

from ..broker import BrokerConnection, Consumer, Delivery, Publisher
from ..broker.topology import declare_cluster, declare_engine_queue
from ..config import Settings
from ..deadletter import dead_letter
from ..errors import EnginefarmError, SignatureError, StoreError
from ..metrics import Metrics
from ..systemd import notify, watchdog_interval_s
from ..names import Names
from ..protocol import open_envelope
from ..recovery import Reaper
from ..store import Stores
from ..store.records import COMPLETED, FAILED
from .executor import Executor, Outcome

log = logging.getLogger(__name__)
T = TypeVar("T")

# Outcomes that are not the task's own failure: it is run again elsewhere, a bounded number of times.
LOST_ERRORS = frozenset({"EngineProcessDied", "TaskInterrupted"})


class AckOnce:
    """Acks a delivery exactly once, whether custody or completion comes first."""

    def __init__(self, consumer: Consumer, delivery: Delivery) -> None:
        self._consumer = consumer
        self._delivery = delivery
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._consumer.ack(self._delivery)


Claim = tuple[bool, str, int]


@dataclass
class Job:
    """A verified delivery: what to run, and how to ack it once."""

    delivery: Delivery
    header: dict[str, Any]
    payload: bytes
    ack: AckOnce

    @property
    def task_id(self) -> str:
        return str(self.header.get("task_id", ""))


class Engine:
    def __init__(self, settings: Settings, properties: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.properties = dict(properties or {})
        self.names = Names(settings.cluster)
        self.engine_id: int = -1
        self.exit_code = 0
        self._deliveries: queue.Queue[Delivery] = queue.Queue()
        self._draining = threading.Event()
        self._stop_io = threading.Event()
        self._dead = threading.Event()
        self._stop_requests = 0
        self._activated = False
        self.metrics = Metrics()

    # --- lifecycle -----------------------------------------------------------------
    def setup(self) -> None:
        """Connect, register and start the child. Raises EnginefarmError with a clear message."""
        s = self.settings
        stores = Stores.open(s)
        self.ring, self.registry, self.records, self.history = stores.ring, stores.registry, stores.records, stores.history
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self.engine_id = self.registry.register(info, s.max_engines)
        if self.engine_id < 0:
            raise EnginefarmError(f"cluster {s.cluster!r} already has {s.max_engines} engines")
        self.registry.set_properties(self.engine_id, self.properties)
        self.executor = Executor(s.output_cap_bytes)
        self.executor.start()
        self.consumer = Consumer(
            s.amqp_url,
            setup=self._declare,
            on_message=self._deliveries.put,
            prefetch=s.prefetch,
            heartbeat_s=s.amqp_heartbeat_s,
            name=f"enginefarm-engine-{s.cluster}-{self.engine_id}",
        )
        self.publisher = Publisher(s.amqp_url, s.amqp_heartbeat_s, f"enginefarm-engine-{self.engine_id}-pub")
        self.reaper = Reaper(
            self.registry,
            self.records,
            BrokerConnection(s.amqp_url, s.amqp_heartbeat_s, f"enginefarm-engine-{self.engine_id}-reaper"),
            self.names,
            s.engine_timeout_s,
            s.max_engine_losses,
        )

    def _declare(self, channel: Any) -> list[str]:
        declare_cluster(channel, self.names)
        queue_name = declare_engine_queue(channel, self.names, self.engine_id)
        if not self._activated:
            # Only now can clients route to us: the queue exists and consuming starts next.
            self._retry_store(lambda: self.registry.activate(self.engine_id))
            self._activated = True
        return [queue_name, self.names.work_queue]

    def run(self, on_ready: Callable[[int], None] | None = None) -> int:
        """Serve until stopped; returns the process exit code."""
        self.setup()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
        log.info("engine %d of cluster %r registered (pid %d)", self.engine_id, self.settings.cluster, os.getpid())
        threads = [
            threading.Thread(target=self._work, name="worker", daemon=True),
            threading.Thread(target=self._beat, name="heartbeat", daemon=True),
        ]
        for thread in threads:
            thread.start()
        threading.Thread(target=self._announce, args=(on_ready,), daemon=True).start()
        try:
            self.consumer.run(self._stop_io)
        finally:
            self._draining.set()
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
            self.consumer.pause()
            budget = self.settings.drain_timeout_s
            timer = threading.Timer(budget, self.executor.interrupt, [f"drain budget of {budget:g}s ran out"])
            timer.daemon = True
            timer.start()
        else:
            self.executor.interrupt(f"engine stopped ({why} while draining)")

    # --- worker thread -------------------------------------------------------------
    def _work(self) -> None:
        try:
            carried: tuple[Job, Claim] | None = None
            while not self._dead.is_set():
                if carried is not None:
                    # Claimed in the round trip that recorded the previous task: it has started.
                    job, claim = carried
                    carried = self._process(job, claim)
                    continue
                try:
                    delivery = self._deliveries.get(timeout=0.1)
                except queue.Empty:
                    if self._draining.is_set():
                        break
                    continue
                if self._draining.is_set():
                    break  # not started: settled below with the rest of our queue
                job = self._open(delivery)
                if job is not None:
                    carried = self._process(job, None)
            if not self._dead.is_set():
                self._leave()
        except Exception:
            log.exception("engine %d worker failed", self.engine_id)
            self.exit_code = 1
        finally:
            self._stop_io.set()

    def _open(self, delivery: Delivery) -> Job | None:
        """Verify a delivery; a message that fails is dead-lettered and None returned."""
        ack = AckOnce(self.consumer, delivery)
        try:
            envelope = open_envelope(self.ring, delivery.body, self.settings.max_message_age_s)
        except SignatureError as exc:
            self._refuse(delivery, ack, exc)
            return None
        header = envelope.header
        if not header.get("lb") and header.get("engine_id") != self.engine_id:
            # Signed for another engine and re-published here: the target is part of the request.
            self._refuse(delivery, ack, SignatureError(
                "context", f"request for engine {header.get('engine_id')!r} delivered to engine {self.engine_id}"))
            return None
        return Job(delivery, header, envelope.payload, ack)

    def _next_job(self) -> Job | None:
        """The next verified delivery already waiting here, if any (never blocks)."""
        while not self._draining.is_set():
            try:
                delivery = self._deliveries.get_nowait()
            except queue.Empty:
                return None
            job = self._open(delivery)
            if job is not None:
                return job
        return None

    def _process(self, job: Job, claim: Claim | None) -> tuple[Job, Claim] | None:
        """Run one job; returns the next job when its claim rode along with this record."""
        header, task_id = job.header, job.task_id
        if claim is None:
            claim = self._retry_store(lambda: self.records.claim(task_id, self.engine_id))
        claimed, previous, attempt = claim
        if not claimed:
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
        if isinstance(header.get("ts"), (int, float)):
            self.metrics.wait_seconds.observe(max(time.time() - header["ts"], 0.0))
        header["attempt"] = attempt
        if header.get("depend"):
            header["properties"] = self._retry_store(lambda: self.registry.get_properties(self.engine_id))
        timeout_s = float(header.get("timeout") or self.settings.task_timeout_s or 0)
        started = time.monotonic()
        self.metrics.in_progress.inc()
        try:
            # Long tasks hand custody to the record in Redis, so the broker's consumer timeout
            # never closes our channel; a reaper settles the record if this engine dies.
            outcome = self.executor.run(header, job.payload, timeout_s,
                                        after=(self.settings.custody_after_s, job.ack))
        finally:
            self.metrics.in_progress.dec()
            self.metrics.run_seconds.observe(time.monotonic() - started)
        carried = None
        if header.get("lb") and self._retry_store(lambda: self._hand_back(task_id, header, outcome)):
            self.metrics.tasks.labels("requeued").inc()
        else:
            following = None if header.get("kind") == "kill" else self._next_job()
            next_claim = self._retry_store(lambda: self._record(task_id, outcome, following))
            self.metrics.tasks.labels("completed" if outcome.ok else "failed").inc()
            if following is not None:
                carried = (following, next_claim)
        job.ack()
        if header.get("kind") == "kill" and outcome.ok:
            self.request_stop("killed by a client")
        return carried

    def _refuse(self, delivery: Delivery, ack: AckOnce, exc: SignatureError) -> None:
        self.metrics.dead_lettered.labels(exc.reason).inc()
        source = self.names.work_queue if delivery.routing_key == self.names.work_queue else \
            self.names.engine_queue(self.engine_id)
        if dead_letter(self.publisher, self.names, self.records, delivery.body, exc, source):
            ack()
        else:
            self.consumer.reject(delivery, requeue=False)

    def _hand_back(self, task_id: str, header: dict[str, Any], outcome: Outcome) -> bool:
        """Give a load-balanced task back to the scheduler when seed 003 says to run it again.

        Returns False when the outcome is final and must be recorded.
        """
        if outcome.ok:
            return False
        if outcome.unmet:
            self.metrics.retries.labels("unmet").inc()
            return self.records.requeue(task_id, self.engine_id, "unmet", attempts_delta=-1)
        error = {**(outcome.error or {}), "engine_id": self.engine_id}
        fields = {"last_error": json.dumps(error), "failed_at": repr(time.time())}
        if error.get("ename") in LOST_ERRORS:
            record = self.records.get(task_id)
            lost = len([e for e in (record.extra.get("lost_on", "") if record else "").split(",") if e])
            if lost + 1 < self.settings.max_engine_losses:
                self.metrics.retries.labels("lost").inc()
                return self.records.requeue(task_id, self.engine_id, "lost_on", fields=fields)
            return False
        if int(header.get("attempt", 1)) <= int(header.get("retries", 0)):
            self.metrics.retries.labels("failed").inc()
            return self.records.requeue(task_id, self.engine_id, "failed_on", fields=fields)
        return False

    def _record(self, task_id: str, outcome: Outcome, following: Job | None = None) -> Claim | None:
        """Record the outcome before the ack; claim ``following`` in the same round trip."""
        cap = self.settings.max_message_bytes
        if outcome.ok and len(outcome.value or b"") > cap:
            outcome.ok = False
            outcome.error = {"ename": "ResultTooLarge", "traceback": "",
                             "evalue": f"the result is {len(outcome.value or b''):,} bytes pickled, over the "
                                       f"cluster's cap of {cap:,} bytes (max_message_bytes)"}
            outcome.value = None
        fields: dict[str, Any] = {"stdout": outcome.stdout, "stderr": outcome.stderr}
        if outcome.ok:
            fields["summary"] = outcome.summary
            fields["result"] = self.records.seal_value(task_id, "result", outcome.value or b"")
        else:
            fields["error"] = json.dumps({**(outcome.error or {}), "engine_id": self.engine_id})
        if outcome.namespace_lost:
            fields["namespace_lost"] = "1"
        status = COMPLETED if outcome.ok else FAILED
        if following is None:
            self.records.finish(task_id, status, fields)
            return None
        return self.records.finish_and_claim(task_id, status, fields, following.task_id, self.engine_id)

    def _retry_store(self, action: Callable[[], T]) -> T:
        """Retry a Redis write until it lands: nothing is acked while Redis is away."""
        delay = 0.1
        while True:
            try:
                return action()
            except StoreError as exc:
                if self._dead.is_set():
                    raise
                log.warning("engine %d waits for Redis: %s", self.engine_id, exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _leave(self) -> None:
        """Clean exit: settle what was routed here, remove the queue, free the id."""
        self._retry_store(lambda: self.reaper.reap(self.engine_id, "shut down"))

    # --- heartbeat thread ----------------------------------------------------------
    def _beat(self) -> None:
        interval = self.settings.heartbeat_interval_s
        watchdog = watchdog_interval_s()
        if watchdog is not None:
            interval = min(interval, watchdog)
        while not self._stop_io.wait(interval):
            if watchdog is not None:
                notify("WATCHDOG=1")
            if not self._activated:
                continue  # not live yet: nobody can have declared us dead
            try:
                alive = self.registry.heartbeat(self.engine_id)
                self.reaper.observe(True)
            except StoreError as exc:
                self.reaper.observe(False)
                log.warning("engine %d cannot heartbeat: %s", self.engine_id, exc)
                continue
            if not alive:
                if not self._draining.is_set():
                    self._declared_dead()
                return
            if self._draining.is_set():
                continue
            try:
                self.reaper.broker.keepalive()
                self.metrics.engine_deaths.inc(len(self.reaper.reap_stale()))
                self.metrics.engines.set(len(self.registry.live_ids()))
                self.history.cull(self.settings.result_ttl_s, self.settings.max_records)
            except EnginefarmError as exc:
                log.warning("engine %d could not reap peers: %s", self.engine_id, exc)

    def _declared_dead(self) -> None:
        """Another process judged us dead and settled our tasks: stop at once."""
        log.error("engine %d was declared dead by the cluster; exiting", self.engine_id)
        self.exit_code = 1
        self._dead.set()
        self._draining.set()
        self.executor.interrupt("engine declared dead")
        self._stop_io.set()
