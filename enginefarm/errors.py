"""The exceptions enginefarm raises: one root, a subtree per concern."""

from __future__ import annotations

import builtins
from concurrent import futures
from typing import Any


class EnginefarmError(Exception):
    """Root of every error enginefarm raises on purpose."""


class ConfigError(EnginefarmError):
    """Settings or the key file are missing or unusable."""


class KeyFileError(ConfigError):
    """The cluster key cannot be read, or is readable by others."""


class BrokerError(EnginefarmError):
    """RabbitMQ could not be reached or refused an operation."""


class UnroutableError(BrokerError):
    """The broker had no queue for a message published as mandatory."""


class StoreError(EnginefarmError):
    """Redis could not be reached or refused an operation."""


class ReplicationError(StoreError):
    """A write reached the primary but not as many replicas as the settings ask for in time:
    it may not survive a failover, so nothing that depends on it is confirmed."""


class EngineDeclaredDead(StoreError):
    """The cluster judged this engine dead (its heartbeat stopped) and settled its tasks: it
    may claim nothing more and must stop."""


class SerializationError(EnginefarmError):
    """An object could not be pickled or unpickled."""


class PayloadTooLarge(SerializationError):
    """A request or result is larger than the cluster's cap (``max_message_bytes``)."""


class DataExpired(EnginefarmError):
    """An out-of-band buffer of a request or result is no longer stored (``blob_ttl_s``)."""


class SignatureError(EnginefarmError):
    """A message or stored value is unsigned, tampered with or malformed.

    ``reason`` is a short machine-readable word (``unsigned``, ``bad-signature``,
    ``unknown-key``, ``malformed``, ``stale``, ``context``) used for counting.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DecodeError(EnginefarmError):
    """A verified message header, or a field read back from Redis, is not what the task
    model allows (see ``enginefarm.task``). ``reason`` counts it among dead letters."""

    reason = "invalid"

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        super().__init__(f"{field} {detail}")


class DeliveryLimitError(DecodeError):
    """A message came back to its queue as often as the queue allows (its engine kept losing
    the broker while holding it): refused rather than handed to the broker's dead-lettering."""

    reason = "delivery_limit"


class SchedulingError(EnginefarmError):
    """A target or task cannot be scheduled."""


class InvalidEngineID(SchedulingError):
    """A target is not a registered engine id, or is not a valid target at all."""


class NoEnginesRegistered(SchedulingError):
    """targets='all' was asked for while no engine is registered."""


# Python 3.10's concurrent.futures.TimeoutError is a class of its own (3.11 made it the
# builtin's alias): ours is both, so code written for futures catches it either way.
_TIMEOUT_BASES = tuple(dict.fromkeys([builtins.TimeoutError, futures.TimeoutError]))


