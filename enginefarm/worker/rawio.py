"""Moving large buffers between supervisor and child as raw bytes, after the pickled frame
that gives their sizes: no framing, and read straight into the buffer that keeps them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


def send_raw(fd: int, pieces: Iterable[Any]) -> None:
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while view:
            view = view[os.write(fd, view) :]


def recv_raw(fd: int, size: int) -> bytearray:
    """Exactly ``size`` bytes. Raises: EOFError if the other side closes first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    while view:
        got = os.readv(fd, [view])
        if got == 0:
            raise EOFError("the other process closed the connection mid-buffer")
        view = view[got:]
    return buffer
