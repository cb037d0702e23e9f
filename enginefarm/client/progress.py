"""A one-line progress bar for long waits; silent when output is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, label: str = "tasks", stream: TextIO | None = None,
                 force: bool | None = None, width: int = 30) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stdout
        self.enabled = force if force is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.started = time.monotonic()

    def render(self, done: int) -> str:
        fraction = done / self.total if self.total else 1.0
        filled = int(round(self.width * fraction))
        elapsed = time.monotonic() - self.started
        return f"\r[{'#' * filled}{' ' * (self.width - filled)}] {done}/{self.total} {self.label} {elapsed:6.1f}s"

    def update(self, done: int) -> None:
        if self.enabled:
            self.stream.write(self.render(done))
            self.stream.flush()

    def finish(self, done: int) -> None:
        if self.enabled:
            self.stream.write(self.render(done) + "\n")
            self.stream.flush()
