"""The signed envelope carried by every message and every pickled value stored in Redis.

Layout (all lengths in bytes)::

    magic(4) = b"EF1\\0" | key id(8, ascii) | HMAC-SHA256(32) | header length(4, big endian)
    | header (JSON, utf-8) | payload (opaque bytes, usually a pickle)

The HMAC covers everything except itself: magic, key id, header length, header and payload.
It is checked with a constant-time compare before the header is parsed or the payload is
handed to anyone, so an unverified payload is never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import SignatureError
from .keys import KeyRing

MAGIC = b"EF1\x00"
_KID_LEN = 8
_SIG_LEN = 32
_PREFIX = len(MAGIC) + _KID_LEN + _SIG_LEN + 4
# A clock a little ahead on the sender must not make fresh messages look forged.
_FUTURE_SLACK_S = 300.0
# A header is a few hundred bytes; anything near this is hostile, and is refused before parsing.
MAX_HEADER_BYTES = 64 * 1024
_TASK_ID_RE = re.compile(rb'"task_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')
# Built once: json.dumps with separators builds an encoder on every call.
_encode_header = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class Envelope:
    header: dict[str, Any]
    payload: bytes


def new_id() -> str:
    return uuid.uuid4().hex


def seal(ring: KeyRing, header: Mapping[str, Any], payload: bytes = b"", stamp: bool = True) -> bytes:
    """Sign ``header`` and ``payload`` with the ring's signing key.

    With ``stamp``, a ``ts`` (send time) and ``mid`` (message id) are added when absent, for
    staleness and replay checks.
    """
    full = dict(header)
    if stamp:
        full.setdefault("ts", time.time())
        full.setdefault("mid", new_id())
    head = _encode_header(full).encode()
    kid = ring.signing_id.encode("ascii")
    body = struct.pack(">I", len(head)) + head + payload
    sig = hmac.new(ring.signing_key, MAGIC + kid + body, hashlib.sha256).digest()
    return MAGIC + kid + sig + body


def open_envelope(
    ring: KeyRing,
    data: bytes,
    max_age_s: float = 0.0,
    expect: Mapping[str, Any] | None = None,
) -> Envelope:
    """Verify and split sealed bytes.

    Args:
        max_age_s: refuse messages sent longer ago than this (0 = no limit).
        expect: header fields that must hold exactly these values (binds a stored value
            to the record it was read from, so values cannot be swapped between records).

    Raises:
        SignatureError: with ``reason`` one of ``unsigned``, ``malformed``, ``unknown-key``,
            ``bad-signature``, ``stale``, ``context``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SignatureError("malformed", f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise SignatureError("unsigned", "no enginefarm signature")
    if len(data) < _PREFIX:
        raise SignatureError("malformed", "truncated envelope")
    kid_raw = data[4 : 4 + _KID_LEN]
    sig = data[4 + _KID_LEN : 4 + _KID_LEN + _SIG_LEN]
    body = data[4 + _KID_LEN + _SIG_LEN :]
    try:
        kid = kid_raw.decode("ascii")
    except UnicodeDecodeError:
        raise SignatureError("malformed", "key id is not ascii") from None
    key = ring.lookup(kid)
    if key is None:
        raise SignatureError("unknown-key", f"signed with unknown key id {kid!r}")
    expected = hmac.new(key, MAGIC + kid_raw + body, hashlib.sha256).digest()
    if not hmac.compare_digest(sig, expected):
        raise SignatureError("bad-signature", "signature does not match")
    (head_len,) = struct.unpack(">I", body[:4])
    if head_len > len(body) - 4:
        raise SignatureError("malformed", "header length past the end")
    if head_len > MAX_HEADER_BYTES:
        raise SignatureError("malformed", f"header of {head_len:,} bytes, over {MAX_HEADER_BYTES:,}")
    try:
        header = json.loads(body[4 : 4 + head_len])
    except (ValueError, RecursionError):
        raise SignatureError("malformed", "header is not JSON (or nested too deep)") from None
    if not isinstance(header, dict):
        raise SignatureError("malformed", "header is not an object")
    _check_age(header, max_age_s)
    for name, value in (expect or {}).items():
        if header.get(name) != value:
            raise SignatureError("context", f"{name}={header.get(name)!r}, expected {value!r}")
    return Envelope(header, body[4 + head_len :])


def _check_age(header: Mapping[str, Any], max_age_s: float) -> None:
    if max_age_s <= 0:
        return
    sent = header.get("ts")
    if isinstance(sent, bool) or not isinstance(sent, (int, float)) or not -1e12 < sent < 1e12:
        raise SignatureError("malformed", "no send time (or not a time)")
    age = time.time() - sent
    if age > max_age_s or age < -_FUTURE_SLACK_S:
        raise SignatureError("stale", f"sent {age:.0f}s ago, limit {max_age_s:.0f}s")


def peek_task_id(data: bytes) -> str | None:
    """The task id a message claims, read WITHOUT verifying it.

    Only for finding the record of a refused message, which the caller then compares with
    the record's own signed request: never trust what this returns.
    """
    try:
        (head_len,) = struct.unpack(">I", data[_PREFIX - 4 : _PREFIX])
    except struct.error:
        return None
    if not data.startswith(MAGIC) or head_len > MAX_HEADER_BYTES:
        return None
    head = data[_PREFIX : _PREFIX + head_len]
    # Found without parsing: a header nested too deep to parse (here, or in a caller's deeper
    # stack) still names its task.
    found = _TASK_ID_RE.search(head)
    if found:
        return found.group(1).decode()
    try:
        header = json.loads(head)
        task_id = header.get("task_id") if isinstance(header, dict) else None
    except (ValueError, RecursionError):
        return None
    return task_id if isinstance(task_id, str) and 0 < len(task_id) <= 64 else None
