"""The engine's child process: holds the namespace and runs user code, nothing else.

It talks to its supervisor over one socket (multiprocessing framing, stdlib pickle between
the two trusted processes). It dies with the supervisor, even while user code spins in C.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection

from .commands import EngineState, run_command

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


def serve(conn: Connection, cap: int) -> None:
    state = EngineState()
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        header, payload = pickle.loads(message)
        outcome = run_command(state, header, payload, cap)
        conn.send_bytes(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))


def main(argv: list[str]) -> None:
    fd, parent_pid, cap = int(argv[0]), int(argv[1]), int(argv[2])
    die_with_parent(parent_pid)
    # Ctrl-C in a terminal reaches the whole process group; the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(Connection(fd), cap)


if __name__ == "__main__":
    main(sys.argv[1:])
