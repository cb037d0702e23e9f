"""The signed envelope: sealing, opening, every refusal reason, and key rotation (no servers)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import time

import pytest

from enginefarm.errors import EnginefarmError, SignatureError
from enginefarm.keys import KeyRing, key_id
from enginefarm.protocol import _PREFIX, MAGIC, Envelope, open_envelope, seal

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
HEADER = {"task_id": "t-1", "kind": "apply", "engine_id": 3}
PAYLOAD = b"\x80\x05payload bytes that stand for a pickle."


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.from_key(KEY)


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 1 << bit
    return bytes(changed)


def header_span(sealed: bytes) -> tuple[int, int]:
    """Start and end offsets of the JSON header inside sealed bytes."""
    (length,) = struct.unpack(">I", sealed[_PREFIX - 4 : _PREFIX])
    return _PREFIX, _PREFIX + length


def forge(key: bytes, body: bytes, kid: str | None = None) -> bytes:
    """Correctly signed bytes around an arbitrary body (length + header + payload)."""
    kid_raw = (kid or key_id(key)).encode("ascii")
    sig = hmac.new(key, MAGIC + kid_raw + body, hashlib.sha256).digest()
    return MAGIC + kid_raw + sig + body


def reason_of(ring: KeyRing, data: object, **kwargs) -> str:
    with pytest.raises(SignatureError) as info:
        open_envelope(ring, data, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, EnginefarmError)
    return info.value.reason


# --- round trip ---------------------------------------------------------------------------
def test_seal_then_open_round_trip(ring):
    sealed = seal(ring, HEADER, PAYLOAD)
    assert sealed.startswith(MAGIC + ring.signing_id.encode())
    envelope = open_envelope(ring, sealed)
    assert isinstance(envelope, Envelope)
    assert envelope.payload == PAYLOAD
    # The header comes back with a send time and a message id added.
    assert {k: envelope.header[k] for k in HEADER} == HEADER
    assert set(envelope.header) == set(HEADER) | {"ts", "mid"}
    assert abs(envelope.header["ts"] - time.time()) < 60
    assert isinstance(envelope.header["mid"], str) and len(envelope.header["mid"]) == 32


def test_seal_keeps_given_ts_and_mid_and_caller_header_untouched(ring):
    given = {"ts": 1234.5, "mid": "fixed", "x": [1, 2]}
    envelope = open_envelope(ring, seal(ring, given))
    assert envelope.header == given
    assert envelope.payload == b""
    # seal does not add fields to the caller's dict
    assert given == {"ts": 1234.5, "mid": "fixed", "x": [1, 2]}


def test_every_message_gets_its_own_id(ring):
    mids = {open_envelope(ring, seal(ring, HEADER, PAYLOAD)).header["mid"] for _ in range(20)}
    assert len(mids) == 20


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_open_accepts_bytes_like(ring, kind):
    sealed = seal(ring, HEADER, PAYLOAD)
    assert open_envelope(ring, kind(sealed)).payload == PAYLOAD


def test_payload_may_contain_anything(ring):
    payload = bytes(range(256)) * 40 + MAGIC
    assert open_envelope(ring, seal(ring, {"a": "ü"}, payload)).payload == payload


# --- unsigned -----------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"plain text", b"\x80\x05K\x01.", b"EF1", b"EF2\x00" + b"x" * 100])
def test_unsigned(ring, data):
    assert reason_of(ring, data) == "unsigned"


def test_flipped_magic_is_unsigned(ring):
    assert reason_of(ring, flip_bit(seal(ring, HEADER, PAYLOAD), 1)) == "unsigned"


# --- malformed ----------------------------------------------------------------------------
@pytest.mark.parametrize("data", ["a string", None, 42, ["EF1"]])
def test_not_bytes_is_malformed(ring, data):
    assert reason_of(ring, data) == "malformed"


@pytest.mark.parametrize("keep", [len(MAGIC), len(MAGIC) + 8, _PREFIX - 1])
def test_truncated_inside_the_prefix_is_malformed(ring, keep):
    sealed = seal(ring, HEADER, PAYLOAD)
    assert reason_of(ring, sealed[:keep]) == "malformed"


@pytest.mark.parametrize("keep_from_end", [1, len(PAYLOAD), len(PAYLOAD) + 5])
def test_truncated_tail_fails_the_signature(ring, keep_from_end):
    sealed = seal(ring, HEADER, PAYLOAD)
    assert reason_of(ring, sealed[:-keep_from_end]) == "bad-signature"


def test_non_ascii_key_id_is_malformed(ring):
    sealed = seal(ring, HEADER, PAYLOAD)
    data = MAGIC + b"\xff" * 8 + sealed[len(MAGIC) + 8 :]
    assert reason_of(ring, data) == "malformed"


def test_signed_but_header_length_past_the_end_is_malformed(ring):
    body = struct.pack(">I", 1000) + b"{}"
    assert reason_of(ring, forge(KEY, body)) == "malformed"


@pytest.mark.parametrize("head", [b"not json", b"\xff\xfe{", b"[1, 2]", b'"text"', b"17"])
def test_signed_but_header_not_a_json_object_is_malformed(ring, head):
    body = struct.pack(">I", len(head)) + head + b"payload"
    assert reason_of(ring, forge(KEY, body)) == "malformed"


def test_forged_helper_opens_when_well_formed(ring):
    # The helper above signs exactly like seal: a well-formed body opens.
    head = json.dumps({"k": 1}).encode()
    envelope = open_envelope(ring, forge(KEY, struct.pack(">I", len(head)) + head + b"p"))
    assert envelope == Envelope({"k": 1}, b"p")


# --- unknown key --------------------------------------------------------------------------
def test_signed_with_another_key_is_unknown_key(ring):
    sealed = seal(KeyRing.from_key(OTHER_KEY), HEADER, PAYLOAD)
    with pytest.raises(SignatureError) as info:
        open_envelope(ring, sealed)
    assert info.value.reason == "unknown-key"
    assert key_id(OTHER_KEY) in str(info.value)


def test_flipped_key_id_is_unknown_key(ring):
    sealed = seal(ring, HEADER, PAYLOAD)
    assert reason_of(ring, flip_bit(sealed, len(MAGIC) + 2)) == "unknown-key"


# --- bad signature ------------------------------------------------------------------------
def test_one_bit_flipped_in_header_is_bad_signature(ring):
    sealed = seal(ring, HEADER, PAYLOAD)
    start, end = header_span(sealed)
    for index in (start, (start + end) // 2, end - 1):
        for bit in (0, 7):
            assert reason_of(ring, flip_bit(sealed, index, bit)) == "bad-signature"


def test_one_bit_flipped_in_payload_is_bad_signature(ring):
    sealed = seal(ring, HEADER, PAYLOAD)
    _, end = header_span(sealed)
    for index in (end, len(sealed) - 1):
        for bit in (0, 7):
            assert reason_of(ring, flip_bit(sealed, index, bit)) == "bad-signature"


def test_flipped_header_length_or_signature_is_bad_signature(ring):
    sealed = seal(ring, HEADER, PAYLOAD)
    assert reason_of(ring, flip_bit(sealed, _PREFIX - 1)) == "bad-signature"
    assert reason_of(ring, flip_bit(sealed, len(MAGIC) + 8 + 5)) == "bad-signature"


def test_other_key_claiming_our_key_id_is_bad_signature(ring):
    forged = forge(OTHER_KEY, seal(ring, HEADER, PAYLOAD)[_PREFIX - 4 :], kid=ring.signing_id)
    assert reason_of(ring, forged) == "bad-signature"


def test_appended_bytes_are_bad_signature(ring):
    assert reason_of(ring, seal(ring, HEADER, PAYLOAD) + b"x") == "bad-signature"


# --- stale --------------------------------------------------------------------------------
def test_old_message_is_stale_only_with_a_limit(ring):
    sealed = seal(ring, {**HEADER, "ts": time.time() - 100})
    assert open_envelope(ring, sealed).header["task_id"] == "t-1"  # no limit by default
    assert open_envelope(ring, sealed, max_age_s=1000).header["task_id"] == "t-1"
    with pytest.raises(SignatureError) as info:
        open_envelope(ring, sealed, max_age_s=10)
    assert info.value.reason == "stale"
    assert "limit 10s" in str(info.value)


def test_fresh_message_passes_an_age_limit(ring):
    assert open_envelope(ring, seal(ring, HEADER, PAYLOAD), max_age_s=5).payload == PAYLOAD


def test_message_from_far_future_is_stale_but_small_skew_is_tolerated(ring):
    assert open_envelope(ring, seal(ring, {"ts": time.time() + 60}), max_age_s=10).header
    assert reason_of(ring, seal(ring, {"ts": time.time() + 3600}), max_age_s=10) == "stale"


@pytest.mark.parametrize("ts", [None, "yesterday", [1]])
def test_age_limit_without_a_send_time_is_malformed(ring, ts):
    sealed = seal(ring, {"ts": ts})
    assert open_envelope(ring, sealed).header["ts"] == ts
    assert reason_of(ring, sealed, max_age_s=10) == "malformed"


# --- context ------------------------------------------------------------------------------
def test_expect_binds_header_fields(ring):
    sealed = seal(ring, {"task_id": "a", "what": "result"}, PAYLOAD)
    assert open_envelope(ring, sealed, expect={"task_id": "a", "what": "result"}).payload == PAYLOAD
    with pytest.raises(SignatureError) as info:
        open_envelope(ring, sealed, expect={"task_id": "b", "what": "result"})
    assert info.value.reason == "context"
    assert "task_id='a', expected 'b'" in str(info.value)
    assert reason_of(ring, sealed, expect={"task_id": "a", "what": "request"}) == "context"
    assert reason_of(ring, sealed, expect={"missing": "x"}) == "context"


def test_signature_is_checked_before_context(ring):
    # A tampered value that also has the wrong context is reported as tampered.
    sealed = seal(ring, {"task_id": "a"}, PAYLOAD)
    tampered = flip_bit(sealed, len(sealed) - 1)
    assert reason_of(ring, tampered, expect={"task_id": "zzz"}) == "bad-signature"


# --- key rotation -------------------------------------------------------------------------
def test_rotation_new_ring_accepts_old_and_new_signatures():
    old_ring = KeyRing.from_key(KEY)
    new_ring = KeyRing.from_key(OTHER_KEY, KEY)
    signed_by_old = seal(old_ring, HEADER, PAYLOAD)
    signed_by_new = seal(new_ring, HEADER, PAYLOAD)
    # The new ring signs with the new key...
    assert new_ring.signing_id == key_id(OTHER_KEY) != old_ring.signing_id
    assert signed_by_new[len(MAGIC) : len(MAGIC) + 8] == key_id(OTHER_KEY).encode()
    # ...and verifies both.
    assert open_envelope(new_ring, signed_by_old).payload == PAYLOAD
    assert open_envelope(new_ring, signed_by_new).payload == PAYLOAD
    # A peer that only knows the old key cannot verify the new one.
    assert reason_of(old_ring, signed_by_new) == "unknown-key"
    # An old key is for verification only: tampering is still caught.
    assert reason_of(new_ring, flip_bit(signed_by_old, len(signed_by_old) - 1)) == "bad-signature"


def test_ring_lookup():
    ring = KeyRing.from_key(KEY, OTHER_KEY)
    assert ring.lookup(key_id(KEY)) == KEY
    assert ring.lookup(key_id(OTHER_KEY)) == OTHER_KEY
    assert ring.lookup(key_id(os.urandom(32))) is None


def test_key_id_is_short_stable_and_distinct():
    assert key_id(KEY) == key_id(bytes(KEY))
    assert len(key_id(KEY)) == 8 and all(c in "0123456789abcdef" for c in key_id(KEY))
    assert key_id(KEY) != key_id(OTHER_KEY)
