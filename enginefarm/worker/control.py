"""The engine's control queue: signals for the task it is running, handled out of band.

An engine's task queue is FIFO and its worker thread is busy with the running task, so a
signal sent there would wait behind the very task it is meant to reach. Each engine has a
second queue for control messages (``Names.control_queue``). The broker I/O thread consumes
it beside the task queues and hands each delivery to the control thread here, which never
waits on user code: it verifies the message (signed like every other), checks that it is
addressed to this engine, claims its record (a replay of a finished one is refused), sends
the signal to the child process (never to the supervisor) and records the outcome.

The handling has a thread of its own, not the I/O thread's callback, because it makes Redis
round trips (retried while Redis is away) and may publish a dead letter: waiting for either
on the I/O thread would stall the AMQP heartbeats and every other delivery.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..broker import Delivery
from ..broker.topology import over_delivery_limit
from ..errors import DecodeError, DeliveryLimitError, SignatureError, StoreError
from ..incidents import Incidents
from ..keys import KeyRing
from ..serialization import dumps
from ..store import Records
from ..store.records import COMPLETED, FAILED, RECORD_GRACE_S
from ..task import Kind, TaskHeader, open_task
from .executor import Executor

log = logging.getLogger(__name__)

# How long an idle engine thread blocks before it looks at its flags again; a stop wakes it
# at once (a None in its queue, a callback in the I/O loop), so this only bounds idle wakeups.
IDLE_WAIT_S = 1.0
T = TypeVar("T")
Outcome = tuple[str, dict[str, Any]]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Control:
    """Takes the engine's control deliveries (``put``, on the I/O thread) and handles them
    on the thread that runs ``serve``."""

    def __init__(
        self,
        engine_id: int,
        ring: KeyRing,
        records: Records,
        executor: Executor,
        ack: Callable[[Delivery], None],
        refuse: Callable[[Delivery, SignatureError | DecodeError], None],
        retry_store: Callable[[Callable[[], Any]], Any],
        incidents: Incidents,
        max_age_s: float = 0.0,
    ) -> None:
        self.engine_id = engine_id
        self.ring = ring
        self.records = records
        self.executor = executor
        self.ack = ack
        self.refuse = refuse
        self.retry_store = retry_store
        self.incidents = incidents
        self.max_age_s = max_age_s
        self.inbox: queue.Queue[Delivery | None] = queue.Queue()  # None: look at the stop flag

    def put(self, delivery: Delivery) -> None:
        """Called on the broker I/O thread: never blocks."""
        self.inbox.put(delivery)

    def wake(self) -> None:
        """Make ``serve`` look at its stop flag now."""
        self.inbox.put(None)

    def serve(self, stop: threading.Event) -> None:
        """Handle control deliveries until ``stop`` is set; an unexpected failure is noted
        (with its traceback, counted) and the next delivery handled."""
        while not stop.is_set():
            try:
                delivery = self.inbox.get(timeout=IDLE_WAIT_S)
            except queue.Empty:
                continue
            if delivery is None:
                continue
            try:
                self.handle(delivery)
            except StoreError:
                return  # Redis gave up on us for good: the engine was declared dead
            except Exception:
                self.incidents.note("control", "engine %d failed handling a control message", self.engine_id,
                                    traceback=True)

    def handle(self, delivery: Delivery) -> None:
        """Verify, claim, signal, record, then ack; a refused message is dead-lettered."""
        header = self._open(delivery)
        if header is None or not self._claim(header, delivery):
            return
        status, fields = self._deliver(header)
        self.retry_store(lambda: self.records.settle(self.engine_id, finished=[(header.task_id, status, fields)]))
        self.ack(delivery)

    def _open(self, delivery: Delivery) -> TaskHeader | None:
        """The verified header of a signal for this engine, or None once it is refused."""
        if over_delivery_limit(delivery.headers):
            self.refuse(delivery, DeliveryLimitError(delivery.queue, "gave it back as often as its x-delivery-limit allows"))
            return None
        try:
            header = open_task(self.ring, delivery.body, self.max_age_s).header
        except (SignatureError, DecodeError) as exc:
            self.refuse(delivery, exc)
            return None
        except Exception:
            self.incidents.note("message", "engine %d could not open a control delivery", self.engine_id,
                                traceback=True)
            self.refuse(delivery, DecodeError("message", "could not be opened"))
            return None
        if header.kind is not Kind.SIGNAL:
            # A signed task re-published to the control queue: it belongs on a task queue.
            self.refuse(delivery, SignatureError("context", f"a {header.kind} request on the control queue"))
            return None
        if header.engine_id != self.engine_id:
            self.refuse(delivery, SignatureError(
                "context", f"signal for engine {header.engine_id!r} delivered to engine {self.engine_id}"))
            return None
        return header

    def _claim(self, header: TaskHeader, delivery: Delivery) -> bool:
        """Move the signal's record to running; False (the delivery settled) when it may not
        run: finished or forgotten (a replay, refused) or aborted (acked unrun)."""
        task_id = header.task_id
        deadline: float | None = None
        while True:
            claimed, previous, _ = self.retry_store(
                lambda: self.records.settle(self.engine_id, claims=[task_id], only_if_live=True))[0]
            # Counted from Redis's first answer, as the engine's (engine.py, _await_record).
            deadline = time.monotonic() + RECORD_GRACE_S if deadline is None else deadline
            if claimed or previous != "" or delivery.redelivered or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if claimed:
            return True
        if not delivery.redelivered and previous in (COMPLETED, FAILED, ""):
            self.refuse(delivery, SignatureError("replayed", f"signal {task_id} already {previous or 'gone'}"))
        else:
            log.info("engine %d skips signal %s (%s)", self.engine_id, task_id, previous)
            self.ack(delivery)
        return False

    def _deliver(self, header: TaskHeader) -> Outcome:
        """Send the signal to the child: completed with no value once it is sent, failed
        when there is no child to send it to or the system refuses it."""
        signum = header.signum or 0  # a decoded signal header always names its signal
        name = signal_name(signum)
        try:
            self.executor.send_signal(signum)
        except OSError as exc:
            log.warning("engine %d could not send %s to its process: %s", self.engine_id, name, exc)
            error = {"ename": "SignalNotDelivered", "evalue": f"{name} was not sent: {exc}", "traceback": "",
                     "engine_id": self.engine_id}
            return FAILED, {"error": json.dumps(error)}
        log.info("engine %d sent %s to its process (signal %s)", self.engine_id, name, header.task_id)
        return COMPLETED, {"summary": "None", "result": self.records.seal_value(header.task_id, "result", dumps(None))}
