"""An engine keeps heartbeating while it recovers a dead peer, however long that takes."""

from __future__ import annotations

import threading
import time

from enginefarm.store import Registry
from enginefarm.worker.engine import Engine

from ..harness import wait_for

TIMEOUT_S = 60


class SlowReapingEngine(Engine):
    """An engine whose peer recovery takes well past the engine timeout (as on a loaded machine)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reaping = threading.Event()

    def setup(self) -> None:
        super().setup()
        reap_stale = self.reaper.reap_stale

        def slow() -> list[int]:
            self.reaping.set()
            time.sleep(self.settings.engine_timeout_s * 2)
            return reap_stale()

        self.reaper.reap_stale = slow


def test_heartbeat_goes_on_while_peer_recovery_is_slow(settings, cluster):
    engine = SlowReapingEngine(settings)
    runner = threading.Thread(target=engine.run, daemon=True)
    runner.start()
    try:
        registry = Registry(cluster.redis(), cluster.names, settings.engine_timeout_s)
        # Given an engine in the middle of a recovery that lasts twice the engine timeout
        wait_for(lambda: engine.reaping.is_set(), TIMEOUT_S, "the slow recovery to start")
        started = time.monotonic()
        # Then for all that time it stays live in the registry: peers do not reap it
        while time.monotonic() - started < settings.engine_timeout_s * 1.5:
            assert registry.live_ids() == [engine.engine_id]
            time.sleep(0.1)
        assert not engine._dead.is_set()
    finally:
        engine.request_stop("test over")
        runner.join(TIMEOUT_S)
    assert not runner.is_alive()
    assert engine.exit_code == 0
