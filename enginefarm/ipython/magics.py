"""%px, %%px, %autopx, %pxresult (%result) and %pxconfig: run code on engines from IPython.

ipyparallel's magics, on a DirectView. ``%px CODE`` and ``%%px`` send code to the view's
engines (``execute``, which engines run in IPython when they have it: magics, ``!cmd`` and rich
display work there too), wait, and show what each engine printed and displayed; a remote
failure is raised as the RemoteError / CompositeError it is, which IPython draws as the remote
traceback. ``%autopx`` sends every following cell until ``%autopx`` again.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

from IPython.core import magic_arguments as _magic_arguments
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand

from ..errors import InvalidEngineID, NoEnginesRegistered
from . import display
from .interrupt import Interrupts, interrupt

_F = TypeVar("_F", bound=Callable[..., Any])
# IPython's magic_arguments has no annotations; it is reached through ``_args`` only.
_ma = cast(Any, _magic_arguments)
NO_LAST_RESULT = "%pxresult shows the last %px result, and there is none yet."


def _args(*options: tuple[tuple[str, ...], dict[str, Any]]) -> Callable[[_F], _F]:
    """``magic_arguments`` with these ``(flags, keywords)`` options, as a typed decorator."""
    def decorate(func: _F) -> _F:
        for flags, keywords in reversed(options):
            func = _ma.argument(*flags, **keywords)(func)
        return cast(_F, _ma.magic_arguments()(func))
    return decorate


def _line(name: str) -> Callable[[_F], _F]:
    # IPython's annotation of line_magic does not say that a named one returns a decorator.
    return cast("Callable[[_F], _F]", line_magic(name))


def _cell(name: str) -> Callable[[_F], _F]:
    return cast("Callable[[_F], _F]", cell_magic(name))


def _parse(func: Callable[..., Any], line: str) -> Any:
    return _ma.parse_argstring(func, line)


_EXEC = (
    (("-t", "--targets"), {"type": str, "help": "engines: an id, ids (0,2), a slice (::2, 1:3) or 'all'"}),
    (("-b", "--block"), {"action": "store_const", "const": True, "dest": "block", "help": "wait for the engines"}),
    (("-a", "--noblock"), {"action": "store_const", "const": False, "dest": "block",
                           "help": "return the AsyncResult at once (%%pxresult shows it later)"}),
    (("--stream",), {"action": "store_const", "const": True, "dest": "stream",
                     "help": "show output as it arrives, where results can stream it"}),
    (("--no-stream",), {"action": "store_const", "const": False, "dest": "stream", "help": "show output at the end"}),
)
_VERBOSE = (
    (("--verbose",), {"action": "store_const", "const": True, "dest": "set_verbose",
                      "help": "say where each execution runs"}),
    (("--no-verbose",), {"action": "store_const", "const": False, "dest": "set_verbose", "help": "say nothing"}),
)
_OUTPUT = (
    (("--group-outputs",), {"dest": "groupby", "choices": display.GROUPINGS, "default": "type",
                            "help": "type: all stdout, then all stderr...; engine: each engine's together; "
                                    "order: like type, the i-th display of every engine together"}),
    (("-r",), {"action": "store_const", "dest": "groupby", "const": "order", "help": "--group-outputs=order"}),
    (("-e",), {"action": "store_const", "dest": "groupby", "const": "engine", "help": "--group-outputs=engine"}),
    (("-o", "--out"), {"dest": "save_name", "type": str,
                       "help": "also store the AsyncResult under this name in the user's namespace"}),
)
_LOCAL = ((("--local",), {"action": "store_true", "help": "also run the cell here, in this namespace"}),)


def parse_targets(text: str) -> Any:
    """``--targets``: 'all', an id ('1', '-1'), ids ('0,2', '[0, 2]') or a slice ('::2', '1:3').

    Raises:
        UsageError: anything else (nothing is evaluated).
    """
    spec = text.strip()
    if spec == "all":
        return spec
    bracketed = spec.startswith("[") and spec.endswith("]")
    inner = spec[1:-1] if bracketed else spec
    try:
        if ":" in inner and not bracketed:
            parts = inner.split(":")
            if len(parts) > 3:
                raise ValueError(spec)
            return slice(*(int(p) if p.strip() else None for p in parts))
        ids = [int(p) for p in inner.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--targets takes 'all', an engine id, ids like 0,2 or a slice like ::2; not {text!r}") from None
    if not ids:
        raise UsageError("--targets names no engine")
    return ids[0] if len(ids) == 1 and not bracketed and "," not in inner else ids


class AutoPx:
    """%autopx's input transformer: each cell becomes a %%px cell, but for %autopx itself."""

    # IPython's check whether typed input is complete must not see the cell rewritten.
    has_side_effects = True

    def __init__(self, magic: str) -> None:
        self.magic = magic
        self.toggle = re.compile(rf"\s*%auto{re.escape(magic)}\b")

    def __call__(self, lines: list[str]) -> list[str]:
        cell = "".join(lines)
        if not cell.strip() or self.toggle.match(cell):
            return lines
        return [f"get_ipython().run_cell_magic({self.magic!r}, '', {cell!r})\n"]


