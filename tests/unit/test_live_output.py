"""Live output's pure parts (no servers): the child's output frames and tap, the supervisor's
bound on what it keeps, and how the client cuts, labels and prints output once."""

from __future__ import annotations

import io
import pickle
import socket
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from enginefarm import serialization
from enginefarm.client.output import LineBuffer, OutputPrinter, label, labelled
from enginefarm.store import TaskOutput
from enginefarm.worker.child import run_interruptibly
from enginefarm.worker.commands import CappedWriter, EngineState
from enginefarm.worker.executor import Executor
from enginefarm.worker.tap import OutputTap, decode_output, encode_output, is_output


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    a, b = socket.socketpair()
    ends = Connection(a.detach()), Connection(b.detach())
    yield ends
    for end in ends:
        end.close()


def frames(conn: Connection) -> list[bytes]:
    got = []
    while conn.poll(0):
        got.append(conn.recv_bytes())
    return got


# --- frames --------------------------------------------------------------------------------------
def test_output_frames_round_trip_and_never_look_like_an_outcome():
    frame = encode_output({"stdout": "a\n", "stderr": "é"})
    assert is_output(frame) and decode_output(frame) == {"stdout": "a\n", "stderr": "é"}
    assert not is_output(pickle.dumps({"ok": True}, protocol=2))
    assert not is_output(pickle.dumps({"ok": True}, protocol=pickle.HIGHEST_PROTOCOL))


@pytest.mark.parametrize("frame", [b"O", b"Onot a pickle", b"O" + pickle.dumps(["list"]),
                                   b"O" + pickle.dumps({"stdout": b"bytes"}), pickle.dumps({"stdout": "x"})])
def test_a_malformed_output_frame_is_a_value_error(frame):
    with pytest.raises(ValueError):
        decode_output(frame)


# --- the child's tap -------------------------------------------------------------------------
def test_capped_writer_wakes_its_tap_only_for_text():
    calls = []
    writer = CappedWriter(10)
    writer.on_write = lambda: calls.append(1)
    writer.write("")
    writer.write("abc")
    assert calls == [1]


def test_tap_sends_what_was_printed_since_the_last_frame(pipe):
    child, parent = pipe
    tap = OutputTap(child)
    out, err = CappedWriter(100), CappedWriter(100)
    tap.attach(out, err)
    out.write("one\n")
    err.write("warn\n")
    tap.flush()
    out.write("two\n")
    tap.flush()
    tap.flush()  # nothing new: no frame
    assert [decode_output(f) for f in frames(parent)] == [{"stdout": "one\n", "stderr": "warn\n"}, {"stdout": "two\n"}]


def test_tap_sends_only_what_the_outcome_holds_and_nothing_after_it(pipe):
    child, parent = pipe
    tap = OutputTap(child)
    out, err = CappedWriter(100), CappedWriter(100)
    tap.attach(out, err)
    out.write("kept\n")
    assert out.getvalue() == "kept\n"
    out.write("late, from a thread\n")  # after the outcome's text was taken
    tap.flush()
    tap.finish(b"outcome")
    out.write("later still\n")
    tap.flush()
    sent = frames(parent)
    assert [decode_output(f) for f in sent[:-1]] == [{"stdout": "kept\n"}] and sent[-1] == b"outcome"


def test_tap_live_output_stops_at_the_cap(pipe):
    child, parent = pipe
    tap = OutputTap(child)
    out, err = CappedWriter(5), CappedWriter(5)
    tap.attach(out, err)
    out.write("abcdefgh")
    tap.flush()
    out.write("more")
    tap.flush()
    assert [decode_output(f) for f in frames(parent)] == [{"stdout": "abcde"}]


def test_the_flusher_sends_printed_text_within_its_interval(pipe):
    child, parent = pipe
    tap = OutputTap(child)
    tap.start()
    out, err = CappedWriter(100), CappedWriter(100)
    tap.attach(out, err)
    out.write("soon\n")
    assert parent.poll(10), "no output frame within 10 s"
    assert decode_output(parent.recv_bytes()) == {"stdout": "soon\n"}


class Unpicklable:
    def __reduce__(self):
        raise KeyboardInterrupt  # as a SIGINT landing while the result is pickled


def print_then_return_unpicklable():
    print("printed first")
    return Unpicklable()


