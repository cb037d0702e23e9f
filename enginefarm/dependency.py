"""Conditions a task checks on the engine before it runs: ipyparallel's ``@depend`` and
``@require``.

``@depend(f, *args, **kwargs)`` runs a task only on engines where ``f(*args, **kwargs)`` is
true; ``@require(...)`` only where some modules import, and imports them (and pushes some
objects) into the namespace first. Both wrap the function in a ``dependent``, which the
engine's child checks before it calls anything (``enginefarm.worker.binding``). Where the
condition fails, a load-balanced task goes back to the scheduler for another engine, and
fails with ImpossibleDependency once every live engine has refused it
(``enginefarm.schedulers.retry``); a targeted call fails with UnmetDependency.

Client and child import this module, so it stays small and imports nothing of the client.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .errors import UnmetDependency
from .reference import interactive

Bind = Callable[[Any], Any]


class dependent:
    """A function that runs only where ``df(*dargs, **dkwargs)`` is true (what ``@depend``
    and ``@require`` return). Calling it calls the function: the engine checks the
    condition before it calls. A class, not a closure, so that it pickles.
    """

    def __init__(self, _wrapped_f: Callable[..., Any], _wrapped_df: Callable[..., Any],
                 *dargs: Any, **dkwargs: Any) -> None:
        self.f = _wrapped_f
        self.df = _wrapped_df
        self.dargs = dargs
        self.dkwargs = dkwargs
        self.__name__ = getattr(_wrapped_f, "__name__", "f")
        self.__doc__ = getattr(_wrapped_f, "__doc__", None)

    def __repr__(self) -> str:
        return f"<dependent {self.__name__} on {_name(self.df)}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.f(*args, **kwargs)

    def check(self, bind: Bind) -> None:
        """Evaluate the condition on this engine; ``bind`` makes its function, arguments and
        references mean what they mean here.

        Raises:
            UnmetDependency: the condition is false (or raised UnmetDependency itself).
        """
        df = bind(self.df)
        if not df(*bind(self.dargs), **bind(self.dkwargs)):
            shown = ", ".join([*(_short(a) for a in self.dargs), *(f"{k}={_short(v)}" for k, v in self.dkwargs.items())])
            raise UnmetDependency(f"{_name(self.df)}({shown}) is false on this engine")


class depend:
    """``@depend(f, *args, **kwargs)``: the decorated function runs only on engines where
    ``f(*args, **kwargs)`` is true. ``f`` runs on the engine (import what it needs inside it,
    or decorate it with ``@interactive`` to see the namespace); raising UnmetDependency in it
    counts as false.

    >>> @depend(lambda: __import__("sys").platform == "linux")
    ... def build(x): ...
    """

    def __init__(self, _wrapped_f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not callable(_wrapped_f):
            raise TypeError(f"depend takes the function to test first, not {type(_wrapped_f).__name__}")
        self.f = _wrapped_f
        self.args = args
        self.kwargs = kwargs

    def __call__(self, f: Callable[..., Any]) -> dependent:
        return dependent(f, self.f, *self.args, **self.kwargs)


@interactive
def _require(*modules: str, **objects: Any) -> bool:
    """Runs on the engine with the engine's namespace as its globals (so it needs its own
    imports): import each module under its top-level name, then push the objects."""
    import importlib
    import sys

    from enginefarm.errors import UnmetDependency

    namespace = globals()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UnmetDependency(f"cannot import {name!r} on this engine ({type(exc).__name__}: {exc})") from None
        top = name.partition(".")[0]
        namespace[top] = sys.modules[top]
    namespace.update(objects)
    return True


def require(*objects: Any, **mapping: Any) -> depend:
    """``@require('numpy', helper, np=numpy_module, ...)``: before the decorated function runs
    on an engine, import the modules there (named, or given as module objects) and push the
    other objects into its namespace: functions under their ``__name__``, anything else by
    keyword. An engine where a module does not import refuses the task.

    Raises:
        TypeError: a positional object is neither a module, a module name nor named.
    """
    names: list[str] = []
    for obj in objects:
        if isinstance(obj, ModuleType):
            obj = obj.__name__
        if isinstance(obj, str):
            names.append(obj)
        elif hasattr(obj, "__name__"):
            mapping[obj.__name__] = obj
        else:
            raise TypeError(f"require takes modules, module names and named objects positionally; "
                            f"pass a {type(obj).__name__} by keyword")
    return depend(_require, *names, **mapping)


def _name(f: object) -> str:
    return str(getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or type(f).__name__)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


def _short(value: object) -> str:
    return _REPR.repr(value)
