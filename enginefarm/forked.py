"""A daemon of a local cluster forked from the command that runs the cluster.

A fork starts with every module its parent imported: the engines of ``enginefarm cluster``
are serving within milliseconds instead of each spending a few hundred milliseconds of CPU
importing pika, redis and the rest again, all at once, on the same cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable


class Forked:
    """The parent's handle on a forked daemon; the subset of ``subprocess.Popen`` a local
    cluster uses (``pid``, ``returncode``, ``poll``, ``wait``, ``send_signal``, ``kill``)."""

    def __init__(self, run: Callable[[], int], env: dict[str, str], prepare: Callable[[], None]) -> None:
        """Fork and call ``run`` in the child, which exits with its return code.

        The parent must have no other threads when it forks (a lock held by one would stay
        held forever in the child). ``prepare`` runs first in the child.
        """
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # else the child would write the parent's buffered output again
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            os._exit(_child(run, env, prepare))

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Raises: subprocess.TimeoutExpired, as Popen.wait does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _child(run: Callable[[], int], env: dict[str, str], prepare: Callable[[], None]) -> int:
    code = 1
    try:
        # The parent's handlers stop the whole cluster; a daemon installs its own.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        prepare()
        code = run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        # Exit without the parent's cleanup (atexit, its finally blocks): they are not ours.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    return code
