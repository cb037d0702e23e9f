"""Noting what a daemon meets and survives: a malformed record or field, an item its loop
could not handle. Each is logged, counted in Prometheus (``enginefarm_errors_total``, by
component and kind) and in Redis (``{<cluster>}:stats:errors:<component>:<kind>``, for the
admin CLI and tests), and the daemon goes on."""

from __future__ import annotations

import logging
from typing import Protocol

from .errors import EnginefarmError
from .metrics import Metrics

log = logging.getLogger(__name__)


class Counts(Protocol):
    def count(self, name: str, amount: int = 1) -> None: ...


class Incidents:
    def __init__(self, component: str, metrics: Metrics, counts: Counts | None = None) -> None:
        self.component = component
        self.metrics = metrics
        self.counts = counts

    def note(self, kind: str, message: str, *args: object, traceback: bool = False) -> None:
        """Log ``message`` (with the current exception's traceback if ``traceback``) and count
        it under ``kind``, a short fixed word: labels must stay few."""
        log.error(message, *args, exc_info=traceback)
        self.metrics.errors.labels(self.component, kind).inc()
        if self.counts is not None:
            try:
                self.counts.count(f"errors:{self.component}:{kind}")
            except EnginefarmError:
                log.warning("could not count a %s error in Redis", kind)
