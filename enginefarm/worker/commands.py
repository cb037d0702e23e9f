"""What an engine can be asked to do, run inside the child process that holds the namespace.

Each command takes the engine's state and the unpickled request, and returns a value that is
pickled back. Exceptions propagate to ``run_command``, which turns them into error outcomes.
"""

from __future__ import annotations

import builtins
import io
import reprlib
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import serialization
from ..config import ENGINE_SHELLS, Settings
from ..buffers import is_packed, unpack
from ..errors import PayloadTooLarge, UnmetDependency
from .binding import Binder, bind_request, mentions_engine_side


@dataclass
class EngineState:
    """The persistent namespace and the history of executed code.

    ``shell_mode`` says how ``execute`` runs code (``Settings.engine_shell``): 'ipython' in an
    IPython shell (``ishell``), 'plain' with ``exec``, 'auto' in IPython when it is installed.
    ``outputs`` and ``execute_result`` are the rich display outputs of the request running now.
    """

    namespace: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    shell_mode: str = "plain"
    display_cap: int = Settings.display_cap_bytes
    # Largest total of out-of-band buffers a result may hold (max_value_bytes).
    value_cap: int = Settings.max_value_bytes
    shell: Any = None  # ishell.EngineShell, made by the first execute that wants one
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execute_result: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.shell_mode not in ENGINE_SHELLS:
            raise ValueError(f"shell_mode is one of {', '.join(ENGINE_SHELLS)}, not {self.shell_mode!r}")
        self.reset()

    def begin_request(self) -> None:
        self.outputs, self.execute_result = [], None

    def reset(self) -> None:
        self.namespace.clear()
        self.namespace.update({"__name__": "__main__", "__builtins__": builtins})
        if self.shell is not None:
            from . import ishell

            ishell.refill(self.shell)


class CappedWriter(io.TextIOBase):
    """A text sink that keeps the first ``cap`` bytes (UTF-8) and counts the rest.

    ``on_write`` is called after text was kept (the live output's wake-up, see tap.py);
    ``kept`` is how many parts the last ``getvalue`` covered.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0
        self.on_write: Callable[[], None] | None = None
        self.kept: int | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        room = self.cap - self.size
        if room <= 0:
            self.dropped += len(text)
            return len(text)
        data = text.encode("utf-8", "replace")
        if len(data) <= room:
            self.parts.append(text)
            self.size += len(data)
        else:
            piece = data[:room].decode("utf-8", "ignore")
            self.parts.append(piece)
            self.size = self.cap
            self.dropped += len(text) - len(piece)
        if self.on_write is not None and text:
            self.on_write()
        return len(text)

    def getvalue(self) -> str:
        parts = self.parts[:]  # one step: a thread that writes meanwhile is in or out, whole
        self.kept = len(parts)
        text = "".join(parts)
        if self.dropped:
            text += f"\n[enginefarm: output truncated, {self.dropped} more characters dropped]\n"
        return text


def _names(request: Any) -> list[str]:
    return [request] if isinstance(request, str) else list(request)


class CellFailed(Exception):
    """Code run by IPython raised ``error``; ``traceback`` is IPython's text of it (the cell's
    frames, not this module's)."""

    def __init__(self, error: BaseException, traceback: str) -> None:
        super().__init__(error)
        self.error = error
        self.traceback = traceback


def cmd_execute(state: EngineState, code: str) -> None:
    entry = {"number": len(state.history), "input": code, "stdout": "", "stderr": ""}
    state.history.append(entry)
    shell = _shell(state)
    if shell is None:
        exec(compile(code, f"<execute-{entry['number']}>", "exec"), state.namespace)
        return
    from . import ishell

    ishell.run(state, shell, code, state.display_cap)


def _shell(state: EngineState) -> Any:
    """The IPython shell ``execute`` runs code in, or None for plain ``exec``.

    Raises:
        ImportError: ``shell_mode`` 'ipython' on an engine without IPython.
    """
    if state.shell is None and state.shell_mode != "plain":
        # An interrupt waits until IPython is imported and its shell built (it then fails this
        # request): landing half-way, it would leave either half made.
        with sigint_deferred():
            try:
                from . import ishell
            except ImportError:
                if state.shell_mode == "ipython":
                    raise
                state.shell_mode = "plain"  # 'auto' without IPython: do not try again
                return None
            state.shell = ishell.make_shell(state.namespace)
    return state.shell


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """SIGINT held back (in this thread) until the block ends."""
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


