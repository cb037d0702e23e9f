"""An engine's heartbeat and upkeep threads: it keeps itself live, and looks for dead peers."""

from __future__ import annotations

import logging
import random
import threading
import time

from ..config import Settings
from ..errors import EnginefarmError, StoreError
from ..incidents import Incidents
from ..metrics import Metrics
from ..recovery import Reaper
from ..store.history import History
from ..store.registry import Registry
from ..systemd import notify, watchdog_interval_s

log = logging.getLogger(__name__)

UPKEEPS_PER_BEAT = 8


def upkeep_spacing(beat_s: float, live_engines: int, rng: random.Random) -> float:
    """Seconds until this engine's next upkeep pass: one heartbeat while the cluster is
    small, then growing with the engine count (jittered so that the passes stay spread)."""
    if live_engines <= UPKEEPS_PER_BEAT:
        return 0.0  # every beat
    return beat_s * live_engines / UPKEEPS_PER_BEAT * rng.uniform(0.5, 1.5)


class Liveness:
    """The engine's threads that keep it live and recover its dead peers (mixed into Engine,
    whose state they read)."""

    settings: Settings
    engine_id: int
    registry: Registry
    reaper: Reaper
    history: History
    metrics: Metrics
    incidents: Incidents
    _stop_io: threading.Event
    _draining: threading.Event
    _reaping: threading.Lock
    _activated: bool

    def _declared_dead(self) -> None:
        raise NotImplementedError

    def _beat(self) -> None:
        interval = self.settings.heartbeat_interval_s
        watchdog = watchdog_interval_s()
        if watchdog is not None:
            interval = min(interval, watchdog)
        while not self._stop_io.wait(interval):
            if watchdog is not None:
                notify("WATCHDOG=1")
            try:
                if self._activated:
                    alive = self.registry.heartbeat(self.engine_id)
                else:
                    # Until live, keep the registration fresh: connecting to a busy broker can
                    # outlast the orphan window, and a live process must not be reaped for it.
                    alive = self.registry.still_starting(self.engine_id)
                self.reaper.observe(True)
            except StoreError as exc:
                self.reaper.observe(False)
                log.warning("engine %d cannot heartbeat: %s", self.engine_id, exc)
                continue
            if not alive:
                if not self._draining.is_set():
                    self._declared_dead()
                return

    # Recovering a dead peer and culling history can take seconds on a loaded machine; on
    # their own thread they never delay our heartbeat past the engine timeout.
    # Every engine looks for dead peers, so that recovery needs no one process; but each pass
    # is several Redis calls, so the cluster as a whole makes about UPKEEPS_PER_BEAT of them
    # per heartbeat interval however many engines there are: with more engines each one
    # passes less often, at a random phase, and a dead peer is still found about as soon.
    def _upkeep(self) -> None:
        beat = self.settings.heartbeat_interval_s
        rng = random.Random()
        due = 0.0
        while not self._stop_io.wait(beat):
            if self._draining.is_set() or not self._activated:
                continue
            try:
                with self._reaping:
                    self.reaper.broker.keepalive()
                    if time.monotonic() < due:
                        continue
                    self.metrics.engine_deaths.inc(len(self.reaper.reap_stale()))
                live = len(self.registry.live_ids())
                self.metrics.engines.set(live)
                due = time.monotonic() + upkeep_spacing(beat, live, rng)
                self.history.cull(self.settings.result_ttl_s, self.settings.max_records)
            except EnginefarmError as exc:
                log.warning("engine %d could not reap peers: %s", self.engine_id, exc)
            except Exception:
                self.incidents.note("upkeep", "engine %d upkeep failed", self.engine_id, traceback=True)
