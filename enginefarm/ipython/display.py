"""What an execute printed and displayed on each engine, shown in the client's IPython.

ipyparallel's form: ``[stdout:0] ...`` and ``[stderr:0] ...`` per engine, the engine's
``display(...)`` outputs republished as they were made (rich in a notebook, their text/plain in
a terminal), and a cell's value as ``Out[0:3]: ...`` (engine 0, its execution count 3).

The outputs come from the task's metadata (``stdout``, ``stderr``, ``outputs``,
``execute_result``: the record fields of ``enginefarm.task``), so any AsyncResult of an execute
can be shown, also one another client sent.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from IPython.core.interactiveshell import InteractiveShell

Bundle = dict[str, Any]
GROUPINGS = ("type", "engine", "order")


@dataclass
class EngineOutput:
    """One task's output: what ``show`` draws for one engine."""

    engine_id: int | None
    stdout: str = ""
    stderr: str = ""
    outputs: list[Bundle] = field(default_factory=list)
    execute_result: Bundle | None = None


def outputs_of(result: Any) -> list[EngineOutput]:
    """Each task's output, in target order, from an AsyncResult's metadata."""
    metadata = result.metadata
    rows: Iterable[Mapping[str, Any]] = [metadata] if isinstance(metadata, Mapping) else metadata or []
    return [EngineOutput(row.get("engine_id"), row.get("stdout") or "", row.get("stderr") or "",
                         list(row.get("outputs") or []), row.get("execute_result")) for row in rows]


def show(result: Any, shell: InteractiveShell | None, groupby: str = "type", streams: bool = True) -> None:
    """Show every engine's output of ``result`` (ipyparallel's ``display_outputs``).

    ``groupby``: 'type' shows all stdout, then all stderr, then the displays, then the values;
    'engine' all of one engine before the next; 'order' like 'type', with the i-th display of
    every engine before the (i+1)-th. ``streams=False`` leaves stdout and stderr out (they were
    streamed live already).

    Raises:
        ValueError: an unknown ``groupby``.
    """
    if groupby not in GROUPINGS:
        raise ValueError(f"groupby is one of {', '.join(GROUPINGS)}, not {groupby!r}")
    engines = outputs_of(result)
    if groupby == "engine":
        for out in engines:
            if streams:
                _stream(out.stdout, f"[stdout:{out.engine_id}] ", sys.stdout)
                _stream(out.stderr, f"[stderr:{out.engine_id}] ", sys.stderr)
            _displays(shell, out, out.outputs)
            _value(shell, out)
        return
    if streams:
        for out in engines:
            _stream(out.stdout, f"[stdout:{out.engine_id}] ", sys.stdout)
        for out in engines:
            _stream(out.stderr, f"[stderr:{out.engine_id}] ", sys.stderr)
    if groupby == "order":
        for index in range(max((len(out.outputs) for out in engines), default=0)):
            for out in engines:
                _displays(shell, out, out.outputs[index : index + 1])
    else:
        for out in engines:
            _displays(shell, out, out.outputs)
    for out in engines:
        _value(shell, out)


def _stream(text: str, prefix: str, file: TextIO) -> None:
    if not text:
        return
    # Several lines start under their label, so that they line up.
    if "\n" in text.rstrip("\n"):
        prefix = prefix.rstrip() + "\n"
    print(prefix + text, end="" if text.endswith("\n") else "\n", file=file)
    file.flush()


def _displays(shell: InteractiveShell | None, out: EngineOutput, bundles: list[Bundle]) -> None:
    if not bundles:
        return
    publish(shell, {"text/plain": f"[output:{out.engine_id}]"}, {})
    for bundle in bundles:
        publish(shell, dict(bundle.get("data") or {}), {**(bundle.get("metadata") or {}), "engine": out.engine_id})


def _value(shell: InteractiveShell | None, out: EngineOutput) -> None:
    if out.execute_result is None:
        return
    data = dict(out.execute_result.get("data") or {})
    prompt = f"Out[{out.engine_id}:{out.execute_result.get('execution_count')}]: "
    text = str(data.get("text/plain", ""))
    data["text/plain"] = prompt + ("\n" if "\n" in text else "") + text
    if "text/html" in data:
        data["text/html"] = f'<span style="color: #a00">{html.escape(prompt)}</span>{data["text/html"]}'
    publish(shell, data, {**(out.execute_result.get("metadata") or {}), "engine": out.engine_id})


def publish(shell: InteractiveShell | None, data: Bundle, metadata: Bundle) -> None:
    """Show a mime bundle as the shell's frontend does (a notebook renders it, a terminal prints
    its text/plain); without a shell, print its text."""
    if shell is None:
        print(data.get("text/plain", ""))
        return
    shell.display_pub.publish(data=data, metadata=metadata)
