"""What tasks print, while they run: ``ar.stdout`` / ``ar.stderr`` so far, ``display_outputs``
and ``stream_outputs`` (ipyparallel's names).

A running task's output is read from its live strings in Redis, a finished one's from its
record (``enginefarm.store.output``). The live text is a prefix of the record's, so text that
was shown live is never shown again from the record, and none is skipped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from ..store import TaskOutput

if TYPE_CHECKING:
    from .asyncresult import Metadata
    from .client import Client

STREAMS = ("stdout", "stderr")
# How often stream_outputs looks for new output (engines send it at most every ~0.1 s).
POLL_S = 0.1
GROUPINGS = ("type", "engine", "order")


def label(stream: str, engine_id: int | None) -> str:
    return f"[{stream}:{'?' if engine_id is None else engine_id}] "


def labelled(text: str, prefix: str) -> str:
    """A block of output under its label, as IPython.parallel showed it: on the label's line
    when it is one line, below it when it is several. '' for no text."""
    if not text:
        return ""
    if prefix and text.count("\n") > int(text.endswith("\n")):
        prefix = prefix.rstrip() + ("" if text.startswith("\n") else "\n")
    return prefix + text + ("" if text.endswith("\n") else "\n")


class LineBuffer:
    """Cuts text that arrives in pieces into whole lines; holds a line until it ends."""

    def __init__(self) -> None:
        self.partial = ""

    def feed(self, text: str) -> list[str]:
        """The lines ``text`` completes (without their newlines)."""
        *lines, self.partial = (self.partial + text).split("\n")
        return lines

    def close(self) -> list[str]:
        """The unfinished last line, if any (its task said all it will say)."""
        rest, self.partial = self.partial, ""
        return [rest] if rest else []


@dataclass
class _Shown:
    """What stream_outputs has shown of one task's current attempt."""

    offsets: list[int] = field(default_factory=lambda: [0, 0])
    text: list[str] = field(default_factory=lambda: ["", ""])
    lines: list[LineBuffer] = field(default_factory=lambda: [LineBuffer(), LineBuffer()])
    attempts: int | None = None
    engine_id: int | None = None
    done: bool = False


class OutputPrinter:
    """Prints the output of tasks as snapshots of it arrive, each line prefixed by its stream
    and engine; each piece of text once."""

    def __init__(self, task_ids: list[str], file: TextIO | None = None) -> None:
        self.shown = {t: _Shown() for t in dict.fromkeys(task_ids)}
        self.file = file

    @property
    def open_ids(self) -> list[str]:
        return [t for t, s in self.shown.items() if not s.done]

    def offsets(self, task_ids: list[str]) -> list[tuple[int, int]]:
        return [(self.shown[t].offsets[0], self.shown[t].offsets[1]) for t in task_ids]

    def show(self, snapshots: list[TaskOutput]) -> None:
        for snap in snapshots:
            shown = self.shown[snap.task_id]
            if shown.done:
                continue
            if snap.done:
                self._finish(shown, snap)
            elif self._restarted(shown, snap):
                # Another attempt started: its output is shown from its start (read next time).
                self._close_lines(shown)
                self.shown[snap.task_id] = _Shown(attempts=snap.attempts)
            else:
                shown.attempts = snap.attempts
                for index, stream in enumerate(STREAMS):
                    shown.offsets[index] = snap.ends[index]
                    self._add(shown, index, snap.engine_id, snap.text(stream))

    def close(self) -> None:
        """Print the unfinished last lines of tasks still running (the caller stops here)."""
        for shown in self.shown.values():
            if not shown.done:
                self._close_lines(shown)

    @staticmethod
    def _restarted(shown: _Shown, snap: TaskOutput) -> bool:
        read_some = any(shown.offsets)
        shrunk = any(size < offset for size, offset in zip(snap.sizes, shown.offsets))
        return shrunk or (read_some and shown.attempts is not None and snap.attempts != shown.attempts)

    def _finish(self, shown: _Shown, snap: TaskOutput) -> None:
        for index, stream in enumerate(STREAMS):
            final, seen = snap.text(stream), shown.text[index]
            # The record's text begins with what was shown live, unless it is another attempt's.
            self._add(shown, index, snap.engine_id, final[len(seen):] if final.startswith(seen) else final)
            self._print(index, shown.engine_id, shown.lines[index].close())
        shown.done = True

    def _add(self, shown: _Shown, index: int, engine_id: int | None, text: str) -> None:
        shown.engine_id = engine_id if engine_id is not None else shown.engine_id
        if text:
            shown.text[index] += text
            self._print(index, shown.engine_id, shown.lines[index].feed(text))

    def _close_lines(self, shown: _Shown) -> None:
        for index, buffer in enumerate(shown.lines):
            self._print(index, shown.engine_id, buffer.close())

    def _print(self, index: int, engine_id: int | None, lines: list[str]) -> None:
        if not lines:
            return
        out = self.file or (sys.stdout if index == 0 else sys.stderr)
        prefix = label(STREAMS[index], engine_id)
        out.write("".join(f"{prefix}{line}\n" for line in lines))
        out.flush()