def cmd_apply(state: EngineState, request: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
    func, args, kwargs = request
    return func(*args, **kwargs)


def cmd_push(state: EngineState, mapping: dict[str, Any]) -> None:
    state.namespace.update(mapping)


def cmd_pull(state: EngineState, request: str | list[str]) -> Any:
    missing = [n for n in _names(request) if n not in state.namespace]
    if missing:
        raise NameError(f"name(s) not defined on the engine: {', '.join(missing)}")
    if isinstance(request, str):
        return state.namespace[request]
    return [state.namespace[n] for n in request]


def cmd_reset(state: EngineState, request: Any) -> None:
    state.reset()


def cmd_keys(state: EngineState, request: Any) -> list[str]:
    names = sorted(k for k in state.namespace if not (k.startswith("__") and k.endswith("__")))
    if state.shell is None:
        return names
    from . import ishell

    return ishell.hidden(state.shell, names)


def cmd_get_result(state: EngineState, index: int | None) -> dict[str, Any]:
    if not state.history:
        raise IndexError("no code has been executed on this engine yet")
    entry = state.history[-1 if index is None else index]
    return dict(entry)


def cmd_kill(state: EngineState, request: Any) -> None:
    """The supervisor stops the engine after recording this command's outcome."""


def cmd_map_task(state: EngineState, request: dict[str, Any]) -> Any:
    func, args, kwargs = request["call"]
    return func(*args, **kwargs)


def cmd_string_task(state: EngineState, request: dict[str, Any]) -> dict[str, Any]:
    state.namespace.update(request.get("push") or {})
    exec(compile(request["expression"], "<string-task>", "exec"), state.namespace)
    return {name: state.namespace[name] for name in cmd_pull_list(state, request.get("pull"))}


def cmd_pull_list(state: EngineState, pull: Any) -> list[str]:
    names = [] if pull is None else _names(pull)
    missing = [n for n in names if n not in state.namespace]
    if missing:
        raise NameError(f"name(s) not defined after the task ran: {', '.join(missing)}")
    return names


def cmd_push_serialized(state: EngineState, mapping: dict[str, bytes]) -> None:
    """Values the client serialized itself (``serialization.dumps``): loaded here, once.

    Every value is loaded before any is bound, so a bad one leaves the namespace as it was.
    """
    loaded = {}
    for name, data in mapping.items():
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"push_serialized takes bytes from serialization.dumps; {name!r} is "
                            f"{type(data).__name__}")
        loaded[name] = serialization.loads(bytes(data), f"the serialized value of {name!r}")
    state.namespace.update(loaded)


def cmd_pull_serialized(state: EngineState, request: str | list[str]) -> bytes | list[bytes]:
    """Like pull, but each value comes back as ``serialization.dumps`` bytes for the client
    to load when (and if) it wants."""
    value = cmd_pull(state, request)
    if isinstance(request, str):
        return serialization.dumps(value, repr(request))
    return [serialization.dumps(v, repr(name)) for name, v in zip(request, value)]


COMMANDS: dict[str, Callable[[EngineState, Any], Any]] = {
    "execute": cmd_execute,
    "apply": cmd_apply,
    "map_task": cmd_map_task,
    "string_task": cmd_string_task,
    "push": cmd_push,
    "push_function": cmd_push,
    "pull": cmd_pull,
    "pull_function": cmd_pull,
    "reset": cmd_reset,
    "keys": cmd_keys,
    "get_result": cmd_get_result,
    "kill": cmd_kill,
    "push_serialized": cmd_push_serialized,
    "pull_serialized": cmd_pull_serialized,
}


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__} object>"


def error_outcome(exc: BaseException, stage: str = "") -> dict[str, Any]:
    if isinstance(exc, CellFailed):
        error = {"ename": type(exc.error).__name__, "evalue": _text(exc.error), "traceback": exc.traceback}
        return {"ok": False, "error": error}
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        tb = "".join(traceback.format_tb(exc.__traceback__)) + f"{type(exc).__name__}: {_text(exc)}\n"
    evalue = _text(exc)
    if stage:
        evalue = f"{evalue} (while {stage})"
    return {"ok": False, "error": {"ename": type(exc).__name__, "evalue": evalue, "traceback": tb}}


def refused_outcome(exc: BaseException, header: dict[str, Any]) -> dict[str, Any]:
    """An error outcome; UnmetDependency in a load-balanced task says "not on this engine"
    (ipyparallel's meaning): the task goes back to the scheduler (schedulers/retry.py)."""
    outcome = error_outcome(exc)
    if header.get("lb") and isinstance(exc, UnmetDependency):
        outcome["unmet"] = True
    return outcome


class DependError(Exception):
    """A task's depend function raised."""


class RecoveryTaskFailed(Exception):
    """A task's recovery_task raised before a retry."""


