"""Binding a request to the engine's namespace, in the child, just before it runs.

A request may carry what means something only here: a ``Reference`` (the value of a name in
the namespace), an ``@interactive`` function (whose globals must be the namespace) and a
``dependent`` (whose condition must hold here). ``bind_request`` swaps each for what it
stands for, in a call's function and arguments (also inside lists, tuples and dicts) and in
pushed values; a dependent whose condition fails raises UnmetDependency.

Most requests carry none of them, and their pickled bytes never name the modules those
classes live in: ``mentions_engine_side`` lets the child skip the walk for them (a map chunk
of thousands of items is not looked at item by item).
"""

from __future__ import annotations

import types
from typing import Any

from ..dependency import dependent
from ..reference import Reference, is_interactive, rebind

# Pickles name a class by its module; these are the modules of what binding swaps.
ENGINE_SIDE_MODULES = (b"enginefarm.reference", b"enginefarm.dependency")

# How deep into nested lists, tuples and dicts binding looks. A Reference among a
# load-balanced map's items sits four levels down: the call, its arguments, the chunk (a
# list), one item's argument tuple.
MAX_DEPTH = 8


def mentions_engine_side(payload: bytes) -> bool:
    """Whether pickled bytes may hold something to bind (never false when they do)."""
    return any(module in payload for module in ENGINE_SIDE_MODULES)


class Binder:
    """Binds values to one namespace and remembers the dependents it checked."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.checked: list[dependent] = []

    def bind(self, value: Any, depth: int = 0) -> Any:
        """``value`` as it means on this engine; containers are copied only where something
        in them changed.

        Raises:
            UnmetDependency: a dependent's condition is false here.
            NameError: a Reference names nothing here (and whatever a condition raises).
        """
        kind = type(value)
        if kind is Reference:
            return value.resolve(self.namespace)
        if kind is types.FunctionType:
            return rebind(value, self.namespace) if is_interactive(value) else value
        if kind is dependent:
            value.check(self.bind)
            self.checked.append(value)
            return self.bind(value.f, depth)
        if depth >= MAX_DEPTH:
            return value
        if kind is tuple or kind is list:
            items = [self.bind(item, depth + 1) for item in value]
            return value if all(a is b for a, b in zip(items, value)) else kind(items)
        if kind is dict:
            bound = {key: self.bind(item, depth + 1) for key, item in value.items()}
            return value if all(bound[k] is v for k, v in value.items()) else bound
        return value

    def recheck(self) -> None:
        """Check the dependents again, after the namespace was reset (``clear_before``), so
        that what ``@require`` imported and pushed is in the fresh namespace."""
        for item in self.checked:
            item.check(self.bind)


def bind_request(kind: str, request: Any, namespace: dict[str, Any]) -> tuple[Any, Binder]:
    """The request with its engine-side parts bound, and the binder that bound them."""
    binder = Binder(namespace)
    if kind in ("apply", "push", "push_function"):
        return binder.bind(request), binder
    if kind == "map_task" and isinstance(request, dict):
        return {**request, "call": binder.bind(request["call"])}, binder
    if kind == "string_task" and isinstance(request, dict):
        return {**request, "push": binder.bind(request.get("push") or {})}, binder
    return request, binder
