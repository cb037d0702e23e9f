"""A task, as one typed thing: the header every task message carries, its status, and the
fields of its record in Redis.

Every header that comes out of a verified envelope, and every record field read back from
Redis, is decoded here and nowhere else. Decoding checks types, ranges and sizes, and fails
with one error, ``DecodeError``, that daemons handle by dead-lettering the message or failing
the record: an odd field never reaches the code that acts on it.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from .errors import DecodeError
from .keys import KeyRing
from .protocol import open_envelope

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_RETRIES = 10_000
MAX_ENGINE_ID = 1_000_000
PRIORITY_LIMIT = 2**31
MAX_TIMEOUT_S = 10.0**8


class _Word(str, Enum):
    """An enum whose members are their plain strings: equal, hashed, printed and stored alike
    (``'pending' in TERMINAL``, f-strings, Redis arguments)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return str(self.value).__format__(spec)

    def __hash__(self) -> int:
        return hash(self.value)


class Status(_Word):
    """Where a task is in its life; a terminal status never changes again."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.ABORTED})
STATUSES = tuple(Status)


class Kind(_Word):
    """What a task asks an engine to do: a load-balanced task type or a MultiEngine command."""

    MAP_TASK = "map_task"
    STRING_TASK = "string_task"
    EXECUTE = "execute"
    APPLY = "apply"
    PUSH = "push"
    PUSH_FUNCTION = "push_function"
    PULL = "pull"
    PULL_FUNCTION = "pull_function"
    RESET = "reset"
    KEYS = "keys"
    GET_RESULT = "get_result"
    KILL = "kill"
    PUSH_SERIALIZED = "push_serialized"
    PULL_SERIALIZED = "pull_serialized"
    # Out of band: the engine's control queue, handled by the supervisor, never the child.
    SIGNAL = "signal"


def is_id(value: object) -> bool:
    """A task, client or message id: 1-64 letters, digits, '-' or '_'."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


# --- values ----------------------------------------------------------------------------
def _int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(name, f"must be an integer, not {_show(value)}")
    if not low <= value <= high:
        raise DecodeError(name, f"{_show(value)} is out of range [{low}, {high}]")
    return value


def _number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError(name, f"must be a number, not {_show(value)}")
    # Compared as it is: an int past a float's range must not reach float() (OverflowError).
    if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        raise DecodeError(name, f"{_show(value)} is out of range [{low:g}, {high:g}]")
    return float(value)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise DecodeError(name, f"must be true or false, not {_show(value)}")
    return value


def _show(value: object) -> str:
    # reprlib bounds depth and length: a hostile value nested deep must not recurse here.
    text = _SHOW.repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


_SHOW = reprlib.Repr()
_SHOW.maxlevel = 3
_SHOW.maxstring = _SHOW.maxother = _SHOW.maxlong = 60


# --- dependencies on other tasks ---------------------------------------------------------
MAX_DEPENDENCIES = 1000
MAX_LABEL = 200


@dataclass(frozen=True)
class Dependency:
    """Other tasks a load-balanced task waits for (``after``) or must run beside (``follow``).

    ``all``: every listed task must qualify (else any one); ``success`` / ``failure``: whether
    a task that completed / failed (or was aborted) qualifies.
    """

    ids: tuple[str, ...]
    all: bool = True
    success: bool = True
    failure: bool = False

    @classmethod
    def decode(cls, name: str, raw: object) -> Dependency:
        if not isinstance(raw, Mapping) or set(raw) - {"ids", "all", "success", "failure"}:
            raise DecodeError(name, f"must be an object of ids, all, success, failure, not {_show(raw)}")
        ids = raw.get("ids")
        if not isinstance(ids, list) or len(ids) > MAX_DEPENDENCIES or not all(is_id(i) for i in ids):
            raise DecodeError(name, f"ids must be a list of at most {MAX_DEPENDENCIES} task ids")
        return cls(tuple(ids), _flag(f"{name}.all", raw.get("all", True)),
                   _flag(f"{name}.success", raw.get("success", True)),
                   _flag(f"{name}.failure", raw.get("failure", False)))

    def encode(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "all": self.all, "success": self.success, "failure": self.failure}


