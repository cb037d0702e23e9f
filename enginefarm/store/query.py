"""Mongo-style queries over task records (seed 004's db_query), as pure functions.

Supported: equality, ``$lt $gt $lte $gte $ne $in $nin $exists``, several fields combined (all
must hold). ``{"submitted": {"$gt": t}}`` matches records submitted *after* t.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, cast

from ..task import ALIASES

OPERATORS = frozenset({"$lt", "$gt", "$lte", "$gte", "$ne", "$in", "$nin", "$exists"})
# Far more than any real query needs; a bound keeps a hostile one from exhausting the stack of
# whatever walks it later (equality, json, pickle).
MAX_QUERY_DEPTH = 32
TOO_DEEP = f"a query may nest at most {MAX_QUERY_DEPTH} levels of objects and lists"


class QueryError(ValueError):
    """A query that is not a mapping of field -> value or {operator: value}."""


def validate(query: Any) -> dict[str, Any]:
    """The query, checked, with datetimes made timezone-aware (they compare with the
    records' moments) and ipyparallel's field names (``msg_id``) made ours.

    Raises:
        QueryError: not a mapping of field -> value or {operator: value}.
    """
    if not isinstance(query, Mapping):
        raise QueryError(f"a query is a dict of field -> condition, not {type(query).__name__}")
    _check_depth(query)
    query = {ALIASES.get(k, k) if isinstance(k, str) else k: _aware(v) for k, v in query.items()}
    for field, condition in query.items():
        if not isinstance(field, str) or field.startswith("$"):
            raise QueryError(f"bad field name {field!r} (top-level operators are not supported)")
        if _is_operator_dict(condition):
            for op, arg in condition.items():
                if op not in OPERATORS:
                    raise QueryError(f"unknown operator {op!r} on {field!r}; use one of {sorted(OPERATORS)}")
                if op in ("$in", "$nin") and not isinstance(arg, (list, tuple, set)):
                    raise QueryError(f"{op} on {field!r} takes a list")
    return dict(query)


def _aware(value: Any) -> Any:
    """Datetimes in a condition (also inside operators and lists) made timezone-aware: a naive
    one is local time, as ``datetime.timestamp`` takes it."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.astimezone()
    if isinstance(value, Mapping):
        return {k: _aware(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return type(value)(_aware(v) for v in value)
    return value


def _moment(value: Any, condition: Any) -> Any:
    """A record's moment (epoch seconds) as the datetime the Python API gives out, when the
    condition speaks in datetimes: they compare at the resolution the caller saw (a moment
    read back from db_query matches its own record)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not _has_datetime(condition):
        return value
    return datetime.fromtimestamp(value, tz=timezone.utc)


def _has_datetime(condition: Any) -> bool:
    if isinstance(condition, datetime):
        return True
    if isinstance(condition, Mapping):
        return any(_has_datetime(v) for v in condition.values())
    if isinstance(condition, (list, tuple, set)):
        return any(isinstance(v, datetime) for v in condition)
    return False


def _check_depth(query: Mapping[str, Any]) -> None:
    # Walked with a stack of its own, so the depth being checked cannot overflow ours; a value
    # that contains itself is stopped by the bound too.
    stack: list[tuple[Any, int]] = [(query, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = value
        else:
            continue
        if depth > MAX_QUERY_DEPTH:
            raise QueryError(TOO_DEEP)
        stack.extend((child, depth + 1) for child in children)


def _is_operator_dict(condition: Any) -> bool:
    return isinstance(condition, Mapping) and bool(condition) and all(
        isinstance(k, str) and k.startswith("$") for k in condition
    )


def _compare(value: Any, op: str, arg: Any) -> bool:
    if value is None:
        return False
    # Record fields and query values are plain values (JSON types, datetimes): comparing them gives a bool.
    try:
        if op == "$lt":
            return cast(bool, value < arg)
        if op == "$gt":
            return cast(bool, value > arg)
        if op == "$lte":
            return cast(bool, value <= arg)
        if op == "$gte":
            return cast(bool, value >= arg)
    except TypeError:
        return False
    raise QueryError(op)


def field_matches(record: Mapping[str, Any], field: str, condition: Any) -> bool:
    present = field in record and record[field] is not None
    value = _moment(record.get(field), condition)
    if not _is_operator_dict(condition):
        return present and value == condition
    for op, arg in condition.items():
        if op == "$exists":
            ok = present == bool(arg)
        elif op == "$ne":
            ok = value != arg
        elif op == "$in":
            ok = present and value in arg
        elif op == "$nin":
            ok = value not in arg
        else:
            ok = _compare(value, op, arg)
        if not ok:
            return False
    return True


def matches(record: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    return all(field_matches(record, f, c) for f, c in query.items())


def equal_values(condition: Any) -> list[Any] | None:
    """The values an index lookup may use for ``condition`` (equality or $in), else None."""
    if not _is_operator_dict(condition):
        return [condition]
    if set(condition) == {"$in"}:
        return list(condition["$in"])
    return None


def time_range(condition: Any) -> tuple[float, float] | None:
    """Score bounds for a range condition on a time field, else None."""
    if not _is_operator_dict(condition):
        return None
    low, high = float("-inf"), float("inf")
    used = False
    for op, arg in condition.items():
        if isinstance(arg, datetime):
            # Widened by a microsecond, the resolution of a datetime: the exact test follows.
            if op in ("$gt", "$gte"):
                low, used = max(low, arg.timestamp() - 1e-6), True
            elif op in ("$lt", "$lte"):
                high, used = min(high, arg.timestamp() + 1e-6), True
            continue
        if not isinstance(arg, (int, float)):
            return None
        if op in ("$gt", "$gte"):
            low, used = max(low, float(arg)), True
        elif op in ("$lt", "$lte"):
            high, used = min(high, float(arg)), True
    return (low, high) if used else None
