"""``with view.sync_imports():`` imports here and on every engine of a DirectView at once
(ipyparallel's ``sync_imports``).

Inside the block, each import statement of the block itself (not the imports that imported
modules make in turn) runs locally, then on the view's targets, into their namespaces:
``import a.b`` binds ``a`` there as here, ``from a import b`` binds ``b``. As in ipyparallel,
``import x as y`` binds ``x`` on the engines, and relative imports stay local. The engines'
results are collected when the block ends: a module an engine cannot import raises there.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Mapping, Sequence
from types import FrameType, ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from ..reference import interactive
from .asyncresult import AsyncResult

if TYPE_CHECKING:
    from .view import DirectView


@interactive
def _import_here(name: str, fromlist: list[str]) -> None:
    """Runs on an engine with the engine's namespace as its globals: what the import
    statement does there."""
    namespace = globals()
    module = __import__(name, fromlist=fromlist)
    if not fromlist:
        namespace[name.partition(".")[0]] = module  # __import__('a.b') returns a
        return
    for key in fromlist:
        if key == "*":
            public = getattr(module, "__all__", None) or [k for k in vars(module) if not k.startswith("_")]
            namespace.update({k: getattr(module, k) for k in public})
        else:
            namespace[key] = getattr(module, key)


class SyncImports:
    """The context manager ``DirectView.sync_imports`` returns.

    Args:
        local: import here too; ipyparallel has no remote-only imports either.
        quiet: do not print "importing X on engine(s)" for each import.
    """

    def __init__(self, view: DirectView, local: bool = True, quiet: bool = False) -> None:
        self.view = view
        self.local = local
        self.quiet = quiet
        self._frame: FrameType | None = None
        self._saved: Any = None
        self._seen: set[tuple[str, tuple[str, ...]]] = set()
        self._results: list[AsyncResult] = []

    def __enter__(self) -> None:
        if not self.local:
            raise NotImplementedError("remote-only imports are not implemented")
        # The block's own frame: only its import statements go to the engines.
        self._frame = sys._getframe(1)
        self._saved = builtins.__import__
        builtins.__import__ = self._import

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        builtins.__import__ = self._saved
        self._frame = None
        if exc_type is None:
            for result in self._results:
                result.get()  # raises what an engine could not import

    def _import(self, name: str, globals: Mapping[str, Any] | None = None, locals: Mapping[str, Any] | None = None,
                fromlist: Sequence[str] | None = (), level: int = 0) -> ModuleType:
        module: ModuleType = self._saved(name, globals, locals, fromlist, level)
        if level <= 0 and sys._getframe(1) is self._frame:
            self._forward(name, list(fromlist or ()))
        return module

    def _forward(self, name: str, fromlist: list[str]) -> None:
        key = (name, tuple(fromlist))
        if key in self._seen:
            return
        self._seen.add(key)
        if not self.quiet:
            print(f"importing {','.join(fromlist)} from {name} on engine(s)" if fromlist
                  else f"importing {name} on engine(s)")
        self._results.append(self.view.apply(_import_here, name, fromlist, block=False))