@magics_class
class ParallelMagics(Magics):
    """The %px family on one DirectView (``view=None``: the engines of ``Client()``, made on
    first use from the ``ENGINEFARM_*`` settings). ``suffix`` names a second family on another
    view: ``activate(suffix='2')`` gives %px2, %%px2, %autopx2, %pxresult2, %pxconfig2."""

    def __init__(self, shell: InteractiveShell, view: Any = None, suffix: str = "") -> None:
        super().__init__(shell)
        self.ip = shell  # Magics.shell, known not to be None
        self._view = view
        self.suffix = suffix
        self.verbose = False
        self.stream = False
        self.last_result: Any = None
        self._autopx: AutoPx | None = None
        # The methods answer to their names plus the suffix; %result only without one.
        self.magics = {kind: {name + suffix: fn for name, fn in table.items() if not (suffix and name == "result")}
                       for kind, table in self.magics.items()}

    @property
    def view(self) -> Any:
        if self._view is None:
            from ..client.client import Client

            self._view = Client().direct_view("all")
            self._view.block = True
        return self._view

    # --- the magics ---------------------------------------------------------------------
    @_line("px")
    @no_var_expand
    def px(self, line: str = "") -> Any:
        """Run one line on the engines: ``%px import os; os.getpid()``."""
        return self.execute(line)

    @_cell("px")
    @_args(*_EXEC, *_OUTPUT, *_LOCAL)
    def cell_px(self, line: str = "", cell: str = "") -> Any:
        """Run the cell on the engines (``--targets``, ``--noblock``, ``--local``...)."""
        args = _parse(self.cell_px, line)
        view = self._view_on(args.targets) if args.targets else self.view
        # With --local the engines start first, and the cell runs here meanwhile.
        here = (lambda: cast(Any, self.ip).run_cell(cell, store_history=False)) if args.local else None
        return self.execute(cell, view, args.block, args.groupby, args.stream, args.save_name, here)

    @_line("autopx")
    def autopx(self, line: str = "") -> None:
        """Toggle: run every following cell on the engines, until %autopx again."""
        transforms = self.ip.input_transformers_cleanup
        if self._autopx is None:
            self._autopx = AutoPx("px" + self.suffix)
            transforms.append(self._autopx)
            print(f"%autopx{self.suffix} enabled")
        else:
            self.close()
            print(f"%autopx{self.suffix} disabled")

    @_line("result")
    @_line("pxresult")
    @_args(*_OUTPUT)
    def pxresult(self, line: str = "") -> None:
        """Show the outputs of the last %px (one sent with --noblock, once it finished)."""
        args = _parse(self.pxresult, line)
        if self.last_result is None:
            raise UsageError(NO_LAST_RESULT)
        if args.save_name:
            self.ip.user_ns[args.save_name] = self.last_result
            return
        self.finish(self.last_result, args.groupby, False)

    @_line("pxconfig")
    @_args(*_EXEC, *_VERBOSE)
    def pxconfig(self, line: str = "") -> None:
        """Defaults of the %px magics: ``--targets``, ``--block``/``--noblock``, ``--verbose``, ``--stream``."""
        args = _parse(self.pxconfig, line)
        if args.targets:
            block = self.view.block
            self._view = self._view_on(args.targets)
            self._view.block = block
        if args.block is not None:
            self.view.block = args.block
        if args.set_verbose is not None:
            self.verbose = args.set_verbose
        if args.stream is not None:
            self.stream = args.stream

    # --- running ------------------------------------------------------------------------
    def execute(self, code: str, view: Any = None, block: bool | None = None, groupby: str = "type",
                stream: bool | None = None, save_name: str | None = None,
                meanwhile: Callable[[], Any] | None = None) -> Any:
        """Send ``code`` to the view's engines (then call ``meanwhile``); blocking, show their
        outputs and raise their failures, else return the AsyncResult (kept for %pxresult)."""
        view = self.view if view is None else view
        blocking = self._blocking(view, block)
        if self.verbose:
            print(f"{'Parallel' if blocking else 'Async parallel'} execution on engine(s): {view.targets}")
        with Interrupts() as ctrl_c:
            try:
                result = view.execute(code, block=False)
            except (InvalidEngineID, NoEnginesRegistered) as exc:
                raise UsageError(str(exc)) from None
            self.last_result = result
            if save_name:
                self.ip.user_ns[save_name] = result
            if meanwhile is not None:
                ctrl_c.restore()  # Ctrl-C in the local run is the local run's
                meanwhile()
                ctrl_c.install()
            if not blocking:
                return result
            streaming = self._streaming(stream, result)
            if streaming:
                ctrl_c.restore()
            if not self._wait(ctrl_c, result, streaming):
                ctrl_c.restore()
                return self._interrupted(view, result, groupby, streaming)
        self.finish(result, groupby, streaming)
        return None

    def _wait(self, ctrl_c: Interrupts, result: Any, streaming: bool) -> bool:
        if not streaming:
            return ctrl_c.wait(result)
        try:
            result.stream_outputs()
        except KeyboardInterrupt:
            return False
        return True

    def _interrupted(self, view: Any, result: Any, groupby: str, streamed: bool) -> None:
        """Ctrl-C: the engines' cell is interrupted, what it did is shown, and its failure (a
        KeyboardInterrupt on each engine) raised; KeyboardInterrupt here if it did not end."""
        if not interrupt(view.client, result):
            print("the engines' cell has not ended; %pxresult shows it once it has", file=sys.stderr)
            raise KeyboardInterrupt
        self.finish(result, groupby, streamed)
        raise KeyboardInterrupt  # the cell caught its interrupt and ended well: this one stands

    def finish(self, result: Any, groupby: str, streamed: bool) -> None:
        """Wait for ``result``, show its outputs, and raise its failure, as IPython draws it."""
        result.wait()
        # stdout and stderr were printed already when streamed; the displays and values not.
        display.show(result, self.ip, groupby, streams=not streamed)
        result.get()

    def close(self) -> None:
        """Leave %autopx (when these magics are replaced, or toggled off)."""
        if self._autopx is not None:
            transforms = self.ip.input_transformers_cleanup
            if self._autopx in transforms:
                transforms.remove(self._autopx)
            self._autopx = None

    # --- options ------------------------------------------------------------------------
    def _view_on(self, text: str) -> Any:
        try:
            view = self.view.client.direct_view(parse_targets(text))
        except (InvalidEngineID, NoEnginesRegistered) as exc:
            raise UsageError(str(exc)) from None
        view.block = self.view.block
        return view

    def _blocking(self, view: Any, block: bool | None) -> bool:
        if block is not None:
            return block
        return bool(view.block if view.block is not None else view.client.block)

    def _streaming(self, stream: bool | None, result: Any) -> bool:
        wanted = self.stream if stream is None else stream
        # Results that cannot stream show their output at the end.
        return bool(wanted) and callable(getattr(result, "stream_outputs", None))
