"""The supervisor's side of the child process: start it, run a request, stop it when needed.

While a request runs, the child's output frames (tap.py) are passed on as they arrive, and
kept: a request whose child is killed or dies still has the output that reached us.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from collections.abc import Callable
from typing import Any

from ..config import Settings
from .rawio import recv_raw, send_raw
from .tap import decode_output, is_output

OutputSink = Callable[[dict[str, str]], None]

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    ok: bool
    value: bytes | None = None
    summary: str = ""
    stdout: str = ""
    stderr: str = ""
    # What an IPython cell displayed: display() bundles, and the value of its last expression.
    outputs: list[dict[str, Any]] | None = None
    execute_result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # The child was killed or died: the namespace is gone.
    namespace_lost: bool = False
    # A load-balanced task's depend did not hold on this engine.
    unmet: bool = False
    # The result's out-of-band buffers (see enginefarm.buffers), as the child sent them.
    buffer_sizes: list[int] | None = None
    buffers: list[bytearray] | None = None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return str(-code)


class Executor:
    """One child process at a time; ``run`` is called from a single worker thread."""

    def __init__(self, output_cap_bytes: int, shell: str = Settings.engine_shell,
                 display_cap_bytes: int = Settings.display_cap_bytes,
                 value_cap_bytes: int = Settings.max_value_bytes) -> None:
        self.cap = output_cap_bytes
        self.shell = shell
        self.display_cap = display_cap_bytes
        self.value_cap = value_cap_bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self._interrupt = threading.Event()
        self._reason = ""
        self._received: dict[str, list[str]] = {}
        self._received_size: dict[str, int] = {}

    def start(self) -> None:
        parent, child = socket.socketpair()
        # The child inherits SIGINT blocked and unblocks it once its handler is in place: one
        # sent while it starts up would otherwise end it with a KeyboardInterrupt.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "enginefarm.worker.child", str(child.fileno()), str(os.getpid()), str(self.cap),
                 self.shell, str(self.display_cap), str(self.value_cap)],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C or a signal to the engine's process
                # group reaches the supervisor only, which decides; a signal reaches the child
                # only when it is sent to the child itself (``send_signal``).
                start_new_session=True,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        self.conn = Connection(parent.detach())
        # One poller for the child's life: Connection.poll builds a selector on every call.
        self._poller = select.poll()
        self._poller.register(self.conn.fileno(), select.POLLIN)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the child process, never to anyone else (from any thread).

        Raises:
            ProcessLookupError: no child is running (it died and is not replaced yet).
            OSError: the signal could not be sent (e.g. an invalid number).
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise ProcessLookupError("the engine has no child process running")
        # Popen skips a child it has reaped already, so a recycled pid is never signalled.
        proc.send_signal(signum)

    def interrupt(self, reason: str) -> None:
        """Stop the running request (from any thread): the child is killed and replaced."""
        self._reason = reason
        self._interrupt.set()

    def run(self, header: dict[str, Any], payload: bytes, timeout_s: float = 0.0,
            after: list[tuple[float, Callable[[], None]]] | None = None,
            meanwhile: Callable[[], None] | None = None, on_output: OutputSink | None = None,
            buffers: list[list[bytes]] | None = None) -> Outcome:
        """Run one request in the child. ``meanwhile`` is called once the child has the
        request; each ``(seconds, fn)`` of ``after`` calls ``fn`` once if the request is still
        running after that long; ``on_output`` gets what the request prints while it runs
        (stream -> text, at most ``output_cap_bytes`` of each stream in all); ``buffers``
        (each given in parts) follow the request as raw bytes."""
        if self.proc is None or self.proc.poll() is not None:
            self.restart()
        assert self.conn is not None
        self._interrupt.clear()
        self._received, self._received_size = {}, {}
        buffers = buffers or []
        sizes = [sum(map(len, parts)) for parts in buffers]
        self.conn.send_bytes(pickle.dumps((header, payload, sizes), protocol=pickle.HIGHEST_PROTOCOL))
        for parts in buffers:
            send_raw(self.conn.fileno(), parts)
        if meanwhile is not None:
            meanwhile()
        now = time.monotonic()
        deadline = now + timeout_s if timeout_s > 0 else None
        late = sorted(((now + seconds, fn) for seconds, fn in after or []), key=lambda item: item[0])
        while True:
            while late and time.monotonic() >= late[0][0]:
                late.pop(0)[1]()
            raw = None
            try:
                if self._poller.poll(50):
                    raw = self.conn.recv_bytes()
                    if not is_output(raw):
                        outcome = Outcome(**pickle.loads(raw))
                        if outcome.buffer_sizes:
                            outcome.buffers = [recv_raw(self.conn.fileno(), size) for size in outcome.buffer_sizes]
                        return outcome
            except (EOFError, OSError):
                return self._died()
            if raw is not None:
                self._pass_on(raw, on_output)
            if self._interrupt.is_set():
                return self._kill("TaskInterrupted", self._reason)
            if deadline is not None and time.monotonic() > deadline:
                return self._kill("TaskTimeout", f"task exceeded its time limit of {timeout_s:g}s")

    def _pass_on(self, frame: bytes, on_output: OutputSink | None) -> None:
        try:
            chunks = self._keep(decode_output(frame))
        except ValueError as exc:
            log.warning("the engine's child sent a malformed output frame: %s", exc)
            return
        if chunks and on_output is not None:
            on_output(chunks)

    def _keep(self, chunks: dict[str, str]) -> dict[str, str]:
        """Keep what arrived, up to the cap of each stream (the child caps it already; this
        bounds what its user code could send past that); returns what was kept."""
        kept = {}
        for stream, text in chunks.items():
            if stream not in ("stdout", "stderr"):
                continue
            room = self.cap - self._received_size.get(stream, 0)
            data = text.encode("utf-8", "replace")
            if room <= 0 or not data:
                continue
            piece = text if len(data) <= room else data[:room].decode("utf-8", "ignore")
            self._received.setdefault(stream, []).append(piece)
            self._received_size[stream] = self._received_size.get(stream, 0) + min(len(data), room)
            kept[stream] = piece
        return kept

    def _output_so_far(self, stream: str) -> str:
        return "".join(self._received.get(stream, ()))

    def _died(self) -> Outcome:
        assert self.proc is not None
        code = self.proc.wait()
        how = f"signal {_signal_name(code)}" if code < 0 else f"exit code {code}"
        self.restart()
        return Outcome(
            ok=False,
            error={
                "ename": "EngineProcessDied",
                "evalue": f"the engine's process died while running the task ({how}); its namespace was lost",
                "traceback": "",
            },
            namespace_lost=True,
            stdout=self._output_so_far("stdout"),
            stderr=self._output_so_far("stderr"),
        )

    def _kill(self, ename: str, evalue: str) -> Outcome:
        self.stop()
        self.start()
        return Outcome(
            ok=False,
            error={"ename": ename, "evalue": f"{evalue}; the engine's namespace was lost", "traceback": ""},
            namespace_lost=True,
            stdout=self._output_so_far("stdout"),
            stderr=self._output_so_far("stderr"),
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        elif proc is not None:
            proc.wait()
