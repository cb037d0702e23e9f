"""Load-balanced tasks (seed 003): MapTask and StringTask, and what they return.

A task is a description; ``Client.submit`` pickles it into a request the engine's child
understands (see ``enginefarm.worker.commands``).
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ..errors import RemoteError
from ..task import as_seconds
from .dependency import as_spec


class BaseTask:
    """Options shared by every task.

    Args:
        clear_before / clear_after: reset the engine's namespace before / after the task.
        retries: how many more times to run the task if it raises; a retry prefers an engine
            that has not failed it (the failure penalty).
        recovery_task: a task run on the engine before each retry.
        depend: ``depend(properties) -> bool``, evaluated against an engine's properties; the
            task only runs where it holds, and waits while no engine satisfies it.
        timeout: seconds the task may run before it is stopped (None: the cluster default).
        priority: larger runs earlier under the 'priority' scheme.
        after: tasks (ids, AsyncResults or a ``Dependency``) that must finish first.
        follow: tasks it must run beside: on the engine where they ran, once they finished.
        targets: engine ids it may run on (None: any).
        label: a name for the task, kept in its record (``db_query({"label": ...})``).
    """

    kind = ""

    def __init__(
        self,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float | None = None,
        priority: int = 0,
        after: Any = None,
        follow: Any = None,
        targets: int | Iterable[int] | None = None,
        label: str | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if depend is not None and not callable(depend):
            raise TypeError("depend must be a callable taking the engine's properties")
        if recovery_task is not None and not isinstance(recovery_task, BaseTask):
            raise TypeError("recovery_task must be a MapTask or StringTask")
        self.clear_before = clear_before
        self.clear_after = clear_after
        self.retries = retries
        self.recovery_task = recovery_task
        self.depend = depend
        self.timeout = timeout
        self.priority = priority
        self.after = as_spec(after)
        self.follow = as_spec(follow)
        self.targets = None if targets is None else ([targets] if isinstance(targets, int) else list(targets))
        self.label = label

    def body(self) -> dict[str, Any]:
        """The part of the request specific to the task type."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short name for error messages (cheap: no repr of the arguments)."""
        return type(self).__name__

    def request(self) -> dict[str, Any]:
        """What the engine's child receives (pickled and signed by the client)."""
        recovery = self.recovery_task
        return {
            **self.body(),
            "depend": self.depend,
            "recovery": None if recovery is None else {"kind": recovery.kind, **recovery.request()},
        }

    def header(self) -> dict[str, Any]:
        """Plain fields the scheduler and the engine read without unpickling anything."""
        head: dict[str, Any] = {"retries": self.retries}
        if self.clear_before:
            head["clear_before"] = True
        if self.clear_after:
            head["clear_after"] = True
        if self.depend is not None:
            head["depend"] = True
        if self.timeout:
            head["timeout"] = float(self.timeout)
        if self.priority:
            head["priority"] = int(self.priority)
        if self.after is not None:
            head["after"] = self.after.encode()
        if self.follow is not None:
            head["follow"] = self.follow.encode()
        if self.targets is not None:
            head["targets"] = self.targets
        if self.label is not None:
            head["label"] = self.label
        return head


class MapTask(BaseTask):
    """Call ``function(*args, **kwargs)`` on some engine; its return value is the result."""

    kind = "map_task"

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...] | list[Any] | None = None,
                 kwargs: dict[str, Any] | None = None, **options: Any) -> None:
        if not callable(function):
            raise TypeError(f"{function!r} is not callable")
        super().__init__(**options)
        self.function = function
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})

    def body(self) -> dict[str, Any]:
        return {"call": (self.function, self.args, self.kwargs)}

    def describe(self) -> str:
        return f"MapTask({getattr(self.function, '__qualname__', type(self.function).__name__)})"

    def __repr__(self) -> str:
        return f"MapTask({getattr(self.function, '__qualname__', self.function)!r}, args={reprlib.repr(self.args)})"


class StringTask(BaseTask):
    """Push variables, run a string of Python code, pull variables back (seed 003)."""

    kind = "string_task"

    def __init__(self, expression: str, pull: str | list[str] | None = None,
                 push: dict[str, Any] | None = None, **options: Any) -> None:
        if not isinstance(expression, str):
            raise TypeError("expression must be a string of Python code")
        super().__init__(**options)
        self.expression = expression
        self.pull = [pull] if isinstance(pull, str) else list(pull or [])
        self.push = dict(push or {})

    def body(self) -> dict[str, Any]:
        return {"expression": self.expression, "push": self.push, "pull": self.pull}

    def __repr__(self) -> str:
        return f"StringTask({self.expression!r}, pull={self.pull!r})"


class ResultNS:
    """Attribute and item access to a StringTask's pulled values.

    >>> ns = ResultNS({'a': 17, 'foo': [0, 1, 2]})
    >>> ns.a, ns['foo']
    (17, [0, 1, 2])
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__["_values"] = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ResultNS is read-only")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"NS{self._values!r}"

    __str__ = __repr__


class TaskResult:
    """The outcome of a load-balanced task (seed 003).

    Attributes:
        taskid, engineid: which task, and the engine that ran it last (None if none did).
        failure: None, or the RemoteError the task failed with.
        result: a MapTask's return value (None on failure).
        keys: the names a StringTask pulled (empty on failure).
        submitted, started, completed, duration: timing, in seconds since the epoch.
    """

    def __init__(self, taskid: str, engineid: int | None, kind: str, value: Any,
                 failure: RemoteError | None, metadata: Mapping[str, Any] | None = None) -> None:
        self.taskid = taskid
        self.engineid = engineid
        self.kind = kind
        self.failure = failure
        meta = dict(metadata or {})
        self.metadata = meta
        # Seed 003 gives TaskResult's moments in seconds; the metadata has datetimes.
        self.submitted: float | None = as_seconds(meta.get("submitted"))
        self.started: float | None = as_seconds(meta.get("started"))
        self.completed: float | None = as_seconds(meta.get("completed"))
        self.attempts: int = meta.get("attempts", 0)
        self.stdout: str = meta.get("stdout", "")
        self.stderr: str = meta.get("stderr", "")
        values = value if (kind == "string_task" and failure is None and isinstance(value, dict)) else {}
        self._ns = ResultNS(values)
        self.keys = list(values)
        self.result = None if (failure is not None or kind == "string_task") else value

    @property
    def task_id(self) -> str:
        return self.taskid

    @property
    def engine_id(self) -> int | None:
        return self.engineid

    @property
    def duration(self) -> float | None:
        if self.started is None or self.completed is None:
            return None
        return self.completed - self.started

    @property
    def ns(self) -> ResultNS:
        """The pulled values; re-raises the remote failure if the task failed."""
        self.raise_exception()
        return self._ns

    def raise_exception(self) -> None:
        """Re-raise the remote failure locally (does nothing on success)."""
        if self.failure is not None:
            raise self.failure

    def __getattr__(self, name: str) -> Any:
        # Seed 003: pulled variables are attributes of the TaskResult too.
        ns = self.__dict__.get("_ns")
        if ns is not None and name in ns:
            return ns[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        state = f"failure={self.failure!s}" if self.failure else (
            f"ns={self._ns!r}" if self.kind == "string_task" else f"result={self.result!r}")
        return f"<TaskResult {self.taskid} engine={self.engineid} {state}>"
