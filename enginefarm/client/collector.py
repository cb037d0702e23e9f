"""The client's result thread: it takes in outcomes as Redis records them and settles the
AsyncResults (futures) waiting on them, so callbacks, ``await`` and ``concurrent.futures``
see a result when it arrives, not when someone next asks for it.

It is the one reader of the client's inbox. Everything else of the client stays on the
thread that uses it (pika is not thread-safe): the thread has a Redis connection from the
shared pool and, for reaping dead engines, a broker connection of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..broker import BrokerConnection
from ..errors import StoreError
from ..recovery import Reaper

if TYPE_CHECKING:
    from .asyncresult import AsyncResult
    from .client import Client

log = logging.getLogger(__name__)

# How long one read of the inbox blocks: the thread's reaction time to stop and to poll
# the tasks of other clients (they never reach our inbox).
_READ_S = 0.5
# A safety net reads statuses directly, at most this many tasks a second, when no outcome
# came for a second (an inbox entry lost with a Redis restart, say).
_SWEEP_BATCH = 2000
_FOREIGN_POLL_S = 0.25


class Collector:
    def __init__(self, client: Client) -> None:
        self._client = client
        # Guards the client's result caches, the waiting futures and the wait sets.
        self.lock = threading.RLock()
        self.arrived = threading.Condition(self.lock)
        self._waiting: dict[str, list[AsyncResult]] = {}
        self._wait_sets: list[set[str]] = []
        self._foreign: set[str] = set()  # awaited by futures, not in our inbox's future
        self._next_foreign_poll = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_arrival = 0.0
        self._last_sweep = 0.0
        self._sweep_at = 0
        # Engines and schedulers reap too; a client that should leave it to them says so.
        self.reaps = True
        s = client.settings
        self.reaper = Reaper(
            client.registry, client.records,
            BrokerConnection(s.amqp_url, s.amqp_heartbeat_s, f"enginefarm-client-{s.cluster}-reaper"),
            client.names, s.engine_timeout_s, s.max_engine_losses, client.output_store,
        )

    # --- the thread -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"enginefarm-results-{self._client.client_id[:8]}",
                                            daemon=True)
            self._thread.start()

    @property
    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        """Ask the thread to end, waking it from its read of the inbox."""
        self._stop.set()
        if self._thread is not None and not self.on_thread:
            try:
                self._client.records.wake_inbox(self._client.client_id)
            except StoreError:
                pass  # Redis is away: the read ends at its timeout instead

    def join(self, timeout_s: float = 2 * _READ_S + 1) -> None:
        thread = self._thread
        if thread is not None and not self.on_thread:
            thread.join(timeout=timeout_s)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # Its broker connection is this thread's alone (pika's are not thread-safe).
            self.reaper.broker.close()

    def _loop(self) -> None:
        client = self._client
        backoff = 0.1
        while not self._stop.is_set():
            try:
                popped = client.records.pop_inbox(client.client_id, _READ_S)
                if self._stop.is_set():
                    return
                if popped:
                    client._absorb_inbox(popped)
                    if len(popped) < 32 and len(client.outstanding) > 64:
                        # Outcomes trickle in while many are due: let a few gather rather
                        # than take the GIL from the sending thread for each one.
                        time.sleep(0.002)
                    else:
                        # Hand the GIL to a thread woken by these outcomes now, rather
                        # than after this thread's next round.
                        time.sleep(0)
                self._poll_foreign()
                self._sweep()
                backoff = 0.1
            except StoreError as exc:
                if self._stop.is_set():
                    return
                # Redis restarting or paused: outcomes are read again once it is back.
                log.warning("waiting for Redis: %s", exc)
                self.reaper.observe(False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("the result thread failed one round; it goes on")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _poll_foreign(self) -> None:
        """Tasks of other clients (and ours taken in before, then forgotten) never reach our
        inbox: read their statuses, a few times a second."""
        now = time.monotonic()
        if not self._foreign or now < self._next_foreign_poll:
            return
        self._next_foreign_poll = now + _FOREIGN_POLL_S
        with self.lock:
            foreign = list(self._foreign)[:_SWEEP_BATCH]
        self._client._absorb_finished(foreign)

    def _sweep(self) -> None:
        client = self._client
        now = time.monotonic()
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        if client.outstanding and now - self.last_arrival >= 1.0:
            # Only when outcomes stopped coming: while they flow, the inbox has everything.
            ids = list(client.outstanding)
            start = self._sweep_at % len(ids)
            # A window that moves on each time, so a large backlog is covered bit by bit.
            client._absorb_finished((ids[start:] + ids[:start])[:_SWEEP_BATCH])
            self._sweep_at = start + _SWEEP_BATCH
        if not self.reaps:
            return
        self.reaper.observe(True)
        # Nothing else reads the reaper's connection: unanswered heartbeats would let the
        # broker drop it.
        self.reaper.broker.keepalive()
        self.reaper.reap_stale()

    # --- futures and waits ----------------------------------------------------------
    def track(self, result: AsyncResult, task_ids: Iterable[str]) -> bool:
        """Hold ``result`` until each of ``task_ids`` has an outcome; True if all have one
        already (the caller settles it at once)."""
        results = self._client.results
        with self.lock:
            missing = {t for t in task_ids if t not in results}
            result._left = len(missing)
            outstanding = self._client.outstanding
            for task_id in missing:
                self._waiting.setdefault(task_id, []).append(result)
                if task_id not in outstanding:
                    self._foreign.add(task_id)
        if missing:
            self.start()
        return not missing

    def arrivals(self, task_ids: list[str]) -> list[AsyncResult]:
        """Note outcomes that were just taken in (under the lock); the futures now complete."""
        self.last_arrival = time.monotonic()
        for wanted in self._wait_sets:
            wanted.difference_update(task_ids)
        if self._foreign:
            self._foreign.difference_update(task_ids)
        complete = []
        for task_id in task_ids:
            for result in self._waiting.pop(task_id, ()):
                result._left -= 1
                if result._left == 0:
                    complete.append(result)
        self.arrived.notify_all()
        return complete

    def watching(self, missing: set[str]) -> None:
        """``missing`` shrinks as outcomes arrive, until ``unwatch``."""
        with self.lock:
            self._wait_sets.append(missing)
        self.start()

    def unwatch(self, missing: set[str]) -> None:
        with self.lock:
            self._wait_sets = [s for s in self._wait_sets if s is not missing]
