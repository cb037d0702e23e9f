"""Hypothesis strategies for hostile task messages and records, shared by the fuzz tests.

Headers are JSON-like: what ``json.loads`` can give (None, bools, ints, floats including NaN and
infinities, text, lists, objects), built around the real field names so that most examples
get past the first checks of the decoder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
from dataclasses import fields
from typing import Any

from hypothesis import strategies as st

from enginefarm.keys import KeyRing
from enginefarm.protocol import _PREFIX, MAGIC
from enginefarm.task import (
    MAX_ENGINE_ID,
    MAX_RETRIES,
    MAX_TIMEOUT_S,
    PRIORITY_LIMIT,
    RECORD_FIELDS,
    Kind,
    TaskHeader,
)

HEADER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TaskHeader))
# Within a float's range: the mutations turn numbers into floats. Integers past it are tried
# by tests/unit/test_task_model.py and test_daemons.py.
INT_BOUND = 2**1000
# Nesting as deep as the JSON parser accepts, and past it (it refuses about 1000 levels).
MAX_NESTING = 1200

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
# One text draw (a regex strategy would spend a choice per character).
ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=64)
# Near misses of an id: empty, too long, one odd character.
bad_ids = st.one_of(
    st.just(""), st.text(alphabet="ab", min_size=65, max_size=70),
    st.builds(lambda a, c, b: a + c + b, ids, st.sampled_from(list(" :./\n\x00é{")), ids),
)

json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-INT_BOUND, max_value=INT_BOUND),
    st.sampled_from([0, 1, -1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63, MAX_RETRIES + 1, MAX_ENGINE_ID + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), ids, bad_ids,
    st.sampled_from([k.value for k in Kind] + ["", "MAP_TASK", "map_task ", "kill\x00"]),
)


def nested(depth: int, leaf: Any = 0, as_object: bool = False) -> Any:
    """``leaf`` inside ``depth`` lists (or single-key objects)."""
    value = leaf
    for _ in range(depth):
        value = {"k": value} if as_object else [value]
    return value


def nested_text(depth: int, as_object: bool = False) -> str:
    """JSON text of ``nested(depth)`` built without recursion (json.dumps would refuse it)."""
    if as_object:
        return '{"k":' * depth + "0" + "}" * depth
    return "[" * depth + "0" + "]" * depth


deep_values = st.builds(nested, st.integers(0, 200), json_scalars, st.booleans())
json_values = st.one_of(
    json_scalars,
    st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=8) | st.sampled_from(HEADER_FIELDS), inner, max_size=4),
                 max_leaves=12),
    deep_values,
)
# Mostly real names (so that examples reach the value checks), now and then an unknown one.
field_names = st.one_of(
    st.sampled_from(HEADER_FIELDS * 6 + ("attempt", "properties", "TASK_ID", "task_id ", "__proto__")),
    st.text(max_size=12),
)

# Random objects with (mostly) the real field names and random values of every JSON type.
random_headers = st.dictionaries(field_names, json_values, max_size=len(HEADER_FIELDS) + 2)


@st.composite
def valid_headers(draw: st.DrawFn) -> dict[str, Any]:
    """A header the model accepts; optional fields are left out or given their default now and then."""
    lb = draw(st.booleans())
    kinds = [Kind.MAP_TASK, Kind.STRING_TASK] if lb else list(Kind)
    header: dict[str, Any] = {"task_id": draw(ids), "kind": draw(st.sampled_from(kinds)).value,
                              "client_id": draw(ids)}
    if lb:
        header["lb"] = True
    else:
        header["engine_id"] = draw(st.integers(0, MAX_ENGINE_ID))
        if header["kind"] == Kind.SIGNAL.value:
            header["signum"] = draw(st.integers(1, 31))
        if draw(st.booleans()):
            header["lb"] = False
    optional: dict[str, st.SearchStrategy[Any]] = {
        "retries": st.integers(0, MAX_RETRIES),
        "depend": st.booleans(),
        "priority": st.integers(-PRIORITY_LIMIT, PRIORITY_LIMIT),
        "timeout": st.none() | st.floats(0, MAX_TIMEOUT_S) | st.integers(0, int(MAX_TIMEOUT_S)),
        "clear_before": st.booleans(),
        "clear_after": st.booleans(),
        "ts": st.none() | st.floats(0, 1e11) | st.integers(0, 10**11),
        "mid": st.none() | ids,
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            header[name] = draw(values)
    return header


def _retype(value: Any) -> list[Any]:
    """Values of other JSON types standing for ``value`` (the usual wire mistakes)."""
    return [str(value), [value], {"value": value}, None, not value if isinstance(value, bool) else True,
            float(value) if isinstance(value, int) and not isinstance(value, bool) else 1]


@st.composite
def mutated_headers(draw: st.DrawFn) -> dict[str, Any]:
    """A valid header with one to three fields removed, retyped, nested or set at random."""
    header = draw(valid_headers())
    for _ in range(draw(st.integers(1, 3))):
        given = bool(header) and draw(st.booleans())
        name = draw(st.sampled_from(sorted(header))) if given else draw(field_names)
        how = draw(st.sampled_from(["delete", "retype", "nest", "random"]))
        if how == "delete":
            header.pop(name, None)
        elif how == "retype" and name in header:
            header[name] = draw(st.sampled_from(_retype(header[name])))
        elif how == "nest" and name in header:
            header[name] = nested(draw(st.integers(1, 200)), header[name], draw(st.booleans()))
        else:
            header[name] = draw(json_values)
    return header


any_headers = st.one_of(random_headers, valid_headers(), mutated_headers())


def refused_header(header: dict[str, Any]) -> bool:
    """Whether the model refuses ``header`` (a strategy filter for poison that must not run)."""
    try:
        TaskHeader.decode(header)
    except Exception:  # noqa: BLE001 - any refusal will do here; the decoder tests judge which
        return True
    return False


# --- raw header texts and envelopes ------------------------------------------------------
header_texts = st.one_of(
    any_headers.map(lambda h: json.dumps(h).encode()),
    # What json.dumps never writes: duplicate keys, nesting past the parser's limit, bare values.
    st.builds(lambda h, name, v: (json.dumps(h)[:-1] + f', "{name}": {json.dumps(v)}}}').encode()
              if h else json.dumps(h).encode(), valid_headers(), st.sampled_from(HEADER_FIELDS), json_values),
    st.builds(lambda h, name, d, o: (json.dumps({k: v for k, v in h.items() if k != name})[:-1]
                                     + f', "{name}": {nested_text(d, o)}}}').encode(),
              valid_headers(), st.sampled_from(HEADER_FIELDS), st.integers(0, MAX_NESTING), st.booleans()),
    st.sampled_from([b"", b"null", b"[]", b"1", b'"x"', b"{", b"NaN", b'{"task_id": NaN}', b"\xff\xfe{}"]),
    st.binary(max_size=64),
)


def forge(ring: KeyRing, head: bytes, payload: bytes, head_len: int | None = None) -> bytes:
    """Correctly signed bytes around any header text and length: what a key holder can send."""
    kid = ring.signing_id.encode("ascii")
    body = struct.pack(">I", len(head) if head_len is None else head_len) + head + payload
    sig = hmac.new(ring.signing_key, MAGIC + kid + body, hashlib.sha256).digest()
    return MAGIC + kid + sig + body


# A mutation of sealed bytes: (operation, position as a fraction of the length, argument).
mutations = st.tuples(
    st.sampled_from(["flip", "truncate", "extend", "swap", "overwrite", "insert", "delete"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(0, 255) | st.binary(min_size=1, max_size=16),
)


def header_span(sealed: bytes) -> tuple[int, int]:
    (length,) = struct.unpack(">I", sealed[_PREFIX - 4 : _PREFIX])
    return _PREFIX, _PREFIX + length


def mutate(data: bytes, ops: list[tuple[str, float, Any]]) -> bytes:
    """Apply ``ops`` in turn; positions of 'swap' fall inside the original header."""
    out = bytearray(data)
    start, end = header_span(data)
    for op, where, arg in ops:
        at = int(where * len(out)) if out else 0
        number = arg if isinstance(arg, int) else arg[0]
        blob = arg if isinstance(arg, bytes) else bytes([arg])
        if op == "flip" and out:
            out[at] ^= 1 << (number % 8)
        elif op == "truncate":
            del out[at:]
        elif op == "extend":
            out += blob
        elif op == "swap" and end - start > 1 and len(out) >= end:
            i = start + int(where * (end - start))
            j = start + (i - start + 1 + number) % (end - start)
            out[i], out[j] = out[j], out[i]
        elif op == "overwrite":
            out[at : at + len(blob)] = blob
        elif op == "insert":
            out[at:at] = blob
        elif op == "delete":
            del out[at : at + 1 + number % 8]
    return bytes(out)


# --- the marker payload ----------------------------------------------------------------
class Marker:
    """Unpickling an instance calls ``fire(*args)``: proof, if it ever happens, that a payload
    was unpickled. ``fire`` must be importable (a module-level function)."""

    def __init__(self, fire: Any, *args: Any) -> None:
        self.fire, self.args = fire, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fire, self.args


def marker_payload(fire: Any, *args: Any) -> bytes:
    """A pickle whose loading calls ``fire(*args)``, shaped like a direct request (call, args, kwargs)."""
    return pickle.dumps((Marker(fire, *args), (), {}))


# --- records -----------------------------------------------------------------------------
RECORD_NAMES: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS)
BOOKKEEPING = ("_seq", "_ticket", "_pending_key", "_claimed_key", "_inbox", "_notify")
record_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"0", b"1", b"-1", b"1.5", b"nan", b"inf", b"1e400", b"9" * 5000, b"1,2,2", b",",
                     b"{}", b"[]", b"null", b'{"ename": "E"}', b"\xff\xfe", b"pending", b"completed",
                     nested_text(5000).encode()]),
    st.integers().map(lambda n: str(n).encode()),
    st.floats().map(lambda x: repr(x).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.integers(-5, 2**40), max_size=5).map(lambda xs: ",".join(map(str, xs)).encode()),
)
record_keys = st.one_of(st.sampled_from(RECORD_NAMES + BOOKKEEPING).map(str.encode), st.binary(max_size=12))
random_records = st.dictionaries(record_keys, record_values, max_size=len(RECORD_NAMES) + 4)
