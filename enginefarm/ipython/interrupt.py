"""Ctrl-C while a blocking %px waits: the engines' cell is interrupted, not just the wait.

While %px sends and waits, SIGINT only sets a flag (in the main thread, where Python runs
signal handlers; a Jupyter kernel's interrupt is a SIGINT too). The wait polls, so it ends at
its next poll, between two calls to the broker and Redis clients: a KeyboardInterrupt raised
inside one could leave its connection half-way through a frame, and the magic needs that
connection next, to send SIGINT to the engines (``Client.send_signal``).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from ..errors import EnginefarmError
from ..task import TERMINAL

# How long the interrupted cells have to report, once the engines have the signal.
GRACE_S = 15.0
POLL_S = 0.1


class Interrupts:
    """``with Interrupts() as ctrl_c:``; ``ctrl_c.wait(result)`` is False when Ctrl-C ended it.

    Outside the main thread no handler can be installed: a KeyboardInterrupt that reaches the
    wait is taken as the Ctrl-C instead.
    """

    def __init__(self) -> None:
        self.hit = threading.Event()
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> Interrupts:
        self.install()
        return self

    def install(self) -> None:
        """Ctrl-C only sets ``hit`` (from now until ``restore``)."""
        if not self._installed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._note)
            self._installed = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.restore()

    def restore(self) -> None:
        """Ctrl-C raises KeyboardInterrupt again (as before ``__enter__``)."""
        if self._installed:
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.hit.set()

    def wait(self, result: Any) -> bool:
        """Wait for ``result``; False if Ctrl-C came first (before or during the wait)."""
        try:
            while not self.hit.is_set():
                if result.wait(POLL_S if self._installed else None):
                    return True
        except KeyboardInterrupt:
            self.hit.set()
        return False


def running_engines(result: Any) -> list[int]:
    """The engines running a task of ``result`` now (started, not finished)."""
    metadata = result.metadata
    rows = [metadata] if isinstance(metadata, dict) else list(metadata or [])
    return [row["engine_id"] for row in rows if row.get("status") not in TERMINAL
            and row.get("started") is not None and row.get("engine_id") is not None]


def interrupt(client: Any, result: Any) -> bool:
    """Stop ``result``'s tasks: those not started are aborted, the engines running the others
    get SIGINT; their tasks then have ``GRACE_S`` to report (a second Ctrl-C stops waiting).
    True if every task has finished."""
    result.abort()
    engines = running_engines(result)
    if engines:
        print(f"Keyboard interrupt: sending SIGINT to engine(s) {engines}", file=sys.stderr)
        try:
            client.send_signal("SIGINT", targets=engines, block=True)
        except EnginefarmError as exc:
            print(f"could not interrupt the engines: {exc}", file=sys.stderr)
            return bool(result.ready())
    return bool(result.wait(GRACE_S))
