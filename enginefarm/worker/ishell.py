"""IPython in the engine's child process: ``execute`` runs code as a notebook cell runs.

Why a shell here and not an ipykernel: the child already has its transport (the supervisor's
socket) and its interrupt rule (``child.interrupt_request``); what IPython adds is the language
(magics, ``!cmd``, top-level ``await``) and rich display. The shell works on the engine's own
namespace dict, so push, pull and apply see what cells define, and cells see what they push.

Instead of printing, the shell keeps what a cell displays (``display(...)``, the value of its
last expression) as JSON mime bundles, and its error as IPython formats it; ``run`` hands both
to the command. Imported only when IPython is installed and the engine's ``engine_shell``
setting allows it (see ``commands.cmd_execute``).
"""

from __future__ import annotations

import base64
import json
import re
from types import TracebackType
from typing import Any, cast

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Type
from traitlets.config import Config

from .commands import CellFailed, EngineState

Bundle = dict[str, Any]

# What the shell itself puts in the namespace besides ``user_ns_hidden``: its output cache
# (``_``, ``__``, ``___``, ``_3``), input history (``_i``, ``_ii``, ``_i3``) and ``!cmd``'s status.
_SHELL_NAME = re.compile(r"_(_{0,2}|i{1,3}|i?\d+|exit_code)")


class _Displays(DisplayPublisher):
    """``display(...)`` in a cell: kept for the task's outcome instead of shown."""

    kept: list[Bundle]  # set by ``run`` for each cell

    def publish(self, data: Any, metadata: Any = None, source: Any = None, *,
                transient: Any = None, update: bool = False, **kwargs: Any) -> None:
        self.kept.append({"data": data, "metadata": metadata or {}})

    def clear_output(self, wait: bool = False) -> None:
        self.kept.clear()


class _ResultHook(DisplayHook):
    """The value of a cell's last expression: kept as its ``execute_result``, not printed."""

    kept: Bundle | None  # set by ``run`` for each cell

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict: Any, md_dict: Any = None) -> None:
        self.kept = {"data": format_dict, "metadata": md_dict or {}}


class EngineShell(InteractiveShell):
    """An InteractiveShell whose displays, results and tracebacks stay with the task."""

    displayhook_class = Type(_ResultHook)
    display_pub_class = Type(_Displays)
    # Set by ``_showtraceback``: the text IPython would have printed for the cell's error.
    error_text = ""

    def _get_exc_info(self, exc_tuple: Any = None) -> tuple[Any, Any, Any]:
        etype, value, tb = cast(Any, super())._get_exc_info(exc_tuple)  # not annotated in IPython
        return etype, value, _without_hidden_end(tb)

    def _showtraceback(self, etype: Any, evalue: Any, stb: list[str]) -> None:
        self.error_text = str(self.InteractiveTB.stb2text(stb))

    def show_usage_error(self, exc: BaseException) -> None:
        # IPython prints a UsageError (an unknown magic, bad magic arguments) without a traceback.
        self.error_text = f"UsageError: {exc}"


def _without_hidden_end(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without its innermost frame when that frame hides itself (``__tracebackhide__``,
    as the child's SIGINT handler does: IPython hides such frames, but never the last one)."""
    if tb is None or tb.tb_next is None:
        return tb
    last = tb
    while last.tb_next is not None and last.tb_next.tb_next is not None:
        last = last.tb_next
    assert last.tb_next is not None
    if last.tb_next.tb_frame.f_locals.get("__tracebackhide__"):
        last.tb_next = None
    return tb


def make_shell(namespace: dict[str, Any]) -> EngineShell:
    """The child's one shell, on ``namespace``. It is IPython's instance, so ``get_ipython()``
    in user code finds it. (Called with SIGINT deferred: ``commands.sigint_deferred``.)"""
    config = Config()
    # In memory: no history database in the engine's home, no thread saving it.
    config.HistoryManager.hist_file = ":memory:"
    # Tracebacks travel as text to clients, logs and the CLI: no terminal colour codes.
    config.InteractiveShell.colors = "nocolor"
    return EngineShell.instance(config=config, user_ns=namespace)


def run(state: EngineState, shell: EngineShell, code: str, cap: int) -> None:
    """Run ``code`` as a cell; its displays and result go to ``state``, even when it fails.

    Raises:
        CellFailed: the cell raised (or did not compile); it carries IPython's traceback text.
    """
    displays, hook = shell.display_pub, shell.displayhook
    assert isinstance(displays, _Displays) and isinstance(hook, _ResultHook)
    displays.kept, hook.kept, shell.error_text = [], None, ""
    try:
        # IPython's run_cell has no annotations.
        result = cast(Any, shell).run_cell(code, store_history=True)
    finally:
        state.outputs, state.execute_result = bounded(displays.kept, hook.kept, cap)
    if state.execute_result is not None:
        state.execute_result["execution_count"] = result.execution_count  # the N of Out[engine:N]
    error = result.error_before_exec or result.error_in_exec
    if error is not None:
        raise CellFailed(error, shell.error_text or f"{type(error).__name__}: {error}\n")


def refill(shell: EngineShell) -> None:
    """After the namespace was cleared (reset, clear_before): the names the shell needs."""
    cast(Any, shell).init_user_ns()  # not annotated in IPython


def hidden(shell: EngineShell, names: list[str]) -> list[str]:
    """``names`` without those the shell defined (In, Out, get_ipython, _i1, _...)."""
    ns, shown = shell.user_ns, shell.user_ns_hidden
    return [n for n in names
            if not (n in shown and shown[n] is ns.get(n)) and not _SHELL_NAME.fullmatch(n)]


def bounded(outputs: list[Bundle], result: Bundle | None, cap: int) -> tuple[list[Bundle], Bundle | None]:
    """JSON-safe copies of a cell's outputs, in at most ``cap`` bytes of JSON: the result
    first (it is the cell's value), then displays in order while they fit; a note says how
    many were dropped."""
    budget = cap
    kept_result = None
    if result is not None:
        kept_result = jsonable(result)
        size = len(json.dumps(kept_result))
        if size > budget:
            text = str(kept_result["data"].get("text/plain", ""))[: max(budget // 2, 0)]
            kept_result = {**kept_result, "data": {"text/plain": text}, "metadata": {}}
            size = len(json.dumps(kept_result))
        budget -= size
    kept: list[Bundle] = []
    for index, output in enumerate(outputs):
        bundle = jsonable(output)
        size = len(json.dumps(bundle))
        if size > budget:
            note = (f"[enginefarm: {len(outputs) - index} display output(s) dropped: over the engine's "
                    f"display_cap_bytes of {cap:,}]")
            kept.append({"data": {"text/plain": note}, "metadata": {}})
            break
        kept.append(bundle)
        budget -= size
    return kept, kept_result


def jsonable(bundle: Bundle) -> Bundle:
    """A mime bundle as JSON can carry it: bytes (a PNG) as base64 text, as Jupyter sends
    them; a value JSON cannot hold as its repr; metadata that does not encode is dropped."""
    data = {str(mime): _json_value(value) for mime, value in dict(bundle.get("data") or {}).items()}
    metadata = bundle.get("metadata") or {}
    try:
        json.dumps(metadata)
    except (TypeError, ValueError):
        metadata = {}
    out = {**bundle, "data": data, "metadata": metadata}
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
