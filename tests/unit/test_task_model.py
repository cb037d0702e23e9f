"""The task model (enginefarm/task.py) and the retry policy (schedulers/retry.py), no servers.

The header decoder is the one gate between a verified message and the code that acts on it:
every field type and range it must refuse is listed here, and each refusal must name the
field. The record schema decodes what Redis holds; a damaged record becomes an ``invalid``
one, never an exception out of ``decode_record``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from enginefarm.errors import DecodeError, EnginefarmError, SignatureError
from enginefarm.keys import KeyRing
from enginefarm.protocol import seal
from enginefarm.schedulers import retry
from enginefarm.schedulers.retry import RECORD, Action, Decision, after_engine_loss, after_outcome
from enginefarm.store.records import decode_record
from enginefarm.task import (
    FIELDS_BY_NAME,
    MAX_ENGINE_ID,
    MAX_RETRIES,
    MAX_TIMEOUT_S,
    PRIORITY_LIMIT,
    RECORD_FIELDS,
    STATUSES,
    TERMINAL,
    FieldType,
    Kind,
    Status,
    TaskHeader,
    TaskRecord,
    decode_field,
    open_task,
)

LB: dict[str, Any] = {"task_id": "t-1", "kind": "map_task", "client_id": "c_1", "lb": True}
DIRECT: dict[str, Any] = {"task_id": "t-2", "kind": "apply", "client_id": "c_1", "engine_id": 0}
FULL: dict[str, Any] = {
    "task_id": "T" * 64, "kind": "string_task", "client_id": "c-2", "lb": True, "retries": MAX_RETRIES,
    "depend": True, "priority": -PRIORITY_LIMIT, "timeout": 2.5, "clear_before": True, "clear_after": True,
    "ts": 1_700_000_000.25, "mid": "0123456789abcdef0123456789abcdef",
}


def refusal(raw: Any) -> DecodeError:
    """The DecodeError that decoding ``raw`` raises."""
    with pytest.raises(DecodeError) as info:
        TaskHeader.decode(raw)
    assert isinstance(info.value, EnginefarmError) and info.value.reason == "invalid"
    return info.value


# --- the header: valid ones round-trip --------------------------------------------------
@pytest.mark.parametrize("raw", [
    LB, DIRECT, FULL,
    {**DIRECT, "kind": "kill", "engine_id": MAX_ENGINE_ID},
    {**LB, "priority": PRIORITY_LIMIT, "timeout": MAX_TIMEOUT_S, "ts": 0},
    *({**DIRECT, "kind": kind.value, "engine_id": 7, **({"signum": 2} if kind is Kind.SIGNAL else {})}
      for kind in Kind),
], ids=lambda raw: f"{raw['kind']}-{'lb' if raw.get('lb') else 'direct'}")
def test_a_valid_header_round_trips_through_encode(raw: dict[str, Any]) -> None:
    # Given a valid wire header, When it is decoded and its encoding decoded again
    header = TaskHeader.decode(raw)
    again = TaskHeader.decode(header.encode())
    # Then nothing is lost or changed on the way
    assert again == header
    assert again.encode() == header.encode()
    assert isinstance(header.kind, Kind) and header.kind == raw["kind"]


def test_decode_reads_every_field_and_encode_leaves_defaults_out() -> None:
    header = TaskHeader.decode(FULL)
    assert header == TaskHeader(
        task_id="T" * 64, kind=Kind.STRING_TASK, client_id="c-2", lb=True, engine_id=None,
        retries=MAX_RETRIES, depend=True, priority=-PRIORITY_LIMIT, timeout=2.5, clear_before=True,
        clear_after=True, ts=1_700_000_000.25, mid="0123456789abcdef0123456789abcdef")
    assert header.encode() == FULL
    # A quiet task's header holds only what differs from the defaults.
    assert TaskHeader.decode(LB).encode() == LB
    assert TaskHeader.decode({**LB, "retries": 0, "priority": 0, "depend": False}).encode() == LB
    # Engine 0 is a target, not a default: it stays in the wire form.
    assert TaskHeader.decode(DIRECT).encode() == DIRECT


def test_numbers_are_normalised_by_decode() -> None:
    # Given integer times and a zero timeout
    header = TaskHeader.decode({**LB, "timeout": 3, "ts": 5})
    # Then times are floats, and a zero timeout means none
    assert header.timeout == 3.0 and isinstance(header.timeout, float)
    assert header.ts == 5.0 and isinstance(header.ts, float)
    assert TaskHeader.decode({**LB, "timeout": 0}).timeout is None
    assert TaskHeader.decode({**LB, "timeout": None, "ts": None, "mid": None}) == TaskHeader.decode(LB)


def test_replace_and_for_child_are_checked_copies() -> None:
    header = TaskHeader.decode(LB)
    assert header.replace(task_id="t-9").task_id == "t-9"
    assert refusal_of(lambda: header.replace(retries=-1)).field == "retries"
    child = header.for_child(2, {"gpu": True})
    assert child == {**LB, "attempt": 2, "properties": {"gpu": True}}
    assert "properties" not in header.for_child(1)


def refusal_of(action: Any) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        action()
    return info.value


# --- the header: every refusal names its field --------------------------------------------
NAN, INF = math.nan, math.inf
INVALID: list[tuple[str, dict[str, Any], str]] = [
    # (case, header, the field the error names)
    ("timeout-text", {**LB, "timeout": "x"}, "timeout"),
    ("timeout-nan", {**LB, "timeout": NAN}, "timeout"),
    ("timeout-inf", {**LB, "timeout": INF}, "timeout"),
    ("timeout-negative", {**LB, "timeout": -1}, "timeout"),
    ("timeout-too-long", {**LB, "timeout": MAX_TIMEOUT_S * 2}, "timeout"),
    ("timeout-bool", {**LB, "timeout": True}, "timeout"),
    ("timeout-list", {**LB, "timeout": [1]}, "timeout"),
    ("priority-text", {**LB, "priority": "high"}, "priority"),
    ("priority-bool", {**LB, "priority": False}, "priority"),
    ("priority-float", {**LB, "priority": 1.0}, "priority"),
    ("priority-too-high", {**LB, "priority": PRIORITY_LIMIT + 1}, "priority"),
    ("priority-too-low", {**LB, "priority": -PRIORITY_LIMIT - 1}, "priority"),
    ("retries-negative", {**LB, "retries": -1}, "retries"),
    ("retries-too-many", {**LB, "retries": MAX_RETRIES + 1}, "retries"),
    ("retries-bool", {**LB, "retries": True}, "retries"),
    ("retries-null", {**LB, "retries": None}, "retries"),
    ("retries-nan", {**LB, "retries": NAN}, "retries"),
    ("retries-text", {**LB, "retries": "3"}, "retries"),
    ("ts-nan", {**LB, "ts": NAN}, "ts"),
    ("ts-inf", {**LB, "ts": -INF}, "ts"),
    ("ts-negative", {**LB, "ts": -1.0}, "ts"),
    ("ts-far-future", {**LB, "ts": 1e12}, "ts"),
    ("ts-text", {**LB, "ts": "now"}, "ts"),
    ("lb-int", {**LB, "lb": 1}, "lb"),
    ("lb-text", {**LB, "lb": "true"}, "lb"),
    ("lb-null", {**LB, "lb": None}, "lb"),
    ("depend-int", {**LB, "depend": 1}, "depend"),
    ("clear_before-text", {**LB, "clear_before": "yes"}, "clear_before"),
    ("clear_after-null", {**LB, "clear_after": None}, "clear_after"),
    ("unknown-field", {**LB, "attempt": 1}, "header"),
    ("unknown-field-empty-name", {**LB, "": 1}, "header"),
    ("missing-task_id", {k: v for k, v in LB.items() if k != "task_id"}, "task_id"),
    ("missing-kind", {k: v for k, v in LB.items() if k != "kind"}, "kind"),
    ("missing-client_id", {k: v for k, v in LB.items() if k != "client_id"}, "client_id"),
    ("task_id-empty", {**LB, "task_id": ""}, "task_id"),
    ("task_id-too-long", {**LB, "task_id": "x" * 65}, "task_id"),
    ("task_id-space", {**LB, "task_id": "a b"}, "task_id"),
    ("task_id-path", {**LB, "task_id": "../x"}, "task_id"),
    ("task_id-newline", {**LB, "task_id": "abc\n"}, "task_id"),
    ("task_id-int", {**LB, "task_id": 5}, "task_id"),
    ("client_id-null", {**LB, "client_id": None}, "client_id"),
    ("client_id-colon", {**LB, "client_id": "c:1"}, "client_id"),
    ("kind-unknown", {**LB, "kind": "bogus"}, "kind"),
    ("kind-upper", {**LB, "kind": "MAP_TASK"}, "kind"),
    ("kind-int", {**LB, "kind": 3}, "kind"),
    ("kind-null", {**LB, "kind": None}, "kind"),
    ("kind-list", {**LB, "kind": ["map_task"]}, "kind"),
    ("kind-object", {**LB, "kind": {"map_task": 1}}, "kind"),
    ("lb-with-engine_id", {**LB, "engine_id": 0}, "engine_id"),
    ("lb-kill", {**LB, "kind": "kill"}, "kind"),
    ("lb-apply", {**LB, "kind": "apply"}, "kind"),
    ("direct-without-engine_id", {k: v for k, v in DIRECT.items() if k != "engine_id"}, "engine_id"),
    ("direct-engine_id-null", {**DIRECT, "engine_id": None}, "engine_id"),
    ("direct-engine_id-bool", {**DIRECT, "engine_id": True}, "engine_id"),
    ("direct-engine_id-float", {**DIRECT, "engine_id": 1.0}, "engine_id"),
    ("direct-engine_id-text", {**DIRECT, "engine_id": "0"}, "engine_id"),
    ("direct-engine_id-negative", {**DIRECT, "engine_id": -1}, "engine_id"),
    ("direct-engine_id-too-high", {**DIRECT, "engine_id": MAX_ENGINE_ID + 1}, "engine_id"),
    ("mid-empty", {**LB, "mid": ""}, "mid"),
    ("mid-int", {**LB, "mid": 7}, "mid"),
]


@pytest.mark.parametrize("raw, field", [(raw, f) for _, raw, f in INVALID], ids=[case for case, _, _ in INVALID])
def test_an_invalid_header_field_is_a_decode_error_naming_it(raw: dict[str, Any], field: str) -> None:
    # Given a header with one field the model does not allow, When it is decoded
    error = refusal(raw)
    # Then the error names that field (and says what it got, briefly)
    assert error.field == field
    assert str(error).startswith(f"{field} ")
    assert len(str(error)) < 200


@pytest.mark.parametrize("raw", [None, [], "task", 5, [("task_id", "t")]], ids=repr)
def test_a_header_that_is_not_an_object_is_a_decode_error(raw: Any) -> None:
    assert refusal(raw).field == "header"


def test_a_huge_value_is_shown_briefly() -> None:
    error = refusal({**LB, "timeout": "x" * 100_000})
    assert error.field == "timeout" and len(str(error)) < 200
    assert refusal({**LB, "x" * 100_000: 1}).field == "header"


@pytest.mark.parametrize("field", ["timeout", "ts"])
def test_an_integer_beyond_float_range_is_a_decode_error(field: str) -> None:
    # Given a header whose number field holds an integer no float can hold
    raw = {**LB, field: 10**309}
    # Then decoding it is a DecodeError naming the field, like any other out-of-range value
    assert refusal(raw).field == field


def test_a_signed_send_time_beyond_float_range_is_refused_by_open_task() -> None:
    # Given a message signed by a key holder whose send time is an integer no float can hold
    ring = KeyRing.from_key(bytes(range(32)))
    body = seal(ring, {**LB, "ts": 10**309}, b"payload")
    # When it is opened as the daemons open it (with a maximum age)
    with pytest.raises((SignatureError, DecodeError)):
        open_task(ring, body, max_age_s=3600.0)


# --- Status and Kind --------------------------------------------------------------------
@pytest.mark.parametrize("status", list(Status))
def test_a_status_compares_and_hashes_like_its_string(status: Status) -> None:
    assert status == status.value and status.value == status
    assert hash(status) == hash(status.value)
    assert str(status) == f"{status}" == status.value
    by_text: dict[str, int] = {status.value: 1}
    by_status: dict[str, int] = {status: 1}
    assert by_text[status] == 1 and by_status[status.value] == 1
    assert (status.value in TERMINAL) is status.terminal is (status in TERMINAL)


def test_terminal_statuses() -> None:
    assert "completed" in TERMINAL and "failed" in TERMINAL and "aborted" in TERMINAL
    assert "pending" not in TERMINAL and "running" not in TERMINAL
    assert Status("running") is Status.RUNNING
    assert STATUSES == (Status.PENDING, Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.ABORTED)
    assert f"[{Status.FAILED:>8}]" == "[  failed]"


@pytest.mark.parametrize("kind", list(Kind))
def test_a_kind_compares_and_hashes_like_its_string(kind: Kind) -> None:
    assert kind == kind.value and hash(kind) == hash(kind.value)
    assert kind.value in frozenset(Kind) and str(kind) == kind.value


# --- record fields ---------------------------------------------------------------------
def names_of(kind: FieldType) -> list[str]:
    return [f.name for f in RECORD_FIELDS if f.type is kind]


def test_the_schema_names_each_field_once() -> None:
    assert len(FIELDS_BY_NAME) == len(RECORD_FIELDS)
    assert {f.type for f in RECORD_FIELDS} == set(FieldType)


@pytest.mark.parametrize("name, raw, value", [
    ("kind", b"apply", "apply"),
    ("stdout", b"", ""),  # empty output is output, not absence
    ("summary", b"", ""),
    ("kind", b"", None),
    ("stderr", b"\xff\xfe oops", "\ufffd\ufffd oops"),
    ("submitted", b"1700000000.5", 1_700_000_000.5),
    ("failed_at", b"3", 3.0),
    ("attempts", b"3", 3),
    ("engine_id", b"-1", -1),
    ("error", b'{"ename": "E"}', {"ename": "E"}),
    ("last_error", b"{}", {}),
    ("outputs", b'[{"data": {"text/plain": "x"}}]', [{"data": {"text/plain": "x"}}]),
    ("outputs", b"[]", []),
    ("execute_result", b'{"data": {}, "execution_count": 3}', {"data": {}, "execution_count": 3}),
    ("result", b"\x00\xff sealed", b"\x00\xff sealed"),
    ("request", b"", b""),
    ("namespace_lost", b"1", True),
    ("lb", b"0", False),
    ("lb", b"", None),
    ("failed_on", b"1,2,2", [1, 2, 2]),
    ("lost_on", b"4,,5,", [4, 5]),
    ("unmet", b"", None),
    ("no_such_field", b"\xc3\xa9t\xc3\xa9", "\u00e9t\u00e9"),
    ("attempts", None, None),
])
def test_decode_field_gives_each_type(name: str, raw: bytes | None, value: Any) -> None:
    decoded = decode_field(name, raw)
    assert decoded == value and type(decoded) is type(value)


MALFORMED_FIELDS: list[tuple[str, bytes]] = [
    *((name, b"yesterday") for name in names_of(FieldType.FLOAT)),
    *((name, raw) for name in ("submitted", "started") for raw in (b"nan", b"inf", b"-inf", b"1e400")),
    *((name, b"many") for name in names_of(FieldType.INT)),
    ("attempts", b"1.5"),
    ("engine_id", b"9" * 5000),  # over Python's int-parsing limit
    *((name, b"not json") for name in names_of(FieldType.JSON)),
    ("error", b"[1, 2]"),
    ("error", b'"text"'),
    ("error", b"null"),
    ("last_error", b"[" * 100_000),  # deeper than the parser goes
    *((name, b"1,x") for name in names_of(FieldType.IDS)),
    *((name, raw) for name in names_of(FieldType.JSON_LIST) for raw in (b"not json", b'{"a": 1}', b"[1, 2]", b"null")),
    ("failed_on", b"1.5"),
]


@pytest.mark.parametrize("name, raw", MALFORMED_FIELDS, ids=[f"{n}-{r[:12]!r}" for n, r in MALFORMED_FIELDS])
def test_a_malformed_field_is_a_decode_error_naming_it(name: str, raw: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_field(name, raw)
    assert info.value.field == name and len(str(info.value)) < 400


# --- records ---------------------------------------------------------------------------
GOOD_RECORD: dict[bytes, bytes] = {
    b"task_id": b"t-1", b"kind": b"map_task", b"status": b"failed", b"client_id": b"c-1",
    b"submitted": b"100.5", b"attempts": b"2", b"retries": b"1", b"stdout": b"", b"failed_on": b"0,1",
    b"error": json.dumps({"ename": "ValueError", "evalue": "bad"}).encode(), b"lb": b"1",
    b"request": b"EF1\x00sealed", b"note": b"a field the schema does not know", b"_seq": b"100.25",
    b"_pending_key": b"c:engine:0:pending", b"_ticket": b"EF1\x00ticket", b"_inbox": b"c:inbox:c-1",
}


def test_a_record_decodes_to_typed_fields() -> None:
    record = TaskRecord.decode("t-1", GOOD_RECORD)
    assert (record.task_id, record.kind, record.status, record.client_id) == ("t-1", "map_task", "failed", "c-1")
    assert record.submitted == 100.5 and record.attempts == 2 and record.retries == 1
    assert record.failed_on == (0, 1) and record.lost_on == () and record.lb is True
    assert record.error == {"ename": "ValueError", "evalue": "bad"} and record.done
    assert record.request == b"EF1\x00sealed" and record.stdout == ""
    # Bookkeeping is read into its own fields and left out of ``extra``.
    assert record.extra == {"note": "a field the schema does not know"}
    assert record.seq == 100.25 and record.routed and record.ticket == b"EF1\x00ticket"
    assert record.invalid == ""
    assert decode_record("t-1", GOOD_RECORD) == record


def test_the_record_key_names_the_task_not_its_task_id_field() -> None:
    assert TaskRecord.decode("t-1", {**GOOD_RECORD, b"task_id": b"someone-else"}).task_id == "t-1"


@pytest.mark.parametrize("field, raw", [
    ("attempts", b"two"),
    ("attempts", b"1e3"),
    ("submitted", b"tuesday"),
    ("submitted", b"nan"),
    ("error", b"{unquoted: 1}"),
    ("error", b"[]"),
    ("status", b"exploded"),
    ("status", b"PENDING"),
    ("lost_on", b"one"),
])
def test_a_malformed_record_field_is_a_decode_error_and_an_invalid_record(field: str, raw: bytes) -> None:
    # Given a record with one field that does not decode
    damaged = {**GOOD_RECORD, b"status": b"pending", field.encode(): raw}
    # When it is decoded strictly, Then the error names the field
    with pytest.raises(DecodeError) as info:
        TaskRecord.decode("t-1", damaged)
    assert info.value.field == field
    # And decode_record keeps what the caller needs to fail or skip it, and says why
    record = decode_record("t-1", damaged)
    assert record.invalid == str(info.value) and record.invalid.startswith(f"{field} ")
    assert record.task_id == "t-1" and record.routed
    assert record.status == ("pending" if field != "status" else "")
    assert record.request is None and record.attempts == 0


def test_a_malformed_seq_is_an_invalid_record() -> None:
    record = decode_record("t-1", {**GOOD_RECORD, b"_seq": b"later"})
    assert record.invalid and record.status == "failed"


def test_an_undecodable_status_is_dropped_from_an_invalid_record() -> None:
    record = decode_record("t-1", {b"status": b"\xff\xfe", b"attempts": b"x"})
    assert record.invalid.startswith("attempts ") and record.status == "" and not record.routed


# --- the retry policy ------------------------------------------------------------------
def outcome(ok: bool = False, lb: bool = True, unmet: bool = False, ename: str = "ValueError", attempt: int = 1,
            retries: int = 0, losses: int = 0, max_losses: int = 3) -> Decision:
    return after_outcome(lb, ok, unmet, ename, attempt, retries, losses, max_losses)


def test_a_success_is_recorded() -> None:
    assert outcome(ok=True, retries=5) is RECORD
    assert not RECORD.requeue and RECORD.action is Action.RECORD and RECORD.note == ""


@pytest.mark.parametrize("kwargs", [
    {"ok": False, "retries": 5}, {"unmet": True}, {"ename": "EngineProcessDied"}, {"ename": "TaskInterrupted"},
])
def test_a_targeted_command_is_never_run_again(kwargs: dict[str, Any]) -> None:
    assert outcome(lb=False, **kwargs) is RECORD


def test_an_unmet_depend_goes_back_without_counting_as_an_attempt() -> None:
    decision = outcome(unmet=True, attempt=9, retries=0)
    assert decision == Decision(Action.REQUEUE, "unmet", -1, "unmet") and decision.requeue


@pytest.mark.parametrize("ename", sorted(retry.LOST_ERRORS))
def test_a_lost_run_goes_back_until_the_engine_limit(ename: str) -> None:
    # Under the limit: again elsewhere, listed as lost there, attempts unchanged, retries ignored
    assert outcome(ename=ename, losses=0, max_losses=3, retries=0) == Decision(Action.REQUEUE, "lost_on", 0, "lost")
    assert outcome(ename=ename, losses=1, max_losses=3).requeue
    # At the limit: recorded, saying how many engines it lost
    at_limit = outcome(ename=ename, losses=2, max_losses=3, retries=100)
    assert at_limit.action is Action.RECORD and at_limit.note == " (it lost 3 engines; giving up)"
    assert not outcome(ename=ename, losses=0, max_losses=1).requeue


def test_a_failure_is_retried_while_retries_are_left() -> None:
    # retries=2 allows three runs
    for attempt in (1, 2):
        assert outcome(attempt=attempt, retries=2) == Decision(Action.REQUEUE, "failed_on", 0, "failed")
    assert outcome(attempt=3, retries=2) is RECORD
    assert outcome(attempt=1, retries=0) is RECORD


def test_an_engine_lost_holding_a_targeted_command_records_it() -> None:
    for claimed, started in [(False, False), (True, False), (True, True)]:
        assert after_engine_loss(False, claimed, started, 0, 3) is RECORD


def test_an_engine_lost_before_the_task_started_sends_it_back() -> None:
    # Routed only: back, no attempt to undo
    assert after_engine_loss(True, False, False, 5, 3) == Decision(Action.REQUEUE, "", 0, "")
    # Claimed but not started: back, and the claim is not an attempt
    assert after_engine_loss(True, True, False, 5, 3) == Decision(Action.REQUEUE, "", -1, "")


def test_an_engine_lost_while_the_task_ran_counts_as_a_loss() -> None:
    assert after_engine_loss(True, True, True, 0, 3) == Decision(Action.REQUEUE, "lost_on", 0, "lost")
    given_up = after_engine_loss(True, True, True, 2, 3)
    assert given_up.action is Action.RECORD and given_up.note == " (it lost 3 engines; giving up)"
