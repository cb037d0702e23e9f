"""The engine's child process: holds the namespace and runs user code, nothing else.

It talks to its supervisor over one socket (multiprocessing framing, stdlib pickle between
the two trusted processes). It dies with the supervisor, even while user code spins in C.

While a request runs, what it prints goes to the supervisor in output frames of their own
(see tap.py), a few times a second; the outcome follows them.

It runs in a session of its own, so only signals sent to it reach it (``Client.send_signal``
through the supervisor). SIGINT interrupts the running request with KeyboardInterrupt, which
fails that request; between requests it is ignored, so the loop and the namespace survive
it. Other signals act as on any process (SIGTERM ends it: the supervisor records that its
process died and starts a new one).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from .commands import BUFFERS, EngineState, error_outcome, run_command
from .rawio import recv_raw
from .tap import OutputTap

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # The parent may have died before prctl took effect.
    if os.getppid() != parent_pid:
        os._exit(1)


def interrupt_request(signum: int, frame: FrameType | None) -> None:
    """SIGINT: raise KeyboardInterrupt if a request is running, else ignore it.

    Whether one runs is read from the stack, not from a flag that a late signal could catch
    half set: anywhere outside ``run_command`` (waiting for a request, sending an outcome) an
    interrupt would break the loop or leave half a frame on the socket.
    """
    __tracebackhide__ = True  # IPython leaves this frame out of the cell's traceback
    while frame is not None:
        if frame.f_code is run_command.__code__:
            raise KeyboardInterrupt
        frame = frame.f_back


def run_interruptibly(state: EngineState, header: dict[str, Any], payload: bytes, cap: int,
                      tap: OutputTap | None = None, buffers: list[bytearray] | None = None) -> dict[str, Any]:
    """``run_command``, whose request SIGINT may interrupt. An interrupt inside the user's
    code is already its error outcome; one that lands around it (unpickling the request,
    pickling the result) is made one here, with the output captured so far (some of it may
    have been shown live already: the record must not have less)."""
    saved = sys.stdout, sys.stderr
    try:
        return run_command(state, header, payload, cap, tap.attach if tap is not None else None, buffers)
    except KeyboardInterrupt as exc:
        sys.stdout, sys.stderr = saved  # it may have landed while output was captured
        outcome = error_outcome(exc)
        if tap is not None:
            outcome.update(tap.captured())
        return outcome


def serve(conn: Connection, cap: int, state: EngineState) -> None:
    tap = OutputTap(conn)
    tap.start()
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        header, payload, sizes = pickle.loads(message)
        try:
            buffers = [recv_raw(conn.fileno(), size) for size in sizes]
        except (EOFError, OSError):
            return
        outcome = run_interruptibly(state, header, payload, cap, tap, buffers)
        del buffers
        views = outcome.pop(BUFFERS, [])
        outcome["buffer_sizes"] = [v.nbytes for v in views]
        tap.finish(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL), views)


def main(argv: list[str]) -> None:
    fd, parent_pid, cap = int(argv[0]), int(argv[1]), int(argv[2])
    state = EngineState(shell_mode=argv[3], display_cap=int(argv[4]), value_cap=int(argv[5]))
    die_with_parent(parent_pid)
    # SIGTERM acts as it does on any process, whatever the supervisor inherited. SIGINT, which
    # the supervisor kept blocked while this process started, interrupts running requests only
    # (see interrupt_request); one sent meanwhile arrives now and is ignored.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, interrupt_request)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    serve(Connection(fd), cap, state)


if __name__ == "__main__":
    main(sys.argv[1:])