# --- the header --------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskHeader:
    """The signed header of a task message: what scheduler and engines act on.

    ``engine_id`` is the target of a direct (MultiEngine) command and None for a
    load-balanced task (``lb``). ``signum`` is the signal a ``signal`` command sends (and
    only it carries one). ``ts`` and ``mid`` are the send time and message id that the
    envelope stamps.
    """

    task_id: str
    kind: Kind
    client_id: str
    lb: bool = False
    engine_id: int | None = None
    retries: int = 0
    depend: bool = False
    priority: int = 0
    timeout: float | None = None
    clear_before: bool = False
    clear_after: bool = False
    # Load-balanced only: tasks to wait for, tasks to run beside, engines it may run on.
    after: Dependency | None = None
    follow: Dependency | None = None
    targets: tuple[int, ...] | None = None
    label: str | None = None
    signum: int | None = None
    ts: float | None = None
    mid: str | None = None

    @classmethod
    def decode(cls, raw: Mapping[str, Any]) -> TaskHeader:
        """Check every field of a verified header.

        Raises:
            DecodeError: a field is missing, unknown, of the wrong type or out of range.
        """
        if not isinstance(raw, Mapping):
            raise DecodeError("header", f"must be an object, not {_show(raw)}")
        unknown = sorted(set(raw) - _HEADER_FIELDS)
        if unknown:
            raise DecodeError("header", f"unknown field {str(unknown[0])[:40]!r}")
        for name in ("task_id", "kind", "client_id"):
            if name not in raw:
                raise DecodeError(name, "is missing")
        task_id, client_id = raw["task_id"], raw["client_id"]
        if not is_id(task_id):
            raise DecodeError("task_id", f"is not an id: {_show(task_id)}")
        if not is_id(client_id):
            raise DecodeError("client_id", f"is not an id: {_show(client_id)}")
        try:
            kind = Kind(raw["kind"])
        except (ValueError, TypeError):
            raise DecodeError("kind", f"unknown kind {_show(raw['kind'])}") from None
        lb = _flag("lb", raw.get("lb", False))
        engine_id = raw.get("engine_id")
        if lb:
            if engine_id is not None:
                raise DecodeError("engine_id", "a load-balanced task names no engine")
            if kind not in (Kind.MAP_TASK, Kind.STRING_TASK):
                raise DecodeError("kind", f"{kind} cannot be load-balanced")
        else:
            engine_id = _int("engine_id", engine_id, 0, MAX_ENGINE_ID)
        timeout = raw.get("timeout")
        mid = raw.get("mid")
        if mid is not None and not is_id(mid):
            raise DecodeError("mid", f"is not an id: {_show(mid)}")
        ts = raw.get("ts")
        after = None if raw.get("after") is None else Dependency.decode("after", raw["after"])
        follow = None if raw.get("follow") is None else Dependency.decode("follow", raw["follow"])
        targets = _targets(raw.get("targets"))
        if (after or follow or targets is not None) and not lb:
            raise DecodeError("after", "after, follow and targets are for load-balanced tasks")
        label = raw.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
            raise DecodeError("label", f"must be text of at most {MAX_LABEL} characters")
        signum = _signum(kind, raw.get("signum"))
        return cls(
            task_id=task_id,
            kind=kind,
            client_id=client_id,
            lb=lb,
            engine_id=engine_id,
            retries=_int("retries", raw.get("retries", 0), 0, MAX_RETRIES),
            depend=_flag("depend", raw.get("depend", False)),
            priority=_int("priority", raw.get("priority", 0), -PRIORITY_LIMIT, PRIORITY_LIMIT),
            timeout=None if timeout is None else _number("timeout", timeout, 0.0, MAX_TIMEOUT_S) or None,
            clear_before=_flag("clear_before", raw.get("clear_before", False)),
            clear_after=_flag("clear_after", raw.get("clear_after", False)),
            after=after,
            follow=follow,
            targets=targets,
            label=label,
            signum=signum,
            ts=None if ts is None else _number("ts", ts, 0.0, 1e11),
            mid=mid,
        )

    def encode(self) -> dict[str, Any]:
        """The wire form: defaults left out (a quiet task's header stays small)."""
        out: dict[str, Any] = {"task_id": self.task_id, "kind": self.kind.value, "client_id": self.client_id}
        for f in fields(self):
            if f.name in out:
                continue
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value.encode() if isinstance(value, Dependency) else (
                    list(value) if isinstance(value, tuple) else value)
        return out

    @property
    def needs_scheduler(self) -> bool:
        """Whether only the scheduler can route it (the shared queue takes plain FIFO work)."""
        return bool(self.depend or self.priority or self.after or self.follow or self.targets is not None)

    def replace(self, **changes: Any) -> TaskHeader:
        """A checked copy with some fields changed (e.g. a resubmission's new ids)."""
        return TaskHeader.decode({**self.encode(), **changes})

    def for_child(self, attempt: int, properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What the engine's child reads: the header, the attempt number and, for depend,
        the engine's properties."""
        out = self.encode()
        out["attempt"] = attempt
        if properties is not None:
            out["properties"] = dict(properties)
        return out


_HEADER_FIELDS = frozenset(f.name for f in fields(TaskHeader))


def _signum(kind: Kind, raw: object) -> int | None:
    """A signal command names its signal (a number, so that what is sent is what was
    signed); no other kind carries one."""
    if kind is Kind.SIGNAL:
        return _int("signum", raw, 1, signal.NSIG - 1)
    if raw is not None:
        raise DecodeError("signum", f"only a signal command carries a signal, not {kind}")
    return None


def _targets(raw: object) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or len(raw) > MAX_DEPENDENCIES:
        raise DecodeError("targets", f"must be a non-empty list of engine ids, not {_show(raw)}")
    return tuple(_int("targets", t, 0, MAX_ENGINE_ID) for t in raw)


# --- the record ----------------------------------------------------------------------
class FieldType(Enum):
    TEXT = "text"
    FLOAT = "float"
    INT = "int"
    JSON = "json"
    JSON_LIST = "json-list"
    BYTES = "bytes"
    FLAG = "flag"  # "1" or absent
    IDS = "ids"  # comma-separated engine ids, in order, repeats kept (losses are counted)


@dataclass(frozen=True)
class RecordField:
    name: str
    type: FieldType
    # Carried with a finished result (the client's inbox and its metadata).
    result: bool = False
    # Returned by db_query when no keys are asked for.
    listed: bool = True


T = FieldType
RECORD_FIELDS: tuple[RecordField, ...] = (
    RecordField("task_id", T.TEXT, result=True),
    RecordField("kind", T.TEXT, result=True),
    RecordField("status", T.TEXT, result=True),
    RecordField("engine_id", T.INT, result=True),
    RecordField("client_id", T.TEXT, result=True),
    RecordField("submitted", T.FLOAT, result=True),
    RecordField("started", T.FLOAT, result=True),
    RecordField("completed", T.FLOAT, result=True),
    RecordField("attempts", T.INT, result=True),
    RecordField("retries", T.INT),
    RecordField("stdout", T.TEXT, result=True),
    RecordField("stderr", T.TEXT, result=True),
    # An IPython execute's display outputs and last value: mime bundles (ipyparallel's names).
    RecordField("outputs", T.JSON_LIST, result=True, listed=False),
    RecordField("execute_result", T.JSON, result=True, listed=False),
    RecordField("error", T.JSON, result=True),
    RecordField("summary", T.TEXT, result=True),
    RecordField("result", T.BYTES, result=True, listed=False),
    RecordField("namespace_lost", T.FLAG, result=True),
    RecordField("request", T.BYTES, listed=False),
    RecordField("lb", T.FLAG),
    RecordField("waiting", T.TEXT),
    RecordField("label", T.TEXT),
    RecordField("failed_on", T.IDS),
    RecordField("lost_on", T.IDS),
    RecordField("unmet", T.IDS, listed=False),
    RecordField("failed_at", T.FLOAT, listed=False),
    RecordField("last_error", T.JSON, listed=False),
)
FIELDS_BY_NAME = {f.name: f for f in RECORD_FIELDS}
# Moments (seconds since the epoch in Redis; timezone-aware datetimes in the Python API).
TIME_FIELDS = ("submitted", "started", "completed", "failed_at")
# ipyparallel's names for record fields.
ALIASES = {"msg_id": "task_id"}


def as_datetime(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def as_seconds(moment: datetime | float | None) -> float | None:
    """Seconds since the epoch; a naive datetime is taken as local time (as datetime does)."""
    return moment.timestamp() if isinstance(moment, datetime) else moment


def with_datetimes(row: dict[str, Any]) -> dict[str, Any]:
    """A record row for the Python API: moments as datetimes."""
    for name in TIME_FIELDS:
        if isinstance(row.get(name), float):
            row[name] = as_datetime(row[name])
    return row
# What a client reads to turn a finished record into a result (order matters: the inbox
# packs them in this order).
RESULT_FIELDS = tuple(f.name for f in RECORD_FIELDS if f.result)
# What db_query returns by default.
LISTED_FIELDS = tuple(f.name for f in RECORD_FIELDS if f.listed)
# Text fields where an empty value means "said nothing", not "absent".
_KEEP_EMPTY = frozenset({"stdout", "stderr", "summary"})
MAX_JSON_DEPTH = 32


def decode_field(name: str, raw: bytes | None) -> Any:
    """One record field as its type; unknown fields are text, bookkeeping fields raw bytes.

    Raises:
        DecodeError: the stored value is not of the field's type.
    """
    if raw is None:
        return None
    spec = FIELDS_BY_NAME.get(name)
    if spec is not None and spec.type is FieldType.BYTES:
        return bytes(raw)
    text = raw.decode("utf-8", "replace")
    if spec is None:
        return text
    if text == "" and name not in _KEEP_EMPTY:
        return None
    try:
        return _parse(spec.type, text)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(name, f"stored value {text[:40]!r} is not {spec.type.value}: {exc}") from None


def _parse(kind: FieldType, text: str) -> Any:
    if kind is FieldType.FLOAT:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("not finite")
        return value
    if kind is FieldType.INT:
        return int(text)
    if kind is FieldType.JSON:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("not an object")
        return value
    if kind is FieldType.JSON_LIST:
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ValueError("not a list of objects")
        return value
    if kind is FieldType.FLAG:
        return text == "1"
    if kind is FieldType.IDS:
        return [int(part) for part in text.split(",") if part.strip()]
    return text


@dataclass
class TaskRecord:
    """A decoded task record. ``result`` and ``request`` stay sealed bytes."""

    task_id: str
    kind: str = ""
    status: str = ""
    engine_id: int | None = None
    client_id: str = ""
    submitted: float | None = None
    started: float | None = None
    completed: float | None = None
    attempts: int = 0
    retries: int = 0
    stdout: str = ""
    stderr: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execute_result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    summary: str = ""
    result: bytes | None = None
    request: bytes | None = None
    namespace_lost: bool = False
    lb: bool = False
    waiting: str = ""
    label: str = ""
    failed_on: tuple[int, ...] = ()
    lost_on: tuple[int, ...] = ()
    unmet: tuple[int, ...] = ()
    failed_at: float | None = None
    last_error: dict[str, Any] | None = None
    # Fields the schema does not know, as text (bookkeeping fields, starting '_', left out).
    extra: dict[str, str] = field(default_factory=dict)
    # Scheduler bookkeeping: arrival order, whether it is routed to an engine now, and the
    # sealed ticket that lets a scheduler dispatch it from Redis.
    seq: float = 0.0
    routed: bool = False
    ticket: bytes | None = None
    # Set on a record whose fields do not decode: what is wrong (see ``decode_record``).
    invalid: str = ""

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def decode(cls, task_id: str, raw: Mapping[bytes, bytes]) -> TaskRecord:
        """Raises: DecodeError naming the first field that does not decode."""
        text = {k.decode("utf-8", "replace"): v for k, v in raw.items()}
        record = cls(task_id=task_id)
        for name, value in text.items():
            if name in FIELDS_BY_NAME:
                decoded = decode_field(name, value)
                if FIELDS_BY_NAME[name].type is FieldType.IDS:
                    decoded = tuple(decoded or ())
                if decoded is not None and name != "task_id":
                    setattr(record, name, decoded)
            elif not name.startswith("_"):
                record.extra[name] = value.decode("utf-8", "replace")
        if record.status and record.status not in _STATUS_VALUES:
            raise DecodeError("status", f"unknown status {record.status[:20]!r}")
        seq = text.get("_seq")
        if seq is not None:
            record.seq = decode_field("submitted", seq) or 0.0
        record.routed = "_pending_key" in text
        record.ticket = text.get("_ticket")
        return record


_STATUS_VALUES = frozenset(s.value for s in Status)


@dataclass(frozen=True)
class TaskMessage:
    """A verified, decoded task message."""

    header: TaskHeader
    payload: bytes


def open_task(ring: KeyRing, data: bytes, max_age_s: float = 0.0) -> TaskMessage:
    """Verify a task message and decode its header.

    Raises:
        SignatureError: unsigned, tampered with, stale (see ``protocol.open_envelope``).
        DecodeError: signed, but a header field is not what the task model allows.
    """
    envelope = open_envelope(ring, data, max_age_s)
    return TaskMessage(TaskHeader.decode(envelope.header), envelope.payload)
