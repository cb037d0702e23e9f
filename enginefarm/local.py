"""A local cluster: a scheduler and engine daemons as child processes of one foreground command."""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any

from .config import ENV_PREFIX, Settings
from .errors import EnginefarmError
from .forked import Forked
from .keys import KeyRing
from .names import Names
from .store import Registry, connect

log = logging.getLogger(__name__)

_PR_SET_NAME, _PR_SET_PDEATHSIG = 15, 1


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment that gives a child process exactly these settings."""
    env = dict(os.environ if base is None else base)
    for field in dataclasses.fields(settings):
        env[ENV_PREFIX + field.name.upper()] = str(getattr(settings, field.name))
    env[ENV_PREFIX + "KEY_FILE"] = settings.resolved_key_file
    return env


def _detach(role: str) -> None:
    os.setsid()  # the terminal's Ctrl-C reaches only the cluster command; it forwards one SIGTERM
    try:
        libc = ctypes.CDLL(None)
        # Engines drain (SIGTERM) if the foreground command disappears without stopping them.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # A fork keeps the cluster command's command line: its name in ps and top says what it is.
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(f"ef-{role}".encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class LocalCluster:
    def __init__(self, settings: Settings, engines: int, properties: list[str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.settings = settings
        self.count = engines
        self.properties = properties or []
        self.extra_args = extra_args or []
        self.procs: list[Forked] = []
        self._stop = threading.Event()

    def spawn(self, args: list[str]) -> Forked:
        """Fork a daemon that runs ``enginefarm <args>``, as if started by that command."""
        from .cli import main

        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        proc = Forked(lambda: main.main(args=["--log-level", level, *args], prog_name="enginefarm"),
                      settings_env(self.settings), lambda: _detach(args[0]))
        self.procs.append(proc)
        return proc

    def start(self, timeout_s: float = 60.0) -> list[int]:
        """Start the engines and wait until all are registered; returns their ids.

        Raises:
            EnginefarmError: the key is unusable, or the engines did not come up in time.
        """
        KeyRing.from_files(self.settings.resolved_key_file, self.settings.old_key_files)
        # Imported once here, before any thread or connection exists, for every fork to share.
        for module in ("enginefarm.worker.engine", "enginefarm.schedulers.daemon"):
            importlib.import_module(module)
        args = ["engine", "--cluster", self.settings.cluster]
        for prop in self.properties:
            args += ["--property", prop]
        for _ in range(self.count):
            self.spawn(args + self.extra_args)
        # The engines are what the first result waits for; the scheduler only for queued work.
        self.spawn(["scheduler", "--cluster", self.settings.cluster])
        return self.wait_registered(timeout_s)

    def wait_registered(self, timeout_s: float) -> list[int]:
        registry = Registry(connect(self.settings.redis_url), Names(self.settings.cluster),
                            self.settings.engine_timeout_s)
        pids = {p.pid for p in self.procs}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise EnginefarmError(f"engine process {dead[0].pid} exited with code {dead[0].returncode}")
            live = set(registry.live_ids())
            ours = sorted(eid for eid, info in registry.info().items() if info.get("pid") in pids and eid in live)
            if len(ours) == self.count:
                return ours
            time.sleep(0.05)
        raise EnginefarmError(f"engines did not register within {timeout_s:g}s")

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop.set()

    def wait(self) -> None:
        """Block until a stop signal, or until every child has exited."""
        while not self._stop.wait(0.2):
            if all(p.poll() is not None for p in self.procs):
                return

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM every child (they drain), then SIGKILL what is left after ``timeout_s``."""
        budget = self.settings.drain_timeout_s + 10 if timeout_s is None else timeout_s
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + budget
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("process %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