def test_an_interrupt_outside_the_users_code_keeps_the_output_so_far(pipe):
    child, _ = pipe
    payload = serialization.dumps((print_then_return_unpicklable, (), {}))
    outcome = run_interruptibly(EngineState(), {"kind": "apply"}, payload, 100, OutputTap(child))
    assert outcome["ok"] is False and outcome["error"]["ename"] == "KeyboardInterrupt"
    assert outcome["stdout"] == "printed first\n"


# --- the supervisor's bound --------------------------------------------------------------------
def test_the_executor_keeps_at_most_the_cap_of_each_stream():
    executor = Executor(10)
    assert executor._keep({"stdout": "x" * 8, "other": "ignored"}) == {"stdout": "x" * 8}
    assert executor._keep({"stdout": "yyyy", "stderr": "e"}) == {"stdout": "yy", "stderr": "e"}
    assert executor._keep({"stdout": "z"}) == {}
    assert executor._output_so_far("stdout") == "x" * 8 + "yy"


# --- the client's printing -------------------------------------------------------------------
def test_line_buffer_holds_a_line_until_it_ends():
    lines = LineBuffer()
    assert lines.feed("ab") == []
    assert lines.feed("c\nde\n\nf") == ["abc", "de", ""]
    assert lines.close() == ["f"] and lines.close() == []


@pytest.mark.parametrize("text, expected", [
    ("", ""),
    ("one\n", "[stdout:3] one\n"),
    ("one", "[stdout:3] one\n"),
    ("one\ntwo\n", "[stdout:3]\none\ntwo\n"),
    ("\none\ntwo", "[stdout:3]\none\ntwo\n"),
])
def test_labelled_blocks(text, expected):
    assert labelled(text, label("stdout", 3)) == expected


def test_labelled_without_a_label_is_the_bare_text():
    assert labelled("a\nb", "") == "a\nb\n" and label("stderr", None) == "[stderr:?] "


def running(task_id: str, stdout: str, ends: tuple[int, int], sizes: tuple[int, int] | None = None,
            attempts: int = 1, stderr: str = "") -> TaskOutput:
    return TaskOutput(task_id, "running", 2, attempts, stdout, stderr, ends, sizes or ends)


def test_printer_shows_live_text_then_only_the_rest_of_the_record():
    buffer = io.StringIO()
    printer = OutputPrinter(["t"], buffer)
    printer.show([running("t", "one\ntw", (6, 0))])
    assert printer.offsets(["t"]) == [(6, 0)]
    printer.show([running("t", "o\n", (8, 0), stderr="")])
    printer.show([TaskOutput("t", "completed", 2, 1, "one\ntwo\nthree", "bad\n")])
    assert buffer.getvalue() == "[stdout:2] one\n[stdout:2] two\n[stdout:2] three\n[stderr:2] bad\n"
    assert printer.open_ids == []


def test_printer_prints_a_record_of_another_attempt_whole():
    buffer = io.StringIO()
    printer = OutputPrinter(["t"], buffer)
    printer.show([running("t", "first try\n", (10, 0))])
    printer.show([TaskOutput("t", "completed", 2, 2, "second try\n", "")])
    assert buffer.getvalue() == "[stdout:2] first try\n[stdout:2] second try\n"


def test_printer_starts_over_when_a_new_attempt_starts():
    buffer = io.StringIO()
    printer = OutputPrinter(["t"], buffer)
    printer.show([running("t", "old\npart", (8, 0))])
    # The strings started over (shorter now): nothing of this read is used; the next reads from 0
    printer.show([running("t", "", (8, 0), sizes=(3, 0), attempts=2)])
    assert printer.offsets(["t"]) == [(0, 0)]
    printer.show([running("t", "new\n", (4, 0), attempts=2)])
    assert buffer.getvalue() == "[stdout:2] old\n[stdout:2] part\n[stdout:2] new\n"


def test_printer_close_prints_unfinished_lines():
    buffer = io.StringIO()
    printer = OutputPrinter(["t", "u"], buffer)
    printer.show([running("t", "half", (4, 0)), TaskOutput("u", "pending", None, 0, "", "")])
    assert buffer.getvalue() == ""
    printer.close()
    assert buffer.getvalue() == "[stdout:2] half\n" and printer.open_ids == ["t", "u"]
