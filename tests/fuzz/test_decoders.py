"""Fuzzing the decoders, in process (no servers): the header model, the envelope and the records.

Properties:
- ``TaskHeader.decode`` of any JSON-like object returns a header whose ``encode()`` decodes to
  an equal header, or raises DecodeError: never any other exception.
- ``open_task`` of any bytes (random, or a sealed message with bits flipped, cut, extended or
  swapped, or poison signed with the real key) raises SignatureError or DecodeError or returns;
  what it returns is the payload as bytes, never unpickled, and only the untouched sealed
  bytes open.
- ``decode_record`` of any field dict returns a record (an ``invalid`` one when a field does
  not decode), never raises.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from enginefarm.errors import DecodeError, SignatureError
from enginefarm.keys import KeyRing
from enginefarm.protocol import MAGIC, seal
from enginefarm.store.records import decode_record
from enginefarm.task import STATUSES, TaskHeader, TaskMessage, TaskRecord, decode_field, open_task

from .strategies import (
    HEADER_FIELDS,
    RECORD_NAMES,
    any_headers,
    forge,
    header_texts,
    marker_payload,
    mutated_headers,
    mutations,
    mutate,
    random_headers,
    random_records,
    record_values,
    valid_headers,
)

pytestmark = pytest.mark.fuzz

RING = KeyRing.from_key(os.urandom(32))
OTHER_RING = KeyRing.from_key(os.urandom(32))
WEEK_S = 7 * 24 * 3600.0
# Every marker payload that is ever unpickled in this process leaves its token here.
FIRED: list[str] = []


def fire(token: str) -> None:
    FIRED.append(token)


MARKER = marker_payload(fire, "unpickled")


@pytest.fixture(autouse=True)
def no_marker_fired() -> Any:
    FIRED.clear()
    yield
    assert FIRED == [], "a payload was unpickled"


def test_the_marker_fires_when_unpickled() -> None:
    """Control: the marker payload does leave its token when someone unpickles it."""
    pickle.loads(MARKER)
    assert FIRED == ["unpickled"]
    FIRED.clear()


# --- the header model ------------------------------------------------------------------
def check_header(raw: Any) -> TaskHeader | None:
    """The decoder's contract for one input: a header that round-trips, or a DecodeError."""
    try:
        header = TaskHeader.decode(raw)
    except DecodeError as exc:
        event(f"refused: {exc.field}")
        assert exc.field in HEADER_FIELDS or exc.field == "header", exc.field
        assert str(exc).startswith(f"{exc.field} ") and len(str(exc)) < 300
        return None
    event("decoded")
    encoded = header.encode()
    assert TaskHeader.decode(encoded) == header
    # The wire form survives JSON, as it travels.
    assert TaskHeader.decode(json.loads(json.dumps(encoded, allow_nan=False))) == header
    # What was given is what was decoded (a zero timeout means none).
    for name, value in raw.items():
        if value is not None and not (name == "timeout" and value == 0):
            assert getattr(header, name) == value, name
    return header


@given(any_headers)
@example({"task_id": "t", "kind": "map_task", "client_id": "c", "lb": True, "timeout": 1e-320})
@example({"task_id": "t", "kind": "map_task", "client_id": "c", "lb": True, "timeout": -0.0, "ts": -0.0})
@example({"task_id": "t", "kind": "kill", "client_id": "c", "lb": False, "engine_id": 0, "priority": 2**31})
def test_a_json_like_header_decodes_and_round_trips_or_is_a_decode_error(raw: dict[str, Any]) -> None:
    check_header(raw)


@given(valid_headers())
def test_a_valid_header_always_decodes(raw: dict[str, Any]) -> None:
    assert check_header(raw) is not None


@given(st.one_of(random_headers, mutated_headers()))
def test_a_header_from_json_text_decodes_or_is_a_decode_error(raw: dict[str, Any]) -> None:
    # Given a header as the envelope gives it: parsed from JSON text (NaN and infinities included)
    parsed = json.loads(json.dumps(raw))
    check_header(parsed)


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.lists(st.integers(), max_size=3)))
def test_a_header_that_is_not_an_object_is_a_decode_error(raw: Any) -> None:
    with pytest.raises(DecodeError) as info:
        TaskHeader.decode(raw)
    assert info.value.field == "header"


# --- envelopes ---------------------------------------------------------------------------
def check_open(data: bytes, max_age_s: float = WEEK_S) -> TaskMessage | None:
    """``open_task``'s contract: SignatureError, DecodeError, or a message with the payload as
    bytes; the marker never fires (nothing is unpickled)."""
    message: TaskMessage | None = None
    try:
        opened = open_task(RING, data, max_age_s)
    except (SignatureError, DecodeError) as exc:
        event(f"refused: {getattr(exc, 'reason', '')}")
    else:
        event("opened")
        assert isinstance(opened.payload, bytes) and isinstance(opened.header, TaskHeader)
        message = opened
    assert FIRED == []
    return message


