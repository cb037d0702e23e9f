"""Dependencies of load-balanced tasks on other tasks, as ipyparallel writes them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..task import Dependency as DependencySpec


class Dependency(set[str]):
    """Task ids a task depends on, and how they must have ended.

    Args:
        dependencies: task ids, AsyncResults, or iterables of them.
        all: every task must qualify (False: any one).
        success: a task that completed qualifies.
        failure: a task that failed or was aborted qualifies.
    """

    def __init__(self, dependencies: Any = (), all: bool = True, success: bool = True,
                 failure: bool = False) -> None:
        super().__init__(task_ids(dependencies))
        self.all = all
        self.success = success
        self.failure = failure
        if not (success or failure):
            raise ValueError("a dependency must accept success, failure or both")

    def spec(self) -> DependencySpec:
        return DependencySpec(tuple(sorted(self)), self.all, self.success, self.failure)

    def __repr__(self) -> str:
        return (f"Dependency({sorted(self)!r}, all={self.all}, success={self.success}, "
                f"failure={self.failure})")


def task_ids(dependencies: Any) -> list[str]:
    """Task ids from an id, an AsyncResult (anything with ``task_ids``) or an iterable of them.

    Raises:
        TypeError: something that names no task.
    """
    if dependencies is None:
        return []
    if isinstance(dependencies, str):
        return [dependencies]
    if hasattr(dependencies, "task_ids"):
        return list(dependencies.task_ids)
    if isinstance(dependencies, Iterable):
        return [t for item in dependencies for t in task_ids(item)]
    raise TypeError(f"a dependency is a task id, an AsyncResult or a list of them, not {dependencies!r}")


def as_spec(dependencies: Any) -> DependencySpec | None:
    """What a task's header carries for ``after=`` / ``follow=`` (None for no dependency)."""
    if dependencies is None:
        return None
    dep = dependencies if isinstance(dependencies, Dependency) else Dependency(dependencies)
    return dep.spec() if dep else None
