"""What means something only on an engine: ``Reference`` and ``@interactive`` (ipyparallel's).

Both travel inside ordinary requests; the engine's child swaps each for what it stands for
just before it runs the request (``enginefarm.worker.binding``). Client and child import
this module, so it stays small and imports nothing of the client.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# The attribute ``interactive`` sets on a function it marks.
_MARK = "__enginefarm_interactive__"


class Reference:
    """The value of ``name`` in an engine's namespace, looked up on the engine when the task
    runs there (ipyparallel's ``Reference``).

    Pass it as an argument (or inside a list, tuple or dict argument) to ``apply``, ``map``
    or a ``MapTask``, or in place of the function itself. ``name`` is evaluated as a Python
    expression in the namespace, so ``'a'``, ``'a.b'`` and ``'g[0]'`` all work.

    >>> dv.push({"a": 5})
    >>> dv.apply(lambda x: x * 2, Reference("a"))   # [10, 10]
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"a Reference names a value with a string, not {type(name).__name__}")
        # A typo fails here, once, rather than on every engine.
        compile(name, "<Reference>", "eval")
        self.name = name

    def __repr__(self) -> str:
        return f"<Reference: {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and other.name == self.name

    def __hash__(self) -> int:
        return hash((Reference, self.name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Callable, so that apply(Reference('f'), ...) passes the views' callable check; only
        # an engine has what it refers to.
        raise TypeError(f"{self!r} refers to a value on an engine; only the engine can call it")

    def resolve(self, namespace: dict[str, Any]) -> Any:
        """The value on this engine.

        Raises:
            NameError: a name in the expression is not defined in ``namespace``.
        """
        try:
            return eval(self.name, namespace)
        except NameError as exc:
            raise NameError(f"{exc} on this engine (resolving Reference({self.name!r}))") from None


class _Interactive:
    """The mark ``interactive`` leaves on a function. It pickles by name, so the bytes of a
    request that carries a marked function name this module (see ``binding``)."""

    def __reduce__(self) -> str:
        return "INTERACTIVE"

    def __repr__(self) -> str:
        return "INTERACTIVE"


INTERACTIVE = _Interactive()


def interactive(f: F) -> F:
    """Run ``f`` on engines with the engine's namespace as its globals (ipyparallel's
    ``@interactive``): it reads names pushed or executed there earlier, and ``global x``
    assigns them.

    Called locally, the function behaves as before. It travels by value, as a function
    defined in ``__main__`` does. Objects that are not Python functions are returned as
    they are (they have no globals to swap).
    """
    if not isinstance(f, types.FunctionType):
        return f
    marked = _copy(f, f.__globals__)
    marked.__module__ = "__main__"  # cloudpickle pickles __main__'s functions by value
    setattr(marked, _MARK, INTERACTIVE)
    return marked  # type: ignore[return-value]  # a FunctionType copy of the F it was given


def is_interactive(obj: object) -> bool:
    return isinstance(obj, types.FunctionType) and isinstance(obj.__dict__.get(_MARK), _Interactive)


def rebind(f: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    """``f`` with ``namespace`` as its globals (on the engine: the engine's namespace)."""
    if f.__globals__ is namespace:
        return f
    return _copy(f, namespace)


def _copy(f: types.FunctionType, globals_: dict[str, Any]) -> types.FunctionType:
    copy = types.FunctionType(f.__code__, globals_, f.__name__, f.__defaults__, f.__closure__)
    copy.__kwdefaults__ = f.__kwdefaults__
    copy.__qualname__ = f.__qualname__
    copy.__doc__ = f.__doc__
    copy.__module__ = f.__module__
    copy.__annotations__ = dict(f.__annotations__)
    copy.__dict__.update(f.__dict__)
    return copy