@given(st.binary(max_size=300))
def test_random_bytes_are_refused(data: bytes) -> None:
    assert check_open(data) is None
    assert check_open(data + MARKER) is None


@given(st.binary(max_size=120), st.booleans())
def test_random_bytes_behind_a_real_key_id_are_refused(tail: bytes, with_marker: bool) -> None:
    # Given bytes that get past the magic and the key-id lookup, carrying the marker
    data = MAGIC + RING.signing_id.encode() + tail + (MARKER if with_marker else b"")
    # Then the signature check stops them
    with pytest.raises(SignatureError) as info:
        open_task(RING, data, WEEK_S)
    assert info.value.reason in ("malformed", "bad-signature")


@given(valid_headers(), st.lists(mutations, min_size=1, max_size=4), st.booleans())
@example({"task_id": "t", "kind": "apply", "client_id": "c", "engine_id": 0}, [("swap", 0.0, 0)], False)
def test_a_mutated_sealed_message_is_refused_unless_untouched(header: dict[str, Any], ops: list[Any],
                                                               fresh: bool) -> None:
    # Given a really sealed request (fresh, or sent long ago) whose payload is the marker
    if not fresh:
        header = {**header, "ts": 1_000_000.0}
    sealed = seal(RING, header, MARKER)
    # When its bytes are changed
    changed = mutate(sealed, ops)
    note(f"mutated: {changed!r}")
    message = check_open(changed)
    # Then only bytes equal to the sealed ones open (a swap of two equal bytes changes nothing)
    if message is not None:
        assert changed == sealed and message.payload == MARKER


@given(valid_headers())
def test_a_message_sealed_with_another_key_is_refused(header: dict[str, Any]) -> None:
    sealed = seal(OTHER_RING, header, MARKER)
    with pytest.raises(SignatureError) as info:
        open_task(RING, sealed, WEEK_S)
    assert info.value.reason == "unknown-key"
    # Claiming the cluster key's id does not help
    kid = RING.signing_id.encode()
    with pytest.raises(SignatureError) as info:
        open_task(RING, sealed[:4] + kid + sealed[4 + len(kid):], WEEK_S)
    assert info.value.reason == "bad-signature"


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(any_headers, st.booleans())
def test_poison_signed_with_the_cluster_key_is_a_decode_error_or_a_sound_message(header: dict[str, Any],
                                                                                 stamp: bool) -> None:
    # Given a key holder's message with any header and the marker as payload
    sealed = seal(RING, header, MARKER, stamp=stamp)
    # When it is opened as the daemons open it, and with no age limit
    for max_age_s in (WEEK_S, 0.0):
        message = check_open(sealed, max_age_s)
        # Then what opens is what the model accepts, with the payload untouched as bytes
        if message is not None:
            assert message.payload == MARKER
            assert message.header == TaskHeader.decode(json.loads(json.dumps(message.header.encode())))


@given(header_texts, st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_any_header_text_signed_with_the_cluster_key_is_refused_or_sound(head: bytes, head_len: int | None) -> None:
    # Given a correctly signed envelope around any header bytes, and any stated header length
    data = forge(RING, head, MARKER, head_len)
    # When it is opened with the daemons' age limit, and with none (so the header is decoded
    # even when it carries no send time)
    for max_age_s in (WEEK_S, 0.0):
        message = check_open(data, max_age_s)
        # Then an envelope that opens hands back the tail of its bytes after the stated header
        if message is not None:
            assert data.endswith(message.payload)
            if head_len in (None, len(head)):
                assert message.payload == MARKER


# --- records -----------------------------------------------------------------------------
@given(random_records)
def test_decode_record_never_raises(raw: dict[bytes, bytes]) -> None:
    record = decode_record("t-1", raw)
    assert isinstance(record, TaskRecord) and record.task_id == "t-1"
    assert record.status in {"", *STATUSES}
    try:
        strict = TaskRecord.decode("t-1", raw)
    except DecodeError as exc:
        # A damaged record says why, and keeps only what lets the caller fail or skip it.
        assert record.invalid == str(exc) and record.invalid
        assert record.request is None and record.result is None and record.attempts == 0
    else:
        assert record == strict and record.invalid == ""
    assert record.routed == (b"_pending_key" in raw)


@given(st.sampled_from(RECORD_NAMES), record_values)
def test_decode_field_returns_or_is_a_decode_error_naming_the_field(name: str, raw: bytes) -> None:
    try:
        decode_field(name, raw)
    except DecodeError as exc:
        assert exc.field == name