class TimeoutError(EnginefarmError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """A wait ran out before the results were ready."""


class TaskError(EnginefarmError):
    """A task id is unknown, or the task is in a state that forbids the request."""


class UnmetDependency(EnginefarmError):
    """Raised on an engine, by a dependency (``@depend``'s function, ``@require``) or by a
    task itself, to say the task cannot run there: a load-balanced task goes to another
    engine, a targeted call fails with it (ipyparallel's ``error.UnmetDependency``)."""


class RemoteError(EnginefarmError):
    """An exception raised on an engine, carried back with its traceback.

    Attributes:
        ename: the remote exception's class name.
        evalue: its message.
        traceback: the formatted remote traceback.
        engine_id: the engine that raised it (None if it never reached one).
        task_id: the task it belongs to.
    """

    def __init__(
        self,
        ename: str,
        evalue: str,
        traceback: str = "",
        engine_id: int | None = None,
        task_id: str | None = None,
    ) -> None:
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_id = engine_id
        self.task_id = task_id
        super().__init__(ename, evalue)

    def __str__(self) -> str:
        where = f"[engine {self.engine_id}] " if self.engine_id is not None else ""
        return f"{where}{self.ename}: {self.evalue}"

    def render_traceback(self) -> str:
        return self.traceback or str(self)

    def raise_exception(self) -> None:
        """Re-raise this remote failure locally."""
        raise self

    def to_dict(self) -> dict[str, Any]:
        return {
            "ename": self.ename,
            "evalue": self.evalue,
            "traceback": self.traceback,
            "engine_id": self.engine_id,
            "task_id": self.task_id,
        }

    def print_traceback(self) -> None:
        print(self.render_traceback())

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a local traceback of the re-raise: the remote one,
        # under the engine it came from (a failure without one names its engine already).
        if not self.traceback:
            return [str(self)]
        where = [f"[engine {self.engine_id}]:"] if self.engine_id is not None else []
        return where + self.traceback.splitlines()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RemoteError:
        """The remote failure, as the subclass its meaning names (``TaskAborted``...), so that
        ``except error.TaskAborted`` works and ``except RemoteError`` still catches it."""
        ename = str(data.get("ename", "Error"))
        kind = _BY_MEANING.get(ename, cls)
        return kind(
            ename,
            str(data.get("evalue", "")),
            str(data.get("traceback", "")),
            data.get("engine_id"),
            data.get("task_id"),
        )


class TaskAborted(RemoteError):
    """The task was aborted (or cleared from a queue) before it ran."""


class TaskTimeout(RemoteError):
    """The task ran past its time limit and was stopped."""


class EngineError(RemoteError):
    """The engine running the task died, or its process did: the namespace is lost."""


class ImpossibleDependency(RemoteError):
    """The task's dependencies can never be met (a dependency failed, or nowhere qualifies)."""


class InvalidDependency(ImpossibleDependency):
    """A dependency names tasks that do not exist or is malformed."""


# What each engine-side error name means, for ``RemoteError.from_dict``.
_BY_MEANING: dict[str, type[RemoteError]] = {
    "TaskAborted": TaskAborted,
    "TaskTimeout": TaskTimeout,
    "EngineLost": EngineError,
    "EngineProcessDied": EngineError,
    "EngineError": EngineError,
    "ImpossibleDependency": ImpossibleDependency,
    "InvalidDependency": InvalidDependency,
}


class CompositeError(RemoteError):
    """Several targets failed; ``errors`` lists each one, in target order.

    ``tb_limit`` bounds how many tracebacks ``render_traceback`` draws.
    """

    tb_limit = 4

    def __init__(self, errors: list[RemoteError]) -> None:
        self.errors = errors
        lines = [str(err) for err in errors]
        super().__init__(
            "CompositeError",
            f"{len(errors)} targets failed:\n  " + "\n  ".join(lines),
            "\n".join(err.render_traceback() for err in errors),
        )

    def __str__(self) -> str:
        return self.evalue

    @property
    def elist(self) -> list[RemoteError]:
        return self.errors

    def render_traceback(self, excid: int | None = None) -> str:
        """Every failure's traceback (up to ``tb_limit``), or only the ``excid``-th."""
        if excid is not None:
            return self.errors[excid].render_traceback()
        shown = [err.render_traceback() for err in self.errors[: self.tb_limit]]
        if len(self.errors) > self.tb_limit:
            shown.append(f"... {len(self.errors) - self.tb_limit} more exceptions ...")
        return "\n".join(shown)

    def print_traceback(self, excid: int | None = None) -> None:
        print(self.render_traceback(excid))

    def _render_traceback_(self) -> list[str]:
        lines: list[str] = []
        for err in self.errors[: self.tb_limit]:
            lines += [*err._render_traceback_(), ""]
        if len(self.errors) > self.tb_limit:
            lines.append(f"... {len(self.errors) - self.tb_limit} more exceptions ...")
        return lines

    def raise_exception(self, index: int = 0) -> None:
        """Re-raise the failure of one target (the first by default)."""
        raise self.errors[index]
