"""What the engine's worker thread holds of the tasks it takes: verified deliveries, their
claims, and the batches they run in."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..broker import Consumer, Delivery
from ..task import TaskHeader

# (claimed, the status it had, attempt): what Redis answered to a claim.
Claim = tuple[bool, str, int]
# (task id, final status, record fields): an outcome to record.
Entry = tuple[str, str, dict[str, Any]]


class AckOnce:
    """Acks a delivery exactly once, whether custody or completion comes first."""

    def __init__(self, consumer: Consumer, delivery: Delivery) -> None:
        self._consumer = consumer
        self._delivery = delivery
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        if self.take():
            self._consumer.ack(self._delivery)

    def take(self) -> bool:
        """Claim the one settlement of this delivery: True if nobody has settled it yet."""
        with self._lock:
            if self._done:
                return False
            self._done = True
            return True



@dataclass
class Job:
    """A verified delivery: what to run, and how to ack it once."""

    delivery: Delivery
    header: TaskHeader
    payload: bytes
    ack: AckOnce

    @property
    def task_id(self) -> str:
        return self.header.task_id


@dataclass
class Batch:
    """Jobs claimed together, and what became of them."""

    jobs: list[Job]
    claims: list[Claim]
    window_end: float
    cut: int = -1  # jobs from here on were not started
    released_from: int = -1  # jobs from here on were released already
    finished: list[Entry] = field(default_factory=list)
    acks: list[Job] = field(default_factory=list)
    properties: dict[str, Any] | None = None
    started: set[int] = field(default_factory=lambda: {0})  # jobs whose record says they started

    def __post_init__(self) -> None:
        if self.cut < 0:
            self.cut = self.released_from = len(self.jobs)