def check_task(state: EngineState, header: dict[str, Any], request: Any) -> dict[str, Any] | None:
    """Seed 003's depend and recovery_task; an outcome when the task must not run here."""
    if not isinstance(request, dict):
        return None
    depend = request.get("depend")
    if depend is not None:
        try:
            satisfied = bool(depend(dict(header.get("properties") or {})))
        except Exception as exc:
            return error_outcome(DependError(f"depend raised {type(exc).__name__}: {exc}"))
        if not satisfied:
            return {"ok": False, "unmet": True}
    recovery = request.get("recovery")
    if recovery and int(header.get("attempt", 1)) > 1:
        try:
            COMMANDS[recovery["kind"]](state, recovery)
        except Exception as exc:
            return error_outcome(RecoveryTaskFailed(f"recovery_task raised {type(exc).__name__}: {exc}"))
    return None


def run_command(state: EngineState, header: dict[str, Any], payload: bytes, cap: int,
                attach: Callable[[CappedWriter, CappedWriter], None] | None = None,
                buffers: list[bytearray] | None = None) -> dict[str, Any]:
    """Run one request; never raises. Returns the outcome the supervisor records.
    ``attach`` is given the request's stdout and stderr capture before the command runs;
    ``buffers`` are the out-of-band buffers a packed payload names. A result's own large
    buffers are left out of its ``value``, under ``BUFFERS`` (see enginefarm.buffers)."""
    kind = header.get("kind", "")
    command = COMMANDS.get(kind)
    if command is None:
        return error_outcome(ValueError(f"unknown command {kind!r}"))
    try:
        request = _load_request(payload, buffers or [], f"the {kind} request") if payload else None
    except Exception as exc:
        return error_outcome(exc)
    if kind in ("map_task", "string_task"):
        refusal = check_task(state, header, request)
        if refusal is not None:
            return refusal
    binder: Binder | None = None
    if mentions_engine_side(payload):
        # References, @interactive functions and dependents (see binding). Bound before
        # clear_before, so a Reference reads the namespace the task found.
        try:
            request, binder = bind_request(kind, request, state.namespace)
        except Exception as exc:
            refusal = refused_outcome(exc, header)
            if isinstance(exc, UnmetDependency):
                refusal["error"]["traceback"] = ""  # a condition's verdict: its message says it all
            return refusal
    if header.get("clear_before"):
        state.reset()
    out, err = CappedWriter(cap), CappedWriter(cap)
    if attach is not None:
        attach(out, err)
    state.begin_request()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        if binder is not None and header.get("clear_before"):
            binder.recheck()  # @require's imports, into the fresh namespace
        value = command(state, request)
        outcome: dict[str, Any] = {"ok": True}
    except BaseException as exc:  # user code may raise SystemExit or KeyboardInterrupt too
        outcome = refused_outcome(exc, header)
        value = None
    finally:
        sys.stdout, sys.stderr = saved
        if header.get("clear_after"):
            state.reset()
    if kind == "execute" and state.history:
        state.history[-1].update(stdout=out.getvalue(), stderr=err.getvalue())
    outcome.update(stdout=out.getvalue(), stderr=err.getvalue())
    # What an IPython cell displayed, also when it then failed (as a notebook keeps it).
    if state.outputs:
        outcome["outputs"] = state.outputs
    if state.execute_result is not None:
        outcome["execute_result"] = state.execute_result
    if outcome["ok"]:
        try:
            pickled = serialization.dumps_oob(value, f"the result of {kind}")
            if pickled.oob_bytes > state.value_cap:
                raise PayloadTooLarge(f"the result of {kind} holds {pickled.oob_bytes:,} bytes of buffers, over "
                                      f"the cluster's cap of {state.value_cap:,} bytes (max_value_bytes)")
            outcome["value"] = pickled.stream
            if pickled.buffers:
                outcome[BUFFERS] = pickled.buffers
            outcome["summary"] = _summary(value)
        except Exception as exc:
            outcome.update(error_outcome(exc))
    return outcome


# The outcome's key for a result's out-of-band buffers, which go to the supervisor in frames
# of their own after it.
BUFFERS = "buffers"


def _load_request(payload: bytes, buffers: list[bytearray], what: str) -> Any:
    if not is_packed(payload):
        return serialization.loads(payload, what)
    refs, stream = unpack(payload)
    if [r.size for r in refs] != [len(b) for b in buffers]:
        raise ValueError(f"{what} names {len(refs)} buffers; {len(buffers)} arrived")
    return serialization.loads_oob(stream, list(buffers), what)


_SUMMARY = reprlib.Repr()
_SUMMARY.maxstring = _SUMMARY.maxother = _SUMMARY.maxlong = 400
_SUMMARY.maxlist = _SUMMARY.maxtuple = _SUMMARY.maxdict = _SUMMARY.maxset = 40
_BOUNDED = (str, bytes, list, tuple, dict, set, frozenset, int)


def _summary(value: Any, limit: int = 200) -> str:
    """A short repr; large strings and containers are not repr'd whole first."""
    try:
        text = _SUMMARY.repr(value) if type(value) in _BOUNDED else repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