def _from_metadata(task_id: str, metadata: Metadata) -> TaskOutput:
    return TaskOutput(task_id, str(metadata["status"] or ""), metadata["engine_id"], metadata["attempts"] or 0,
                      metadata["stdout"] or "", metadata["stderr"] or "")


class OutputMethods:
    """Mixed into AsyncResult: the output of its tasks, live while they run."""

    _client: Client
    task_ids: list[str]
    _single: bool

    def ready(self) -> bool:
        raise NotImplementedError  # AsyncResult's

    @property
    def stdout(self) -> Any:
        """What each task printed to stdout: so far while it runs, all of it (as recorded,
        within ``output_cap_bytes``) once it finished. One value for a single-task result,
        else a list."""
        return self._each([o.stdout if o.status else None for o in self._outputs(self.task_ids)])

    @property
    def stderr(self) -> Any:
        """What each task printed to stderr (as ``stdout``)."""
        return self._each([o.stderr if o.status else None for o in self._outputs(self.task_ids)])

    def display_outputs(self, groupby: str = "type", file: TextIO | None = None) -> None:
        """Print each task's stdout and stderr (so far, for one still running), labelled by
        engine as ipyparallel does: ``[stdout:3] ...``. ``groupby`` 'type' (and 'order', the
        same for text): every stdout, then every stderr; 'engine': each task's stdout and
        stderr together. A single-task result prints its output bare. stdout goes to
        sys.stdout and stderr to sys.stderr, unless ``file`` is given.

        Raises:
            ValueError: an unknown ``groupby``.
        """
        if groupby not in GROUPINGS:
            raise ValueError(f"groupby must be one of {', '.join(GROUPINGS)}, not {groupby!r}")
        if file is None and self.ready() and self._rich():
            # IPython engines' displays and values too, drawn by the shell (a notebook
            # renders them), in their place among the text.
            from ..ipython import display

            display.show(self, _shell(), groupby)
            return
        outputs = self._outputs(self.task_ids)
        blocks = [(index, o) for o in outputs for index in range(2)]
        if groupby != "engine":
            blocks.sort(key=lambda block: block[0])  # stable: task order within each stream
        for index, o in blocks:
            prefix = "" if self._single else label(STREAMS[index], o.engine_id)
            text = labelled(o.text(STREAMS[index]), prefix)
            if text:
                out = file or (sys.stdout if index == 0 else sys.stderr)
                out.write(text)
                out.flush()

    def _rich(self) -> bool:
        """Whether an IPython engine displayed something or gave a value (IPython here too)."""
        metadata = [self._client.metadata_for(t) for t in self.task_ids]
        if not any(m.get("outputs") or m.get("execute_result") for m in metadata):
            return False
        try:
            import IPython  # noqa: F401
        except ImportError:
            return False
        return True

    def stream_outputs(self, file: TextIO | None = None, timeout: float | None = None) -> bool:
        """Print the tasks' output as it arrives, each line prefixed by its stream and engine
        (``[stdout:3] ``), until every task has finished. A line is printed once it is
        complete (a task's unfinished last line when it ends). stdout goes to sys.stdout and
        stderr to sys.stderr, unless ``file`` is given. Each call prints the output from its
        start; a task run again (a retry) has its new attempt's output printed from its start.

        Returns:
            True once every task finished and all its output was printed; False when
            ``timeout`` seconds (None or negative: no limit) ran out first.
        Raises:
            StoreError: Redis failed.
        """
        printer = OutputPrinter(self.task_ids, file)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while True:
            waiting = printer.open_ids
            printer.show(self._outputs(waiting, printer.offsets(waiting)))
            if not printer.open_ids:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                printer.close()
                return False
            # Returns as soon as the tasks finish (their records are taken in meanwhile).
            self._client.wait(printer.open_ids, timeout=POLL_S if remaining is None else min(POLL_S, remaining))

    def _outputs(self, task_ids: list[str], offsets: list[tuple[int, int]] | None = None) -> list[TaskOutput]:
        """One snapshot per task: from the metadata once this client has the task's result,
        else from Redis (all of them in one round trip)."""
        known = self._client.metadata
        ask = [n for n, t in enumerate(task_ids) if t not in known]
        read = self._client.live_output([task_ids[n] for n in ask],
                                        None if offsets is None else [offsets[n] for n in ask]) if ask else []
        fresh = {task_ids[n]: snap for n, snap in zip(ask, read)}
        return [fresh[t] if t in fresh else _from_metadata(t, known[t]) for t in task_ids]

    def _each(self, values: list[Any]) -> Any:
        if self._single:
            return values[0] if values else None
        return values


def _shell() -> Any:
    """The running IPython shell, or None outside IPython."""
    from IPython.core.getipython import get_ipython

    return get_ipython()
